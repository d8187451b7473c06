//! `ha-bench sync`: the data-sync benchmark.
//!
//! Two namespaces joined by a veth pair (10.200.77.1 ⇄ 10.200.77.2). On the
//! same generated mail tree and link, in one run:
//!
//! 1. initial sync, timed until the data is durable on the replica:
//!    `rsync --whole-file` to an rsync daemon (plus a `syncfs` of the
//!    replica, since rsync itself does not make anything durable),
//!    `rsync --whole-file --fsync` (plus the same final `syncfs`, which then
//!    finds little to do), and ha (`Sender` → `Receiver`, until the
//!    receiver acknowledged the reconcile, which it does only once
//!    everything is fsynced);
//! 2. steady state: a writer delivers Maildir-style (write in `tmp/`,
//!    rename into `new/`) at a fixed rate; the lag of each message is from
//!    its rename on the primary to the sender receiving the receiver's
//!    acknowledgement (durable on the replica, plus the way back). Run
//!    twice: as the machine is, then with `stress-ng --cpu 2` hogging the
//!    CPUs (skipped with `--no-stress` or when stress-ng is missing);
//! 3. what the channel's protection costs, as rows of one table (see
//!    [`Cost`]).
//!
//! The sender's CPU time is read from its threads' `/proc` entries.

use std::collections::HashMap;
use std::fs;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use ha_agent::sync::{Receiver, RootKind, Sender, SyncConfig, SyncHandle, SyncRoot};
use rand::{Rng as _, SeedableRng as _, rngs::StdRng};

use ha_tests::{Netns, link};

const A_ADDR: Ipv4Addr = Ipv4Addr::new(10, 200, 77, 1);
const B_ADDR: Ipv4Addr = Ipv4Addr::new(10, 200, 77, 2);
const SYNC_PORT: u16 = 20001;
const RSYNC_PORT: u16 = 8730;
/// Sender threads whose CPU time counts (see `sync::sender`).
const SENDER_THREADS: &[&str] = &["sync-send", "sync-watch", "sync-acks"];

struct Opts {
    messages: usize,
    steady: Duration,
    rate: u32,
    dir: PathBuf,
    /// Also time the initial sync with `cluster.encrypt` on.
    encrypt: bool,
    stress: bool,
}

fn usage() -> &'static str {
    "usage: ha-bench sync [--small] [--messages N] [--steady-secs S] [--rate MSG_PER_S] [--dir PATH] [--no-stress] [--encrypt]"
}

fn parse(args: &[String]) -> Result<Opts> {
    let mut o = Opts {
        messages: 20_000,
        steady: Duration::from_secs(20),
        rate: 500,
        dir: PathBuf::from(format!("/var/tmp/ha-bench-sync-{}", std::process::id())),
        encrypt: false,
        stress: true,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || {
            it.next()
                .with_context(|| format!("{a} needs a value; {}", usage()))
        };
        match a.as_str() {
            "--small" => {
                o.messages = 2_000;
                o.steady = Duration::from_secs(5);
            }
            "--messages" => o.messages = val()?.parse()?,
            "--steady-secs" => o.steady = Duration::from_secs(val()?.parse()?),
            "--rate" => o.rate = val()?.parse()?,
            "--dir" => o.dir = PathBuf::from(val()?),
            "--encrypt" => o.encrypt = true,
            "--no-stress" => o.stress = false,
            _ => bail!("unknown argument {a:?}; {}", usage()),
        }
    }
    ensure!(o.rate > 0 && o.messages > 0, "{}", usage());
    Ok(o)
}

/// Removes the work directory on every exit path.
struct WorkDir(PathBuf);
impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Runs the benchmark and prints its table.
///
/// # Errors
/// When the namespaces, rsync or the sync cannot be set up.
pub fn run(args: &[String]) -> Result<()> {
    let o = parse(args)?;
    ensure!(
        nix::unistd::geteuid().is_root(),
        "ha-bench sync needs root (network namespaces)"
    );
    ensure!(
        which("rsync"),
        "rsync is not installed (cargo xtask setup --test-deps)"
    );
    let work = WorkDir(o.dir.clone());
    let _ = fs::remove_dir_all(&work.0);
    fs::create_dir_all(&work.0)?;
    let src = work.0.join("src");

    let (a, b) = (Netns::new(), Netns::new());
    let peer = &b;
    a.netlink(|h| async move {
        link::add_veth(&h, "bsync-a", peer, "bsync-b").await?;
        link::add_addr(&h, "bsync-a", IpAddr::V4(A_ADDR), 24).await?;
        link::set_up(&h, "bsync-a").await
    })
    .map_err(anyhow::Error::msg)?;
    b.netlink(|h| async move {
        link::add_addr(&h, "bsync-b", IpAddr::V4(B_ADDR), 24).await?;
        link::set_up(&h, "bsync-b").await
    })
    .map_err(anyhow::Error::msg)?;

    let t = Instant::now();
    let (files, bytes) = generate(&src, o.messages)?;
    syncfs(&work.0)?;
    eprintln!(
        "generated {files} messages, {:.0} MB in {:.1} s",
        mb(bytes),
        t.elapsed().as_secs_f64()
    );

    let mut rows = Vec::new();
    for fsync in [false, true] {
        let dst = work.0.join(if fsync { "rsync-fsync" } else { "rsync" });
        let d = rsync_run(&a, &b, &work.0, &src, &dst, fsync)?;
        let label = if fsync {
            "rsync --whole-file --fsync"
        } else {
            "rsync --whole-file, then syncfs"
        };
        check_same(&src, &dst)?;
        eprintln!("{label}: {:.1} s", d.as_secs_f64());
        rows.push((label.to_owned(), d, None));
        // The copy stays until the end: on ext4 a file created shortly
        // after many were deleted nearby pays a scan past the freed inodes
        // (most of all without a journal), which would tax the next
        // contestant, not this one.
    }

    let dst = work.0.join("ha");
    fs::create_dir_all(&dst)?;
    let key = b"bench-password".to_vec();
    let cfg = |data: &Path, state: &Path, encrypt: bool| SyncConfig {
        node: "bench".into(),
        cluster_id: 1,
        roots: vec![SyncRoot {
            name: "mail".into(),
            path: data.to_owned(),
            kind: RootKind::MailDir,
        }],
        listen: SocketAddr::new(IpAddr::V4(B_ADDR), SYNC_PORT),
        peer: SocketAddr::new(IpAddr::V4(B_ADDR), SYNC_PORT),
        key: key.clone(),
        encrypt,
        state_dir: state.to_owned(),
        max_lag: Duration::from_secs(1),
        retry: Duration::from_millis(200),
    };
    // The receiver serves the sender's address only.
    let rcfg = SyncConfig {
        node: "bench-replica".into(),
        peer: SocketAddr::new(IpAddr::V4(A_ADDR), SYNC_PORT),
        ..cfg(&dst, &work.0.join("state-b"), false)
    };
    let rx = b.run(|| Receiver::spawn(rcfg)).context("receiver")?;
    let scfg = cfg(&src, &work.0.join("state-a"), false);
    let cpu0 = sender_cpu();
    let start = Instant::now();
    let tx = a.run(|| Sender::spawn(scfg)).context("sender")?;
    wait(&tx, Duration::from_secs(600), |s| s.in_sync)?;
    let d = start.elapsed();
    let cpu = sender_cpu().saturating_sub(cpu0);
    check_same(&src, &dst)?;
    eprintln!(
        "ha: {:.1} s, sender CPU {:.2} s",
        d.as_secs_f64(),
        cpu.as_secs_f64()
    );
    rows.push(("ha (sendfile, group commit)".to_owned(), d, Some(cpu)));
    if o.encrypt {
        // The same initial sync of the same tree with `cluster.encrypt` on
        // both ends (bodies read, hashed and sealed in userspace instead of
        // sendfile), before the steady state adds messages to the tree.
        let dst = work.0.join("ha-encrypt");
        fs::create_dir_all(&dst)?;
        syncfs(&work.0)?;
        let port = SYNC_PORT + 10;
        let rcfg = SyncConfig {
            node: "bench-replica".into(),
            listen: SocketAddr::new(IpAddr::V4(B_ADDR), port),
            peer: SocketAddr::new(IpAddr::V4(A_ADDR), port),
            ..cfg(&dst, &work.0.join("state-b-enc"), true)
        };
        let scfg = SyncConfig {
            peer: SocketAddr::new(IpAddr::V4(B_ADDR), port),
            ..cfg(&src, &work.0.join("state-a-enc"), true)
        };
        let rx = b.run(|| Receiver::spawn(rcfg)).context("receiver")?;
        let cpu0 = sender_cpu();
        let start = Instant::now();
        let tx = a.run(|| Sender::spawn(scfg)).context("sender")?;
        wait(&tx, Duration::from_secs(600), |s| s.in_sync)?;
        let d = start.elapsed();
        let cpu = sender_cpu().saturating_sub(cpu0);
        check_same(&src, &dst)?;
        tx.stop();
        rx.stop();
        eprintln!(
            "ha encrypted: {:.1} s, sender CPU {:.2} s",
            d.as_secs_f64(),
            cpu.as_secs_f64()
        );
        rows.push(("ha encrypted (ChaCha20-Poly1305)".to_owned(), d, Some(cpu)));
        fs::remove_dir_all(&dst)?;
    }

    // Steady state is measured on its own: let the bulk sync's writeback
    // (and the deleted rsync trees') settle first.
    syncfs(&work.0)?;
    std::thread::sleep(Duration::from_secs(2));
    let steady = steady_state(&tx, &src, &o, "quiet")?;
    let loaded = if !o.stress {
        None
    } else if !which("stress-ng") {
        eprintln!("stress-ng not installed: no steady-state run under CPU load");
        None
    } else {
        let _hog = Hog::start(o.steady + Duration::from_secs(15))?;
        // Let the hog take the CPUs before the writer starts.
        std::thread::sleep(Duration::from_secs(1));
        Some(steady_state(&tx, &src, &o, "stress-ng --cpu 2")?)
    };
    tx.stop();
    rx.stop();

    println!();
    println!(
        "initial sync: {files} messages, {:.0} MB, veth between two namespaces, timed until durable",
        mb(bytes)
    );
    println!(
        "{:<34} {:>8} {:>9} {:>12}",
        "system", "time s", "MB/s", "CPU s/GB"
    );
    for (label, d, cpu) in &rows {
        let cpu = cpu.map_or("-".to_owned(), |c| {
            format!("{:.2}", c.as_secs_f64() / gb(bytes))
        });
        println!(
            "{label:<34} {:>8.2} {:>9.1} {cpu:>12}",
            d.as_secs_f64(),
            mb(bytes) / d.as_secs_f64()
        );
    }
    let ha = rows[2].1.as_secs_f64();
    println!(
        "ha throughput vs rsync: {:.2}x (rsync + syncfs), {:.2}x (rsync --fsync); target >= 1.5x",
        rows[0].1.as_secs_f64() / ha,
        rows[1].1.as_secs_f64() / ha
    );
    if let Some((_, enc, _)) = rows.get(3) {
        println!(
            "encryption cost: ha encrypted / ha plain = {:.2}x the time ({:.0}% of the plain throughput)",
            enc.as_secs_f64() / ha,
            100.0 * ha / enc.as_secs_f64()
        );
    }
    println!();
    steady.print();
    if let Some(l) = &loaded {
        l.print();
    }
    println!();
    let mut costs = vec![auth_cost(&src, files)?];
    if let (Some((_, _, Some(enc))), Some((_, _, Some(plain)))) = (rows.get(3), rows.get(2)) {
        costs.push(Cost {
            label: "encryption (ChaCha20-Poly1305)".into(),
            cpu_s: enc.saturating_sub(*plain).as_secs_f64(),
            bytes,
            how: "sender CPU of the encrypted initial sync minus the plain one, same tree (--encrypt)"
                .into(),
        });
    } else {
        println!("encryption (cluster.encrypt): run with --encrypt for its row");
    }
    print_costs(&costs, bytes, ha);
    Ok(())
}

/// A CPU hog on every core (`stress-ng --cpu 2`), stopped on drop.
struct Hog(std::process::Child);

impl Hog {
    fn start(max: Duration) -> Result<Self> {
        let child = Command::new("stress-ng")
            .args(["--cpu", "2", "--timeout"])
            .arg(format!("{}s", max.as_secs().max(1)))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("starting stress-ng")?;
        Ok(Self(child))
    }
}

impl Drop for Hog {
    fn drop(&mut self) {
        // SIGTERM lets stress-ng stop its workers; bounded wait, then kill.
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        for _ in 0..50 {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One row of the protection-cost table: work the channel adds to a bulk
/// sync, measured on its own over the same bytes. New kinds of protection
/// (encryption) add a row.
struct Cost {
    label: String,
    /// CPU seconds the work took (one thread).
    cpu_s: f64,
    /// Bytes it covered.
    bytes: u64,
    /// How it was measured.
    how: String,
}

fn print_costs(costs: &[Cost], tree_bytes: u64, ha_s: f64) {
    println!(
        "cost of the channel's protection on this tree ({:.0} MB; ha's bulk sync took {ha_s:.2} s):",
        mb(tree_bytes)
    );
    println!(
        "{:<34} {:>8} {:>9} {:>10}  how",
        "work", "CPU s", "MB/s", "% of ha"
    );
    for c in costs {
        println!(
            "{:<34} {:>8.3} {:>9.0} {:>9.1}%  {}",
            c.label,
            c.cpu_s,
            mb(c.bytes) / c.cpu_s.max(1e-9),
            100.0 * c.cpu_s / ha_s,
            c.how
        );
    }
}

/// The channel's authentication, measured on its own over the same tree:
/// the keyed hash of every body read with pread (what the sender adds
/// per file; the receiver hashes the same bytes as they arrive) and the tag
/// of two frames per file. ha has no switch to turn authentication off, so
/// the cost is measured as the work it adds, and set against the bulk
/// run's time.
fn auth_cost(src: &Path, files: usize) -> Result<Cost> {
    use ha_agent::channel::handshake::{Client, Server, nonce};
    use ha_agent::channel::{Local, Purpose};
    let local = |node| Local {
        node,
        cluster: 1,
        password: b"bench-password",
        encrypt: false,
    };
    let (client, hello) = Client::start(local("a"), Purpose::Replicate, nonce());
    let (_server, reply) =
        Server::on_client_hello(local("b"), &[Purpose::Replicate], &hello, nonce())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    let (_, est) = client
        .on_server_hello(&reply)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let (mut seal, _) = est.split();

    // Bodies: every file of the tree (page cache warm, as right after a send).
    let mut paths = Vec::new();
    let mut stack = vec![src.to_owned()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d)? {
            let e = e?;
            if e.file_type()?.is_dir() {
                stack.push(e.path());
            } else {
                paths.push(e.path());
            }
        }
    }
    let t = Instant::now();
    let mut hashed = 0u64;
    for p in &paths {
        let f = fs::File::open(p)?;
        let len = f.metadata()?.len();
        let mut h = seal.body_hasher();
        h.update_file(&f, len)?;
        std::hint::black_box(h.finish());
        hashed += len;
    }
    let body = t.elapsed().as_secs_f64();

    // Frames: a FileData-sized frame (header, path, attributes) sealed.
    let frame = [0x5au8; 120];
    let n = 200_000u32;
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(seal.seal(std::hint::black_box(&frame)));
    }
    let per_frame = t.elapsed().as_secs_f64() / f64::from(n);
    // Two tagged frames per file on the sender (FileData, BodyEnd), one ack
    // per batch on the receiver: count two per file.
    let frames = 2.0 * files as f64;
    Ok(Cost {
        label: "authentication (keyed BLAKE3 + tags)".into(),
        cpu_s: body + frames * per_frame,
        bytes: hashed,
        how: format!(
            "one side: bodies hashed through pread {:.3} s ({:.2} s/GB, page cache warm) + {:.0} frame tags at {:.0} ns",
            body,
            body / gb(hashed.max(1)),
            frames,
            per_frame * 1e9
        ),
    })
}

fn which(prog: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {prog}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

fn gb(bytes: u64) -> f64 {
    bytes as f64 / 1e9
}

fn syncfs(path: &Path) -> Result<()> {
    let f = fs::File::open(path)?;
    nix::unistd::syncfs(f.as_raw_fd())?;
    Ok(())
}

/// A deterministic mail tree: 50 mailboxes, 2% of the messages 256 KiB–2 MiB,
/// the rest 2–128 KiB log-uniform (about 1 GB for 20,000 messages). Each
/// message is a unique header plus a slice of random bytes (incompressible).
fn generate(root: &Path, n: usize) -> Result<(usize, u64)> {
    let mut rng = StdRng::seed_from_u64(4);
    let mut pool = vec![0u8; 4 << 20];
    rng.fill(&mut pool[..]);
    let mut total = 0u64;
    for i in 0..n {
        let size = if i % 50 == 0 {
            rng.gen_range(256 << 10..=2 << 20)
        } else {
            let (lo, hi) = ((2u32 << 10) as f64, (128u32 << 10) as f64);
            (lo * (hi / lo).powf(rng.r#gen::<f64>())) as usize
        };
        let dir = root.join(format!("user{}/cur", i % 50));
        if i < 50 {
            fs::create_dir_all(&dir)?;
            fs::create_dir_all(root.join(format!("user{i}/new")))?;
            fs::create_dir_all(root.join(format!("user{i}/tmp")))?;
        }
        let header = format!("Message-ID: <{i}@bench.example>\r\n\r\n");
        let off = rng.gen_range(0..pool.len() - size);
        let mut f = fs::File::create(dir.join(format!("{i}.M{i}P1.bench:2,S")))?;
        f.write_all(header.as_bytes())?;
        f.write_all(&pool[off..off + size - header.len().min(size)])?;
        total += size.max(header.len()) as u64;
    }
    Ok((n, total))
}

/// Same relative files with the same sizes; content compared on a sample.
fn check_same(a: &Path, b: &Path) -> Result<()> {
    fn list(root: &Path, rel: &Path, out: &mut Vec<(PathBuf, u64)>) -> Result<()> {
        for e in fs::read_dir(root.join(rel))? {
            let e = e?;
            let md = e.metadata()?;
            let p = rel.join(e.file_name());
            if md.is_dir() {
                list(root, &p, out)?;
            } else {
                out.push((p, md.len()));
            }
        }
        Ok(())
    }
    let (mut la, mut lb) = (Vec::new(), Vec::new());
    list(a, Path::new(""), &mut la)?;
    list(b, Path::new(""), &mut lb)?;
    la.sort();
    lb.sort();
    ensure!(
        la == lb,
        "replica {} differs from the source ({} vs {} files)",
        b.display(),
        lb.len(),
        la.len()
    );
    for (p, _) in la.iter().step_by(97) {
        ensure!(
            fs::read(a.join(p))? == fs::read(b.join(p))?,
            "{} differs",
            p.display()
        );
    }
    Ok(())
}

fn rsync_run(
    a: &Netns,
    b: &Netns,
    work: &Path,
    src: &Path,
    dst: &Path,
    fsync: bool,
) -> Result<Duration> {
    fs::create_dir_all(dst)?;
    let conf = work.join("rsyncd.conf");
    fs::write(
        &conf,
        format!(
            "uid = root\ngid = root\nuse chroot = no\nlog file = {}\n[bench]\npath = {}\nread only = false\n",
            work.join("rsyncd.log").display(),
            dst.display()
        ),
    )?;
    let _daemon = b.spawn(Command::new("rsync").args([
        "--daemon",
        "--no-detach",
        &format!("--config={}", conf.display()),
        &format!("--port={RSYNC_PORT}"),
        &format!("--address={B_ADDR}"),
    ]))?;
    let target = SocketAddr::new(IpAddr::V4(B_ADDR), RSYNC_PORT);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !a
        .run(|| std::net::TcpStream::connect_timeout(&target, Duration::from_millis(200)).is_ok())
    {
        ensure!(
            Instant::now() < deadline,
            "rsync daemon did not start listening on {target}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut cmd = Command::new("rsync");
    cmd.args(["-a", "--whole-file"]);
    if fsync {
        cmd.arg("--fsync");
    }
    cmd.arg(format!("{}/", src.display()))
        .arg(format!("rsync://{B_ADDR}:{RSYNC_PORT}/bench/"));
    let start = Instant::now();
    let out = a.output(&mut cmd)?;
    ensure!(
        out.status.success(),
        "rsync failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    syncfs(dst)?;
    Ok(start.elapsed())
}

fn wait(
    h: &SyncHandle,
    timeout: Duration,
    f: impl Fn(&ha_agent::sync::SyncStatus) -> bool,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let s = h.status();
        if f(&s) {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "sync did not get there in {timeout:?}: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// CPU time (user + system) of the sender's threads in this process.
fn sender_cpu() -> Duration {
    let tick = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let mut ticks = 0u64;
    for t in fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        let comm = fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if !SENDER_THREADS.contains(&comm.trim()) {
            continue;
        }
        let stat = fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        // Fields after the command: state is field 3, utime 14, stime 15.
        ticks += f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        ticks += f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    }
    Duration::from_secs_f64(ticks as f64 / tick)
}

struct Steady {
    /// What ran beside the writer.
    load: &'static str,
    rate: u32,
    secs: f64,
    sent: usize,
    bytes: u64,
    lags: Vec<Duration>,
    missing: usize,
    cpu: Duration,
    late_writes: usize,
    /// Operations still unacknowledged when the writer started.
    backlog_at_start: u64,
}

impl Steady {
    fn print(&self) {
        let pct = |p: f64| {
            self.lags
                .get(((self.lags.len() as f64 * p) as usize).min(self.lags.len().saturating_sub(1)))
                .copied()
                .unwrap_or_default()
        };
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!(
            "steady state ({}): writer at {} msg/s for {:.0} s, Maildir tmp/ -> new/, {} messages, {:.0} MB ({} behind schedule, backlog at start {})",
            self.load,
            self.rate,
            self.secs,
            self.sent,
            mb(self.bytes),
            self.late_writes,
            self.backlog_at_start
        );
        println!("lag rename on primary -> ack of durable copy received by the sender:");
        println!(
            "  p50 {:.2} ms   p90 {:.2} ms   p99 {:.2} ms   max {:.2} ms   (target p99 <= 10 ms)   not acked: {}",
            ms(pct(0.5)),
            ms(pct(0.9)),
            ms(pct(0.99)),
            ms(self.lags.last().copied().unwrap_or_default()),
            self.missing
        );
        println!(
            "  sender CPU {:.2} s = {:.1} s per GB delivered ({:.1}% of a core)",
            self.cpu.as_secs_f64(),
            self.cpu.as_secs_f64() / gb(self.bytes).max(1e-9),
            100.0 * self.cpu.as_secs_f64() / self.secs
        );
    }
}

/// Delivers `o.rate` messages per second for `o.steady` and measures each
/// one's lag from its rename to the acknowledgement of its durable copy.
fn steady_state(tx: &SyncHandle, src: &Path, o: &Opts, load: &'static str) -> Result<Steady> {
    let acks = tx.subscribe_acks();
    // Each run its own mailbox: names never collide with an earlier run.
    let inbox = format!("inbox-{}", load.split_whitespace().next().unwrap_or("x"));
    let (tmp, new) = (src.join(&inbox).join("tmp"), src.join(&inbox).join("new"));
    fs::create_dir_all(&tmp)?;
    fs::create_dir_all(&new)?;
    // Let the two directory creations (and what an earlier run left
    // behind) reach the replica first; a backlog still there after a
    // minute is reported, not hidden.
    let backlog_at_start = match wait(tx, Duration::from_secs(60), |s| s.backlog_ops == 0) {
        Ok(()) => 0,
        Err(_) => tx.status().backlog_ops,
    };
    while acks.try_recv().is_ok() {}
    let mut rng = StdRng::seed_from_u64(5);
    let mut pool = vec![0u8; 256 << 10];
    rng.fill(&mut pool[..]);
    let interval = Duration::from_secs_f64(1.0 / f64::from(o.rate));
    let n = (o.steady.as_secs_f64() * f64::from(o.rate)) as usize;
    let mut renamed: HashMap<String, Instant> = HashMap::with_capacity(n);
    let mut lags = Vec::with_capacity(n);
    let (mut bytes, mut late) = (0u64, 0usize);
    let prefix = format!("{inbox}/new/");
    let collect = |acks: &mpsc::Receiver<ha_agent::sync::AckedOp>,
                   renamed: &mut HashMap<String, Instant>,
                   lags: &mut Vec<Duration>| {
        while let Ok(a) = acks.try_recv() {
            if let Some(name) = a.path.strip_prefix(prefix.as_str())
                && let Some(t) = renamed.remove(name)
            {
                lags.push(a.acked.saturating_duration_since(t));
            }
        }
    };
    let cpu0 = sender_cpu();
    let start = Instant::now();
    for i in 0..n {
        let due = start + interval * i as u32;
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        } else if now - due > interval {
            late += 1;
        }
        let size = ((2u32 << 10) as f64 * 32f64.powf(rng.r#gen::<f64>())) as usize;
        let name = format!("{i}.M{i}P2.bench");
        fs::write(tmp.join(&name), &pool[..size])?;
        fs::rename(tmp.join(&name), new.join(&name))?;
        renamed.insert(name, Instant::now());
        bytes += size as u64;
        collect(&acks, &mut renamed, &mut lags);
    }
    let secs = start.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !renamed.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
        collect(&acks, &mut renamed, &mut lags);
    }
    let cpu = sender_cpu().saturating_sub(cpu0);
    lags.sort();
    Ok(Steady {
        load,
        rate: o.rate,
        secs,
        sent: n,
        bytes,
        lags,
        missing: renamed.len(),
        backlog_at_start,
        cpu,
        late_writes: late,
    })
}
