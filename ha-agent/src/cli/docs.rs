//! `ha-agent generate-docs --out DIR`: man pages and shell completions made
//! from the command-line definition itself, so that they always say what
//! `--help` says. Packaging runs it; it is hidden from `--help`.

use std::path::Path;

use anyhow::{Context as _, Result};
use clap::CommandFactory as _;
use clap_complete::Shell;

/// Writes `DIR/man/ha-agent.1` (and one page per subcommand,
/// `ha-agent-<sub>.1`) and `DIR/completions/` for bash, zsh and fish.
///
/// # Errors
/// A directory or file cannot be written.
pub fn run(out: &Path) -> Result<()> {
    let man = out.join("man");
    let completions = out.join("completions");
    for d in [&man, &completions] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let cmd = super::Cli::command();
    clap_mangen::generate_to(cmd.clone(), &man)
        .with_context(|| format!("writing man pages to {}", man.display()))?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd.clone(), "ha-agent", &completions)
            .with_context(|| format!("writing {shell} completions to {}", completions.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_and_completions_cover_every_subcommand() {
        let t = tempfile::tempdir().unwrap();
        run(t.path()).unwrap();
        let top = std::fs::read_to_string(t.path().join("man/ha-agent.1")).unwrap();
        assert!(top.contains(".TH ha-agent 1"), "{top}");
        for sub in ["run", "check-config", "status", "switch", "sync", "cleanup"] {
            let page = t.path().join(format!("man/ha-agent-{sub}.1"));
            assert!(page.is_file(), "{} missing", page.display());
            // roff spells a hyphen `\-`.
            assert!(
                top.contains(&sub.replace('-', "\\-")),
                "top page names {sub}"
            );
        }
        assert!(
            !t.path().join("man/ha-agent-generate-docs.1").exists(),
            "the hidden command has no page"
        );
        let bash = std::fs::read_to_string(t.path().join("completions/ha-agent.bash")).unwrap();
        assert!(bash.contains("check-config") && bash.contains("secondary"));
        assert!(t.path().join("completions/_ha-agent").is_file());
        assert!(t.path().join("completions/ha-agent.fish").is_file());
    }
}
