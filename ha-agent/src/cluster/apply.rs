//! Installing a version on a member, atomically: the new tree is built in
//! a staging copy next to each synced path, checked by the `validate`
//! command, swapped in with one `renameat2(RENAME_EXCHANGE)` per path, and
//! `after_apply` runs. A failed validation swaps nothing; a failed
//! `after_apply` swaps the previous tree back and runs `after_apply` again
//! on it. Excluded files and per-member values (`[[config_sync.set]]`) are
//! carried into every staging copy, so they survive every apply.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use globset::GlobSet;
use rustix::fs::{CWD, RenameFlags};

use super::manifest::{self, Manifest, RootMeta};
use super::store::{Store, StoreError};
use crate::config::Override;
use crate::config_sync::bundle;
use crate::sync::ids::Ids;
use crate::sync::path::TEMP_PREFIX;

/// What installing needs to know of this member.
#[derive(Debug, Clone)]
pub struct ApplySettings {
    /// `config_sync.paths`, in order.
    pub paths: Vec<PathBuf>,
    /// `config_sync.exclude`, compiled.
    pub exclude: GlobSet,
    /// `config_sync.validate` (`{dir}` = staging copy of the first path).
    pub validate: Option<String>,
    /// `config_sync.after_apply`.
    pub after_apply: Option<String>,
    /// `[[config_sync.set]]`.
    pub overrides: Vec<Override>,
    /// Longest a `validate` or `after_apply` run may take.
    pub hook_timeout: Duration,
}

/// How an install ended (every case leaves a complete tree in force).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The new tree is in force and `after_apply` succeeded.
    Applied {
        /// Files differed from what was in force (`after_apply` ran).
        changed: bool,
    },
    /// `validate` refused the staging copy; nothing was swapped.
    Invalid {
        /// The command's result.
        detail: String,
    },
    /// `after_apply` failed; the previous tree is back in force and
    /// `after_apply` ran again on it.
    HookFailed {
        /// The failed run.
        detail: String,
        /// The run on the restored tree.
        restored: String,
    },
}

/// Installing could not even be tried to the end.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// Building the staging copy or swapping failed (nothing swapped, or
    /// swapped back).
    #[error("{path}: {source}")]
    Io {
        /// Where.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The store lacks content the manifest needs.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Collecting the tree for its checksum failed.
    #[error(transparent)]
    Collect(#[from] bundle::BundleError),
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> ApplyError + '_ {
    move |source| ApplyError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The staging name of a synced path: a sibling (same file system, so
/// the swap is one rename) with the prefix every collector skips.
#[must_use]
pub fn staging_path(root: &Path) -> PathBuf {
    let name = root
        .file_name()
        .map_or_else(|| "root".into(), |n| n.to_string_lossy().into_owned());
    root.with_file_name(format!("{TEMP_PREFIX}stage.{name}"))
}

/// Checksum of this member's files as they are on disk now.
///
/// # Errors
/// The tree cannot be read.
pub fn disk_checksum(st: &ApplySettings) -> Result<String, bundle::BundleError> {
    let b = bundle::collect(&st.paths, &st.exclude)?;
    Ok(Manifest::from_bundle(&b).0.checksum())
}

fn remove_any(p: &Path) {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => {
            let _ = fs::remove_dir_all(p);
        }
        Ok(_) => {
            let _ = fs::remove_file(p);
        }
        Err(_) => {}
    }
}

fn set_attrs(p: &Path, mode: u32, owner: &str, group: &str, ids: &mut Ids) -> io::Result<()> {
    let (uid, gid) = (ids.uid(owner), ids.gid(group));
    if uid.is_some() || gid.is_some() {
        match std::os::unix::fs::lchown(p, uid, gid) {
            Err(e) if e.raw_os_error() != Some(libc::EPERM) => return Err(e),
            _ => {}
        }
    }
    fs::set_permissions(p, fs::Permissions::from_mode(mode & 0o7777))
}

/// Copies `from` (a file or a tree) to `to`, keeping modes and owners.
fn copy_keep(from: &Path, to: &Path) -> io::Result<()> {
    let md = fs::symlink_metadata(from)?;
    if md.is_dir() {
        fs::create_dir(to)?;
        for e in fs::read_dir(from)? {
            let e = e?;
            copy_keep(&e.path(), &to.join(e.file_name()))?;
        }
    } else if md.is_file() {
        fs::copy(from, to)?;
    } else if md.file_type().is_symlink() {
        std::os::unix::fs::symlink(fs::read_link(from)?, to)?;
        return Ok(());
    } else {
        return Ok(());
    }
    let _ = std::os::unix::fs::lchown(to, Some(md.uid()), Some(md.gid()));
    fs::set_permissions(to, md.permissions())
}

/// Carries this member's excluded paths from the live tree into `stage`.
fn carry_excluded(live: &Path, stage: &Path, rel: &Path, ex: &GlobSet) -> io::Result<()> {
    let Ok(rd) = fs::read_dir(live.join(rel)) else {
        return Ok(());
    };
    for e in rd.flatten() {
        let r = rel.join(e.file_name());
        let full = live.join(&r);
        let md = fs::symlink_metadata(&full)?;
        if bundle::excluded(ex, &full) {
            let dest = stage.join(&r);
            if let Some(parent) = dest.parent() {
                fs::create_dir_all(parent)?;
            }
            remove_any(&dest);
            copy_keep(&full, &dest)?;
        } else if md.is_dir() {
            carry_excluded(live, stage, &r, ex)?;
        }
    }
    Ok(())
}

/// Builds the staging copy of one synced path; `None` when the primary
/// does not have that path (left alone here).
#[expect(clippy::too_many_arguments, reason = "one staging copy's context")]
fn build(
    st: &ApplySettings,
    store: &Store,
    live: &Path,
    root: &RootMeta,
    prev: Option<&RootMeta>,
    ids: &mut Ids,
    wrote: &mut usize,
) -> Result<Option<PathBuf>, ApplyError> {
    if !root.present {
        return Ok(None);
    }
    let stage = staging_path(live);
    remove_any(&stage);
    let blob = |h: &str| {
        store
            .blob_path(h)
            .ok_or_else(|| StoreError::HashMismatch(h.to_owned()))
    };
    if root.is_file() {
        let e = &root.entries[0];
        if !same_file(live, e, ids) {
            *wrote += 1;
        }
        fs::copy(blob(&e.hash)?, &stage).map_err(io_at(&stage))?;
        set_attrs(&stage, e.mode, &e.owner, &e.group, ids).map_err(io_at(&stage))?;
        fs::File::open(&stage)
            .and_then(|f| f.sync_all())
            .map_err(io_at(&stage))?;
    } else {
        fs::create_dir(&stage).map_err(io_at(&stage))?;
        let mode = fs::metadata(live).map_or(0o755, |m| m.mode());
        fs::set_permissions(&stage, fs::Permissions::from_mode(mode & 0o7777))
            .map_err(io_at(&stage))?;
        // Directories whose entries were written: made durable before the swap.
        let mut dirs = std::collections::BTreeSet::new();
        for e in &root.entries {
            let p = stage.join(&e.rel);
            if e.dir {
                fs::create_dir(&p).map_err(io_at(&p))?;
                set_attrs(&p, e.mode, &e.owner, &e.group, ids).map_err(io_at(&p))?;
                if !live.join(&e.rel).is_dir() {
                    *wrote += 1;
                    dirs.insert(p.parent().map_or_else(|| stage.clone(), Path::to_path_buf));
                }
            } else if unchanged_since(prev, e, &live.join(&e.rel))
                || same_file(&live.join(&e.rel), e, ids)
                || same_with_overrides(st, store, &live.join(&e.rel), e, ids)
            {
                // Unchanged: the staging copy shares the live file, so an
                // apply writes (and makes durable) only what changed.
                fs::hard_link(live.join(&e.rel), &p).map_err(io_at(&p))?;
            } else {
                *wrote += 1;
                fs::copy(blob(&e.hash)?, &p).map_err(io_at(&p))?;
                set_attrs(&p, e.mode, &e.owner, &e.group, ids).map_err(io_at(&p))?;
                fs::File::open(&p)
                    .and_then(|f| f.sync_all())
                    .map_err(io_at(&p))?;
                dirs.insert(p.parent().map_or_else(|| stage.clone(), Path::to_path_buf));
            }
        }
        // Something here that the version does not hold: a removal.
        let wanted: std::collections::BTreeSet<&str> =
            root.entries.iter().map(|e| e.rel.as_str()).collect();
        if live_entries(live, Path::new(""), &st.exclude)
            .iter()
            .any(|r| !wanted.contains(r.as_str()))
        {
            *wrote += 1;
        }
        carry_excluded(live, &stage, Path::new(""), &st.exclude).map_err(io_at(live))?;
        dirs.insert(stage.clone());
        for d in dirs {
            fs::File::open(&d)
                .and_then(|f| f.sync_all())
                .map_err(io_at(&d))?;
        }
    }
    for o in &st.overrides {
        let target = if root.is_file() {
            (o.file == live).then(|| stage.clone())
        } else {
            o.file.strip_prefix(live).ok().map(|r| stage.join(r))
        };
        let Some(target) = target.filter(|t| t.is_file()) else {
            continue;
        };
        let text = fs::read_to_string(&target).map_err(io_at(&target))?;
        let md = fs::metadata(&target).map_err(io_at(&target))?;
        // A new file, not a write through: the staging copy may share
        // this inode with the live tree.
        fs::remove_file(&target).map_err(io_at(&target))?;
        let new = manifest::set_value(&text, &o.key, &o.value);
        if fs::read_to_string(live.join(target.strip_prefix(&stage).unwrap_or(&target)))
            .ok()
            .as_deref()
            != Some(new.as_str())
        {
            *wrote += 1;
        }
        fs::write(&target, new).map_err(io_at(&target))?;
        let _ = std::os::unix::fs::lchown(&target, Some(md.uid()), Some(md.gid()));
        fs::set_permissions(&target, md.permissions()).map_err(io_at(&target))?;
        fs::File::open(&target)
            .and_then(|f| f.sync_all())
            .map_err(io_at(&target))?;
    }
    Ok(Some(stage))
}

/// Whether entry `e` is the same in the version in force (`prev`) and the
/// live file is there: linked without reading it. Drift (a hand edit) is
/// found by the periodic check and repaired with a push that does not
/// trust `prev`.
fn unchanged_since(prev: Option<&RootMeta>, e: &manifest::FileMeta, p: &Path) -> bool {
    prev.and_then(|r| r.entries.iter().find(|x| x.rel == e.rel))
        .is_some_and(|x| x == e)
        && fs::symlink_metadata(p).is_ok_and(|m| m.is_file())
}

/// Whether the live file at `p` is entry `e` with this member's
/// `[[config_sync.set]]` values applied (then nothing changes there).
fn same_with_overrides(
    st: &ApplySettings,
    store: &Store,
    p: &Path,
    e: &manifest::FileMeta,
    ids: &mut Ids,
) -> bool {
    let sets: Vec<&Override> = st.overrides.iter().filter(|o| o.file == p).collect();
    if sets.is_empty() {
        return false;
    }
    let Ok(md) = fs::symlink_metadata(p) else {
        return false;
    };
    let Some(text) = store
        .get(&e.hash)
        .ok()
        .and_then(|d| String::from_utf8(d).ok())
    else {
        return false;
    };
    let want = sets
        .iter()
        .fold(text, |t, o| manifest::set_value(&t, &o.key, &o.value));
    md.is_file()
        && md.mode() & 0o7777 == e.mode & 0o7777
        && ids.user_name(md.uid()) == e.owner
        && ids.group_name(md.gid()) == e.group
        && fs::read(p).is_ok_and(|d| d == want.as_bytes())
}

/// Relative paths of the live tree (not excluded), without reading files.
fn live_entries(live: &Path, rel: &Path, ex: &GlobSet) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir(live.join(rel)) else {
        return out;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        if crate::sync::path::is_temp_name(&name.to_string_lossy()) {
            continue;
        }
        let r = rel.join(&name);
        let full = live.join(&r);
        if bundle::excluded(ex, &full) {
            continue;
        }
        let Ok(md) = fs::symlink_metadata(&full) else {
            continue;
        };
        if md.is_dir() || md.is_file() {
            out.push(r.to_string_lossy().into_owned());
        }
        if md.is_dir() {
            out.extend(live_entries(live, &r, ex));
        }
    }
    out
}

/// Whether the live file at `p` already is entry `e` (content, mode,
/// owner): then it can be linked into the staging copy.
fn same_file(p: &Path, e: &manifest::FileMeta, ids: &mut Ids) -> bool {
    let Ok(md) = fs::symlink_metadata(p) else {
        return false;
    };
    md.is_file()
        && md.mode() & 0o7777 == e.mode & 0o7777
        && ids.user_name(md.uid()) == e.owner
        && ids.group_name(md.gid()) == e.group
        && fs::read(p).is_ok_and(|d| manifest::hash(&d) == e.hash)
}

/// Exchanges `stage` and `live` (or moves `stage` in when `live` is
/// missing). Returns whether `live` existed.
fn swap(stage: &Path, live: &Path) -> io::Result<bool> {
    if fs::symlink_metadata(live).is_ok() {
        rustix::fs::renameat_with(CWD, stage, CWD, live, RenameFlags::EXCHANGE)?;
        Ok(true)
    } else {
        fs::rename(stage, live)?;
        Ok(false)
    }
}

fn unswap(stage: &Path, live: &Path, existed: bool) {
    if existed {
        let _ = rustix::fs::renameat_with(CWD, stage, CWD, live, RenameFlags::EXCHANGE);
    } else {
        let _ = fs::rename(live, stage);
    }
}

fn sync_parent(p: &Path) {
    if let Some(parent) = p.parent()
        && let Ok(d) = fs::File::open(parent)
    {
        let _ = d.sync_all();
    }
}

/// Installs `m` (its contents must be in `store`).
///
/// # Errors
/// When the staging copy cannot be built or swapped; the tree in force is
/// then the previous one.
/// `prev` is the manifest in force, trusted for files it has unchanged
/// (`None` to compare every file with the live tree, as a repair does).
pub fn install(
    st: &ApplySettings,
    store: &Store,
    m: &Manifest,
    prev: Option<&Manifest>,
) -> Result<Outcome, ApplyError> {
    let mut ids = Ids::default();
    let mut stages: Vec<(PathBuf, PathBuf)> = Vec::new();
    let cleanup = |stages: &[(PathBuf, PathBuf)]| {
        for (s, _) in stages {
            remove_any(s);
        }
    };
    let mut wrote = 0usize;
    for (i, (root, live)) in m.roots.iter().zip(&st.paths).enumerate() {
        let prev = prev.and_then(|p| p.roots.get(i));
        match build(st, store, live, root, prev, &mut ids, &mut wrote) {
            Ok(Some(stage)) => stages.push((stage, live.clone())),
            Ok(None) => {}
            Err(e) => {
                cleanup(&stages);
                remove_any(&staging_path(live));
                return Err(e);
            }
        }
    }
    // Nothing differs: nothing to swap, no hook to run.
    if wrote == 0 {
        cleanup(&stages);
        return Ok(Outcome::Applied { changed: false });
    }
    if let Some(cmd) = &st.validate {
        let dir = stages
            .first()
            .map_or_else(|| st.paths[0].clone(), |(s, _)| s.clone());
        let cmd = cmd.replace("{dir}", &dir.to_string_lossy());
        let r = crate::config_sync::run_hook(&cmd, st.hook_timeout);
        if r != "ok" {
            cleanup(&stages);
            return Ok(Outcome::Invalid { detail: r });
        }
    }
    let mut swapped: Vec<(PathBuf, PathBuf, bool)> = Vec::new();
    for (stage, live) in &stages {
        match swap(stage, live) {
            Ok(existed) => {
                sync_parent(live);
                swapped.push((stage.clone(), live.clone(), existed));
            }
            Err(e) => {
                for (s, l, x) in swapped.iter().rev() {
                    unswap(s, l, *x);
                }
                cleanup(&stages);
                return Err(io_at(live)(e));
            }
        }
    }
    if let Some(cmd) = &st.after_apply {
        let r = crate::config_sync::run_hook(cmd, st.hook_timeout);
        if r != "ok" {
            for (s, l, x) in swapped.iter().rev() {
                unswap(s, l, *x);
                sync_parent(l);
            }
            cleanup(&stages);
            let restored = crate::config_sync::run_hook(cmd, st.hook_timeout);
            return Ok(Outcome::HookFailed {
                detail: r,
                restored,
            });
        }
    }
    cleanup(&stages);
    Ok(Outcome::Applied { changed: true })
}

/// Time since `t` in milliseconds.
#[must_use]
pub fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(paths: Vec<PathBuf>) -> ApplySettings {
        ApplySettings {
            paths,
            exclude: {
                let mut b = globset::GlobSetBuilder::new();
                b.add(globset::Glob::new("**/local.cf").unwrap());
                b.build().unwrap()
            },
            validate: None,
            after_apply: None,
            overrides: Vec::new(),
            hook_timeout: Duration::from_secs(10),
        }
    }

    /// The primary's tree as a manifest with its contents stored.
    fn push(from: &[PathBuf], store: &Store, ex: &GlobSet) -> Manifest {
        let b = bundle::collect(from, ex).unwrap();
        let (m, blobs) = Manifest::from_bundle(&b);
        for (h, d) in blobs {
            store.put(&h, &d).unwrap();
        }
        m
    }

    #[test]
    fn install_swaps_keeps_local_files_and_applies_overrides() {
        let t = tempfile::tempdir().unwrap();
        let (src, dst) = (t.path().join("a/etc"), t.path().join("b/etc"));
        fs::create_dir_all(src.join("maps")).unwrap();
        fs::write(src.join("main.cf"), "relayhost = x\nmyhostname = a\n").unwrap();
        fs::write(src.join("maps/t"), "t\n").unwrap();
        fs::set_permissions(src.join("maps/t"), fs::Permissions::from_mode(0o640)).unwrap();
        fs::create_dir_all(dst.join("old")).unwrap();
        fs::write(dst.join("local.cf"), "mine\n").unwrap();
        let store = Store::open(&t.path().join("state")).unwrap();
        let mut st = settings(vec![dst.clone()]);
        st.overrides.push(Override {
            file: dst.join("main.cf"),
            key: "myhostname".into(),
            value: "b".into(),
        });
        st.after_apply = Some(format!("touch {}", t.path().join("hook").display()));
        let m = push(std::slice::from_ref(&src), &store, &st.exclude);
        let out = install(&st, &store, &m, None).unwrap();
        assert!(
            matches!(out, Outcome::Applied { changed: true, .. }),
            "{out:?}"
        );
        assert_eq!(
            fs::read_to_string(dst.join("main.cf")).unwrap(),
            "relayhost = x\nmyhostname = b\n"
        );
        assert_eq!(fs::read_to_string(dst.join("local.cf")).unwrap(), "mine\n");
        assert_eq!(
            fs::metadata(dst.join("maps/t")).unwrap().mode() & 0o777,
            0o640
        );
        assert!(!dst.join("old").exists());
        assert!(t.path().join("hook").exists());
        assert!(!staging_path(&dst).exists(), "staging removed");
        // Same again: nothing changes, the hook does not run.
        fs::remove_file(t.path().join("hook")).unwrap();
        let out = install(&st, &store, &m, None).unwrap();
        assert!(matches!(out, Outcome::Applied { changed: false, .. }));
        assert!(!t.path().join("hook").exists());
    }

    #[test]
    fn failed_validation_swaps_nothing_and_a_failed_hook_swaps_back() {
        let t = tempfile::tempdir().unwrap();
        let (src, dst) = (t.path().join("a/etc"), t.path().join("b/etc"));
        fs::create_dir_all(&src).unwrap();
        fs::create_dir_all(&dst).unwrap();
        fs::write(dst.join("main.cf"), "good\n").unwrap();
        fs::write(src.join("main.cf"), "broken\n").unwrap();
        let store = Store::open(&t.path().join("state")).unwrap();
        let mut st = settings(vec![dst.clone()]);
        st.validate = Some("! grep -q broken {dir}/main.cf".into());
        let m = push(std::slice::from_ref(&src), &store, &st.exclude);
        let out = install(&st, &store, &m, None).unwrap();
        assert!(matches!(out, Outcome::Invalid { .. }), "{out:?}");
        assert_eq!(fs::read_to_string(dst.join("main.cf")).unwrap(), "good\n");
        assert!(!staging_path(&dst).exists());

        st.validate = None;
        let log = t.path().join("log");
        st.after_apply = Some(format!(
            "cat {}/main.cf >> {}; ! grep -q broken {}/main.cf",
            dst.display(),
            log.display(),
            dst.display()
        ));
        let out = install(&st, &store, &m, None).unwrap();
        assert!(
            matches!(&out, Outcome::HookFailed { restored, .. } if restored == "ok"),
            "{out:?}"
        );
        assert_eq!(fs::read_to_string(dst.join("main.cf")).unwrap(), "good\n");
        assert_eq!(
            fs::read_to_string(&log).unwrap(),
            "broken\ngood\n",
            "the hook ran on the new tree, then on the restored one"
        );
    }

    #[test]
    fn a_single_file_path_is_swapped() {
        let t = tempfile::tempdir().unwrap();
        let (src, dst) = (t.path().join("a.aliases"), t.path().join("b.aliases"));
        fs::write(&src, "postmaster: root\n").unwrap();
        let store = Store::open(&t.path().join("state")).unwrap();
        let st = settings(vec![dst.clone()]);
        let m = push(std::slice::from_ref(&src), &store, &st.exclude);
        install(&st, &store, &m, None).unwrap();
        assert_eq!(fs::read_to_string(&dst).unwrap(), "postmaster: root\n");
    }
}
