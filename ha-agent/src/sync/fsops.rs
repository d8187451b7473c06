//! Receiver-side file-system operations, confined to a root.
//!
//! Paths from the peer were checked syntactically by the decoder; here every
//! directory component is opened with `openat(O_DIRECTORY | O_NOFOLLOW)`
//! from the root's fd, so a symlink anywhere on the way (planted in the
//! replica, or raced in) stops the operation instead of leading outside.
//! File content is written to a temporary name in the target directory and
//! renamed into place only after it is durable (see `receiver::Batch`).

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps};
use rustix::io::Errno;
use thiserror::Error;

use super::ids::Ids;
use super::path::{self, TEMP_PREFIX, is_temp_name};
use super::proto::Attrs;

/// Deepest tree removed recursively.
const MAX_DEPTH: usize = 64;

/// A file-system operation on the receiver failed.
#[derive(Debug, Error)]
pub enum FsError {
    /// A component is a symlink or not a directory: the path would leave the root.
    #[error("{path}: refused, `{component}` is a symlink or not a directory")]
    Unsafe { path: String, component: String },
    /// The file system is full (or a quota is exhausted).
    #[error("{path}: no space left on the replica")]
    NoSpace { path: String },
    /// The operand does not exist.
    #[error("{path}: does not exist")]
    NotFound { path: String },
    /// The path failed the syntactic checks.
    #[error("{path}: {source}")]
    Path {
        path: String,
        source: path::PathError,
    },
    /// Another I/O error.
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
    /// The session may not do this (a failback session only adds; a spool
    /// takes its queue directories only).
    #[error("{path}: not allowed: {why}")]
    NotAllowed { path: String, why: &'static str },
}

impl FsError {
    fn from_errno(path: &str, e: Errno) -> Self {
        match e {
            Errno::NOSPC | Errno::DQUOT => Self::NoSpace {
                path: path.to_owned(),
            },
            Errno::NOENT => Self::NotFound {
                path: path.to_owned(),
            },
            e => Self::Io {
                path: path.to_owned(),
                source: e.into(),
            },
        }
    }

    pub fn from_io(path: &str, e: io::Error) -> Self {
        match e.raw_os_error() {
            Some(n) => Self::from_errno(path, Errno::from_raw_os_error(n)),
            None => Self::Io {
                path: path.to_owned(),
                source: e,
            },
        }
    }

    /// Label for counters.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Unsafe { .. } | Self::Path { .. } => "unsafe_path",
            Self::NoSpace { .. } => "no_space",
            Self::NotFound { .. } => "not_found",
            Self::Io { .. } => "io",
            Self::NotAllowed { .. } => "not_allowed",
        }
    }
}

/// A synced root on the receiver.
#[derive(Debug)]
pub struct Tree {
    root: OwnedFd,
    /// When tracking: directories that gained an entry because a walk
    /// created a missing directory in them (to fsync before an ack).
    created: std::sync::Mutex<Option<Vec<(String, OwnedFd)>>>,
}

/// A file being received: its temporary name in `dir` and its final name
/// in `dest` (the same directory unless [`Tree::retarget`] moved it).
///
/// Dropped before [`Tree::commit_file`] succeeded, it removes its temporary
/// name: a transfer cut by any error (a reset connection, a read timeout)
/// leaves nothing behind, not only one that saw a clean end of stream.
#[derive(Debug)]
pub struct TempFile {
    /// Directory holding the temporary file.
    pub dir: OwnedFd,
    /// Relative path of `dir` (key for the batch's dir fsyncs).
    pub dir_path: String,
    pub tmp: String,
    /// Final directory when it differs from `dir`, with its relative path.
    pub dest: Option<(OwnedFd, String)>,
    /// Final name in the final directory.
    pub name: String,
    pub file: File,
    /// Commit only if the final name is free (failback: never overwrite).
    pub no_replace: bool,
    /// Renamed into place (or removed): nothing left to clean up.
    settled: std::sync::atomic::AtomicBool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.settled.load(std::sync::atomic::Ordering::Relaxed) {
            let _ = rustix::fs::unlinkat(&self.dir, self.tmp.as_str(), AtFlags::empty());
        }
    }
}

fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

impl Tree {
    /// Opens (and creates when missing) a root directory.
    pub fn open(path: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(path)?;
        let root = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Self {
            root,
            created: std::sync::Mutex::new(None),
        })
    }

    /// `syncfs` of the file system holding the root: every write made so
    /// far on that file system (file data, names, attributes) is durable.
    pub fn sync_fs(&self) -> io::Result<()> {
        rustix::fs::syncfs(&self.root)?;
        Ok(())
    }

    /// From now on, remember the directories in which walks create missing
    /// directories; [`take_created`](Self::take_created) hands them over.
    pub fn track_created_dirs(&self) {
        self.created
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert_with(Vec::new);
    }

    /// The directories that gained a directory since the last call, by
    /// relative path (empty for the root), to fsync: a new directory's
    /// entry is only durable once its parent is synced.
    pub fn take_created(&self) -> Vec<(String, OwnedFd)> {
        self.created
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    fn note_created(&self, dir_path: &str, dir: &OwnedFd) {
        let mut g = self.created.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = g.as_mut()
            && let Ok(fd) = rustix::io::dup(dir)
        {
            v.push((dir_path.to_owned(), fd));
        }
    }

    /// Opens the directory holding `rel`'s last component; with `create`,
    /// creates missing directories (mode 0755, fixed later by their Mkdir).
    fn parent(&self, rel: &str, create: bool) -> Result<(OwnedFd, String, String), FsError> {
        let comps = path::components(rel).map_err(|source| FsError::Path {
            path: rel.to_owned(),
            source,
        })?;
        let (last, dirs) = comps.split_last().expect("components are never empty");
        let mut cur = rustix::fs::openat(&self.root, ".", dir_flags(), Mode::empty())
            .map_err(|e| FsError::from_errno(rel, e))?;
        let mut at = 0usize;
        for c in dirs {
            let cur_path = &rel[..at.saturating_sub(1)];
            at += c.len() + 1;
            cur = match rustix::fs::openat(&cur, *c, dir_flags(), Mode::empty()) {
                Ok(fd) => fd,
                Err(Errno::NOENT) if create => {
                    match rustix::fs::mkdirat(&cur, *c, Mode::from_raw_mode(0o755)) {
                        Ok(()) => self.note_created(cur_path, &cur),
                        Err(Errno::EXIST) => {}
                        Err(e) => return Err(FsError::from_errno(rel, e)),
                    }
                    rustix::fs::openat(&cur, *c, dir_flags(), Mode::empty())
                        .map_err(|e| unsafe_or(rel, c, e))?
                }
                Err(e) => return Err(unsafe_or(rel, c, e)),
            };
        }
        Ok((cur, path::parent(rel).to_owned(), (*last).to_owned()))
    }

    /// Creates a temporary file beside `rel` for its new content.
    pub fn begin_file(&self, rel: &str, seq: u64) -> Result<TempFile, FsError> {
        let (dir, dir_path, name) = self.parent(rel, true)?;
        let tmp = format!("{TEMP_PREFIX}{seq:x}.{:08x}", rand::random::<u32>());
        let fd = rustix::fs::openat(
            &dir,
            tmp.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| FsError::from_errno(rel, e))?;
        Ok(TempFile {
            dir,
            dir_path,
            tmp,
            dest: None,
            name,
            file: File::from(fd),
            no_replace: false,
            settled: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// A rename `from` → `to` whose source is still a pending temporary
    /// file: gives the file its new final name instead of committing it
    /// first (a Maildir `tmp/`→`new/` delivery then costs one commit, not
    /// two). A committed `from` that the pending content would have
    /// replaced is removed now, as the rename would have. Returns the
    /// destination directory to fsync with the batch.
    pub fn retarget(
        &self,
        t: &mut TempFile,
        from: &str,
        to: &str,
    ) -> Result<(String, OwnedFd), FsError> {
        let (td, tdp, tname) = self.parent(to, true)?;
        // `from` is the file's current final name: in its destination
        // directory once an earlier rename moved it there, not beside the
        // temporary (a committed file of the same name there is not ours).
        let cur = t.dest.as_ref().map_or(&t.dir, |(fd, _)| fd);
        match rustix::fs::unlinkat(cur, t.name.as_str(), AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => {}
            Err(e) => return Err(unsafe_or(from, &t.name, e)),
        }
        let dest = td.try_clone().map_err(|e| FsError::from_io(to, e))?;
        t.dest = Some((dest, tdp.clone()));
        t.name = tname;
        Ok((tdp, td))
    }

    /// Applies attributes to an open file or directory. Ownership is set
    /// first (chown clears set-id bits), then mode, then mtime (files only).
    pub fn apply_attrs(
        fd: impl AsFd,
        rel: &str,
        a: &Attrs,
        is_dir: bool,
        ids: &mut Ids,
    ) -> Result<(), FsError> {
        let fd = fd.as_fd();
        // Unknown names get the fallback owner (see `Ids`): a file made by
        // this process would otherwise stay owned by root.
        let uid = rustix::fs::Uid::from_raw(ids.uid_or_fallback(&a.owner));
        let gid = rustix::fs::Gid::from_raw(ids.gid_or_fallback(&a.group));
        match rustix::fs::fchown(fd, Some(uid), Some(gid)) {
            // Not root (tests, unprivileged runs): ownership stays ours.
            Ok(()) | Err(Errno::PERM) => {}
            Err(e) => return Err(FsError::from_errno(rel, e)),
        }
        rustix::fs::fchmod(fd, Mode::from_raw_mode(synced_mode(a.mode, is_dir)))
            .map_err(|e| FsError::from_errno(rel, e))?;
        if !is_dir {
            let t = Timespec {
                tv_sec: a.mtime_ns.div_euclid(1_000_000_000),
                tv_nsec: a.mtime_ns.rem_euclid(1_000_000_000) as _,
            };
            let ts = Timestamps {
                last_access: t,
                last_modification: t,
            };
            rustix::fs::futimens(fd, &ts).map_err(|e| FsError::from_errno(rel, e))?;
        }
        Ok(())
    }

    /// Moves a durable temporary file to its final name.
    pub fn commit_file(t: &TempFile, rel_for_errors: &str) -> Result<(), FsError> {
        let dest = t.dest.as_ref().map_or(&t.dir, |(fd, _)| fd);
        let flags = if t.no_replace {
            rustix::fs::RenameFlags::NOREPLACE
        } else {
            rustix::fs::RenameFlags::empty()
        };
        rustix::fs::renameat_with(&t.dir, t.tmp.as_str(), dest, t.name.as_str(), flags).map_err(
            |e| match e {
                Errno::EXIST => FsError::NotAllowed {
                    path: rel_for_errors.to_owned(),
                    why: "the live tree holds this path (failback never overwrites)",
                },
                e => FsError::from_errno(rel_for_errors, e),
            },
        )?;
        t.settled.store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Removes a temporary file (abandoned transfer).
    pub fn discard(t: &TempFile) {
        let _ = rustix::fs::unlinkat(&t.dir, t.tmp.as_str(), AtFlags::empty());
        t.settled.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Renames `from` to `to`; returns the two parent directories to fsync.
    pub fn rename(&self, from: &str, to: &str) -> Result<[(String, OwnedFd); 2], FsError> {
        let (fd, fdp, fname) = self.parent(from, false)?;
        let st = rustix::fs::statat(&fd, fname.as_str(), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| FsError::from_errno(from, e))?;
        if FileType::from_raw_mode(st.st_mode) == FileType::Symlink {
            return Err(FsError::Unsafe {
                path: from.to_owned(),
                component: fname,
            });
        }
        let (td, tdp, tname) = self.parent(to, true)?;
        rustix::fs::renameat(&fd, fname.as_str(), &td, tname.as_str())
            .map_err(|e| FsError::from_errno(from, e))?;
        Ok([(fdp, fd), (tdp, td)])
    }

    /// Removes a file, or a directory with everything below it. Missing is fine.
    pub fn delete(&self, rel: &str) -> Result<(String, OwnedFd), FsError> {
        let (dir, dp, name) = match self.parent(rel, false) {
            Err(FsError::NotFound { .. }) => {
                let fd = rustix::fs::openat(&self.root, ".", dir_flags(), Mode::empty())
                    .map_err(|e| FsError::from_errno(rel, e))?;
                return Ok((String::new(), fd));
            }
            r => r?,
        };
        match rustix::fs::statat(&dir, name.as_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Err(Errno::NOENT) => {}
            Err(e) => return Err(FsError::from_errno(rel, e)),
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                let sub = rustix::fs::openat(&dir, name.as_str(), dir_flags(), Mode::empty())
                    .map_err(|e| unsafe_or(rel, &name, e))?;
                remove_contents(&sub, rel, 0)?;
                match rustix::fs::unlinkat(&dir, name.as_str(), AtFlags::REMOVEDIR) {
                    Ok(()) | Err(Errno::NOENT) => {}
                    Err(e) => return Err(FsError::from_errno(rel, e)),
                }
            }
            Ok(_) => match rustix::fs::unlinkat(&dir, name.as_str(), AtFlags::empty()) {
                Ok(()) | Err(Errno::NOENT) => {}
                Err(e) => return Err(FsError::from_errno(rel, e)),
            },
        }
        Ok((dp, dir))
    }

    /// Creates a directory (or fixes an existing one's attributes).
    pub fn mkdir(&self, rel: &str, a: &Attrs, ids: &mut Ids) -> Result<(String, OwnedFd), FsError> {
        self.mkdir_with(rel, a, ids, false)
    }

    /// [`mkdir`](Self::mkdir); with `only_create`, an existing directory is
    /// left as it is.
    pub fn mkdir_with(
        &self,
        rel: &str,
        a: &Attrs,
        ids: &mut Ids,
        only_create: bool,
    ) -> Result<(String, OwnedFd), FsError> {
        let (dir, dp, name) = self.parent(rel, true)?;
        match rustix::fs::mkdirat(&dir, name.as_str(), Mode::from_raw_mode(0o700)) {
            Ok(()) => {}
            Err(Errno::EXIST) if only_create => return Ok((dp, dir)),
            Err(Errno::EXIST) => {}
            Err(e) => return Err(FsError::from_errno(rel, e)),
        }
        let fd = rustix::fs::openat(&dir, name.as_str(), dir_flags(), Mode::empty())
            .map_err(|e| unsafe_or(rel, &name, e))?;
        Self::apply_attrs(&fd, rel, a, true, ids)?;
        // The directory's own attributes are durable with its inode.
        self.note_created(rel, &fd);
        Ok((dp, dir))
    }

    /// Sets attributes of an existing file or directory (never through a
    /// symlink). Returns the open inode: fsync it before acknowledging.
    pub fn set_attr(&self, rel: &str, a: &Attrs, ids: &mut Ids) -> Result<OwnedFd, FsError> {
        let (dir, _, name) = self.parent(rel, false)?;
        let fd = rustix::fs::openat(
            &dir,
            name.as_str(),
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| unsafe_or(rel, &name, e))?;
        let st = rustix::fs::fstat(&fd).map_err(|e| FsError::from_errno(rel, e))?;
        Self::apply_attrs(
            &fd,
            rel,
            a,
            FileType::from_raw_mode(st.st_mode) == FileType::Directory,
            ids,
        )?;
        Ok(fd)
    }

    /// Opens a regular file for reading (hashing), never through a symlink.
    pub fn open_read(&self, rel: &str) -> Result<File, FsError> {
        let (dir, _, name) = self.parent(rel, false)?;
        let fd = rustix::fs::openat(
            &dir,
            name.as_str(),
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| unsafe_or(rel, &name, e))?;
        Ok(File::from(fd))
    }

    /// Removes temporary files left by an interrupted run (they never had a
    /// final name, so nothing is lost). Returns how many were removed.
    pub fn clean_temps(&self) -> io::Result<usize> {
        let fd = rustix::fs::openat(&self.root, ".", dir_flags(), Mode::empty())?;
        clean_dir(&fd, 0)
    }
}

/// The permission bits applied on the receiver: set-user-ID and
/// set-group-ID never arrive on a file (a peer must not plant a privileged
/// program); a directory keeps set-group-ID (group inheritance, no
/// privilege) but never set-user-ID.
pub fn synced_mode(mode: u32, is_dir: bool) -> u32 {
    let strip = if is_dir { 0o4000 } else { 0o6000 };
    mode & 0o7777 & !strip
}

fn unsafe_or(rel: &str, comp: &str, e: Errno) -> FsError {
    match e {
        Errno::LOOP | Errno::NOTDIR | Errno::MLINK => FsError::Unsafe {
            path: rel.to_owned(),
            component: comp.to_owned(),
        },
        e => FsError::from_errno(rel, e),
    }
}

fn entries(dir: &OwnedFd) -> io::Result<Vec<(String, FileType)>> {
    let mut out = Vec::new();
    for e in rustix::fs::Dir::read_from(dir)? {
        let e = e?;
        let name: &CStr = e.file_name();
        let b = name.to_bytes();
        if b == b"." || b == b".." {
            continue;
        }
        out.push((String::from_utf8_lossy(b).into_owned(), e.file_type()));
    }
    Ok(out)
}

fn remove_contents(dir: &OwnedFd, rel: &str, depth: usize) -> Result<(), FsError> {
    if depth > MAX_DEPTH {
        return Err(FsError::Io {
            path: rel.to_owned(),
            source: io::Error::other("tree too deep"),
        });
    }
    for (name, ft) in entries(dir).map_err(|e| FsError::from_io(rel, e))? {
        let ft = if ft == FileType::Unknown {
            rustix::fs::statat(dir, name.as_str(), AtFlags::SYMLINK_NOFOLLOW)
                .map(|s| FileType::from_raw_mode(s.st_mode))
                .map_err(|e| FsError::from_errno(rel, e))?
        } else {
            ft
        };
        if ft == FileType::Directory {
            let sub = rustix::fs::openat(dir, name.as_str(), dir_flags(), Mode::empty())
                .map_err(|e| unsafe_or(rel, &name, e))?;
            remove_contents(&sub, rel, depth + 1)?;
            rustix::fs::unlinkat(dir, name.as_str(), AtFlags::REMOVEDIR)
                .map_err(|e| FsError::from_errno(rel, e))?;
        } else {
            rustix::fs::unlinkat(dir, name.as_str(), AtFlags::empty())
                .map_err(|e| FsError::from_errno(rel, e))?;
        }
    }
    Ok(())
}

fn clean_dir(dir: &OwnedFd, depth: usize) -> io::Result<usize> {
    if depth > MAX_DEPTH {
        return Ok(0);
    }
    let mut n = 0;
    for (name, ft) in entries(dir)? {
        if is_temp_name(&name) {
            rustix::fs::unlinkat(dir, name.as_str(), AtFlags::empty())?;
            n += 1;
        } else if ft == FileType::Directory {
            let sub = rustix::fs::openat(dir, name.as_str(), dir_flags(), Mode::empty())?;
            n += clean_dir(&sub, depth + 1)?;
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::io::Write;
    use std::os::unix::fs::{MetadataExt, symlink};

    fn attrs(mode: u32) -> Attrs {
        Attrs {
            mode,
            mtime_ns: 1_600_000_000_000_000_123,
            owner: "root".into(),
            group: "root".into(),
        }
    }

    #[test]
    fn write_commit_rename_delete() {
        let t = tempfile::tempdir().unwrap();
        let tree = Tree::open(t.path()).unwrap();
        let mut ids = Ids::default();
        let mut f = tree.begin_file("a/b/c", 1).unwrap();
        f.file.write_all(b"data").unwrap();
        Tree::apply_attrs(&f.file, "a/b/c", &attrs(0o640), false, &mut ids).unwrap();
        assert!(
            !t.path().join("a/b/c").exists(),
            "not visible before commit"
        );
        Tree::commit_file(&f, "a/b/c").unwrap();
        let md = fs::metadata(t.path().join("a/b/c")).unwrap();
        assert_eq!((md.mode() & 0o7777, md.mtime_nsec()), (0o640, 123));
        assert_eq!(fs::read(t.path().join("a/b/c")).unwrap(), b"data");
        tree.rename("a/b/c", "a/d/e").unwrap();
        assert_eq!(fs::read(t.path().join("a/d/e")).unwrap(), b"data");
        tree.delete("a").unwrap();
        assert!(!t.path().join("a").exists());
        tree.delete("a/never").unwrap();
    }

    #[test]
    fn retarget_commits_under_the_new_name_and_replaces_the_old_source() {
        let t = tempfile::tempdir().unwrap();
        let tree = Tree::open(t.path()).unwrap();
        fs::create_dir_all(t.path().join("tmp")).unwrap();
        fs::write(t.path().join("tmp/m"), b"old committed").unwrap();
        let mut f = tree.begin_file("tmp/m", 1).unwrap();
        f.file.write_all(b"new").unwrap();
        let (dp, _) = tree.retarget(&mut f, "tmp/m", "new/m").unwrap();
        assert_eq!(dp, "new");
        assert!(
            !t.path().join("tmp/m").exists(),
            "the rename moved the source away"
        );
        assert!(
            !t.path().join("new/m").exists(),
            "not visible before commit"
        );
        Tree::commit_file(&f, "new/m").unwrap();
        assert_eq!(fs::read(t.path().join("new/m")).unwrap(), b"new");
        assert_eq!(
            fs::read_dir(t.path().join("tmp")).unwrap().count(),
            0,
            "no temporary left"
        );
    }

    #[test]
    fn a_second_rename_of_a_pending_file_unlinks_the_right_name() {
        let t = tempfile::tempdir().unwrap();
        let tree = Tree::open(t.path()).unwrap();
        for d in ["tmp", "new", "cur"] {
            fs::create_dir_all(t.path().join(d)).unwrap();
        }
        // Committed files of the same base name in the temporary's
        // directory and in the first destination.
        fs::write(t.path().join("tmp/m"), b"committed in tmp").unwrap();
        fs::write(t.path().join("new/m"), b"committed in new").unwrap();
        let mut f = tree.begin_file("tmp/m", 1).unwrap();
        f.file.write_all(b"pending").unwrap();
        tree.retarget(&mut f, "tmp/m", "new/m").unwrap();
        assert!(
            !t.path().join("tmp/m").exists(),
            "the first rename moved tmp/m"
        );
        fs::write(t.path().join("tmp/m"), b"a new delivery in tmp").unwrap();
        // Second rename: new/m -> cur/m. It replaces new/m, and nothing in tmp/.
        tree.retarget(&mut f, "new/m", "cur/m").unwrap();
        assert!(!t.path().join("new/m").exists());
        assert_eq!(
            fs::read(t.path().join("tmp/m")).unwrap(),
            b"a new delivery in tmp",
            "a committed file of the same base name survives"
        );
        Tree::commit_file(&f, "cur/m").unwrap();
        assert_eq!(fs::read(t.path().join("cur/m")).unwrap(), b"pending");
    }

    #[test]
    fn directories_made_on_the_way_are_reported_for_fsync() {
        let t = tempfile::tempdir().unwrap();
        let tree = Tree::open(t.path()).unwrap();
        tree.track_created_dirs();
        fs::create_dir_all(t.path().join("a")).unwrap();
        let f = tree.begin_file("a/b/c/file", 1).unwrap();
        let mut got: Vec<String> = tree.take_created().into_iter().map(|x| x.0).collect();
        got.sort();
        // `b` was made in `a`, `c` in `a/b`: both parents gained an entry.
        assert_eq!(got, vec!["a".to_owned(), "a/b".to_owned()]);
        Tree::discard(&f);
        let mut ids = Ids::default();
        tree.mkdir("x/y", &attrs(0o750), &mut ids).unwrap();
        let mut got: Vec<String> = tree.take_created().into_iter().map(|x| x.0).collect();
        got.sort();
        // `x` made in the root; `x/y` itself (its attributes).
        assert_eq!(got, vec![String::new(), "x/y".to_owned()]);
        assert!(tree.take_created().is_empty());
        let fd = tree.set_attr("x/y", &attrs(0o700), &mut ids).unwrap();
        rustix::fs::fsync(&fd).unwrap();
    }

    #[test]
    fn symlinks_never_lead_outside() {
        let t = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("victim"), b"keep").unwrap();
        let tree = Tree::open(t.path()).unwrap();
        let mut ids = Ids::default();
        symlink(outside.path(), t.path().join("evil")).unwrap();
        symlink(outside.path().join("victim"), t.path().join("file-link")).unwrap();
        assert!(matches!(
            tree.begin_file("evil/x", 1),
            Err(FsError::Unsafe { .. })
        ));
        assert!(matches!(
            tree.mkdir("evil/d", &attrs(0o700), &mut ids),
            Err(FsError::Unsafe { .. })
        ));
        assert!(matches!(
            tree.set_attr("file-link", &attrs(0o777), &mut ids),
            Err(FsError::Unsafe { .. })
        ));
        assert!(matches!(
            tree.rename("evil/victim", "stolen"),
            Err(FsError::Unsafe { .. })
        ));
        assert!(matches!(
            tree.rename("file-link", "x"),
            Err(FsError::Unsafe { .. })
        ));
        assert!(matches!(
            tree.open_read("evil/victim"),
            Err(FsError::Unsafe { .. })
        ));
        assert!(matches!(
            tree.open_read("file-link"),
            Err(FsError::Unsafe { .. })
        ));
        assert!(matches!(
            tree.delete("evil/victim"),
            Err(FsError::Unsafe { .. })
        ));
        // Deleting the link removes the link, not its target.
        tree.delete("evil").unwrap();
        assert_eq!(fs::read(outside.path().join("victim")).unwrap(), b"keep");
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 1);
    }

    #[test]
    fn an_abandoned_transfer_leaves_no_temporary_a_committed_one_stays() {
        use std::io::Write as _;
        let t = tempfile::tempdir().unwrap();
        let tree = Tree::open(t.path()).unwrap();
        // Cut off by an error mid-body: dropped without commit or discard.
        let mut cut = tree.begin_file("d/cut", 1).unwrap();
        cut.file.write_all(b"half").unwrap();
        drop(cut);
        assert_eq!(fs::read_dir(t.path().join("d")).unwrap().count(), 0);
        let mut ok = tree.begin_file("d/ok", 2).unwrap();
        ok.file.write_all(b"whole").unwrap();
        Tree::commit_file(&ok, "d/ok").unwrap();
        drop(ok);
        assert_eq!(fs::read(t.path().join("d/ok")).unwrap(), b"whole");
        assert_eq!(fs::read_dir(t.path().join("d")).unwrap().count(), 1);
    }

    #[test]
    fn clean_temps_removes_only_temps() {
        let t = tempfile::tempdir().unwrap();
        let tree = Tree::open(t.path()).unwrap();
        let f = tree.begin_file("d/x", 9).unwrap();
        // An interrupted run: the process died, no destructor ran.
        std::mem::forget(f);
        fs::write(t.path().join("d/keep"), b"k").unwrap();
        assert_eq!(tree.clean_temps().unwrap(), 1);
        assert_eq!(fs::read_dir(t.path().join("d")).unwrap().count(), 1);
    }
}
