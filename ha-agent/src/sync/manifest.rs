//! Manifests: what a side holds under a root (path, type, size, mtime,
//! mode, owner, group; content hash only on request).

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::ids::Ids;
use super::path::{is_temp_name, join};
use super::proto::{Attrs, WireEntry};
use super::spool::{RootKind, is_synced};

/// One file or directory under a root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub is_dir: bool,
    pub size: u64,
    /// Inode change time: moves with writes, renames and chmod, cannot be
    /// set by `touch`; used by failback to find what changed after a time.
    pub ctime_ns: i64,
    pub attrs: Attrs,
    pub hash: Option<[u8; 32]>,
}

/// A root's entries by relative path (ordered: a parent sorts before its children).
pub type Manifest = BTreeMap<String, Entry>;

/// Deepest directory nesting scanned (a loop guard; mail trees are shallow).
pub const MAX_DEPTH: usize = 64;

/// Permission bits kept from `st_mode`.
pub const MODE_MASK: u32 = 0o7777;

/// Builds an entry from metadata.
pub fn entry_of(md: &fs::Metadata, ids: &mut Ids) -> Entry {
    Entry {
        is_dir: md.is_dir(),
        size: if md.is_dir() { 0 } else { md.size() },
        ctime_ns: md.ctime() * 1_000_000_000 + md.ctime_nsec(),
        attrs: Attrs {
            mode: md.mode() & MODE_MASK,
            mtime_ns: md.mtime() * 1_000_000_000 + md.mtime_nsec(),
            owner: ids.user_name(md.uid()),
            group: ids.group_name(md.gid()),
        },
        hash: None,
    }
}

/// Scans a root. Only directories and regular files are listed; symlinks,
/// sockets, FIFOs and devices are skipped, and so are our temporary files
/// and whatever the root kind excludes. Entries that vanish during the scan
/// are skipped (the watcher reports their removal).
pub fn scan(root: &Path, kind: RootKind, ids: &mut Ids) -> io::Result<Manifest> {
    let mut m = Manifest::new();
    scan_dir(root, "", kind, ids, &mut m, 0)?;
    Ok(m)
}

/// Scans the subtree at `rel` (a directory) into `m`, `rel` excluded.
pub fn scan_dir(
    root: &Path,
    rel: &str,
    kind: RootKind,
    ids: &mut Ids,
    m: &mut Manifest,
    depth: usize,
) -> io::Result<()> {
    if depth > MAX_DEPTH {
        return Ok(());
    }
    for sub in list_dir(root, rel, kind, ids, m, depth > 0)? {
        scan_dir(root, &sub, kind, ids, m, depth + 1)?;
    }
    Ok(())
}

/// Adds the synced entries directly inside `rel` to `m` and returns the
/// subdirectories among them. `missing_ok`: a directory that vanished
/// meanwhile is empty rather than an error.
pub fn list_dir(
    root: &Path,
    rel: &str,
    kind: RootKind,
    ids: &mut Ids,
    m: &mut Manifest,
    missing_ok: bool,
) -> io::Result<Vec<String>> {
    let dir = if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    };
    let rd = match fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound && missing_ok => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut subdirs = Vec::new();
    for de in rd {
        let de = de?;
        let Ok(name) = de.file_name().into_string() else {
            continue;
        };
        if is_temp_name(&name) {
            continue;
        }
        let p = join(rel, &name);
        if !is_synced(kind, &p) {
            continue;
        }
        let md = match fs::symlink_metadata(de.path()) {
            Ok(md) => md,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if md.is_dir() {
            m.insert(p.clone(), entry_of(&md, ids));
            subdirs.push(p);
        } else if md.is_file() {
            m.insert(p, entry_of(&md, ids));
        }
    }
    Ok(subdirs)
}

/// SHA-256 of a file's content (tests; the sync opens files through
/// [`super::fsops::Tree`] and hashes them with [`hash_reader`]).
pub fn hash_file(path: &Path) -> io::Result<[u8; 32]> {
    hash_reader(fs::File::open(path)?)
}

/// SHA-256 of what an open file holds.
pub fn hash_reader(mut f: fs::File) -> io::Result<[u8; 32]> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(h.finalize().into());
        }
        h.update(&buf[..n]);
    }
}

/// Wire form of an entry.
pub fn to_wire(root: u8, path: &str, e: &Entry) -> WireEntry {
    WireEntry {
        root,
        path: path.to_owned(),
        is_dir: e.is_dir,
        size: e.size,
        ctime_ns: e.ctime_ns,
        attrs: e.attrs.clone(),
        hash: e.hash,
    }
}

/// Entry of a wire entry (root and path are the caller's).
pub fn from_wire(w: WireEntry) -> (u8, String, Entry) {
    (
        w.root,
        w.path,
        Entry {
            is_dir: w.is_dir,
            size: w.size,
            ctime_ns: w.ctime_ns,
            attrs: w.attrs,
            hash: w.hash,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{PermissionsExt, symlink};

    #[test]
    fn scan_lists_files_and_dirs_and_skips_the_rest() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        fs::create_dir_all(r.join("cur")).unwrap();
        fs::write(r.join("cur/a"), b"hello").unwrap();
        fs::set_permissions(r.join("cur/a"), fs::Permissions::from_mode(0o640)).unwrap();
        fs::write(r.join("cur/.ha-sync-tmp.x"), b"partial").unwrap();
        symlink("/etc/passwd", r.join("cur/link")).unwrap();
        nix::unistd::mkfifo(&r.join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        let m = scan(r, RootKind::MailDir, &mut Ids::default()).unwrap();
        assert_eq!(m.keys().collect::<Vec<_>>(), vec!["cur", "cur/a"]);
        let a = &m["cur/a"];
        assert_eq!((a.is_dir, a.size, a.attrs.mode), (false, 5, 0o640));
        assert!(m["cur"].is_dir);
    }

    #[test]
    fn postfix_scan_skips_sockets_dirs() {
        let t = tempfile::tempdir().unwrap();
        for d in ["deferred/A", "public", "private", "pid"] {
            fs::create_dir_all(t.path().join(d)).unwrap();
        }
        fs::write(t.path().join("deferred/A/ABC"), b"q").unwrap();
        fs::write(t.path().join("pid/master.pid"), b"1").unwrap();
        let m = scan(t.path(), RootKind::PostfixSpool, &mut Ids::default()).unwrap();
        assert_eq!(
            m.keys().collect::<Vec<_>>(),
            vec!["deferred", "deferred/A", "deferred/A/ABC"]
        );
    }

    #[test]
    fn hash_distinguishes_content() {
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join("a"), b"one").unwrap();
        fs::write(t.path().join("b"), b"two").unwrap();
        fs::write(t.path().join("c"), b"one").unwrap();
        let h = |n| hash_file(&t.path().join(n)).unwrap();
        assert_ne!(h("a"), h("b"));
        assert_eq!(h("a"), h("c"));
    }
}
