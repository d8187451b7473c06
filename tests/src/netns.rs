//! Network namespaces owned by a test: unique names, removed on drop (also
//! when the test panics), code and processes run inside them.
//!
//! Namespaces are created natively (a thread `unshare`s `CLONE_NEWNET` and
//! its namespace file is bind-mounted on `/run/netns/NAME`), the same layout
//! `ip netns add` uses, so `ip -n NAME ...` still works for debugging.
//! Processes enter a namespace with `setns(CLONE_NEWNET)` only, never
//! `ip netns exec`: that also creates a mount namespace and remounts `/sys`,
//! which would hide the bpffs pins an agent must leave behind.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::future::Future;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;

/// Where `ip netns` keeps named namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// Prefix of every namespace name made by these helpers.
pub const NAME_PREFIX: &str = "hat-";

/// Longest interface name Linux accepts (IFNAMSIZ - 1).
pub const IFNAME_MAX: usize = 15;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Skips a root-only test on a developer machine, fails it in CI.
///
/// Returns `true` when the test can run. Without root it prints why and
/// returns `false` — unless env `CI` is set, where a test that cannot run
/// must fail rather than pass silently.
#[must_use]
pub fn require_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    ha_agent::testing::skip("needs root (network namespaces, netlink, raw sockets)");
    false
}

/// A unique namespace name: `hat-<pid>-<n>`, never reused within a process
/// and distinct between processes that run at the same time.
#[must_use]
pub fn unique_name() -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{NAME_PREFIX}{}-{n}", std::process::id())
}

/// Panics with a clear message when `name` is not a usable interface name.
pub fn check_ifname(name: &str) {
    assert!(
        !name.is_empty() && name.len() <= IFNAME_MAX && !name.contains(['/', ' ', ':']),
        "interface name {name:?} must be 1..={IFNAME_MAX} bytes without '/', ' ' or ':'"
    );
}

/// A named network namespace, deleted when dropped.
#[derive(Debug)]
pub struct Netns {
    name: String,
    path: PathBuf,
    // Kept open so that `run`/`spawn` can `setns` without a path lookup.
    file: File,
}

impl Netns {
    /// Creates a namespace with a fresh unique name and its loopback up.
    ///
    /// # Panics
    /// When the namespace cannot be created (not root, no `/run`).
    #[must_use]
    pub fn new() -> Self {
        sweep_stale();
        let ns = Self::create(&unique_name())
            .unwrap_or_else(|e| panic!("cannot create a network namespace: {e}"));
        ns.netlink(|h| async move { crate::link::set_up(&h, "lo").await })
            .unwrap_or_else(|e| panic!("cannot bring lo up in {}: {e}", ns.name));
        ns
    }

    fn create(name: &str) -> io::Result<Self> {
        fs::create_dir_all(NETNS_DIR)?;
        let path = Path::new(NETNS_DIR).join(name);
        // create_new: never adopt (and later delete) a namespace we did not make.
        drop(File::options().write(true).create_new(true).open(&path)?);
        let target = path.clone();
        // unshare(CLONE_NEWNET) moves only the calling thread, so a
        // short-lived thread makes the namespace and pins it with a bind mount.
        let made = thread::spawn(move || -> nix::Result<()> {
            nix::sched::unshare(CloneFlags::CLONE_NEWNET)?;
            nix::mount::mount(
                Some("/proc/thread-self/ns/net"),
                &target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
        })
        .join()
        .map_err(|_| io::Error::other("namespace thread panicked"))?;
        if let Err(e) = made {
            let _ = fs::remove_file(&path);
            return Err(e.into());
        }
        let file = File::open(&path)?;
        Ok(Self {
            name: name.to_owned(),
            path,
            file,
        })
    }

    /// The namespace's name (as `ip netns list` shows it).
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A descriptor of the namespace, e.g. to move a link into it.
    #[must_use]
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// Runs `f` on a thread that has entered this namespace; a panic in `f`
    /// propagates to the caller.
    pub fn run<R, F>(&self, f: F) -> R
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        thread::scope(|s| {
            let worker = s.spawn(|| {
                nix::sched::setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET)
                    .unwrap_or_else(|e| panic!("setns into {}: {e}", self.name));
                f()
            });
            worker
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// Runs the future made by `f` to completion on a current-thread tokio
    /// runtime inside this namespace: every socket it opens (netlink, UDP,
    /// TCP) belongs to the namespace.
    pub fn block_on<R, F, Fut>(&self, f: F) -> R
    where
        F: FnOnce() -> Fut + Send,
        Fut: Future<Output = R>,
        R: Send,
    {
        self.run(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime")
                .block_on(f())
        })
    }

    /// Like [`block_on`](Self::block_on) with an rtnetlink handle bound to
    /// this namespace.
    pub fn netlink<R, F, Fut>(&self, f: F) -> R
    where
        F: FnOnce(rtnetlink::Handle) -> Fut + Send,
        Fut: Future<Output = R>,
        R: Send,
    {
        self.block_on(|| async move {
            let (conn, handle, _) = rtnetlink::new_connection().expect("netlink socket");
            let conn = tokio::spawn(conn);
            let out = f(handle).await;
            conn.abort();
            out
        })
    }

    /// Arranges for `cmd` to start inside this namespace and spawns it. The
    /// child is killed when the returned guard drops.
    ///
    /// # Errors
    /// When the process cannot be started.
    pub fn spawn(&self, cmd: &mut Command) -> io::Result<NsChild> {
        self.enter_on_exec(cmd);
        Ok(NsChild(Some(cmd.spawn()?)))
    }

    /// Runs `cmd` inside this namespace and waits for its output.
    ///
    /// # Errors
    /// When the process cannot be started.
    pub fn output(&self, cmd: &mut Command) -> io::Result<Output> {
        self.enter_on_exec(cmd);
        cmd.output()
    }

    /// Convenience: `program args...` inside the namespace; panics unless
    /// it exits 0, returns its stdout.
    pub fn sh<S: AsRef<OsStr>>(&self, program: &str, args: &[S]) -> String {
        let out = self
            .output(Command::new(program).args(args))
            .unwrap_or_else(|e| panic!("{program}: {e}"));
        assert!(
            out.status.success(),
            "{program} in {} failed: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn enter_on_exec(&self, cmd: &mut Command) {
        let fd = self.file.as_raw_fd();
        // SAFETY: the hook runs in the forked child before exec and calls
        // only setns(2), which is async-signal-safe and allocates nothing.
        // `fd` stays open during the spawn because `self` is borrowed for it
        // (our File is O_CLOEXEC, so it closes at exec, after setns).
        unsafe {
            cmd.pre_exec(move || {
                let fd = BorrowedFd::borrow_raw(fd);
                nix::sched::setns(fd, CloneFlags::CLONE_NEWNET).map_err(io::Error::from)
            });
        }
    }
}

impl Default for Netns {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // The namespace (and every link in it) goes away once the mount and
        // the last descriptor are gone; processes still inside keep it alive,
        // which is why NsChild guards are dropped before namespaces.
        if let Err(e) = remove(&self.path) {
            eprintln!("warning: cannot remove netns {}: {e}", self.name);
        }
    }
}

fn remove(path: &Path) -> io::Result<()> {
    match nix::mount::umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => {}
        Err(e) => return Err(e.into()),
    }
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Removes namespaces left by test processes that died without unwinding
/// (kill -9, abort): `hat-<pid>-*` whose pid no longer exists.
pub fn sweep_stale() {
    let Ok(dir) = fs::read_dir(NETNS_DIR) else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(NAME_PREFIX))
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = remove(&entry.path());
        }
    }
}

/// A process started inside a namespace; killed and reaped on drop.
#[derive(Debug)]
pub struct NsChild(Option<Child>);

impl NsChild {
    /// The process.
    ///
    /// # Panics
    /// Never: the child is only taken by `wait`.
    pub fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("child present until waited")
    }

    /// Waits for the process to exit by itself.
    ///
    /// # Errors
    /// When waiting fails.
    pub fn wait(mut self) -> io::Result<std::process::ExitStatus> {
        self.0.take().expect("child present").wait()
    }
}

impl Drop for NsChild {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Whether a TCP connection from namespace `from` reaches `addr` on a
/// listener opened for the purpose in namespace `to` (no external tools
/// such as `ping` needed). Gives up after three seconds: longer than one
/// ARP/ND retransmission (1 s), as the first solicitation can go unanswered
/// for a moment after an address is added (the kernel joins the IPv6
/// solicited-node group asynchronously).
#[must_use]
pub fn tcp_reachable(from: &Netns, to: &Netns, addr: std::net::IpAddr) -> bool {
    let listener = to.run(|| std::net::TcpListener::bind((addr, 0)));
    let Ok(listener) = listener else { return false };
    let target = listener.local_addr().expect("bound address");
    from.run(|| {
        std::net::TcpStream::connect_timeout(&target, std::time::Duration::from_secs(3)).is_ok()
    })
}

/// Every process whose network namespace is `ns` (by the namespace's inode).
#[must_use]
pub fn pids_in(ns: &Netns) -> Vec<nix::unistd::Pid> {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(want) = std::fs::metadata(ns.path()).map(|m| m.ino()) else {
        return Vec::new();
    };
    let me = std::process::id();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        if std::fs::metadata(format!("/proc/{pid}/ns/net")).is_ok_and(|m| m.ino() == want) {
            out.push(nix::unistd::Pid::from_raw(pid as i32));
        }
    }
    out
}
