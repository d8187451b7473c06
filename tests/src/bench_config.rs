//! `ha-bench config-sync`: propagation in a config-only cluster.
//!
//! N members (default 25) in namespaces on one bridge, real agents. A
//! 1 MB configuration tree of 200 files; 20 changes of one file each. For
//! each change: time from the write on the primary to the last member's
//! `after_apply` done (the members' hook writes the wall-clock time).
//!
//! Reference, in the same run and on the same namespaces: what lsyncd
//! does, a parallel rsync fan-out started by an inotify watch: on the
//! primary a watch on a copy of the tree, and on each change one
//! `rsync -a --delete` per member at once, to an rsync daemon in each
//! member's namespace; timed from the write to the last rsync's exit
//! (no hook, no validation: the reference does less than ha).

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, Result, bail, ensure};
use ha_agent::sync::RootKind;
use ha_agent::sync::watcher::{Queue, Watcher};
use rand::{Rng as _, SeedableRng as _, rngs::StdRng};

use crate::config_cluster::{ConfigCluster, ConfigOpts, address};

const RSYNC_PORT: u16 = 8731;
const FILES: usize = 200;
const FILE_SIZE: usize = 5 * 1024;

struct Opts {
    members: usize,
    changes: usize,
}

fn parse(args: &[String]) -> Result<Opts> {
    let mut o = Opts {
        members: 25,
        changes: 20,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut num = |name: &str| -> Result<usize> {
            it.next()
                .with_context(|| format!("{name} needs a value"))?
                .parse()
                .with_context(|| format!("{name} N"))
        };
        match a.as_str() {
            "--members" => o.members = num("--members")?,
            "--changes" => o.changes = num("--changes")?,
            _ => bail!("usage: ha-bench config-sync [--members N (2-25)] [--changes N]"),
        }
    }
    ensure!((2..=25).contains(&o.members), "--members must be 2 to 25");
    Ok(o)
}

fn seed(dir: &Path, rng: &mut StdRng) -> Result<()> {
    for i in 0..FILES {
        let sub = dir.join(format!("d{}", i % 10));
        fs::create_dir_all(&sub)?;
        let body: Vec<u8> = (0..FILE_SIZE).map(|_| rng.gen_range(b'a'..=b'z')).collect();
        fs::write(sub.join(format!("f{i:03}.cf")), body)?;
    }
    Ok(())
}

fn change(dir: &Path, k: usize, rng: &mut StdRng) -> Result<()> {
    let i = (k * 37) % FILES;
    let body: Vec<u8> = (0..FILE_SIZE).map(|_| rng.gen_range(b'a'..=b'z')).collect();
    // Write and rename, as editors and config tools do.
    let p = dir.join(format!("d{}/f{i:03}.cf", i % 10));
    let tmp = p.with_extension("new");
    fs::write(&tmp, body)?;
    fs::rename(&tmp, &p)?;
    Ok(())
}

fn pct(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let i = ((p / 100.0) * (s.len() as f64 - 1.0)).round() as usize;
    s[i.min(s.len() - 1)]
}

/// Runs the benchmark.
///
/// # Errors
/// When the cluster, rsync or the watch cannot be set up.
pub fn run(args: &[String]) -> Result<()> {
    let o = parse(args)?;
    ensure!(
        Command::new("rsync").arg("--version").output().is_ok(),
        "rsync is not installed (cargo xtask setup --test-deps)"
    );
    let mut c = ConfigCluster::new(ConfigOpts {
        members: o.members,
        heartbeat: "2s",
        check: "1m",
        log: "warn",
        ..ConfigOpts::default()
    });
    let mut rng = StdRng::seed_from_u64(7);
    seed(&c.etc(0), &mut rng)?;
    c.start_all();
    c.wait_in_sync(0, Duration::from_secs(120));
    println!(
        "config-sync: {} members, {FILES} files of {FILE_SIZE} bytes, {} changes of one file",
        o.members, o.changes
    );

    let mut ha = Vec::new();
    for k in 0..o.changes {
        let t0 = SystemTime::now();
        change(&c.etc(0), k, &mut rng)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let last = loop {
            let times: Vec<SystemTime> = (1..o.members)
                .filter_map(|i| c.applied_at(i).filter(|t| *t > t0))
                .collect();
            if times.len() == o.members - 1 {
                break times.into_iter().max().expect("members");
            }
            ensure!(
                Instant::now() < deadline,
                "change {k} not applied everywhere in 30 s"
            );
            std::thread::sleep(Duration::from_millis(1));
        };
        ha.push(last.duration_since(t0).unwrap_or_default().as_secs_f64() * 1000.0);
        std::thread::sleep(Duration::from_millis(300));
    }
    let v = c.wait_in_sync(0, Duration::from_secs(60));
    println!("ha: every member in sync on version {v}");

    let reference = rsync_fanout(&c, o.members, o.changes, &mut rng)?;

    let (h50, h99) = (pct(&ha, 50.0), pct(&ha, 99.0));
    let (r50, r99) = (pct(&reference, 50.0), pct(&reference, 99.0));
    println!(
        "change on the primary -> last of {} members applied (ms):",
        o.members - 1
    );
    println!(
        "  {:<34} p50 {h50:>8.1}  p99 {h99:>8.1}  max {:>8.1}",
        "ha (push, staging, swap, after_apply)",
        pct(&ha, 100.0)
    );
    println!(
        "  {:<34} p50 {r50:>8.1}  p99 {r99:>8.1}  max {:>8.1}",
        "inotify + parallel rsync fan-out",
        pct(&reference, 100.0)
    );
    println!(
        "  ha is {:.1}x faster at p50, {:.1}x at p99",
        r50 / h50,
        r99 / h99
    );
    Ok(())
}

fn rsync_fanout(
    c: &ConfigCluster,
    members: usize,
    changes: usize,
    rng: &mut StdRng,
) -> Result<Vec<f64>> {
    let work = c.member_dir(0).join("rsync");
    let src = work.join("src");
    fs::create_dir_all(&src)?;
    seed(&src, rng)?;
    let mut daemons = Vec::new();
    for i in 1..members {
        let dst = c.member_dir(i).join("rsync-dst");
        fs::create_dir_all(&dst)?;
        let conf = c.member_dir(i).join("rsyncd.conf");
        fs::write(
            &conf,
            format!(
                "uid = root\ngid = root\nuse chroot = no\nlog file = /dev/null\n[cfg]\npath = {}\nread only = false\n",
                dst.display()
            ),
        )?;
        daemons.push(c.ns[i].spawn(Command::new("rsync").args([
            "--daemon",
            "--no-detach",
            &format!("--config={}", conf.display()),
            &format!("--port={RSYNC_PORT}"),
            &format!("--address={}", address(i)),
        ]))?);
    }
    for i in 1..members {
        let target = SocketAddr::new(address(i), RSYNC_PORT);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !c.ns[0].run(|| {
            std::net::TcpStream::connect_timeout(&target, Duration::from_millis(200)).is_ok()
        }) {
            ensure!(
                Instant::now() < deadline,
                "rsync daemon on {target} not listening"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let fan_out = |src: &Path| -> Result<()> {
        let mut kids = Vec::new();
        for i in 1..members {
            let mut cmd = Command::new("rsync");
            cmd.args(["-a", "--delete"])
                .arg(format!("{}/", src.display()))
                .arg(format!("rsync://{}:{RSYNC_PORT}/cfg/", address(i)));
            kids.push(c.ns[0].spawn(&mut cmd)?);
        }
        for k in kids {
            let st = k.wait()?;
            ensure!(st.success(), "rsync failed: {st}");
        }
        Ok(())
    };
    // Initial copy, as lsyncd does at start.
    fan_out(&src)?;
    let mut watcher = Watcher::new(&[(src.clone(), RootKind::MailDir)])?;
    let q = Queue::default();
    let mut out = Vec::new();
    for k in 0..changes {
        let t0 = Instant::now();
        change(&src, k, rng)?;
        // The watch wakes the fan-out, as lsyncd's inotify loop does.
        let deadline = Instant::now() + Duration::from_secs(10);
        while q.drain(Duration::ZERO).is_empty() {
            watcher.poll(&q, Duration::from_millis(50))?;
            ensure!(Instant::now() < deadline, "no inotify event for change {k}");
        }
        fan_out(&src)?;
        out.push(t0.elapsed().as_secs_f64() * 1000.0);
        std::thread::sleep(Duration::from_millis(300));
        watcher.poll(&q, Duration::ZERO)?;
        q.clear();
    }
    // Every member's copy equals the source.
    let want = tree(&src);
    for i in 1..members {
        ensure!(
            tree(&c.member_dir(i).join("rsync-dst")) == want,
            "rsync copy of member {i} differs"
        );
    }
    drop(daemons);
    Ok(out)
}

fn tree(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(b) = fs::read(&p) {
                out.push((p.strip_prefix(root).unwrap_or(&p).to_path_buf(), b));
            }
        }
    }
    out.sort();
    out
}
