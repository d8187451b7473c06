//! A client that probes the VIP every millisecond from inside a namespace:
//! ICMP echo requests through the kernel's route (what a real client sees,
//! ARP cache and all), and the same requests sent straight to each node's
//! MAC with a raw socket (who would answer for the VIP right now). Replies
//! are captured with an AF_PACKET socket, so each one is attributed to the
//! MAC that sent it.

use std::{
    net::Ipv4Addr,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use crate::{Netns, packets as pk, rawsock::packet_socket};

/// CLOCK_MONOTONIC in nanoseconds (the agents' clock, shared by all namespaces).
#[must_use]
pub fn now_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("clock");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

/// Stream ids (ICMP identifiers): through the kernel route, or straight to a MAC.
pub const VIA_ROUTE: u16 = 0x4801;
/// Base of the per-MAC stream ids (`DIRECT_BASE + index in targets`).
pub const DIRECT_BASE: u16 = 0x4810;

/// One answered probe.
#[derive(Clone, Copy, Debug)]
pub struct Reply {
    /// ICMP identifier: [`VIA_ROUTE`] or `DIRECT_BASE + i`.
    pub id: u16,
    /// Probe sequence number (one per tick, shared by all streams).
    pub seq: u16,
    /// When the request was sent (CLOCK_MONOTONIC ns).
    pub sent_ns: u64,
    /// When the reply was captured.
    pub rx_ns: u64,
    /// Source MAC of the reply: the node that answered.
    pub from: [u8; 6],
}

/// A running prober; stops and joins on drop.
pub struct Prober {
    stop: Arc<AtomicBool>,
    replies: Arc<Mutex<Vec<Reply>>>,
    sent: Arc<Mutex<Vec<u64>>>,
    threads: Vec<JoinHandle<()>>,
}

fn icmp_echo(id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut m = vec![8, 0, 0, 0];
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(payload);
    let mut sum = 0u32;
    for c in m.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let c = !(sum as u16);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    m
}

impl Prober {
    /// Starts probing `vip` from `ns` (interface `ifname`, address `client`,
    /// MAC `client_mac`) every `period`; `targets` are the MACs to probe
    /// directly.
    #[must_use]
    pub fn start(
        ns: &Netns,
        ifname: &str,
        client: Ipv4Addr,
        client_mac: [u8; 6],
        vip: Ipv4Addr,
        targets: Vec<[u8; 6]>,
        period: Duration,
    ) -> Self {
        let ifindex = ns.run(|| nix::net::if_::if_nametoindex(ifname).expect("client interface"));
        let stop = Arc::new(AtomicBool::new(false));
        let replies = Arc::new(Mutex::new(Vec::new()));
        let sent = Arc::new(Mutex::new(Vec::new()));
        // Sockets are made inside the namespace, then used from any thread.
        let (rx_fd, tx_fd, icmp_fd) = ns.run(|| {
            let rx = packet_socket(ifindex, 0x0800, Duration::from_millis(20));
            let tx = packet_socket(ifindex, 0x0800, Duration::from_millis(20));
            // SAFETY: plain socket(2) call; the fd is owned right away.
            let icmp = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) };
            assert!(
                icmp >= 0,
                "raw ICMP socket: {}",
                std::io::Error::last_os_error()
            );
            // SAFETY: fresh valid descriptor.
            (rx, tx, unsafe { OwnedFd::from_raw_fd(icmp) })
        });
        let mut threads = Vec::new();
        {
            let (stop, replies) = (stop.clone(), replies.clone());
            threads.push(std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) {
                    // SAFETY: buf is valid for its length.
                    let n = unsafe {
                        libc::recv(rx_fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0)
                    };
                    let rx_ns = now_ns();
                    if n < 14 + 20 + 8 {
                        continue;
                    }
                    let f = &buf[..n as usize];
                    let ihl = usize::from(f[14] & 0x0f) * 4;
                    if f[14 + 9] != 1 || f[26..30] != vip.octets() || f.len() < 14 + ihl + 16 {
                        continue;
                    }
                    let icmp = &f[14 + ihl..];
                    if icmp[0] != 0 {
                        continue;
                    }
                    let id = u16::from_be_bytes([icmp[4], icmp[5]]);
                    let seq = u16::from_be_bytes([icmp[6], icmp[7]]);
                    let sent_ns = u64::from_be_bytes(icmp[8..16].try_into().expect("8 bytes"));
                    let mut from = [0u8; 6];
                    from.copy_from_slice(&f[6..12]);
                    replies.lock().expect("replies").push(Reply {
                        id,
                        seq,
                        sent_ns,
                        rx_ns,
                        from,
                    });
                }
            }));
        }
        {
            let (stop, sent) = (stop.clone(), sent.clone());
            threads.push(std::thread::spawn(move || {
                let mut seq: u16 = 0;
                let mut next = now_ns();
                let dst = libc::sockaddr_in {
                    sin_family: libc::AF_INET as u16,
                    sin_port: 0,
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_ne_bytes(vip.octets()),
                    },
                    sin_zero: [0; 8],
                };
                while !stop.load(Ordering::Relaxed) {
                    let t = now_ns();
                    let payload = t.to_be_bytes();
                    let m = icmp_echo(VIA_ROUTE, seq, &payload);
                    // SAFETY: buffers valid; dst is a sockaddr_in of the right size.
                    unsafe {
                        libc::sendto(
                            icmp_fd.as_raw_fd(),
                            m.as_ptr().cast(),
                            m.len(),
                            0,
                            (&raw const dst).cast(),
                            std::mem::size_of::<libc::sockaddr_in>() as u32,
                        );
                    }
                    for (i, mac) in targets.iter().enumerate() {
                        let ip = pk::ipv4(
                            client,
                            vip,
                            1,
                            &icmp_echo(DIRECT_BASE + i as u16, seq, &payload),
                        );
                        let frame = pk::eth(*mac, client_mac, 0x0800, &ip);
                        // SAFETY: the packet socket is bound to the interface; buffer valid.
                        unsafe {
                            libc::send(tx_fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0);
                        }
                    }
                    sent.lock().expect("sent").push(t);
                    seq = seq.wrapping_add(1);
                    next += period.as_nanos() as u64;
                    let now = now_ns();
                    if next > now {
                        std::thread::sleep(Duration::from_nanos(next - now));
                    } else {
                        next = now;
                    }
                }
            }));
        }
        Self {
            stop,
            replies,
            sent,
            threads,
        }
    }

    /// A copy of every reply so far.
    #[must_use]
    pub fn replies(&self) -> Vec<Reply> {
        self.replies.lock().expect("replies").clone()
    }

    /// Send times of every probe round so far.
    #[must_use]
    pub fn sent(&self) -> Vec<u64> {
        self.sent.lock().expect("sent").clone()
    }

    /// First reply after `t` from `mac` (any stream), as (time, reply).
    #[must_use]
    pub fn first_from_after(&self, mac: [u8; 6], t: u64) -> Option<Reply> {
        self.replies()
            .into_iter()
            .filter(|r| r.from == mac && r.sent_ns >= t)
            .min_by_key(|r| r.rx_ns)
    }

    /// Probe rounds (by send time) in which both direct streams got an
    /// answer: instants when two nodes answered for the VIP.
    #[must_use]
    pub fn dual_active_rounds(&self, after: u64) -> Vec<u64> {
        let r = self.replies();
        let mut by_round: std::collections::BTreeMap<u64, (bool, bool)> =
            std::collections::BTreeMap::new();
        for x in r.iter().filter(|x| x.sent_ns >= after) {
            let e = by_round.entry(x.sent_ns).or_default();
            if x.id == DIRECT_BASE {
                e.0 = true;
            } else if x.id == DIRECT_BASE + 1 {
                e.1 = true;
            }
        }
        by_round
            .into_iter()
            .filter(|(_, (a, b))| *a && *b)
            .map(|(t, _)| t)
            .collect()
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
