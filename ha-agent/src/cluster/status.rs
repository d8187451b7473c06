//! What `ha-agent status` shows of a config-only member.

use serde::{Deserialize, Serialize};

use super::primary::MemberStatus;
use super::store::ApplyReport;

/// The config-only part of the status page.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ConfigOnlyStatus {
    /// `primary` (pushes) or `member` (receives).
    pub role: String,
    /// Version in force on this node.
    pub version: Option<String>,
    /// Checksum of its content.
    pub checksum: Option<String>,
    /// Node that issued it.
    pub origin: Option<String>,
    /// The last install on this node.
    pub last_apply: Option<ApplyReport>,
    /// This node's files differ from what it applied (last check).
    pub drift: bool,
    /// Generations kept here, oldest first.
    pub generations: Vec<String>,
    /// On a member: the primary that pushes to it.
    pub primary: Option<String>,
    /// On a member: the primary's version.
    pub primary_version: Option<String>,
    /// On a member: the primary answered within the down threshold.
    pub primary_up: bool,
    /// On a member: milliseconds since the primary was heard.
    pub primary_last_heard_ms_ago: Option<f64>,
    /// Members up, as the primary last said (on a member) or sees (on the primary).
    pub up: Vec<String>,
    /// Sessions this node refused (wrong password, other cluster, bad input).
    pub refused_sessions: u64,
    /// Why the last one was refused.
    pub last_refused: Option<String>,
    /// On the primary: a member runs a newer version (another node was
    /// made primary), so this one stopped pushing.
    pub superseded_by: Option<String>,
    /// On the primary: every member.
    pub members: Vec<MemberStatus>,
}

/// The config-only status as text (appended to the status page).
#[must_use]
pub fn render(c: &ConfigOnlyStatus) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let apply = |a: &Option<ApplyReport>| {
        a.as_ref().map_or_else(
            || "none".to_owned(),
            |a| {
                format!(
                    "{} {} at {} ({:.0} ms): {}",
                    a.version,
                    if a.ok { "ok" } else { "FAILED" },
                    humantime::format_rfc3339_millis(
                        std::time::UNIX_EPOCH + std::time::Duration::from_millis(a.at_ms)
                    ),
                    a.took_ms,
                    a.detail
                )
            },
        )
    };
    let _ = writeln!(
        o,
        "  config-only: {}, version {} checksum {} (issued by {}){}",
        c.role,
        c.version.as_deref().unwrap_or("none"),
        c.checksum.as_deref().unwrap_or("-"),
        c.origin.as_deref().unwrap_or("-"),
        if c.drift {
            ", DRIFT: files edited by hand"
        } else {
            ""
        }
    );
    let _ = writeln!(o, "  last apply:  {}", apply(&c.last_apply));
    let _ = writeln!(o, "  generations: {}", c.generations.join(" "));
    if c.role == "member" {
        let _ = writeln!(
            o,
            "  primary:     {} {}, version {}, heard {}",
            c.primary.as_deref().unwrap_or("none yet"),
            if c.primary_up { "up" } else { "DOWN" },
            c.primary_version.as_deref().unwrap_or("-"),
            c.primary_last_heard_ms_ago
                .map_or_else(|| "never".into(), |m| format!("{:.1} s ago", m / 1000.0))
        );
    }
    if !c.up.is_empty() {
        let _ = writeln!(o, "  up:          {}", c.up.join(" "));
    }
    if let Some(s) = &c.superseded_by {
        let _ = writeln!(
            o,
            "  !! superseded: a member runs version {s}; another node is config primary, this one stopped pushing"
        );
    }
    if c.refused_sessions > 0 {
        let _ = writeln!(
            o,
            "  refused:     {} sessions, last: {}",
            c.refused_sessions,
            c.last_refused.as_deref().unwrap_or("-")
        );
    }
    if !c.members.is_empty() {
        let _ = writeln!(
            o,
            "  {:<16} {:<15} {:<8} {:<4} {:>9} {:<9} {:<24} last apply",
            "member", "address", "state", "up", "heard", "version", "checksum"
        );
    }
    for m in &c.members {
        let _ = writeln!(
            o,
            "  {:<16} {:<15} {:<8} {:<4} {:>9} {:<9} {:<24} {}{}{}",
            m.name,
            m.address,
            m.state,
            if m.up { "up" } else { "DOWN" },
            m.last_heard_ms_ago
                .map_or_else(|| "never".into(), |x| format!("{:.1}s", x / 1000.0)),
            m.version.as_deref().unwrap_or("-"),
            m.checksum.as_deref().unwrap_or("-"),
            apply(&m.last_apply),
            if m.drift_repairs > 0 {
                format!(", drift repaired {}x", m.drift_repairs)
            } else {
                String::new()
            },
            m.refused
                .as_ref()
                .or(m.error.as_ref().filter(|_| !m.up))
                .map_or_else(String::new, |r| format!(" [{r}]"))
        );
    }
    o
}
