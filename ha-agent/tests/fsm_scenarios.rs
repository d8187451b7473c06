//! Scenario tests of the role state machine (conformance tests, as
//! text): each `tests/fsm_scenarios/*.txt` holds a configuration, events in,
//! and after each event the actions, transitions and status that came out
//! (indented lines). The runner replays the events and compares the whole
//! file. `HA_REGEN_SCENARIOS=1` rewrites the indented lines after a
//! deliberate change; `expect` lines are assertions that regeneration never
//! touches, so a wrong behaviour cannot be blessed by regenerating.
//!
//! Syntax (times are humantime durations from 0, e.g. `12ms`, `1ms 500us`,
//! written before the event as `@<time>`):
//! ```text
//! # comment
//! config node=1 priority=100 mode=primary on-failure=become-secondary links=hb0,hb1
//!        threshold=6ms startup-wait=12ms handover-timeout=30ms rsah=no promote-outdated=no
//! peer node=2 priority=100 mode=secondary epoch=1        (defaults of `heard`)
//! @0ms start | tick | shutdown | resumed | lease-lapsed [at=<lease deadline>]
//! @1ms heard hb0[,hb1] [eff=..] [mode=..] [prio=..] [node=..] [epoch=..] [term=N]
//!        [echo=<send time of our echoed heartbeat>|none] [flags=active+claim+handover+leaving+outdated|-]
//! @2ms check ok|fail WHAT
//! @2ms sync lag=zero|pending outdated=yes|no
//! @2ms vip answered|silent
//! @2ms switch primary|secondary
//! expect state=.. effective=.. active=yes|no term=N blocked=..|none risk=yes|no
//!        peer=alive|lost wants-primary=yes|no promoted-outdated=yes|no
//!        serving=yes|no stall-outages=N transitions=N
//! ```
//! `heard` fields stick: a later `heard` repeats the last advert unless told.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ha_agent::fsm::{
    Advert, ConfiguredMode, EffectiveMode, Event, Fsm, FsmConfig, OnFailure, PeerView, SwitchTarget,
};

fn scenario_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fsm_scenarios")
}

fn parse_dur(s: &str) -> Result<u64, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("bad duration {s:?}: {e}"))?;
    u64::try_from(d.as_nanos()).map_err(|e| e.to_string())
}

fn yes(s: &str) -> Result<bool, String> {
    match s {
        "yes" | "true" => Ok(true),
        "no" | "false" => Ok(false),
        _ => Err(format!("expected yes/no, got {s:?}")),
    }
}

fn mode(s: &str) -> Result<ConfiguredMode, String> {
    match s {
        "primary" => Ok(ConfiguredMode::Primary),
        "secondary" => Ok(ConfiguredMode::Secondary),
        "off" => Ok(ConfiguredMode::Off),
        _ => Err(format!("bad mode {s:?}")),
    }
}

fn effective(s: &str) -> Result<EffectiveMode, String> {
    match s {
        "primary" => Ok(EffectiveMode::Primary),
        "secondary" => Ok(EffectiveMode::Secondary),
        "failed" => Ok(EffectiveMode::Failed),
        "off" => Ok(EffectiveMode::Off),
        _ => Err(format!("bad effective mode {s:?}")),
    }
}

fn kv(word: &str) -> Result<(&str, &str), String> {
    word.split_once('=')
        .ok_or_else(|| format!("expected key=value, got {word:?}"))
}

/// Splits `@1ms 500us heard hb0 ...` into the time and the rest: the time
/// runs up to the first word that does not parse as part of a duration.
fn split_time(line: &str) -> Result<(u64, Vec<&str>), String> {
    let words: Vec<&str> = line.trim_start_matches('@').split_whitespace().collect();
    let mut n = 1;
    while n < words.len() && humantime::parse_duration(&words[..=n].join(" ")).is_ok() {
        n += 1;
    }
    Ok((parse_dur(&words[..n].join(" "))?, words[n..].to_vec()))
}

struct Run {
    fsm: Option<Fsm>,
    cfg: FsmConfig,
    peer: PeerView,
    out: String,
    errors: Vec<String>,
    last_summary: String,
    seen_transitions: u64,
}

impl Run {
    fn new() -> Self {
        Self {
            fsm: None,
            cfg: FsmConfig {
                node_id: 1,
                priority: 100,
                mode: ConfiguredMode::Primary,
                on_failure: OnFailure::BecomeSecondary,
                links: vec!["hb0".into(), "hb1".into()],
                lost_threshold: Duration::from_millis(6),
                startup_wait: Duration::from_millis(12),
                handover_timeout: Duration::from_millis(30),
                remote_services_as_heartbeat: false,
                promote_outdated: false,
                grant_window: Duration::from_millis(6),
            },
            peer: PeerView {
                epoch: 1,
                advert: Advert {
                    node_id: 2,
                    priority: 100,
                    configured: ConfiguredMode::Secondary,
                    effective: EffectiveMode::Secondary,
                    active: false,
                    leaving: false,
                    handover: false,
                    claim: false,
                    outdated: false,
                    term: 0,
                },
                echo_sent: None,
            },
            out: String::new(),
            errors: Vec::new(),
            last_summary: String::new(),
            seen_transitions: 0,
        }
    }

    fn fsm(&mut self) -> Result<&mut Fsm, String> {
        if self.fsm.is_none() {
            self.fsm = Some(Fsm::new(self.cfg.clone()).map_err(|e| e.to_string())?);
        }
        self.fsm.as_mut().ok_or_else(|| "no fsm".into())
    }

    fn config(&mut self, words: &[&str]) -> Result<(), String> {
        for w in words {
            let (k, v) = kv(w)?;
            let c = &mut self.cfg;
            match k {
                "node" => c.node_id = v.parse().map_err(|e| format!("{k}: {e}"))?,
                "priority" => c.priority = v.parse().map_err(|e| format!("{k}: {e}"))?,
                "mode" => c.mode = mode(v)?,
                "on-failure" => {
                    c.on_failure = match v {
                        "off" => OnFailure::Off,
                        "restore-role" => OnFailure::RestoreRole,
                        "become-secondary" => OnFailure::BecomeSecondary,
                        _ => return Err(format!("bad on-failure {v:?}")),
                    }
                }
                "links" => c.links = v.split(',').map(str::to_owned).collect(),
                "threshold" => c.lost_threshold = Duration::from_nanos(parse_dur(v)?),
                "startup-wait" => c.startup_wait = Duration::from_nanos(parse_dur(v)?),
                "handover-timeout" => c.handover_timeout = Duration::from_nanos(parse_dur(v)?),
                "rsah" => c.remote_services_as_heartbeat = yes(v)?,
                "promote-outdated" => c.promote_outdated = yes(v)?,
                _ => return Err(format!("unknown config key {k:?}")),
            }
        }
        Ok(())
    }

    fn peer(&mut self, words: &[&str]) -> Result<(), String> {
        for w in words {
            let (k, v) = kv(w)?;
            let a = &mut self.peer.advert;
            match k {
                "node" => a.node_id = v.parse().map_err(|e| format!("{k}: {e}"))?,
                "prio" | "priority" => a.priority = v.parse().map_err(|e| format!("{k}: {e}"))?,
                "mode" => a.configured = mode(v)?,
                "eff" => a.effective = effective(v)?,
                "term" => a.term = v.parse().map_err(|e| format!("{k}: {e}"))?,
                "epoch" => self.peer.epoch = v.parse().map_err(|e| format!("{k}: {e}"))?,
                "echo" => {
                    self.peer.echo_sent = match v {
                        "none" => None,
                        _ => Some(parse_dur(v)?),
                    }
                }
                "flags" => {
                    a.set_wire_flags(0);
                    for f in v.split('+').filter(|f| *f != "-") {
                        match f {
                            "active" => a.active = true,
                            "claim" => a.claim = true,
                            "handover" => a.handover = true,
                            "leaving" => a.leaving = true,
                            "outdated" => a.outdated = true,
                            _ => return Err(format!("unknown flag {f:?}")),
                        }
                    }
                }
                _ => return Err(format!("unknown peer key {k:?}")),
            }
        }
        Ok(())
    }

    fn event(&mut self, at: u64, words: &[&str]) -> Result<Vec<Event>, String> {
        let (&verb, args) = words.split_first().ok_or("missing event")?;
        let arg = |i: usize| {
            args.get(i)
                .copied()
                .ok_or_else(|| format!("{verb}: missing argument"))
        };
        Ok(match verb {
            "start" => vec![Event::Start { now: at }],
            "tick" => vec![Event::Tick { now: at }],
            "shutdown" => vec![Event::Shutdown { now: at }],
            "resumed" => vec![Event::Resumed { now: at }],
            "lease-lapsed" => {
                let mut lapsed_at = at;
                for w in args {
                    match kv(w)? {
                        ("at", v) => lapsed_at = parse_dur(v)?,
                        (k, _) => return Err(format!("unknown lease-lapsed key {k:?}")),
                    }
                }
                vec![Event::LeaseLapsed {
                    now: at,
                    lapsed_at,
                    confirm_from: at,
                }]
            }
            "heard" => {
                self.peer(&args[1..])?;
                let mut evs = Vec::new();
                for name in arg(0)?.split(',') {
                    let link = self
                        .cfg
                        .links
                        .iter()
                        .position(|l| l == name)
                        .unwrap_or(usize::MAX);
                    evs.push(Event::PeerHeard {
                        at,
                        link,
                        view: self.peer,
                    });
                }
                evs
            }
            "check" => vec![Event::LocalCheck {
                now: at,
                ok: arg(0)? == "ok",
                what: args[1..].join(" "),
            }],
            "sync" => {
                let (mut lag_zero, mut outdated) = (true, false);
                for w in args {
                    match kv(w)? {
                        ("lag", v) => lag_zero = v == "zero",
                        ("outdated", v) => outdated = yes(v)?,
                        (k, _) => return Err(format!("unknown sync key {k:?}")),
                    }
                }
                vec![Event::SyncState {
                    now: at,
                    lag_zero,
                    outdated,
                }]
            }
            "vip" => vec![Event::VipProbe {
                at,
                answered: arg(0)? == "answered",
            }],
            "switch" => {
                let to = match arg(0)? {
                    "primary" => SwitchTarget::Primary,
                    "secondary" => SwitchTarget::Secondary,
                    other => return Err(format!("bad switch target {other:?}")),
                };
                vec![Event::OperatorSwitch { now: at, to }]
            }
            _ => return Err(format!("unknown event {verb:?}")),
        })
    }

    fn apply(&mut self, ev: Event) -> Result<(), String> {
        let fsm = self.fsm()?;
        let result = fsm.handle(ev);
        let (transitions, history): (u64, Vec<_>) =
            (fsm.status().transitions, fsm.history().cloned().collect());
        match result {
            Err(e) => writeln!(self.out, "  !! error: {e}").map_err(|e| e.to_string())?,
            Ok(actions) => {
                let new = usize::try_from(transitions - self.seen_transitions)
                    .map_err(|e| e.to_string())?;
                for t in &history[history.len() - new.min(history.len())..] {
                    let det = t
                        .detection_ns
                        .map(|d| {
                            format!(
                                ", detected after {}",
                                humantime::format_duration(Duration::from_nanos(d))
                            )
                        })
                        .unwrap_or_default();
                    writeln!(
                        self.out,
                        "  ~ {} -> {}: {} (term {}{det})",
                        t.from, t.to, t.reason, t.term
                    )
                    .map_err(|e| e.to_string())?;
                }
                for a in actions {
                    writeln!(self.out, "  -> {a}").map_err(|e| e.to_string())?;
                }
            }
        }
        self.seen_transitions = transitions;
        let summary = self.summary()?;
        if summary != self.last_summary {
            writeln!(self.out, "  = {summary}").map_err(|e| e.to_string())?;
            self.last_summary = summary;
        }
        Ok(())
    }

    fn summary(&mut self) -> Result<String, String> {
        let fsm = self.fsm()?;
        let s = fsm.status();
        let adv = fsm.advert();
        let mut line = format!(
            "{} eff={} term={} advert={}@{}",
            s.state,
            s.effective,
            s.term,
            adv.flag_names(),
            adv.term
        );
        line += if s.peer.alive {
            " peer=alive"
        } else {
            " peer=lost"
        };
        if s.split_brain_risk {
            line += " SPLIT-BRAIN-RISK";
        }
        if let Some(b) = s.blocked {
            write!(line, " blocked={b}").map_err(|e| e.to_string())?;
        }
        if s.promoted_outdated {
            line += " PROMOTED-OUTDATED";
        }
        if s.wants_primary {
            line += " wants-primary";
        }
        if s.stall_outage_since.is_some() {
            line += " gate=stall-outage";
        }
        if s.stall_outages > 0 {
            write!(line, " stall-outages={}", s.stall_outages).map_err(|e| e.to_string())?;
        }
        Ok(line)
    }

    fn expect(&mut self, words: &[&str]) -> Result<(), String> {
        let s = self.fsm()?.status();
        for w in words {
            let (k, v) = kv(w)?;
            let got = match k {
                "state" => s.state.to_string(),
                "effective" => s.effective.to_string(),
                "active" => if s.active { "yes" } else { "no" }.to_owned(),
                "term" => s.term.to_string(),
                "blocked" => s.blocked.map_or("none".to_owned(), |b| b.to_string()),
                "risk" => if s.split_brain_risk { "yes" } else { "no" }.to_owned(),
                "peer" => if s.peer.alive { "alive" } else { "lost" }.to_owned(),
                "wants-primary" => if s.wants_primary { "yes" } else { "no" }.to_owned(),
                "promoted-outdated" => if s.promoted_outdated { "yes" } else { "no" }.to_owned(),
                "serving" => if s.active && s.stall_outage_since.is_none() {
                    "yes"
                } else {
                    "no"
                }
                .to_owned(),
                "stall-outages" => s.stall_outages.to_string(),
                "transitions" => s.transitions.to_string(),
                _ => return Err(format!("unknown expect key {k:?}")),
            };
            if got != v {
                self.errors
                    .push(format!("expect {k}={v}, got {got} (at {})", s.now));
            }
        }
        Ok(())
    }
}

/// Replays one scenario; returns the regenerated text and failed expectations.
fn replay(text: &str) -> Result<(String, Vec<String>), String> {
    let mut run = Run::new();
    let mut regenerated = String::new();
    for (no, line) in text.lines().enumerate() {
        if line.starts_with("  ") {
            continue; // output of the previous event: regenerated below
        }
        regenerated.push_str(line);
        regenerated.push('\n');
        let words: Vec<&str> = line.split_whitespace().collect();
        let res = match words.first().copied() {
            None | Some("#") => Ok(()),
            Some(w) if w.starts_with('#') => Ok(()),
            Some("config") => run.config(&words[1..]),
            Some("peer") => run.peer(&words[1..]),
            Some("expect") => run.expect(&words[1..]),
            Some(w) if w.starts_with('@') => split_time(line).and_then(|(at, rest)| {
                for ev in run.event(at, &rest)? {
                    run.apply(ev)?;
                }
                Ok(())
            }),
            Some(other) => Err(format!("unknown directive {other:?}")),
        };
        res.map_err(|e| format!("line {}: {e}", no + 1))?;
        regenerated.push_str(&std::mem::take(&mut run.out));
    }
    Ok((regenerated, run.errors))
}

#[test]
fn fsm_scenarios() {
    let regen = std::env::var("HA_REGEN_SCENARIOS").is_ok_and(|v| v == "1");
    let mut files: Vec<PathBuf> = std::fs::read_dir(scenario_dir())
        .expect("scenario directory")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 20,
        "expected the scenario set, found {} files",
        files.len()
    );
    let mut failures = Vec::new();
    for path in &files {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let text = std::fs::read_to_string(path).expect("read scenario");
        let (got, errors) = match replay(&text) {
            Ok(r) => r,
            Err(e) => {
                failures.push(format!("{name}: {e}"));
                continue;
            }
        };
        for e in errors {
            failures.push(format!("{name}: {e}"));
        }
        if got != text {
            if regen {
                std::fs::write(path, &got).expect("write scenario");
                eprintln!("regenerated {name}");
            } else {
                let diff = got
                    .lines()
                    .zip(text.lines())
                    .enumerate()
                    .find(|(_, (a, b))| a != b)
                    .map_or_else(
                        || "lengths differ".to_owned(),
                        |(i, (a, b))| format!("line {}: expected {b:?}, got {a:?}", i + 1),
                    );
                failures.push(format!("{name}: output differs ({diff}); HA_REGEN_SCENARIOS=1 regenerates after a deliberate change"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} scenario failure(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn runner_catches_a_wrong_expectation_and_a_changed_output() {
    let text = "@0ms start\nexpect state=primary\n";
    let (out, errors) = replay(text).expect("replays");
    assert_eq!(errors.len(), 1, "a wrong expect fails: {errors:?}");
    assert_ne!(out, text, "the output lines are added");
    let (again, _) = replay(&out).expect("replays");
    assert_eq!(again, out, "regeneration is stable");
}
