//! The status page, assembled from the state machine, the heartbeat
//! receivers and sender, the gate, the monitors and the data plane counters.

use std::{
    sync::atomic::Ordering,
    time::{Duration, SystemTime},
};

use super::agent::Agent;
use crate::{
    control::{
        GateInfo, LinkInfo, MonitorInfo, PeerInfo, SenderInfo, Status, SyncInfo, TimingStatus,
        TransitionInfo,
    },
    heartbeat::{clock::now_ns, peer::RefusalKind},
    monitor::{Health, MonitorStatus},
};

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

fn wall(a: &Agent, mono_ns: u64) -> SystemTime {
    if mono_ns >= a.start_ns {
        a.start_wall + Duration::from_nanos(mono_ns - a.start_ns)
    } else {
        a.start_wall - Duration::from_nanos(a.start_ns - mono_ns)
    }
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

fn monitor(m: &MonitorStatus, active_role_checks: bool) -> MonitorInfo {
    let next = m
        .next_check
        .duration_since(SystemTime::now())
        .map_or(0.0, |d| d.as_secs_f64() * 1e3);
    MonitorInfo {
        name: m.name.clone(),
        state: match (active_role_checks, m.health) {
            (_, Health::Up) => "ok",
            (_, Health::Down) => "failed",
            (_, Health::Unknown) => "unknown",
        }
        .into(),
        failures: m.failures,
        threshold: m.failures_to_trip,
        next_check_in_ms: Some(next),
        last_error: m.last_error.clone(),
    }
}

pub(super) fn build(a: &Agent) -> Status {
    let now = now_ns();
    let f = a.fsm.status();
    let timing = a.cfg.cluster.timing();
    let threshold_ns = timing.lost_threshold.as_nanos() as u64;

    let sender = a.sender.stats();
    let links =
        a.cfg
            .heartbeat
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let h = a
                    .receivers
                    .iter()
                    .find(|r| r.link() == i as u32)
                    .map(|r| r.health());
                let age = h
                    .as_ref()
                    .and_then(|h| h.last_rx_ns)
                    .map(|t| now.saturating_sub(t));
                let (sent, send_errors) = sender
                    .links
                    .iter()
                    .find(|(id, _)| *id == i as u32)
                    .map_or((0, 0), |(_, s)| {
                        (
                            s.sent.load(Ordering::Relaxed),
                            s.errors.load(Ordering::Relaxed),
                        )
                    });
                LinkInfo {
                    id: i as u32,
                    interface: l.interface.clone(),
                    local: l.local.to_string(),
                    peer: l.peer.to_string(),
                    healthy: age.is_some_and(|x| x <= threshold_ns),
                    last_heard_ms_ago: age.map(ms),
                    accepted: h.as_ref().map_or(0, |h| h.accepted),
                    gaps: h.as_ref().map_or(0, |h| h.gaps),
                    kernel_fallbacks: h.as_ref().map_or(0, |h| h.kernel_fallbacks),
                    refused: h
                        .as_ref()
                        .map(|h| {
                            RefusalKind::ALL
                                .iter()
                                .map(|k| (k.as_str().to_owned(), h.refused(*k)))
                                .collect()
                        })
                        .unwrap_or_default(),
                    sent,
                    send_errors,
                }
            })
            .collect();

    let view = f.peer.view.as_ref().map(|v| v.advert);
    let peer = PeerInfo {
        alive: f.peer.alive,
        last_heard_ms_ago: f.peer.last_heard_ns.map(|t| ms(now.saturating_sub(t))),
        node_id: view.map(|v| v.node_id),
        configured_mode: view.map(|v| v.configured.to_string()),
        effective_mode: view.map(|v| v.effective.to_string()),
        flags: view.map(|v| v.flag_names()),
    };

    let last_transition = f.last_transition.as_ref().map(|t| TransitionInfo {
        at: rfc3339(wall(a, t.at)),
        ago_s: now.saturating_sub(t.at) as f64 / 1e9,
        from: t.from.to_string(),
        to: t.to.to_string(),
        reason: t.reason.to_string(),
        detection_ms: t.detection_ns.map(ms),
    });

    let g = a.gate.snapshot().ok();
    let gate = GateInfo {
        open: g
            .as_ref()
            .is_some_and(|g| g.active && g.lease_deadline_ns > now),
        lease_remaining_ms: g
            .as_ref()
            .filter(|g| g.active)
            .map(|g| (g.lease_deadline_ns as f64 - now as f64) / 1e6),
        forward: g.as_ref().is_some_and(|g| g.forward),
        vips: g
            .as_ref()
            .map(|g| g.vips.iter().map(ToString::to_string).collect())
            .unwrap_or_default(),
        addresses_held: a.vips.describe(),
        stall_outage_ms: f.stall_outage_since.map(|t| ms(now.saturating_sub(t))),
        stall_outages: f.stall_outages,
        stall_outage_total_ms: ms(f.stall_outage_ns),
    };

    let mut monitors: Vec<MonitorInfo> = Vec::new();
    if let Some(m) = &a.local_monitors {
        monitors.extend(m.status().iter().map(|s| monitor(s, true)));
    }
    if let Some(m) = &a.remote_monitors {
        monitors.extend(m.status().iter().map(|s| monitor(s, false)));
    }

    let mut warnings = Vec::new();
    if let Some(b) = &f.blocked {
        warnings.push(format!("takeover held back: {b}"));
    }
    for w in &f.failing {
        warnings.push(format!("local check failing: {w}"));
    }
    if a.receivers
        .iter()
        .any(|r| r.health().refused(RefusalKind::TimingMismatch) > 0)
    {
        warnings.push("the peer's heartbeat timing is incompatible with ours (interval + lease + margin must stay below each other's lost threshold): see the log".into());
    }
    if f.promoted_outdated {
        warnings.push("promoted with a replica known to be behind (promote_outdated)".into());
    }
    let hooks = a.role_hooks.status();
    if let Some(o) = hooks.last.as_ref().filter(|o| !o.ok()) {
        warnings.push(format!(
            "role hook {} failed at {}: {}",
            o.name,
            rfc3339(o.finished),
            o.summary()
        ));
    }
    if let Some(alarm) = a.acceptance.as_ref().and_then(|x| x.status().alarm) {
        warnings.push(format!("acceptance: {alarm}"));
    }
    if !sender.realtime.load(Ordering::Relaxed) {
        warnings.push("heartbeat sender runs without realtime priority".into());
    }

    let jitter = sender
        .jitter
        .snapshot()
        .quantile_bound_ns(0.99)
        .map(|n| n as f64 / 1e3);
    Status {
        node: a.cfg.node.name.clone(),
        instance: a.cfg.runtime.instance.clone(),
        version: env!("CARGO_PKG_VERSION").into(),
        now: rfc3339(SystemTime::now()),
        uptime_s: now.saturating_sub(a.start_ns) as f64 / 1e9,
        pid: std::process::id(),
        transitions: f.transitions,
        configured_mode: f.configured.to_string(),
        effective_mode: f.effective.to_string(),
        state: f.state.to_string(),
        split_brain_risk: f.split_brain_risk,
        outdated: f.outdated,
        warnings,
        last_hook: hooks.last.as_ref().map(|o| {
            format!(
                "{} {} at {} ({} ms)",
                o.name,
                o.summary(),
                rfc3339(o.finished),
                o.elapsed.as_millis()
            )
        }),
        hook_running: hooks.running.map(|r| r.to_string()),
        timing: TimingStatus {
            interval_ms: timing.interval.as_secs_f64() * 1e3,
            lost_threshold_ms: timing.lost_threshold.as_secs_f64() * 1e3,
            lease_ms: timing.lease.as_secs_f64() * 1e3,
        },
        peer,
        links,
        last_transition,
        gate,
        monitors,
        sync: {
            let mut info = a.sync.as_ref().map_or_else(
                || SyncInfo {
                    enabled: false,
                    state: "not configured".into(),
                    ..SyncInfo::default()
                },
                |s| s.info(a.fsm.is_active()),
            );
            if let Some(c) = &a.config_sync {
                let (last, checksum, agree) = c.info();
                info.enabled = true;
                info.last_config_sync = last;
                info.config_checksum = checksum.map(|c| {
                    if agree {
                        format!("{c} (peer agrees)")
                    } else {
                        format!("{c} (peer differs or unknown)")
                    }
                });
            }
            info
        },
        sender: SenderInfo {
            realtime: sender.realtime.load(Ordering::Relaxed),
            memory_locked: sender.memory_locked.load(Ordering::Relaxed),
            renewals: sender.renewals.load(Ordering::Relaxed),
            overruns: sender.overruns.load(Ordering::Relaxed),
            jitter_p99_us: jitter,
        },
        acceptance: a
            .acceptance
            .as_ref()
            .map(super::acceptance::Acceptance::status),
        counters: a
            .dp
            .counters()
            .all()
            .map(|m| m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
            .unwrap_or_default(),
        config_only: None,
    }
}
