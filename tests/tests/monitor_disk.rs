//! Disk monitor on a small tmpfs the test mounts: low space, low inodes,
//! read-only file system.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ha_agent::monitor::disk::{DiskError, DiskLimits, check};
use ha_agent::monitor::{Check, CheckError};
use ha_tests::require_root;
use nix::mount::{MntFlags, MsFlags, mount, umount2};

/// A tmpfs mounted on a fresh directory; unmounted and removed on drop.
struct SmallFs(PathBuf);

impl SmallFs {
    fn new(options: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("ha-disk-{}-{options}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let guard = Self(dir);
        mount(
            Some("tmpfs"),
            &guard.0,
            Some("tmpfs"),
            MsFlags::empty(),
            Some(options),
        )
        .unwrap();
        guard
    }

    fn remount_read_only(&self) {
        mount(
            None::<&str>,
            &self.0,
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .unwrap();
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = umount2(&self.0, MntFlags::MNT_DETACH);
        let _ = fs::remove_dir(&self.0);
    }
}

const NO_LIMITS: DiskLimits = DiskLimits {
    min_free_bytes: 0,
    min_free_inodes: 0,
};

#[test]
fn low_space_and_low_inodes_are_reported_with_figures() {
    if !require_root() {
        return;
    }
    let fs_ = SmallFs::new("size=2m,nr_inodes=64");
    let p = fs_.path();
    let space = check(p, NO_LIMITS).unwrap();
    assert!(
        space.free_bytes <= 2 << 20 && space.free_bytes > 1 << 20,
        "{space:?}"
    );

    let need_1m = DiskLimits {
        min_free_bytes: 1 << 20,
        min_free_inodes: 0,
    };
    assert!(check(p, need_1m).is_ok());
    fs::write(p.join("big"), vec![0u8; 1_500_000]).unwrap();
    match check(p, need_1m) {
        Err(DiskError::LowSpace { free, min, .. }) => assert!(free < min, "{free} {min}"),
        other => panic!("{other:?}"),
    }
    fs::remove_file(p.join("big")).unwrap();

    let need_10_inodes = DiskLimits {
        min_free_bytes: 0,
        min_free_inodes: 10,
    };
    assert!(check(p, need_10_inodes).is_ok());
    for i in 0..60 {
        fs::write(p.join(format!("msg{i}")), b"x").unwrap();
    }
    assert!(matches!(
        check(p, need_10_inodes),
        Err(DiskError::LowInodes { .. })
    ));
}

#[test]
fn read_only_file_system_is_not_writable() {
    if !require_root() {
        return;
    }
    let fs_ = SmallFs::new("size=1m");
    assert!(check(fs_.path(), NO_LIMITS).is_ok());
    fs_.remount_read_only();
    match check(fs_.path(), NO_LIMITS) {
        Err(DiskError::NotWritable { source, .. }) => {
            assert_eq!(source.raw_os_error(), Some(libc::EROFS), "{source}");
        }
        other => panic!("{other:?}"),
    }
    // The same through the monitor's Check, as the task runs it.
    let c = Check::Disk {
        path: fs_.path().to_owned(),
        limits: NO_LIMITS,
        timeout: Duration::from_secs(5),
    };
    let res = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let (conn, h, _) = rtnetlink::new_connection().unwrap();
        tokio::spawn(conn);
        c.run(&h).await
    });
    assert!(
        matches!(res, Err(CheckError::Disk(DiskError::NotWritable { .. }))),
        "{res:?}"
    );
}
