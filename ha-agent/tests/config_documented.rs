//! docs/configuration.md must document every configuration key, mark exactly
//! the synced ones as synced, and show only TOML that uses real keys.
//!
//! `ha_agent::config::KEYS` is itself checked against the fields serde
//! decodes (unit test `keys_match_the_decoded_fields`), so a new key that is
//! not documented fails here.

use std::collections::BTreeSet;
use std::path::Path;

use ha_agent::config::{KEYS, SYNCED_KEYS, Timing};

fn doc() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Table rows whose first cell is a backticked key: (key, cells).
fn key_rows(doc: &str) -> Vec<(String, Vec<String>)> {
    doc.lines()
        .filter_map(|line| {
            let line = line.trim();
            let inner = line.strip_prefix('|')?.strip_suffix('|')?;
            // Split on `|` not escaped as `\|`.
            let cells: Vec<String> = inner
                .replace("\\|", "\u{1}")
                .split('|')
                .map(|c| c.trim().replace('\u{1}', "|"))
                .collect();
            let key = cells
                .first()?
                .strip_prefix('`')?
                .strip_suffix('`')?
                .to_owned();
            Some((key, cells))
        })
        .collect()
}

#[test]
fn every_key_is_documented_once_with_type_default_and_synced() {
    let doc = doc();
    let rows = key_rows(&doc);
    let mut missing = Vec::new();
    for key in KEYS {
        let found: Vec<&Vec<String>> = rows
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, c)| c)
            .collect();
        match found.as_slice() {
            [] => missing.push(*key),
            [cells] => {
                assert_eq!(
                    cells.len(),
                    5,
                    "{key}: row must have key | type | default | synced | meaning"
                );
                assert!(
                    cells[1..].iter().all(|c| !c.is_empty()),
                    "{key}: empty cell in {cells:?}"
                );
                let synced = match cells[3].as_str() {
                    "yes" => true,
                    "no" => false,
                    other => panic!("{key}: synced column must be yes or no, is {other:?}"),
                };
                assert_eq!(
                    synced,
                    SYNCED_KEYS.contains(key),
                    "{key}: synced column disagrees with SYNCED_KEYS"
                );
            }
            _ => panic!("{key} is documented in {} rows", found.len()),
        }
    }
    assert!(
        missing.is_empty(),
        "keys missing from docs/configuration.md: {missing:?}"
    );
}

#[test]
fn documented_rows_are_real_keys() {
    let stale: Vec<String> = key_rows(&doc())
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| !KEYS.contains(&k.as_str()))
        .collect();
    assert!(
        stale.is_empty(),
        "docs/configuration.md documents keys that do not exist: {stale:?}"
    );
}

/// Dotted keys of a TOML value, list indexes dropped (as in `KEYS`).
fn flatten(value: &toml::Value, prefix: &str, out: &mut BTreeSet<String>) {
    let join = |k: &str| {
        if prefix.is_empty() {
            k.to_owned()
        } else {
            format!("{prefix}.{k}")
        }
    };
    match value {
        toml::Value::Table(t) => {
            for (k, v) in t {
                flatten(v, &join(k), out);
            }
        }
        toml::Value::Array(items) if items.iter().any(toml::Value::is_table) => {
            for item in items {
                flatten(item, prefix, out);
            }
        }
        _ => {
            out.insert(prefix.to_owned());
        }
    }
}

/// The `toml` fenced code blocks of the document.
fn toml_blocks(doc: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in doc.lines() {
        match (&mut current, line.trim()) {
            (None, "```toml") => current = Some(String::new()),
            (Some(_), "```") => blocks.extend(current.take()),
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    blocks
}

#[test]
fn toml_examples_use_only_real_keys_and_keep_the_lease_rule() {
    let doc = doc();
    let blocks = toml_blocks(&doc);
    assert!(
        blocks.len() >= 10,
        "expected an example per section, found {}",
        blocks.len()
    );
    let mut timings = 0;
    for block in &blocks {
        let value: toml::Value = toml::from_str(block).unwrap_or_else(|e| panic!("{e}\n{block}"));
        let mut keys = BTreeSet::new();
        flatten(&value, "", &mut keys);
        let unknown: Vec<&String> = keys
            .iter()
            .filter(|k| !KEYS.contains(&k.as_str()))
            .collect();
        assert!(unknown.is_empty(), "unknown keys {unknown:?} in\n{block}");

        let cluster = value.get("cluster");
        let duration = |k: &str| {
            cluster
                .and_then(|c| c.get(k))
                .and_then(toml::Value::as_str)
                .map(|s| humantime::parse_duration(s).expect("documented duration parses"))
        };
        if let (Some(interval), Some(lost)) =
            (duration("heartbeat_interval"), duration("lost_threshold"))
        {
            Timing::resolve(interval, lost, duration("lease")).unwrap_or_else(|e| {
                panic!("documented profile breaks the lease rule: {e}\n{block}")
            });
            timings += 1;
        }
    }
    assert!(
        timings >= 3,
        "the fast and cautious profiles must be shown as [cluster] blocks"
    );
}
