//! The proxy's I/O shell: a tokio listener, one task per SMTP connection
//! (bytes through [`Session`]), and one task that owns the [`Holds`] core,
//! feeds it acknowledgements, peer state and deadlines, and carries out
//! its actions. Nothing here decides; it only moves bytes and events.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

use super::holds::{Action, Event, HoldId, Holds, Policy};
use super::session::{Answer, Session};
use super::status::AcceptanceStatus;
use crate::fsm::Nanos;
use crate::heartbeat::clock::now_ns;
use crate::metrics::Metrics;

/// What the strict policy answers. 4.3.0: "other or undefined mail system
/// status", temporary: the client keeps the message and retries.
pub const REFUSAL: &[u8] =
    b"451 4.3.0 Error: the standby node could not confirm a copy; try again later\r\n";
/// The greeting when the after-filter smtpd cannot be reached.
pub const AFTER_FILTER_DOWN: &[u8] =
    b"421 4.3.0 Error: mail queue unavailable; try again later\r\n";
/// What a client gets when the session breaks (bad input or after-filter gone).
const BROKEN: &[u8] = b"421 4.3.0 Error: proxy session ended; try again later\r\n";

/// Connecting to the after-filter smtpd (on the same host) takes
/// microseconds; a second means it is down or overloaded.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A side silent this long ends the session: above Postfix's own
/// `smtpd_timeout` (300 s) so that Postfix always times out first, with
/// its own answer.
const IDLE_TIMEOUT: Duration = Duration::from_secs(330);
/// Read size: also the most a session keeps from the after-filter while a
/// reply is held.
const READ_SIZE: usize = 64 * 1024;
/// How long `postsuper -d` may take before it is given up on.
const REMOVE_TIMEOUT: Duration = Duration::from_secs(30);
/// Added latencies kept for the status percentiles.
const LATENCY_WINDOW: usize = 1000;

/// Settings of the proxy.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Where the before-filter smtpd connects (`smtpd_proxy_filter`).
    pub listen: SocketAddr,
    /// The after-filter smtpd (a second smtpd in master.cf).
    pub after_filter: SocketAddr,
    /// How long a queued reply waits for the peer.
    pub timeout: Duration,
    pub policy: Policy,
    /// Postfix `config_directory` for `postsuper -c` (strict removals).
    pub postfix_config: PathBuf,
    /// `postsuper` program.
    pub postsuper: PathBuf,
}

enum Msg {
    Held {
        hold: HoldId,
        queue_id: Option<String>,
        dot_at: Nanos,
        reply_to: mpsc::UnboundedSender<(u64, Answer)>,
    },
    Durable {
        queue_id: String,
        seen: Nanos,
    },
    Peer(bool),
    Gone(u64),
}

/// Shared with the daemon: status and the feed.
struct Shared {
    status: Mutex<AcceptanceStatus>,
    sessions: AtomicU64,
    latencies: Mutex<std::collections::VecDeque<f64>>,
    metrics: Option<Arc<Metrics>>,
}

impl Shared {
    fn with<T>(&self, f: impl FnOnce(&mut AcceptanceStatus) -> T) -> T {
        f(&mut self.status.lock().unwrap_or_else(|p| p.into_inner()))
    }
    fn error(&self, kind: &'static str) {
        self.with(|s| *s.errors.entry(kind.into()).or_default() += 1);
        if let Some(m) = &self.metrics {
            m.acceptance_error(kind);
        }
    }
}

/// A cheap, clonable way to feed the proxy from any thread.
#[derive(Clone)]
pub struct Feed {
    tx: mpsc::UnboundedSender<Msg>,
}

impl Feed {
    /// The peer made queue file `queue_id` durable; the copy was taken
    /// after `seen` (CLOCK_MONOTONIC ns).
    pub fn durable(&self, queue_id: &str, seen: Nanos) {
        let _ = self.tx.send(Msg::Durable {
            queue_id: queue_id.to_owned(),
            seen,
        });
    }

    /// Whether the peer can confirm (sync connected and in sync).
    pub fn peer(&self, available: bool) {
        let _ = self.tx.send(Msg::Peer(available));
    }
}

/// The running proxy; stops its tasks on drop.
pub struct Proxy {
    feed: Feed,
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Proxy {
    /// Binds `cfg.listen` and starts serving on the current tokio runtime.
    ///
    /// # Errors
    /// The listen address cannot be bound.
    pub async fn start(cfg: ProxyConfig, metrics: Option<Arc<Metrics>>) -> std::io::Result<Self> {
        let listener = TcpListener::bind(cfg.listen).await?;
        let local_addr = listener.local_addr()?;
        let status = AcceptanceStatus {
            listen: local_addr.to_string(),
            after_filter: cfg.after_filter.to_string(),
            policy: match cfg.policy {
                Policy::Strict => "strict",
                Policy::Degrade => "degrade",
            }
            .into(),
            timeout_ms: cfg.timeout.as_secs_f64() * 1e3,
            ..Default::default()
        };
        let shared = Arc::new(Shared {
            status: Mutex::new(status),
            sessions: AtomicU64::new(0),
            latencies: Mutex::new(std::collections::VecDeque::new()),
            metrics,
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let feed = Feed { tx };
        let hub = tokio::spawn(hub(cfg.clone(), rx, shared.clone()));
        let acc = tokio::spawn(accept_loop(
            listener,
            cfg.clone(),
            feed.clone(),
            shared.clone(),
        ));
        info!(listen = %local_addr, after_filter = %cfg.after_filter, policy = ?cfg.policy,
            timeout_ms = cfg.timeout.as_millis() as u64, "acceptance proxy started");
        Ok(Self {
            feed,
            shared,
            local_addr,
            tasks: vec![hub, acc],
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A handle to feed acknowledgements and peer state.
    pub fn feed(&self) -> Feed {
        self.feed.clone()
    }

    /// A snapshot of the status.
    pub fn status(&self) -> AcceptanceStatus {
        let mut s = self.shared.with(|s| s.clone());
        s.sessions = self.shared.sessions.load(Ordering::Relaxed);
        let mut l: Vec<f64> = self
            .shared
            .latencies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .copied()
            .collect();
        if !l.is_empty() {
            l.sort_by(f64::total_cmp);
            let at = |q: f64| l[((l.len() - 1) as f64 * q).round() as usize];
            s.added_p50_ms = Some(at(0.5));
            s.added_p99_ms = Some(at(0.99));
        }
        s
    }
}

async fn accept_loop(listener: TcpListener, cfg: ProxyConfig, feed: Feed, shared: Arc<Shared>) {
    let next = AtomicU64::new(1);
    loop {
        let (client, from) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors, say: back off rather than spin.
                warn!(error = %e, "acceptance proxy: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let id = next.fetch_add(1, Ordering::Relaxed);
        let (cfg, feed, shared) = (cfg.clone(), feed.clone(), shared.clone());
        tokio::spawn(async move {
            shared.sessions.fetch_add(1, Ordering::Relaxed);
            let r = session(id, client, &cfg, &feed, &shared).await;
            shared.sessions.fetch_sub(1, Ordering::Relaxed);
            if let Err(kind) = r {
                debug!(session = id, %from, kind, "acceptance proxy session ended early");
            }
        });
    }
}

/// Writes with the idle bound.
async fn write(w: &mut (impl AsyncWriteExt + Unpin), b: &[u8]) -> Result<(), &'static str> {
    if b.is_empty() {
        return Ok(());
    }
    match tokio::time::timeout(IDLE_TIMEOUT, w.write_all(b)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err("write"),
        Err(_) => Err("write_timeout"),
    }
}

/// One connection from the before-filter smtpd.
async fn session(
    id: u64,
    mut client: TcpStream,
    cfg: &ProxyConfig,
    feed: &Feed,
    shared: &Shared,
) -> Result<(), &'static str> {
    let _ = client.set_nodelay(true);
    let server =
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(cfg.after_filter)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                warn!(session = id, after_filter = %cfg.after_filter, error = %e,
                "acceptance proxy: after-filter smtpd unreachable, answering 421");
                shared.error("after_filter_unreachable");
                let _ = write(&mut client, AFTER_FILTER_DOWN).await;
                return Err("after_filter_unreachable");
            }
            Err(_) => {
                warn!(session = id, after_filter = %cfg.after_filter,
                "acceptance proxy: after-filter smtpd did not accept in time, answering 421");
                shared.error("after_filter_unreachable");
                let _ = write(&mut client, AFTER_FILTER_DOWN).await;
                return Err("after_filter_unreachable");
            }
        };
    let _ = server.set_nodelay(true);
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let (dtx, mut drx) = mpsc::unbounded_channel::<(u64, Answer)>();
    let mut s = Session::default();
    let mut cbuf = vec![0u8; READ_SIZE];
    let mut sbuf = vec![0u8; READ_SIZE];
    let mut server_open = true;
    let result: Result<(), &'static str> = loop {
        if !server_open && !s.holding() {
            // The after-filter closed: whatever it answered goes out; a
            // command it never answered gets a 421, not silence.
            let out = s.to_client();
            write(&mut cw, &out).await?;
            if s.unanswered() > 0 {
                let _ = write(&mut cw, BROKEN).await;
                shared.error("after_filter_closed");
            }
            break Ok(());
        }
        let holding = s.holding();
        tokio::select! {
            r = tokio::time::timeout(IDLE_TIMEOUT, cr.read(&mut cbuf)) => {
                let n = match r {
                    Ok(Ok(n)) => n,
                    Ok(Err(_)) => 0,
                    Err(_) => break Err("client_idle"),
                };
                if n == 0 {
                    // The client left. A reply it never got stays held in
                    // the core no longer; the message stays queued.
                    if holding {
                        let _ = feed.tx.send(Msg::Gone(id));
                    }
                    let _ = sw.shutdown().await;
                    break Ok(());
                }
                if let Err(e) = s.from_client(&cbuf[..n], now_ns()) {
                    warn!(session = id, error = %e, "acceptance proxy: bad client input, closing");
                    shared.error("protocol");
                    let out = s.to_client();
                    let _ = write(&mut cw, &out).await;
                    let _ = write(&mut cw, BROKEN).await;
                    if holding {
                        let _ = feed.tx.send(Msg::Gone(id));
                    }
                    break Err("protocol");
                }
                write(&mut sw, &cbuf[..n]).await?;
            }
            r = tokio::time::timeout(IDLE_TIMEOUT, sr.read(&mut sbuf)), if server_open && !holding => {
                let n = match r {
                    Ok(Ok(n)) => n,
                    Ok(Err(_)) => 0,
                    Err(_) => break Err("server_idle"),
                };
                if n == 0 {
                    server_open = false;
                    continue;
                }
                if let Err(e) = s.from_server(&sbuf[..n], now_ns()) {
                    warn!(session = id, error = %e, "acceptance proxy: bad after-filter reply, closing");
                    shared.error("protocol");
                    let out = s.to_client();
                    let _ = write(&mut cw, &out).await;
                    let _ = write(&mut cw, BROKEN).await;
                    if s.holding() {
                        let _ = feed.tx.send(Msg::Gone(id));
                    }
                    break Err("protocol");
                }
                for h in s.new_holds() {
                    let _ = feed.tx.send(Msg::Held {
                        hold: HoldId { session: id, token: h.token },
                        queue_id: h.queue_id,
                        dot_at: h.dot_at,
                        reply_to: dtx.clone(),
                    });
                }
                let out = s.to_client();
                write(&mut cw, &out).await?;
            }
            Some((token, answer)) = drx.recv() => {
                s.decide(token, answer);
                let out = s.to_client();
                write(&mut cw, &out).await?;
            }
        }
    };
    let _ = cw.shutdown().await;
    result
}

/// Owns the core: feeds it events and deadlines, carries out its actions.
async fn hub(cfg: ProxyConfig, mut rx: mpsc::UnboundedReceiver<Msg>, shared: Arc<Shared>) {
    let mut core = Holds::new(cfg.timeout.as_nanos() as Nanos, cfg.policy);
    let mut reply_to: HashMap<HoldId, mpsc::UnboundedSender<(u64, Answer)>> = HashMap::new();
    loop {
        let deadline = core.next_deadline();
        let msg = match deadline {
            Some(d) => {
                let wait = Duration::from_nanos(d.saturating_sub(now_ns()));
                match tokio::time::timeout(wait, rx.recv()).await {
                    Ok(m) => m,
                    Err(_) => {
                        let acts = core.handle(Event::Tick { now: now_ns() });
                        carry_out(&cfg, &shared, &mut reply_to, &core, acts);
                        continue;
                    }
                }
            }
            None => rx.recv().await,
        };
        let Some(msg) = msg else { return };
        let now = now_ns();
        let ev = match msg {
            Msg::Held {
                hold,
                queue_id,
                dot_at,
                reply_to: tx,
            } => {
                reply_to.insert(hold, tx);
                shared.with(|s| s.held += 1);
                if let Some(m) = &shared.metrics {
                    m.acceptance_held();
                }
                Event::Held {
                    hold,
                    queue_id,
                    dot_at,
                    now,
                }
            }
            Msg::Durable { queue_id, seen } => Event::Durable {
                queue_id,
                seen,
                now,
            },
            Msg::Peer(available) => {
                if available != core.peer_available() {
                    if available {
                        info!("acceptance: peer confirms copies again; replies are held for it");
                    } else {
                        warn!(policy = ?cfg.policy, "acceptance: peer away; the policy applies at once");
                    }
                }
                shared.with(|s| s.peer_available = available);
                Event::Peer { available, now }
            }
            Msg::Gone(session) => Event::ClientGone { session, now },
        };
        let acts = core.handle(ev);
        carry_out(&cfg, &shared, &mut reply_to, &core, acts);
    }
}

fn carry_out(
    cfg: &ProxyConfig,
    shared: &Arc<Shared>,
    reply_to: &mut HashMap<HoldId, mpsc::UnboundedSender<(u64, Answer)>>,
    core: &Holds,
    acts: Vec<Action>,
) {
    for a in acts {
        match a {
            Action::Release { hold, waited } => {
                answer(reply_to, hold, Answer::Original);
                shared.with(|s| s.released += 1);
                latency(shared, "released", "confirmed", waited);
            }
            Action::Accept { hold, waited, why } => {
                answer(reply_to, hold, Answer::Original);
                warn!(
                    session = hold.session,
                    reason = why.label(),
                    waited_ms = waited / 1_000_000,
                    "acceptance: 250 sent without a copy on the peer (degrade policy)"
                );
                shared.with(|s| {
                    *s.accepted_unconfirmed
                        .entry(why.label().into())
                        .or_default() += 1;
                });
                latency(shared, "accepted_unconfirmed", why.label(), waited);
            }
            Action::Refuse { hold, waited, why } => {
                answer(reply_to, hold, Answer::Replace(REFUSAL.to_vec()));
                warn!(
                    session = hold.session,
                    reason = why.label(),
                    waited_ms = waited / 1_000_000,
                    "acceptance: 451 sent, the peer did not confirm a copy (strict policy)"
                );
                shared.with(|s| *s.refused.entry(why.label().into()).or_default() += 1);
                latency(shared, "refused", why.label(), waited);
            }
            Action::Remove { queue_id } => remove(cfg, shared, queue_id),
            Action::AlarmRaised { why } => {
                let at = humantime::format_rfc3339_seconds(SystemTime::now());
                error!(
                    reason = why.label(),
                    "acceptance ALARM: mail accepted that only this node holds"
                );
                shared.with(|s| {
                    s.alarm = Some(format!(
                        "since {at}: 250 sent for mail only this node holds ({})",
                        why.label()
                    ));
                });
                if let Some(m) = &shared.metrics {
                    m.set_acceptance_alarm(true);
                }
            }
            Action::AlarmCleared => {
                info!("acceptance alarm cleared: the peer confirms copies again");
                shared.with(|s| s.alarm = None);
                if let Some(m) = &shared.metrics {
                    m.set_acceptance_alarm(false);
                }
            }
            Action::Abandoned { hold, queue_id } => {
                reply_to.remove(&hold);
                info!(
                    session = hold.session,
                    queue_id = queue_id.as_deref().unwrap_or("-"),
                    "acceptance: client left while its 250 was held; the message stays queued (a retry would be a duplicate)"
                );
                shared.with(|s| s.abandoned += 1);
                if let Some(m) = &shared.metrics {
                    m.acceptance_answered("abandoned", "client_gone", None);
                }
            }
        }
    }
    let waiting = core.held() as u64;
    shared.with(|s| s.waiting = waiting);
    if let Some(m) = &shared.metrics {
        m.set_acceptance_waiting(waiting);
    }
}

fn answer(
    reply_to: &mut HashMap<HoldId, mpsc::UnboundedSender<(u64, Answer)>>,
    hold: HoldId,
    a: Answer,
) {
    if let Some(tx) = reply_to.remove(&hold) {
        let _ = tx.send((hold.token, a));
    }
}

fn latency(shared: &Shared, outcome: &'static str, reason: &'static str, waited: Nanos) {
    let ms = waited as f64 / 1e6;
    let mut l = shared.latencies.lock().unwrap_or_else(|p| p.into_inner());
    if l.len() >= LATENCY_WINDOW {
        l.pop_front();
    }
    l.push_back(ms);
    drop(l);
    if let Some(m) = &shared.metrics {
        m.acceptance_answered(outcome, reason, Some(Duration::from_nanos(waited)));
    }
}

/// Removes the local copy of a message the client was told to retry:
/// otherwise it would be delivered once from here and once from the retry.
fn remove(cfg: &ProxyConfig, shared: &Arc<Shared>, queue_id: String) {
    if !super::smtp::is_queue_id(&queue_id) {
        return;
    }
    let (cfg, shared) = (cfg.clone(), shared.clone());
    tokio::spawn(async move {
        let run = tokio::process::Command::new(&cfg.postsuper)
            .arg("-c")
            .arg(&cfg.postfix_config)
            .arg("-d")
            .arg(&queue_id)
            .kill_on_drop(true)
            .output();
        let res = tokio::time::timeout(REMOVE_TIMEOUT, run).await;
        // postsuper reports each removal on stderr ("ID: removed") and
        // says nothing for an ID it did not find.
        let removed = match &res {
            Ok(Ok(o)) => {
                o.status.success() && String::from_utf8_lossy(&o.stderr).contains("removed")
            }
            _ => false,
        };
        if removed {
            info!(queue_id, "acceptance: local copy removed after 451");
            shared.with(|s| s.removed += 1);
        } else {
            let why = match res {
                Ok(Ok(o)) => String::from_utf8_lossy(&o.stderr).trim().to_owned(),
                Ok(Err(e)) => e.to_string(),
                Err(_) => "timed out".into(),
            };
            warn!(queue_id, error = %why,
                "acceptance: local copy not removed after 451 (already delivered?): the client's retry may be a duplicate");
            shared.with(|s| s.remove_failed += 1);
            shared.error("remove_failed");
        }
    });
}
