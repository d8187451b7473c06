//! Gratuitous ARP and unsolicited NA, observed from the client namespace:
//! its stale neighbour entries move to the announcing node's MAC, and the
//! burst/repeat schedule is what arrives on the wire.

use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use ha_agent::vip::announce::{Announcer, Schedule};
use ha_agent::vip::{LinkInfo, Vip, VipLink};
use ha_tests::topology::{SVC_IF, VIP4, VIP6};
use ha_tests::{Netns, Topology, link, require_root};
use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourState};

const WRONG_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x99];

fn neighbour_mac(ns: &Netns, ip: IpAddr) -> Option<[u8; 6]> {
    ns.netlink(|h| async move {
        let all: Vec<_> = h.neighbours().get().execute().try_collect().await.unwrap();
        all.into_iter().find_map(|n| {
            let dest = n.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(v)) => Some(IpAddr::V4(*v)),
                NeighbourAttribute::Destination(NeighbourAddress::Inet6(v)) => Some(IpAddr::V6(*v)),
                _ => None,
            })?;
            (dest == ip).then(|| {
                n.attributes.iter().find_map(|a| match a {
                    NeighbourAttribute::LinkLayerAddress(m) => {
                        <[u8; 6]>::try_from(m.as_slice()).ok()
                    }
                    _ => None,
                })
            })?
        })
    })
}

fn seed_stale_entry(ns: &Netns, ip: IpAddr) {
    ns.netlink(|h| async move {
        let idx = link::index(&h, SVC_IF).await.unwrap();
        h.neighbours()
            .add(idx, ip)
            .link_layer_address(&WRONG_MAC)
            .state(NeighbourState::Stale)
            .replace()
            .execute()
            .await
            .unwrap();
    });
    assert_eq!(neighbour_mac(ns, ip), Some(WRONG_MAC));
}

#[test]
fn client_caches_move_to_the_announcing_node() {
    if !require_root() {
        return;
    }
    let t = Topology::two_nodes();
    // The client believes the VIPs are at some other (e.g. the old) MAC.
    seed_stale_entry(&t.c.ns, VIP4.into());
    seed_stale_entry(&t.c.ns, VIP6.into());

    let vips = [
        Vip::new(VIP4.into(), 24).unwrap(),
        Vip::new(VIP6.into(), 64).unwrap(),
    ];
    let sent = t.a.ns.netlink(|h| async move {
        let vl = VipLink::open(h.clone(), SVC_IF).await.unwrap();
        for v in &vips {
            vl.add(v).await.unwrap();
        }
        let info = LinkInfo::query(&h, SVC_IF).await.unwrap();
        Announcer::new(&info, &vips).unwrap().send_round().unwrap()
    });
    assert_eq!(sent, 2);

    let deadline = Instant::now() + Duration::from_secs(2);
    let mut seen = (None, None);
    while Instant::now() < deadline {
        seen = (
            neighbour_mac(&t.c.ns, VIP4.into()),
            neighbour_mac(&t.c.ns, VIP6.into()),
        );
        if seen == (Some(t.a.svc_mac), Some(t.a.svc_mac)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        seen,
        (Some(t.a.svc_mac), Some(t.a.svc_mac)),
        "client neighbour entries for v4, v6"
    );
}

/// Captures ARP frames for `ip` arriving on the client (timestamped as
/// they arrive, on a thread of their own) while `f` runs.
fn capture_garps(
    ns: &Netns,
    ip: [u8; 4],
    window: Duration,
    f: impl FnOnce() + Send,
) -> Vec<Instant> {
    use nix::sys::socket::{
        AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, recv, socket,
    };
    let sock = ns.run(|| {
        socket(
            AddressFamily::Packet,
            SockType::Raw,
            SockFlag::SOCK_NONBLOCK,
            SockProtocol::EthAll,
        )
        .expect("packet socket")
    });
    std::thread::scope(|s| {
        let capture = s.spawn(|| {
            let mut arrivals = Vec::new();
            let end = Instant::now() + window;
            let mut buf = [0u8; 2048];
            while Instant::now() < end {
                match recv(sock.as_raw_fd(), &mut buf, MsgFlags::empty()) {
                    Ok(n)
                        if n >= 42
                            && buf[12..14] == [0x08, 0x06]
                            && buf[28..32] == ip
                            && buf[38..42] == ip =>
                    {
                        arrivals.push(Instant::now());
                    }
                    Ok(_) => {}
                    Err(nix::errno::Errno::EAGAIN) => {
                        std::thread::sleep(Duration::from_micros(200))
                    }
                    Err(e) => panic!("recv: {e}"),
                }
            }
            arrivals
        });
        f();
        capture.join().expect("capture thread")
    })
}

#[test]
fn schedule_sends_a_burst_then_spaced_repeats() {
    if !require_root() {
        return;
    }
    let t = Topology::two_nodes();
    let vip = Vip::new(VIP4.into(), 24).unwrap();
    let schedule = Schedule {
        burst: 3,
        repeats: 2,
        spacing: Duration::from_millis(150),
    };
    let started = std::sync::Mutex::new(None);
    let started_ref = &started;
    let arrivals = capture_garps(&t.c.ns, VIP4.octets(), Duration::from_millis(800), || {
        t.a.ns.netlink(|h| async move {
            let info = LinkInfo::query(&h, SVC_IF).await.unwrap();
            let announcer = Announcer::new(&info, &[vip]).unwrap();
            *started_ref.lock().unwrap() = Some(Instant::now());
            announcer.run(schedule).await;
        });
    });
    let t0 = started.lock().unwrap().expect("announcer ran");
    let ms: Vec<u128> = arrivals
        .iter()
        .map(|a| a.saturating_duration_since(t0).as_millis())
        .collect();
    assert_eq!(ms.len(), 5, "3 burst + 2 repeats, arrivals at {ms:?} ms");
    assert!(ms[..3].iter().all(|&m| m < 100), "burst at once: {ms:?}");
    assert!((140..250).contains(&ms[3]), "first repeat ~150 ms: {ms:?}");
    assert!((290..400).contains(&ms[4]), "second repeat ~300 ms: {ms:?}");
}
