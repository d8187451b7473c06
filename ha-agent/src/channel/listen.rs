//! What a listener does before a peer has proved anything.
//!
//! - Only the configured peers' addresses are served; any other is closed
//!   right after `accept`, before a byte is read. (Listeners bind to the
//!   local heartbeat address, so the service network cannot reach them at
//!   all unless routed; this check holds even then.)
//! - At most [`MAX_UNAUTHENTICATED`] connections may be in their handshake
//!   at once. When a new one arrives at the cap, the oldest that has not
//!   even sent its hello is closed to make room: idle sockets cannot crowd
//!   out a genuine peer, whose hello arrives with its first packet. When
//!   every slot holds a peer past its hello, the newcomer is refused.
//! - Accept errors (`EMFILE` above all) pause the loop with a growing
//!   back-off instead of spinning.
//! - A flood is logged once a second with the number of lines held back;
//!   every event is counted.

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Connections in their handshake at once, per listener.
pub const MAX_UNAUTHENTICATED: usize = 16;

const WAITING_HELLO: u8 = 0;
const HELLO_SEEN: u8 = 1;
const EVICTED: u8 = 2;

struct Pending {
    id: u64,
    sock: TcpStream,
    state: Arc<AtomicU8>,
}

/// Why a connection was closed at once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// Not a configured peer's address.
    #[error("connection from {0}, which is not a configured peer")]
    Address(IpAddr),
    /// Every handshake slot is held by a peer past its hello.
    #[error("too many unauthenticated connections ({MAX_UNAUTHENTICATED})")]
    Busy,
}

impl Rejection {
    /// Counter label.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Address(_) => "peer_address",
            Self::Busy => "busy",
        }
    }
}

/// The pre-authentication guard of one listener.
pub struct Gate {
    allowed: Vec<IpAddr>,
    max: usize,
    pending: Mutex<Vec<Pending>>,
    next_id: AtomicU64,
    log: Mutex<(Option<Instant>, u64)>,
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl Gate {
    /// A gate that lets in `allowed` addresses only.
    pub fn new(allowed: impl IntoIterator<Item = IpAddr>) -> Arc<Self> {
        Self::with_cap(allowed, MAX_UNAUTHENTICATED)
    }

    /// Same, with another cap (tests).
    pub fn with_cap(allowed: impl IntoIterator<Item = IpAddr>, max: usize) -> Arc<Self> {
        Arc::new(Self {
            allowed: allowed.into_iter().map(canonical).collect(),
            max: max.max(1),
            pending: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(0),
            log: Mutex::new((None, 0)),
        })
    }

    /// Decides on a connection just accepted, before anything is read.
    ///
    /// # Errors
    /// The connection must be closed: a foreign address, or no free slot.
    pub fn admit(self: &Arc<Self>, s: &TcpStream, peer: SocketAddr) -> Result<Ticket, Rejection> {
        let ip = canonical(peer.ip());
        if !self.allowed.contains(&ip) {
            return Err(Rejection::Address(ip));
        }
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if p.len() >= self.max {
            let idle = p
                .iter()
                .position(|x| x.state.load(Ordering::Relaxed) == WAITING_HELLO)
                .ok_or(Rejection::Busy)?;
            let old = p.remove(idle);
            old.state.store(EVICTED, Ordering::Relaxed);
            let _ = old.sock.shutdown(std::net::Shutdown::Both);
        }
        let sock = s.try_clone().map_err(|_| Rejection::Busy)?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(AtomicU8::new(WAITING_HELLO));
        p.push(Pending {
            id,
            sock,
            state: state.clone(),
        });
        Ok(Ticket {
            gate: self.clone(),
            id,
            state,
        })
    }

    /// Connections in their handshake now.
    pub fn pending(&self) -> usize {
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether a line about a refused connection may be logged now (one a
    /// second); returns how many were held back since the last one.
    pub fn may_log(&self) -> Option<u64> {
        let mut l = self.log.lock().unwrap_or_else(|e| e.into_inner());
        if l.0.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
            l.1 += 1;
            return None;
        }
        let held = l.1;
        *l = (Some(Instant::now()), 0);
        Some(held)
    }

    fn release(&self, id: u64) {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|x| x.id != id);
    }
}

/// A connection's slot while it is unauthenticated; dropping it frees the
/// slot (do so once the handshake is over, either way).
pub struct Ticket {
    gate: Arc<Gate>,
    id: u64,
    state: Arc<AtomicU8>,
}

impl Ticket {
    /// The peer's hello has arrived: the connection can no longer be
    /// closed to make room for a newer one.
    pub fn hello_seen(&self) {
        let _ = self.state.compare_exchange(
            WAITING_HELLO,
            HELLO_SEEN,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// The connection was closed to make room for a newer one.
    pub fn evicted(&self) -> bool {
        self.state.load(Ordering::Relaxed) == EVICTED
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.gate.release(self.id);
    }
}

/// Growing pause after accept errors (`EMFILE`, `ENFILE`, `ENOBUFS`):
/// retrying at once would spin on the same error.
#[derive(Debug, Default)]
pub struct Backoff {
    cur: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(50);
    const MAX: Duration = Duration::from_secs(2);

    /// The pause after one more error in a row.
    pub fn failed(&mut self) -> Duration {
        self.cur = if self.cur.is_zero() {
            Self::FIRST
        } else {
            (self.cur * 2).min(Self::MAX)
        };
        self.cur
    }

    /// An accept succeeded.
    pub fn ok(&mut self) {
        self.cur = Duration::ZERO;
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    fn conn(l: &TcpListener) -> (TcpStream, TcpStream, SocketAddr) {
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, peer) = l.accept().unwrap();
        (c, s, peer)
    }

    #[test]
    fn foreign_addresses_are_refused() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let (_c, s, peer) = conn(&l);
        let g = Gate::new(["10.200.0.9".parse().unwrap()]);
        assert_eq!(
            g.admit(&s, peer).err(),
            Some(Rejection::Address("127.0.0.1".parse().unwrap()))
        );
        let g = Gate::new(["127.0.0.1".parse().unwrap()]);
        assert!(g.admit(&s, peer).is_ok());
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:5".parse().unwrap();
        assert!(g.admit(&s, mapped).is_ok());
    }

    #[test]
    fn idle_connections_make_room_and_busy_ones_do_not() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let g = Gate::with_cap(["127.0.0.1".parse().unwrap()], 2);
        let (_c1, s1, p1) = conn(&l);
        let (_c2, s2, p2) = conn(&l);
        let (_c3, s3, p3) = conn(&l);
        let t1 = g.admit(&s1, p1).unwrap();
        let t2 = g.admit(&s2, p2).unwrap();
        t2.hello_seen();
        let t3 = g.admit(&s3, p3).unwrap();
        assert!(t1.evicted(), "the idle one made room");
        assert!(!t2.evicted());
        t3.hello_seen();
        let (_c4, s4, p4) = conn(&l);
        assert_eq!(g.admit(&s4, p4).err(), Some(Rejection::Busy));
        drop(t3);
        assert_eq!(g.pending(), 1);
        assert!(g.admit(&s4, p4).is_ok());
        drop(t1);
    }

    #[test]
    fn backoff_grows_and_resets() {
        let mut b = Backoff::default();
        assert_eq!(b.failed(), Duration::from_millis(50));
        assert_eq!(b.failed(), Duration::from_millis(100));
        for _ in 0..10 {
            b.failed();
        }
        assert_eq!(b.failed(), Duration::from_secs(2));
        b.ok();
        assert_eq!(b.failed(), Duration::from_millis(50));
    }

    #[test]
    fn flood_logging_is_limited() {
        let g = Gate::new([]);
        assert_eq!(g.may_log(), Some(0));
        assert_eq!(g.may_log(), None);
        assert_eq!(g.may_log(), None);
    }
}
