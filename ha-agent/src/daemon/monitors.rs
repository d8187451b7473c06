//! Monitors of this node: local checks (monitored interfaces' links, disk)
//! that fail a primary over, remote service checks, and the VIP probe that
//! stands in for a heartbeat when every link is cut.

use std::{
    net::SocketAddr,
    num::NonZeroU32,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::sync::mpsc;

use crate::{
    config::{self, Config, LocalCheck, MinFree},
    heartbeat::clock::now_ns,
    monitor::{Check, MonitorSpec, disk::DiskLimits, remote},
};

/// Local checks: every `port_monitor` interface (event-driven through link
/// notifications, so a pulled cable fails over at once) and `[[monitor.local]]`.
pub fn local_specs(cfg: &Config) -> Vec<MonitorSpec> {
    let mut specs: Vec<MonitorSpec> = cfg
        .interface
        .iter()
        .filter(|i| i.port_monitor)
        .map(|i| MonitorSpec {
            name: format!("interface {}", i.name),
            check: Check::Link {
                ifname: i.name.clone(),
            },
            // Link notifications can lag by up to a second right after other
            // link changes (the kernel batches carrier events), so also poll.
            interval: Duration::from_millis(20),
            failures: NonZeroU32::MIN,
        })
        .collect();
    for m in &cfg.monitor.local {
        let failures = NonZeroU32::new(m.failures).unwrap_or(NonZeroU32::MIN);
        let (name, check) = match &m.check {
            LocalCheck::Interface { interface } => (
                format!("interface {interface}"),
                Check::Link {
                    ifname: interface.clone(),
                },
            ),
            LocalCheck::Disk { path, min_free } => {
                let limits = match *min_free {
                    MinFree::Bytes(b) => DiskLimits {
                        min_free_bytes: b,
                        min_free_inodes: 0,
                    },
                    MinFree::Percent(p) => DiskLimits {
                        min_free_bytes: nix::sys::statvfs::statvfs(path.as_path())
                            .map(|s| s.blocks() * s.fragment_size() / 100 * u64::from(p))
                            .unwrap_or(0),
                        min_free_inodes: 0,
                    },
                };
                (
                    format!("disk {}", path.display()),
                    Check::Disk {
                        path: path.clone(),
                        limits,
                        timeout: m.interval.min(Duration::from_secs(10)),
                    },
                )
            }
        };
        if specs.iter().any(|s| s.name == name) {
            continue;
        }
        specs.push(MonitorSpec {
            name,
            check,
            interval: m.interval,
            failures,
        });
    }
    specs
}

/// Remote checks against the primary (`[[monitor.remote]]`).
pub fn remote_specs(cfg: &Config) -> Vec<MonitorSpec> {
    cfg.monitor
        .remote
        .iter()
        .map(|m| MonitorSpec {
            name: format!("{} {}", service_name(m.service), m.address),
            check: Check::Remote {
                service: service(m.service),
                addr: m.address,
                timeout: m.timeout,
            },
            interval: m.interval,
            failures: NonZeroU32::new(m.failures).unwrap_or(NonZeroU32::MIN),
        })
        .collect()
}

fn service(s: config::Service) -> remote::Service {
    match s {
        config::Service::Smtp => remote::Service::Smtp,
        config::Service::Pop3 => remote::Service::Pop3,
        config::Service::Imap => remote::Service::Imap,
        config::Service::Http => remote::Service::Http,
    }
}

fn service_name(s: config::Service) -> &'static str {
    match s {
        config::Service::Smtp => "smtp",
        config::Service::Pop3 => "pop3",
        config::Service::Imap => "imap",
        config::Service::Http => "http",
    }
}

/// What the VIP probe checks: the VIP on the port of the first remote
/// monitor, speaking its protocol (SMTP on port 25 without one).
pub fn probe_targets(cfg: &Config) -> Vec<(remote::Service, SocketAddr)> {
    let (svc, port) = cfg
        .monitor
        .remote
        .first()
        .map_or((remote::Service::Smtp, 25), |m| {
            (service(m.service), m.address.port())
        });
    cfg.vips()
        .iter()
        .map(|v| (svc, SocketAddr::new(v.address.addr(), port)))
        .collect()
}

/// Result of one VIP probe round.
#[derive(Clone, Copy, Debug)]
pub struct VipProbe {
    /// When the round ended (CLOCK_MONOTONIC ns).
    pub at: u64,
    /// Some VIP answered as its service does (an SMTP `220` greeting, ...).
    pub answered: bool,
}

/// Probes the VIPs with the service's own check (its greeting, not a bare
/// TCP connect, which anything on the service network could accept while
/// answering for the VIP), but only while every heartbeat link has been
/// silent for two intervals (`last_heard` is the newest heartbeat,
/// CLOCK_MONOTONIC ns): a probe is a real session with the peer's MTA, not
/// something to do a thousand times a second while heartbeats flow.
pub fn spawn_vip_probe(
    targets: Vec<(remote::Service, SocketAddr)>,
    interval: Duration,
    threshold: Duration,
    last_heard: Arc<AtomicU64>,
    active: Arc<std::sync::atomic::AtomicBool>,
    out: mpsc::Sender<VipProbe>,
) {
    if targets.is_empty() {
        return;
    }
    let timeout = (threshold / 2).max(Duration::from_millis(1));
    let period = interval.max(Duration::from_millis(1));
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(period).await;
            let silent_for = now_ns().saturating_sub(last_heard.load(Ordering::Relaxed));
            if active.load(Ordering::Relaxed) || silent_for < 2 * period.as_nanos() as u64 {
                continue;
            }
            let mut answered = false;
            for &(svc, addr) in &targets {
                if remote::check(svc, addr, timeout).await.is_ok() {
                    answered = true;
                    break;
                }
            }
            if out
                .send(VipProbe {
                    at: now_ns(),
                    answered,
                })
                .await
                .is_err()
            {
                return;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use tokio::io::AsyncWriteExt as _;

    use super::*;

    /// A server on loopback that greets every connection with `greeting`.
    async fn server(greeting: &'static [u8]) -> SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let _ = s.write_all(greeting).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        addr
    }

    async fn probe_once(target: SocketAddr) -> bool {
        let (tx, mut rx) = mpsc::channel(4);
        spawn_vip_probe(
            vec![(remote::Service::Smtp, target)],
            Duration::from_millis(5),
            Duration::from_secs(2),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicBool::new(false)),
            tx,
        );
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("a probe round within 10 s")
            .expect("probe running")
            .answered
    }

    #[tokio::test]
    async fn the_vip_probe_needs_the_service_greeting() {
        assert!(probe_once(server(b"220 mail ESMTP\r\n").await).await);
        // Accepting the connection is not enough: whatever answers for the
        // VIP must speak SMTP.
        assert!(!probe_once(server(b"SSH-2.0-OpenSSH_9.2\r\n").await).await);
        assert!(!probe_once(server(b"").await).await);
    }
}
