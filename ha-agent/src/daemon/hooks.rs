//! The one hook runner: role hooks (`[hooks]`) and the config sync's
//! `after_apply` both go through [`run`]: `/bin/sh -c CMD` in its own
//! process group, bounded by a timeout (the group is killed), every output
//! line logged as it comes (one log line per output line, capped), the
//! outcome returned for status.
//!
//! Role hooks are carried out by [`RoleHooks`], one worker thread per node:
//! a promote hook never runs while a demote hook runs (they would race:
//! `postfix start` beside `postfix stop`), and while one runs only the
//! newest request waits behind it (last one wins: a demote superseded by a
//! promote before it started never runs). A request for the role the last
//! successful hook already brought the node to runs nothing.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, mpsc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime};

use tracing::{debug, error, info, warn};

use crate::{config::Hooks, fsm::EffectiveMode};

/// Longest a role hook may run before its process group is killed. A
/// promote hook that has not started the MTA by then will not: the node
/// serves nothing, which the operator must see (status) rather than wait on.
pub const ROLE_HOOK_TIMEOUT: Duration = Duration::from_secs(60);

/// Output lines logged per run; the rest are counted.
const MAX_LOGGED_LINES: usize = 200;
/// Last output lines kept for status.
const TAIL_LINES: usize = 3;
/// After the hook exits, how long its pipes may stay open (a daemon it
/// started that kept them) before the runner stops reading them.
const PIPE_GRACE: Duration = Duration::from_secs(1);

/// How a hook ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookResult {
    /// Exit status 0.
    Ok,
    /// Non-zero exit or killed by a signal (the status as text).
    Failed(String),
    /// Ran past its timeout; its process group was killed.
    TimedOut(Duration),
    /// Could not be started.
    NotStarted(String),
}

/// One finished hook run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// What kind of hook (`on_primary`, `after_apply`, ...).
    pub name: String,
    pub command: String,
    pub finished: SystemTime,
    pub elapsed: Duration,
    pub result: HookResult,
    /// The last lines of its output (stdout and stderr interleaved).
    pub tail: Vec<String>,
}

impl Outcome {
    #[must_use]
    pub fn ok(&self) -> bool {
        self.result == HookResult::Ok
    }

    /// One line: `ok` or what went wrong, with the last output line.
    #[must_use]
    pub fn summary(&self) -> String {
        let r = match &self.result {
            HookResult::Ok => return "ok".into(),
            HookResult::Failed(s) => format!("failed: {s}"),
            HookResult::TimedOut(t) => format!("killed after {t:?}"),
            HookResult::NotStarted(e) => format!("not started: {e}"),
        };
        match self.tail.last() {
            Some(l) => format!("{r} ({l})"),
            None => r,
        }
    }
}

enum Piped {
    Line(&'static str, String),
    Eof,
}

fn pump(stream: &'static str, r: impl Read, tx: &mpsc::Sender<Piped>) {
    let mut r = BufReader::new(r);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match r.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let l = String::from_utf8_lossy(&buf).trim_end().to_owned();
                if tx.send(Piped::Line(stream, l)).is_err() {
                    break;
                }
            }
        }
    }
    let _ = tx.send(Piped::Eof);
}

/// Runs `command` by `/bin/sh -c` with `env` added, bounded by `timeout`.
/// Blocking: call it from a thread of its own, never from the control loop.
pub fn run(name: &str, command: &str, env: &[(&str, String)], timeout: Duration) -> Outcome {
    let started = Instant::now();
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group, so a timeout kills what it started too.
        .process_group(0);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let done = |result, tail| Outcome {
        name: name.to_owned(),
        command: command.to_owned(),
        finished: SystemTime::now(),
        elapsed: started.elapsed(),
        result,
        tail,
    };
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            error!(hook = name, command, error = %e, "hook could not start");
            return done(HookResult::NotStarted(e.to_string()), Vec::new());
        }
    };
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    let mut open = 0;
    if let Some(o) = child.stdout.take() {
        let tx = tx.clone();
        open += 1;
        thread::spawn(move || pump("stdout", o, &tx));
    }
    if let Some(e) = child.stderr.take() {
        let tx = tx.clone();
        open += 1;
        thread::spawn(move || pump("stderr", e, &tx));
    }
    drop(tx);
    let deadline = started + timeout;
    let mut tail: Vec<String> = Vec::new();
    let mut logged = 0usize;
    let mut dropped = 0usize;
    let mut timed_out = false;
    let mut note = |stream: &str, line: String, tail: &mut Vec<String>| {
        if logged < MAX_LOGGED_LINES {
            logged += 1;
            info!(hook = name, pid, stream, "{line}");
        } else {
            dropped += 1;
        }
        if tail.len() == TAIL_LINES {
            tail.remove(0);
        }
        tail.push(line);
    };
    let mut status = None;
    loop {
        // Exit is checked between reads: a hook whose output is closed but
        // which still runs is waited for below.
        if open == 0 {
            break;
        }
        let wait = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait.min(Duration::from_millis(200))) {
            Ok(Piped::Line(s, l)) => note(s, l, &mut tail),
            Ok(Piped::Eof) => open -= 1,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if let Ok(Some(st)) = child.try_wait() {
            status = Some(st);
            // A daemon it started may keep the pipes: read what is left
            // for a moment, then stop listening.
            let grace = Instant::now() + PIPE_GRACE;
            while open > 0 {
                match rx.recv_timeout(grace.saturating_duration_since(Instant::now())) {
                    Ok(Piped::Line(s, l)) => note(s, l, &mut tail),
                    Ok(Piped::Eof) => open -= 1,
                    Err(_) => break,
                }
            }
            break;
        }
        if Instant::now() >= deadline {
            timed_out = true;
            break;
        }
    }
    let status: Result<std::process::ExitStatus, HookResult> = match status {
        Some(s) => Ok(s),
        None if timed_out => {
            kill_group(pid);
            let _ = child.wait();
            Err(HookResult::TimedOut(timeout))
        }
        None => {
            // Output closed; wait for the exit within what is left.
            loop {
                match child.try_wait() {
                    Ok(Some(s)) => break Ok(s),
                    Ok(None) if Instant::now() >= deadline => {
                        kill_group(pid);
                        let _ = child.wait();
                        break Err(HookResult::TimedOut(timeout));
                    }
                    // Nothing left to read: a short sleep is the wait.
                    Ok(None) => thread::sleep(Duration::from_millis(20)),
                    Err(e) => break Err(HookResult::Failed(format!("wait: {e}"))),
                }
            }
        }
    };
    if dropped > 0 {
        info!(
            hook = name,
            pid,
            lines = dropped,
            "hook output: more lines not logged"
        );
    }
    let result = match status {
        Err(r) => r,
        Ok(s) if s.success() => HookResult::Ok,
        Ok(s) => HookResult::Failed(s.to_string()),
    };
    let out = done(result, tail);
    let ms = out.elapsed.as_millis() as u64;
    match &out.result {
        HookResult::Ok => info!(hook = name, command, pid, ms, "hook done"),
        _ => error!(hook = name, command, pid, ms, result = %out.summary(), "hook failed"),
    }
    out
}

fn kill_group(pid: u32) {
    if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process_group(p, rustix::process::Signal::KILL);
    }
}

/// The `[hooks]` key run on becoming `to`.
fn role_key(to: EffectiveMode) -> &'static str {
    match to {
        EffectiveMode::Primary => "on_primary",
        EffectiveMode::Secondary => "on_secondary",
        EffectiveMode::Failed => "on_failed",
        EffectiveMode::Off => "on_off",
    }
}

/// The hook for a transition into `to`, if configured.
fn command_for(hooks: &Hooks, to: EffectiveMode) -> Option<&str> {
    match to {
        EffectiveMode::Primary => hooks.on_primary.as_deref(),
        EffectiveMode::Secondary => hooks.on_secondary.as_deref(),
        EffectiveMode::Failed => hooks.on_failed.as_deref(),
        EffectiveMode::Off => hooks.on_off.as_deref(),
    }
}

#[derive(Debug, Clone)]
struct Request {
    from: EffectiveMode,
    to: EffectiveMode,
    reason: String,
    /// Replica sessions that must stop before the hook runs (promotion).
    replica: Option<crate::sync::ReplicaSessions>,
}

/// Longest wait for the replica sessions to stop before a promotion hook
/// runs anyway (logged as an error).
const REPLICA_STOP_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
struct Queue {
    pending: Option<Request>,
    /// The role the last successful hook brought the node to.
    settled: Option<EffectiveMode>,
    /// A hook is running (its target role).
    running: Option<EffectiveMode>,
    last: Option<Outcome>,
    stop: bool,
}

/// What the status page shows of the role hooks.
#[derive(Debug, Clone, Default)]
pub struct RoleHookStatus {
    /// The hook running now, by target role.
    pub running: Option<EffectiveMode>,
    /// The newest finished run.
    pub last: Option<Outcome>,
}

/// Work done before the promote hook (see [`RoleHooks::spawn`]).
pub type BeforePrimary = Box<dyn Fn() + Send>;

/// Serialized role hooks of one node (see the module comment).
pub struct RoleHooks {
    q: Arc<(Mutex<Queue>, Condvar)>,
    worker: Option<JoinHandle<()>>,
}

impl RoleHooks {
    /// Starts the worker.
    ///
    /// # Errors
    /// The thread could not be created.
    /// `before_primary` runs on the worker before the `on_primary` hook (and
    /// in its place when none is configured): what must be true before the
    /// node's services start (the replica sessions ended, the spool made
    /// deliverable).
    pub fn spawn(
        hooks: Hooks,
        timeout: Duration,
        before_primary: Option<BeforePrimary>,
    ) -> std::io::Result<Self> {
        let q: Arc<(Mutex<Queue>, Condvar)> = Arc::default();
        let qq = q.clone();
        // A plain thread: the hook's children must not inherit a realtime
        // runtime's priority, and waiting on them blocks.
        let worker = thread::Builder::new()
            .name("role-hooks".into())
            .spawn(move || worker(&qq, &hooks, timeout, before_primary.as_deref()))?;
        Ok(Self {
            q,
            worker: Some(worker),
        })
    }

    /// Asks for the hook of `from -> to`; replaces a request not started yet.
    /// With `replica`, the hook runs only once no replica session writes to
    /// the tree any more: a promotion hook such as `postsuper -s` must not
    /// race the last writes of the old primary.
    pub fn request(
        &self,
        from: EffectiveMode,
        to: EffectiveMode,
        reason: String,
        replica: Option<crate::sync::ReplicaSessions>,
    ) {
        let (m, cv) = &*self.q;
        let mut q = m.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(old) = q.pending.replace(Request {
            from,
            to,
            reason,
            replica,
        }) {
            debug!(superseded = %old.to, by = %to, "role hook superseded before it started");
        }
        cv.notify_all();
    }

    #[must_use]
    pub fn status(&self) -> RoleHookStatus {
        let q = self.q.0.lock().unwrap_or_else(|p| p.into_inner());
        RoleHookStatus {
            running: q.running,
            last: q.last.clone(),
        }
    }

    /// Waits until nothing is pending or running, up to `timeout`; whether
    /// the queue became idle.
    pub fn idle(&self, timeout: Duration) -> bool {
        let (m, cv) = &*self.q;
        let q = m.lock().unwrap_or_else(|p| p.into_inner());
        let (q, _) = cv
            .wait_timeout_while(q, timeout, |q| q.pending.is_some() || q.running.is_some())
            .unwrap_or_else(|p| p.into_inner());
        q.pending.is_none() && q.running.is_none()
    }
}

impl Drop for RoleHooks {
    fn drop(&mut self) {
        {
            let (m, cv) = &*self.q;
            m.lock().unwrap_or_else(|p| p.into_inner()).stop = true;
            cv.notify_all();
        }
        // A running hook finishes (bounded by its timeout) in the
        // background: shutdown does not wait for it.
        drop(self.worker.take());
    }
}

fn worker(
    q: &(Mutex<Queue>, Condvar),
    hooks: &Hooks,
    timeout: Duration,
    before_primary: Option<&(dyn Fn() + Send)>,
) {
    let (m, cv) = q;
    loop {
        let req = {
            let mut g = m.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                if g.stop {
                    return;
                }
                if let Some(r) = g.pending.take() {
                    if g.settled == Some(r.to) {
                        debug!(to = %r.to, "role hook skipped: the node is already there");
                        cv.notify_all();
                        continue;
                    }
                    g.running = Some(r.to);
                    break r;
                }
                g = cv.wait(g).unwrap_or_else(|p| p.into_inner());
            }
        };
        if let Some(r) = &req.replica {
            r.close();
            if !r.wait_stopped(REPLICA_STOP_WAIT) {
                error!(from = %req.from, to = %req.to, wait = ?REPLICA_STOP_WAIT, "a replica session is still running; the hook runs anyway");
            }
        }
        if req.to == EffectiveMode::Primary
            && let Some(f) = before_primary
        {
            f();
        }
        let outcome = command_for(hooks, req.to).map(|cmd| {
            info!(hook = role_key(req.to), from = %req.from, to = %req.to, reason = %req.reason, "role hook starting");
            run(
                role_key(req.to),
                cmd,
                &[
                    ("HA_OLD_ROLE", req.from.to_string()),
                    ("HA_NEW_ROLE", req.to.to_string()),
                    ("HA_REASON", req.reason.clone()),
                ],
                timeout,
            )
        });
        let mut g = m.lock().unwrap_or_else(|p| p.into_inner());
        g.running = None;
        match outcome {
            Some(o) => {
                // A failed hook leaves the node's services in an unknown
                // state: the next request for the same role runs it again.
                g.settled = o.ok().then_some(req.to);
                if !o.ok() {
                    warn!(to = %req.to, result = %o.summary(), "role hook failed: see status");
                }
                g.last = Some(o);
            }
            None => g.settled = Some(req.to),
        }
        cv.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_reports_status_output_and_timeout() {
        let o = run(
            "t",
            "echo one; echo two >&2; exit 3",
            &[],
            Duration::from_secs(10),
        );
        assert_eq!(o.result, HookResult::Failed("exit status: 3".into()));
        assert_eq!(o.tail.len(), 2);
        assert!(
            o.summary().starts_with("failed: exit status: 3"),
            "{}",
            o.summary()
        );
        let o = run(
            "t",
            "echo $X",
            &[("X", "v".into())],
            Duration::from_secs(10),
        );
        assert!(o.ok());
        assert_eq!(o.tail, vec!["v".to_owned()]);
        let t = Instant::now();
        let o = run("t", "sleep 30", &[], Duration::from_millis(300));
        assert_eq!(o.result, HookResult::TimedOut(Duration::from_millis(300)));
        assert!(t.elapsed() < Duration::from_secs(10));
        // A background child that keeps the pipes does not hold the runner.
        let t = Instant::now();
        let o = run("t", "sleep 30 & echo started", &[], Duration::from_secs(20));
        assert!(o.ok());
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    }

    fn hooks(dir: &std::path::Path) -> Hooks {
        let log = dir.join("log");
        let cmd = |tag: &str, secs: &str| {
            Some(format!(
                "echo start-{tag} >> {l}; sleep {secs}; echo end-{tag} >> {l}",
                l = log.display()
            ))
        };
        Hooks {
            on_primary: cmd("p", "0.3"),
            on_secondary: cmd("s", "0.3"),
            on_failed: None,
            on_off: None,
        }
    }

    #[test]
    fn role_hooks_never_overlap_and_the_last_wins() {
        let dir = std::env::temp_dir().join(format!("ha-hooks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let _ = std::fs::remove_file(dir.join("log"));
        let h = RoleHooks::spawn(hooks(&dir), Duration::from_secs(10), None).unwrap();
        use EffectiveMode::{Primary, Secondary};
        h.request(Secondary, Primary, "a".into(), None);
        thread::sleep(Duration::from_millis(100));
        // While the promote runs: demote, promote, demote; only the last runs.
        h.request(Primary, Secondary, "b".into(), None);
        h.request(Secondary, Primary, "c".into(), None);
        h.request(Primary, Secondary, "d".into(), None);
        assert!(h.idle(Duration::from_secs(10)));
        // Already secondary: nothing runs.
        h.request(Primary, Secondary, "e".into(), None);
        assert!(h.idle(Duration::from_secs(10)));
        let log = std::fs::read_to_string(dir.join("log")).unwrap();
        assert_eq!(log, "start-p\nend-p\nstart-s\nend-s\n");
        assert!(h.status().last.unwrap().ok());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_failed_role_hook_is_reported_and_retried() {
        let h = RoleHooks::spawn(
            Hooks {
                on_primary: Some("echo boom >&2; exit 1".into()),
                ..Hooks::default()
            },
            Duration::from_secs(10),
            None,
        )
        .unwrap();
        h.request(
            EffectiveMode::Secondary,
            EffectiveMode::Primary,
            "x".into(),
            None,
        );
        assert!(h.idle(Duration::from_secs(10)));
        let last = h.status().last.unwrap();
        assert!(!last.ok());
        assert_eq!(last.summary(), "failed: exit status: 1 (boom)");
        let t0 = last.finished;
        h.request(
            EffectiveMode::Secondary,
            EffectiveMode::Primary,
            "y".into(),
            None,
        );
        assert!(h.idle(Duration::from_secs(10)));
        assert!(h.status().last.unwrap().finished > t0, "ran again");
    }
}
