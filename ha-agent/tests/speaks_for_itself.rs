//! The product speaks of itself alone: its docs, examples, help texts, log
//! lines and comments name no design brief, no issue number and no other
//! project's files. Compatibility is said by what it is ("compatible with
//! FortiMail's defaults"), and history stays in the version control log.

use std::path::{Path, PathBuf};

/// What must not appear (lower case). Spelt in pieces so that this file
/// does not match itself.
fn forbidden() -> Vec<String> {
    let seed = ["se", "ed"].concat();
    vec![
        format!("the {seed}"),
        format!("{seed}'s"),
        format!("{seed}/"),
        format!("{seed} product"),
        format!("{seed} default"),
        ["iss", "ue #"].concat(),
    ]
}

/// "issue" followed by a number, as in a tracker reference.
fn issue_number(line: &str) -> bool {
    let word = ["iss", "ue "].concat();
    line.match_indices(&word).any(|(i, _)| {
        line[i + word.len()..]
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit())
    })
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name == "target" || name.starts_with('.') || name == "proptest-regressions" {
            continue;
        }
        if p.is_dir() {
            files(&p, out);
        } else if [
            "rs", "md", "toml", "txt", "json", "sh", "service", "conf", "1",
        ]
        .iter()
        .any(|x| p.extension().is_some_and(|e| e == *x))
            || p.parent().is_some_and(|d| d.ends_with("hooks"))
        {
            out.push(p);
        }
    }
}

#[test]
fn no_brief_issue_numbers_or_foreign_files_in_the_tree() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut all = Vec::new();
    for top in [
        "README.md",
        "docs",
        "examples",
        "packaging",
        "dashboards",
        "ha-agent",
        "ha-common",
        "ha-ebpf",
        "xtask",
        "tests",
    ] {
        let p = root.join(top);
        if p.is_file() {
            all.push(p);
        } else {
            files(&p, &mut all);
        }
    }
    assert!(
        all.len() > 50,
        "only {} files found under {}",
        all.len(),
        root.display()
    );
    let bad = forbidden();
    let mut found = Vec::new();
    for f in &all {
        let Ok(text) = std::fs::read_to_string(f) else {
            continue;
        };
        for (n, line) in text.lines().enumerate() {
            let l = line.to_lowercase();
            if bad.iter().any(|b| l.contains(b.as_str())) || issue_number(&l) {
                found.push(format!(
                    "{}:{}: {}",
                    f.strip_prefix(root).unwrap_or(f).display(),
                    n + 1,
                    line.trim()
                ));
            }
        }
    }
    assert!(
        found.is_empty(),
        "the product should speak for itself:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_checker_finds_what_it_should() {
    assert!(issue_number(&["see iss", "ue 13 for why"].concat()));
    assert!(!issue_number(&["an iss", "ue with"].concat()));
}
