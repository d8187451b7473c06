//! Human-readable rendering of [`Status`].

use std::fmt::Write as _;

use super::Status;

fn ago(v: Option<f64>) -> String {
    match v {
        None => "never heard".into(),
        Some(_) => format!("heard {} ago", ms(v)),
    }
}

fn ms(v: Option<f64>) -> String {
    match v {
        None => "never".into(),
        Some(x) if x < 10.0 => format!("{x:.2} ms"),
        Some(x) if x < 10_000.0 => format!("{x:.0} ms"),
        Some(x) => format!("{:.1} s", x / 1000.0),
    }
}

/// The status page as text.
pub fn render(s: &Status) -> String {
    let mut o = String::new();
    if let Some(c) = &s.config_only {
        let _ = writeln!(
            o,
            "node {} ({}), ha-agent {}, {}",
            s.node, s.instance, s.version, s.now
        );
        let _ = writeln!(
            o,
            "  mode:        configured {}, effective {}",
            s.configured_mode, s.effective_mode
        );
        o.push_str(&crate::cluster::status::render(c));
        for w in &s.warnings {
            let _ = writeln!(o, "  warning:     {w}");
        }
        return o;
    }
    let _ = writeln!(
        o,
        "node {} ({}), ha-agent {}, {}",
        s.node, s.instance, s.version, s.now
    );
    let _ = writeln!(
        o,
        "  mode:        configured {}, effective {} (state {})",
        s.configured_mode, s.effective_mode, s.state
    );
    let _ = writeln!(
        o,
        "  timing:      interval {} ms, lost threshold {} ms, lease {} ms",
        s.timing.interval_ms, s.timing.lost_threshold_ms, s.timing.lease_ms
    );
    let g = &s.gate;
    let _ = writeln!(
        o,
        "  gate:        {}{}, lease {}, VIPs [{}]",
        if g.open { "OPEN" } else { "closed" },
        if g.forward { " (forward mode)" } else { "" },
        g.lease_remaining_ms.map_or("-".into(), |l| if l < 0.0 {
            "lapsed".into()
        } else {
            format!("{l:.1} ms left")
        }),
        g.vips.join(", ")
    );
    if let Some(since) = g.stall_outage_ms {
        let _ = writeln!(
            o,
            "  !! STALL OUTAGE: gate closed {since:.1} ms ago (this agent stalled, its lease lapsed); role kept, reopens when the peer confirms"
        );
    }
    if g.stall_outages > 0 {
        let _ = writeln!(
            o,
            "  stalls:      {} stall outages, {:.1} ms in total (gate closed, no role change)",
            g.stall_outages, g.stall_outage_total_ms
        );
    }
    let p = &s.peer;
    let _ = writeln!(
        o,
        "  peer:        {} {}{}",
        if p.alive { "alive," } else { "LOST," },
        ago(p.last_heard_ms_ago),
        match (&p.configured_mode, &p.effective_mode) {
            (Some(c), Some(e)) => format!(
                ", configured {c}, effective {e}, flags {}",
                p.flags.as_deref().unwrap_or("-")
            ),
            _ => String::new(),
        }
    );
    for l in &s.links {
        let refused: Vec<String> = l
            .refused
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        let _ = writeln!(
            o,
            "  link {} {:<6} {} -> {}: {}, {}, {} accepted, {} gaps, {} sent{}",
            l.id,
            l.interface,
            l.local,
            l.peer,
            if l.healthy { "up" } else { "DOWN" },
            ago(l.last_heard_ms_ago),
            l.accepted,
            l.gaps,
            l.sent,
            if refused.is_empty() {
                String::new()
            } else {
                format!(", refused: {}", refused.join(", "))
            }
        );
    }
    match &s.last_transition {
        None => {
            let _ = writeln!(o, "  transition:  none yet");
        }
        Some(t) => {
            let _ = writeln!(
                o,
                "  transition:  {} -> {} at {} ({:.1} s ago): {}{}",
                t.from,
                t.to,
                t.at,
                t.ago_s,
                t.reason,
                t.detection_ms
                    .map_or(String::new(), |d| format!(" (detected in {d:.1} ms)"))
            );
        }
    }
    for m in &s.monitors {
        let _ = writeln!(
            o,
            "  monitor:     {:<28} {:<8} failures {}/{}, next check in {}{}",
            m.name,
            m.state,
            m.failures,
            m.threshold,
            ms(m.next_check_in_ms),
            m.last_error
                .as_ref()
                .map_or(String::new(), |e| format!(" ({e})"))
        );
    }
    let y = &s.sync;
    if y.enabled {
        let _ = writeln!(
            o,
            "  sync:        {}, lag {}, backlog {}, last data sync {}, last config sync {}{}",
            y.state,
            ms(y.lag_ms),
            y.backlog,
            y.last_data_sync.as_deref().unwrap_or("never"),
            y.last_config_sync.as_deref().unwrap_or("never"),
            y.config_checksum
                .as_ref()
                .map_or(String::new(), |c| format!(", config checksum {c}"))
        );
    }
    if let Some(a) = &s.acceptance {
        for (i, line) in a.render().iter().enumerate() {
            let label = if i == 0 { "acceptance:" } else { "" };
            let _ = writeln!(o, "  {label:<12} {line}");
        }
    }
    let _ = writeln!(
        o,
        "  sender:      {}, {} renewals, {} overruns, jitter p99 {}",
        if s.sender.realtime {
            "SCHED_FIFO"
        } else {
            "normal priority"
        },
        s.sender.renewals,
        s.sender.overruns,
        s.sender
            .jitter_p99_us
            .map_or("-".into(), |j| format!("{j:.0} us"))
    );
    if s.split_brain_risk {
        let _ = writeln!(
            o,
            "  !! SPLIT BRAIN RISK: every heartbeat link is silent and this node serves the VIPs"
        );
    }
    if s.outdated {
        let _ = writeln!(
            o,
            "  !! replica outdated: this node knows its data is behind"
        );
    }
    if let Some(h) = &s.hook_running {
        let _ = writeln!(o, "  hook:        running (to {h})");
    }
    if let Some(h) = &s.last_hook {
        let _ = writeln!(o, "  last hook:   {h}");
    }
    for w in &s.warnings {
        let _ = writeln!(o, "  warning:     {w}");
    }
    o
}
