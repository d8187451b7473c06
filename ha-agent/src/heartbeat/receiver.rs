//! Heartbeat receivers: one tokio task per link socket. Each datagram is
//! decoded, verified and run through the peer rules; accepted frames are
//! timed by the kernel record of the XDP program when it is plausible, and
//! every outcome goes out as a [`HeartbeatEvent`].

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::dataplane::{DataPlaneError, HeartbeatTimes};

use super::auth::HbKey;
use super::codec::{Heartbeat, decode};
use super::link::LinkSocket;
use super::peer::{
    LinkHealth, LinkHealthSnapshot, LocalIdentity, PeerState, Refusal, RefusalKind, RxSource,
    choose_rx_time,
};
use super::ratelimit::RefusalLogLimiter;
use super::shared::HbShared;

/// Kernel receive times recorded by the heartbeat XDP program.
pub trait KernelTimes: Send + Sync {
    /// CLOCK_MONOTONIC ns at which the frame `(epoch, seq)` arrived on
    /// `link`, if the record is still there.
    fn rx_time(&self, link: u32, epoch: u64, seq: u64) -> Option<u64>;

    /// Tells the XDP program the token of the peer's frame `(epoch, seq)`;
    /// only a frame carrying it gets a record.
    fn expect(&self, epoch: u64, seq: u64, token: [u8; 8]) -> Result<(), DataPlaneError>;
}

/// No data plane attached: every frame is timed in userspace (and counted).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoKernelTimes;

impl KernelTimes for NoKernelTimes {
    fn rx_time(&self, _: u32, _: u64, _: u64) -> Option<u64> {
        None
    }

    fn expect(&self, _: u64, _: u64, _: [u8; 8]) -> Result<(), DataPlaneError> {
        Ok(())
    }
}

impl KernelTimes for HeartbeatTimes {
    fn rx_time(&self, link: u32, epoch: u64, seq: u64) -> Option<u64> {
        HeartbeatTimes::rx_time(self, link, epoch, seq)
    }

    fn expect(&self, epoch: u64, seq: u64, token: [u8; 8]) -> Result<(), DataPlaneError> {
        HeartbeatTimes::expect(self, epoch, seq, token)
    }
}

/// What a receiver reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeartbeatEvent {
    /// An authenticated frame passed the peer rules.
    Accepted {
        /// Link it arrived on.
        link: u32,
        /// The frame.
        heartbeat: Heartbeat,
        /// Receive time, CLOCK_MONOTONIC ns.
        rx_ns: u64,
        /// Whether `rx_ns` is the kernel's record or the agent's clock.
        rx_source: RxSource,
        /// Newest frame of the peer on any link: refreshes liveness. A copy
        /// of a frame already seen on another link is not fresh.
        fresh: bool,
        /// First frame of a new peer epoch (the peer restarted).
        new_epoch: bool,
    },
    /// A frame that changes nothing.
    Refused {
        /// Link it arrived on.
        link: u32,
        /// Class.
        kind: RefusalKind,
        /// Sender address.
        from: SocketAddr,
    },
}

/// What every link's receiver shares.
pub struct RxContext {
    key: HbKey,
    shared: Arc<HbShared>,
    peer: Mutex<PeerState>,
    kernel: Arc<dyn KernelTimes>,
    expect_errors: AtomicU64,
}

impl RxContext {
    /// The context of one agent run.
    #[must_use]
    pub fn new(key: HbKey, shared: Arc<HbShared>, kernel: Arc<dyn KernelTimes>) -> Self {
        let me = LocalIdentity {
            epoch: shared.epoch,
            node_id: shared.node_id,
            timing: shared.timing,
        };
        Self {
            key,
            shared,
            peer: Mutex::new(PeerState::new(me)),
            kernel,
            expect_errors: AtomicU64::new(0),
        }
    }

    /// Token announcements the data plane refused (a map write failed).
    #[must_use]
    pub fn expect_errors(&self) -> u64 {
        self.expect_errors.load(Ordering::Relaxed)
    }

    /// The accepted peer epoch, if any.
    #[must_use]
    pub fn peer_epoch(&self) -> Option<u64> {
        self.peer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .peer_epoch()
    }
}

/// The per-link processing, without the socket.
pub struct LinkReceiver {
    link: u32,
    peer_ip: IpAddr,
    ctx: Arc<RxContext>,
    health: Arc<Mutex<LinkHealth>>,
    limiter: RefusalLogLimiter,
}

impl LinkReceiver {
    /// Receiver for `link`, accepting frames from `peer_ip` only.
    #[must_use]
    pub fn new(link: u32, peer_ip: IpAddr, ctx: Arc<RxContext>) -> Self {
        Self {
            link,
            peer_ip,
            ctx,
            health: Arc::default(),
            limiter: RefusalLogLimiter::default(),
        }
    }

    /// This link's counters.
    #[must_use]
    pub fn health(&self) -> Arc<Mutex<LinkHealth>> {
        self.health.clone()
    }

    /// Handles one datagram that arrived at `socket_ns` (the socket's
    /// timestamp, if any) and was read at `user_ns`.
    pub fn handle(
        &mut self,
        from: SocketAddr,
        bytes: &[u8],
        socket_ns: Option<u64>,
        user_ns: u64,
    ) -> HeartbeatEvent {
        match self.check(from, bytes) {
            Ok((hb, acc)) => {
                // Incompatible timing: alive all the same, but said loudly
                // (counted under timing_mismatch, logged at most once a second).
                if let Err(e) = super::timing::check_pair(&self.ctx.shared.timing, &hb.timing) {
                    self.health
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .on_refused(RefusalKind::TimingMismatch);
                    if self
                        .limiter
                        .allow(RefusalKind::TimingMismatch, user_ns)
                        .is_some()
                    {
                        tracing::warn!(link = self.link, error = %e, "peer timing incompatible with ours: accepted as alive, fix the configuration");
                    }
                }
                let mut health = self.health.lock().unwrap_or_else(PoisonError::into_inner);
                let kernel = self.ctx.kernel.rx_time(self.link, hb.epoch, hb.seq);
                let (rx_ns, rx_source) = choose_rx_time(
                    kernel,
                    socket_ns,
                    user_ns,
                    health.last_rx_ns(),
                    self.ctx.shared.timing.threshold,
                );
                health.on_accepted(rx_ns, acc.gap, rx_source);
                if acc.new_epoch {
                    tracing::info!(
                        link = self.link,
                        peer_epoch = format_args!("{:#018x}", hb.epoch),
                        seq = hb.seq,
                        "peer epoch accepted"
                    );
                }
                HeartbeatEvent::Accepted {
                    link: self.link,
                    heartbeat: hb,
                    rx_ns,
                    rx_source,
                    fresh: acc.fresh,
                    new_epoch: acc.new_epoch,
                }
            }
            Err(refusal) => {
                let kind = refusal.kind();
                self.health
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .on_refused(kind);
                if let Some(suppressed) = self.limiter.allow(kind, user_ns) {
                    let kind_s = kind.as_str();
                    if kind == RefusalKind::Unconfirmed {
                        tracing::info!(link = self.link, %from, kind = kind_s, suppressed, reason = %refusal, "heartbeat refused");
                    } else {
                        tracing::warn!(link = self.link, %from, kind = kind_s, suppressed, reason = %refusal, "heartbeat refused");
                    }
                }
                HeartbeatEvent::Refused {
                    link: self.link,
                    kind,
                    from,
                }
            }
        }
    }

    fn check(
        &self,
        from: SocketAddr,
        bytes: &[u8],
    ) -> Result<(Heartbeat, super::peer::Accepted), Refusal> {
        if from.ip().to_canonical() != self.peer_ip.to_canonical() {
            return Err(Refusal::WrongSource { from: from.ip() });
        }
        let hb = decode(bytes, self.ctx.shared.cluster_id, &self.ctx.key)?;
        let mut peer = self.ctx.peer.lock().unwrap_or_else(PoisonError::into_inner);
        let result = peer.on_frame(self.link, &hb, self.ctx.shared.last_seq());
        // Even a refused verified frame may have taught us the peer's epoch.
        self.ctx.shared.set_echo(peer.echo());
        if let Some((epoch, seqs)) = peer.to_announce() {
            for seq in seqs {
                if let Err(e) = self
                    .ctx
                    .kernel
                    .expect(epoch, seq, self.ctx.key.token(epoch, seq))
                {
                    self.ctx.expect_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(error = %e, seq, "cannot announce heartbeat token to the data plane");
                }
            }
        }
        result.map(|acc| (hb, acc))
    }
}

/// A running receiver task; aborted on drop.
pub struct ReceiverHandle {
    link: u32,
    health: Arc<Mutex<LinkHealth>>,
    task: JoinHandle<()>,
}

impl ReceiverHandle {
    /// Link id.
    #[must_use]
    pub fn link(&self) -> u32 {
        self.link
    }

    /// A copy of the link's counters.
    #[must_use]
    pub fn health(&self) -> LinkHealthSnapshot {
        self.health
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .snapshot()
    }
}

impl Drop for ReceiverHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts the receiver of `link` (a handle on the link's socket) inside the
/// current tokio runtime. Accepted frames wait for room in `events`;
/// refusals are dropped when it is full, so that a flood cannot stall us.
pub fn spawn(
    link: LinkSocket,
    ctx: Arc<RxContext>,
    events: mpsc::Sender<HeartbeatEvent>,
) -> io::Result<ReceiverHandle> {
    let socket = tokio::net::UdpSocket::from_std(link.socket)?;
    let mut rx = LinkReceiver::new(link.id, link.peer.ip(), ctx);
    let health = rx.health();
    let span = tracing::info_span!("hb_rx", link = link.id);
    let task = tokio::spawn(
        async move {
            let mut buf = [0u8; 2048];
            loop {
                let fd = socket.as_raw_fd();
                let read = socket
                    .async_io(tokio::io::Interest::READABLE, || {
                        super::link::recv_timed(fd, &mut buf)
                    })
                    .await;
                let d = match read {
                    Ok(r) => r,
                    Err(e) => {
                        // ICMP errors of earlier sends surface here; keep going.
                        tracing::debug!(error = %e, "heartbeat receive error");
                        continue;
                    }
                };
                let ev = rx.handle(d.from, &buf[..d.len], d.arrived_ns, d.read_ns);
                let closed = match ev {
                    HeartbeatEvent::Accepted { .. } => events.send(ev).await.is_err(),
                    HeartbeatEvent::Refused { .. } => matches!(
                        events.try_send(ev),
                        Err(mpsc::error::TrySendError::Closed(_))
                    ),
                };
                if closed {
                    tracing::debug!("event channel closed; receiver ends");
                    return;
                }
            }
        }
        .instrument(span),
    );
    Ok(ReceiverHandle {
        link: link.id,
        health,
        task,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::heartbeat::codec::Mode;
    use crate::heartbeat::shared::NodeSnapshot;
    use crate::heartbeat::timing::Timing;
    use std::time::Duration;

    /// Kernel records as a table, and the tokens announced (unit-test
    /// stand-in for the data plane).
    struct Table(Vec<(u32, u64, u64, u64)>, Mutex<Vec<(u64, u64, [u8; 8])>>);
    impl KernelTimes for Table {
        fn rx_time(&self, link: u32, epoch: u64, seq: u64) -> Option<u64> {
            self.0
                .iter()
                .find(|r| (r.0, r.1, r.2) == (link, epoch, seq))
                .map(|r| r.3)
        }
        fn expect(&self, epoch: u64, seq: u64, token: [u8; 8]) -> Result<(), DataPlaneError> {
            self.1.lock().unwrap().push((epoch, seq, token));
            Ok(())
        }
    }

    fn timing() -> Timing {
        Timing {
            interval: Duration::from_millis(1),
            threshold: Duration::from_millis(6),
            lease: Duration::from_millis(3),
        }
    }

    fn node(node_id: u32) -> Arc<HbShared> {
        let s = NodeSnapshot {
            flags: 0,
            configured_mode: Mode::Secondary,
            effective_mode: Mode::Secondary,
            priority: 0,
            term: 0,
            sync_seq: 0,
        };
        Arc::new(HbShared::new(7, node_id, timing(), s))
    }

    fn key() -> HbKey {
        HbKey::derive(b"pw", 7).unwrap()
    }

    const PEER: &str = "10.200.0.2:20000";

    #[test]
    fn handshake_kernel_time_and_refusals() {
        let (us, them) = (node(1), node(2));
        let kernel = Arc::new(Table(vec![(0, them.epoch, 2, 5_000)], Mutex::default()));
        let ctx = Arc::new(RxContext::new(key(), us.clone(), kernel.clone()));
        let mut rx = LinkReceiver::new(0, "10.200.0.2".parse().unwrap(), ctx.clone());
        let from: SocketAddr = PEER.parse().unwrap();
        let snap = them.snapshot();
        us.set_last_seq(1);

        // 1: the peer has not heard us; we learn and echo its epoch.
        let f1 = them.frame(1, 0, &snap, (0, 0)).encode(&key());
        assert!(matches!(
            rx.handle(from, &f1, None, 1_000),
            HeartbeatEvent::Refused {
                kind: RefusalKind::Unconfirmed,
                ..
            }
        ));
        assert_eq!(us.try_echo(), Some((them.epoch, 1)));
        // ...and tell the kernel the tokens of its next HB_RING_SLOTS frames.
        let announced = kernel.1.lock().unwrap().clone();
        assert_eq!(announced.len(), ha_common::HB_RING_SLOTS as usize);
        assert_eq!(announced[0], (them.epoch, 2, key().token(them.epoch, 2)));

        // 2: echoes us; kernel record used.
        let f2 = them.frame(2, 0, &snap, (us.epoch, 1)).encode(&key());
        match rx.handle(from, &f2, None, 6_000) {
            HeartbeatEvent::Accepted {
                rx_ns,
                rx_source,
                fresh,
                new_epoch,
                heartbeat,
                ..
            } => {
                assert_eq!(
                    (rx_ns, rx_source, fresh, new_epoch, heartbeat.seq),
                    (5_000, RxSource::Kernel, true, true, 2)
                );
            }
            e @ HeartbeatEvent::Refused { .. } => panic!("{e:?}"),
        }
        // 3: no record: userspace time, counted.
        let f3 = them.frame(3, 0, &snap, (us.epoch, 1)).encode(&key());
        assert!(matches!(
            rx.handle(from, &f3, None, 7_000),
            HeartbeatEvent::Accepted {
                rx_ns: 7_000,
                rx_source: RxSource::Userspace,
                ..
            }
        ));

        // Replay, forgery, wrong source, garbage: refused and counted.
        let forged = them
            .frame(4, 0, &snap, (us.epoch, 1))
            .encode(&HbKey::derive(b"guess", 7).unwrap());
        let stranger: SocketAddr = "10.200.0.9:20000".parse().unwrap();
        let cases: [(SocketAddr, &[u8], RefusalKind); 4] = [
            (from, &f2, RefusalKind::Replayed),
            (from, &forged, RefusalKind::Forged),
            (stranger, &f3, RefusalKind::WrongSource),
            (from, b"hello", RefusalKind::Malformed),
        ];
        for (src, bytes, want) in cases {
            assert!(
                matches!(rx.handle(src, bytes, None, 8_000), HeartbeatEvent::Refused { kind, .. } if kind == want),
                "{want:?}"
            );
        }
        let h = rx.health().lock().unwrap().snapshot();
        assert_eq!(
            (h.accepted, h.kernel_fallbacks, h.last_rx_ns),
            (2, 1, Some(7_000))
        );
        for k in [
            RefusalKind::Unconfirmed,
            RefusalKind::Replayed,
            RefusalKind::Forged,
            RefusalKind::WrongSource,
            RefusalKind::Malformed,
        ] {
            assert_eq!(h.refused(k), 1, "{k:?}");
        }
        assert_eq!(ctx.peer_epoch(), Some(them.epoch));
        // Two genuine frames moved the window by two; refusals by nothing.
        assert_eq!(
            kernel.1.lock().unwrap().len(),
            ha_common::HB_RING_SLOTS as usize + 2
        );
        assert_eq!(ctx.expect_errors(), 0);
        // Refusals changed nothing: echo still points at the newest genuine frame.
        assert_eq!(us.try_echo(), Some((them.epoch, 3)));
    }
}
