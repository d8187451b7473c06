//! Writing the cluster keys that config sync received into the agent's own
//! configuration file, keeping every comment and every other key as the
//! operator wrote them, so that the next start of the agent runs with them.

use std::{io::Write as _, os::unix::fs::PermissionsExt as _, path::Path, time::Duration};

use toml_edit::{Array, DocumentMut, Item, Table, value};

use super::SyncedView;

/// Why the file could not be updated.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// Reading or writing the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The configuration file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not TOML any more (edited by hand in the meantime).
    #[error("{path}: not valid TOML: {source}")]
    Parse {
        /// The configuration file.
        path: String,
        /// The parse error.
        source: toml_edit::TomlError,
    },
}

fn dur(d: Duration) -> String {
    humantime::format_duration(d).to_string().replace(' ', "")
}

/// `text` with the `[cluster]` keys of `view` set; everything else intact.
///
/// # Errors
/// The text is not TOML.
pub fn with_synced_keys(text: &str, view: &SyncedView) -> Result<String, toml_edit::TomlError> {
    let mut doc: DocumentMut = text.parse()?;
    if !doc.contains_table("cluster") {
        doc["cluster"] = Item::Table(Table::new());
    }
    let c = &mut doc["cluster"];
    c["heartbeat_interval"] = value(dur(view.heartbeat_interval));
    c["lost_threshold"] = value(dur(view.lost_threshold));
    match view.lease {
        Some(l) => c["lease"] = value(dur(l)),
        None => {
            if let Some(t) = c.as_table_mut() {
                t.remove("lease");
            }
        }
    }
    c["remote_services_as_heartbeat"] = value(view.remote_services_as_heartbeat);
    c["promote_outdated"] = value(view.promote_outdated);
    c["forward"] = value(view.forward);
    let mut ports = Array::new();
    for p in &view.fence_ports {
        ports.push(i64::from(*p));
    }
    c["fence_ports"] = value(ports);
    c["startup_wait"] = value(dur(view.startup_wait));
    Ok(doc.to_string())
}

/// Rewrites `path` atomically (temporary file, fsync, rename) with the keys
/// of `view`, keeping the file's permissions. Does nothing when the file
/// already says the same.
///
/// # Errors
/// The file cannot be read, parsed or replaced.
pub fn persist_synced(path: &Path, view: &SyncedView) -> Result<bool, PersistError> {
    let io = |source| PersistError::Io {
        path: path.display().to_string(),
        source,
    };
    let text = std::fs::read_to_string(path).map_err(io)?;
    let new = with_synced_keys(&text, view).map_err(|source| PersistError::Parse {
        path: path.display().to_string(),
        source,
    })?;
    if new == text {
        return Ok(false);
    }
    let mode = std::fs::metadata(path).map_err(io)?.permissions().mode();
    let tmp = path.with_extension("toml.ha-sync-tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(io)?;
    f.write_all(new.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    if let Some(dir) = path.parent()
        && let Ok(d) = std::fs::File::open(dir)
    {
        let _ = d.sync_all();
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# node A\n[node]\nname = \"a\" # keep me\n\n[cluster]\nid = 7 # the id\nheartbeat_interval = \"1s\"   # [synced]\nlost_threshold = \"15s\"\nlease = \"9s\"\n";

    fn view() -> SyncedView {
        SyncedView {
            heartbeat_interval: Duration::from_millis(1),
            lost_threshold: Duration::from_millis(10),
            lease: None,
            remote_services_as_heartbeat: true,
            promote_outdated: false,
            forward: true,
            fence_ports: vec![25, 587],
            startup_wait: Duration::from_millis(10),
        }
    }

    #[test]
    fn sets_synced_keys_and_keeps_the_rest() {
        let out = with_synced_keys(TEXT, &view()).unwrap();
        assert!(out.contains("# node A"), "{out}");
        assert!(out.contains("name = \"a\" # keep me"), "{out}");
        assert!(out.contains("id = 7 # the id"), "{out}");
        assert!(out.contains("heartbeat_interval = \"1ms\""), "{out}");
        assert!(out.contains("lost_threshold = \"10ms\""), "{out}");
        assert!(!out.contains("lease ="), "an unset lease is removed: {out}");
        assert!(out.contains("fence_ports = [25, 587]"), "{out}");
        assert!(out.contains("startup_wait = \"10ms\""), "{out}");
        // The result parses back to the same view.
        let doc: toml::Table = out.parse().unwrap();
        assert_eq!(doc["cluster"]["forward"].as_bool(), Some(true));
        assert_eq!(doc["cluster"]["id"].as_integer(), Some(7));
    }

    #[test]
    fn persist_is_atomic_and_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ha.toml");
        std::fs::write(&p, TEXT).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(persist_synced(&p, &view()).unwrap());
        assert!(
            !persist_synced(&p, &view()).unwrap(),
            "second write changes nothing"
        );
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(!dir.path().join("ha.toml.ha-sync-tmp").exists());
    }

    #[test]
    fn refuses_text_that_is_not_toml() {
        assert!(with_synced_keys("[cluster\n", &view()).is_err());
    }
}
