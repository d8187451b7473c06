//! Translations between the configuration, the wire and the state machine.

use std::time::Duration;

use sha2::Digest as _;

use crate::{
    config::{self, Config},
    fsm::{Advert, ConfiguredMode, EffectiveMode, FsmConfig, OnFailure, PeerView},
    heartbeat::{Heartbeat, Mode, NodeSnapshot},
};

/// A stable node id from the node name (both members must differ).
pub fn node_id(name: &str) -> u32 {
    let h = sha2::Sha256::digest(name.as_bytes());
    u32::from_be_bytes([h[0], h[1], h[2], h[3]]).max(1)
}

pub fn configured(m: config::Mode) -> ConfiguredMode {
    match m {
        config::Mode::Primary => ConfiguredMode::Primary,
        config::Mode::Secondary => ConfiguredMode::Secondary,
        _ => ConfiguredMode::Off,
    }
}

pub fn on_failure(p: config::OnFailure) -> OnFailure {
    match p {
        config::OnFailure::Off => OnFailure::Off,
        config::OnFailure::RestoreRole => OnFailure::RestoreRole,
        config::OnFailure::BecomeSecondary => OnFailure::BecomeSecondary,
    }
}

/// How long a planned switch may take before it is abandoned.
fn handover_timeout(cfg: &Config) -> Duration {
    (cfg.cluster.lost_threshold * 4)
        .max(Duration::from_secs(2))
        .max(cfg.backup.max_lag * 2)
}

pub fn fsm_config(cfg: &Config) -> FsmConfig {
    FsmConfig {
        node_id: node_id(&cfg.node.name),
        priority: cfg.node.priority,
        mode: configured(cfg.node.mode),
        on_failure: on_failure(cfg.node.on_failure),
        links: cfg.heartbeat.iter().map(|l| l.interface.clone()).collect(),
        lost_threshold: cfg.cluster.lost_threshold,
        startup_wait: cfg.cluster.startup_wait,
        handover_timeout: handover_timeout(cfg),
        remote_services_as_heartbeat: cfg.cluster.remote_services_as_heartbeat,
        promote_outdated: cfg.cluster.promote_outdated,
        grant_window: {
            let t = cfg.cluster.timing();
            let margin = t.interval.max(Duration::from_millis(1));
            t.lost_threshold
                .saturating_sub(t.lease)
                .saturating_sub(margin)
        },
    }
}

fn wire_configured(m: ConfiguredMode) -> Mode {
    match m {
        ConfiguredMode::Primary => Mode::Primary,
        ConfiguredMode::Secondary => Mode::Secondary,
        ConfiguredMode::Off => Mode::Off,
    }
}

fn wire_effective(m: EffectiveMode) -> Mode {
    match m {
        EffectiveMode::Primary => Mode::Primary,
        EffectiveMode::Secondary => Mode::Secondary,
        EffectiveMode::Failed => Mode::Failed,
        EffectiveMode::Off => Mode::Off,
    }
}

/// What the heartbeat sender puts in every frame.
pub fn snapshot(a: &Advert, sync_seq: u64) -> NodeSnapshot {
    NodeSnapshot {
        flags: a.wire_flags(),
        configured_mode: wire_configured(a.configured),
        effective_mode: wire_effective(a.effective),
        priority: a.priority,
        term: a.term,
        sync_seq,
    }
}

/// The state machine's view of an authenticated heartbeat.
pub fn peer_view(hb: &Heartbeat) -> PeerView {
    let configured =
        ConfiguredMode::from_wire_code(hb.configured_mode.code()).unwrap_or(ConfiguredMode::Off);
    let effective =
        EffectiveMode::from_wire_code(hb.effective_mode.code()).unwrap_or(EffectiveMode::Off);
    let mut advert = Advert {
        node_id: hb.node_id,
        priority: hb.priority,
        configured,
        effective,
        active: false,
        leaving: false,
        handover: false,
        claim: false,
        outdated: false,
        term: hb.term,
    };
    advert.set_wire_flags(hb.flags);
    PeerView {
        epoch: hb.epoch,
        advert,
        echo_sent: None,
    }
}
