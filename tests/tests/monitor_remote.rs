//! Remote service checks against tiny banner servers: on 127.0.0.1 (no
//! root needed) and across the test topology's service network.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use ha_agent::monitor::remote::{Phase, RemoteError, Service, check};
use ha_tests::servers::{BannerServer, Behaviour};
use ha_tests::{Topology, require_root};

const T: Duration = Duration::from_secs(2);

#[tokio::test]
async fn healthy_services_pass_and_are_left_politely() {
    for (svc, b, bye) in [
        (
            Service::Smtp,
            Behaviour::Greet("220 mx.test ESMTP"),
            &b"QUIT\r\n"[..],
        ),
        (
            Service::Pop3,
            Behaviour::Greet("+OK POP3 ready"),
            b"QUIT\r\n",
        ),
        (
            Service::Imap,
            Behaviour::Greet("* OK IMAP4rev1 ready"),
            b"a1 LOGOUT\r\n",
        ),
        (
            Service::Http,
            Behaviour::Respond("HTTP/1.1 302 Found"),
            b"GET / HTTP/1.0\r\n",
        ),
    ] {
        let srv = BannerServer::local(b);
        check(svc, srv.addr(), T)
            .await
            .unwrap_or_else(|e| panic!("{svc:?}: {e}"));
        // Give the server's (serial) reader a moment to record the bytes.
        let deadline = Instant::now() + Duration::from_secs(1);
        while srv.received().is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let got = srv.received();
        assert!(
            got.first().is_some_and(|r| r.starts_with(bye)),
            "{svc:?} sent {got:?}"
        );
    }
}

#[tokio::test]
async fn wrong_greetings_fail_with_the_line() {
    for (svc, b) in [
        (Service::Smtp, Behaviour::Greet("554 no service")),
        (Service::Pop3, Behaviour::Greet("-ERR maintenance")),
        (Service::Imap, Behaviour::Greet("* BYE overloaded")),
        (Service::Http, Behaviour::Respond("SSH-2.0-OpenSSH")),
        // A POP3 server where SMTP was expected is not healthy SMTP.
        (Service::Smtp, Behaviour::Greet("+OK POP3 ready")),
    ] {
        let srv = BannerServer::local(b);
        match check(svc, srv.addr(), T).await {
            Err(RemoteError::UnexpectedReply { line, .. }) => assert!(!line.is_empty()),
            other => panic!("{svc:?}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn refused_connection_is_reported_as_such() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }; // closed again: nothing listens there now
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let started = Instant::now();
    match check(Service::Smtp, addr, T).await {
        Err(RemoteError::Connect { source, .. }) => {
            assert_eq!(source.kind(), std::io::ErrorKind::ConnectionRefused);
        }
        other => panic!("{other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "refusal is immediate"
    );
}

#[tokio::test]
async fn silent_server_times_out_within_the_limit() {
    let srv = BannerServer::local(Behaviour::Silent);
    let limit = Duration::from_millis(300);
    let started = Instant::now();
    match check(Service::Imap, srv.addr(), limit).await {
        Err(RemoteError::Timeout {
            phase: Phase::Reply,
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
    let took = started.elapsed();
    assert!(
        took >= limit && took < limit + Duration::from_millis(200),
        "took {took:?}"
    );
}

#[tokio::test]
async fn server_closing_at_once_fails() {
    let srv = BannerServer::local(Behaviour::Close);
    match check(Service::Pop3, srv.addr(), T).await {
        Err(RemoteError::Closed { .. } | RemoteError::Io { .. }) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn checks_across_the_service_network() {
    if !require_root() {
        return;
    }
    let t = Topology::two_nodes();
    // An SMTP server on node A's service address, checked from node B.
    let listener =
        t.a.ns
            .run(|| TcpListener::bind((t.a.svc_addr, 25)).unwrap());
    let srv = BannerServer::serve(listener, Behaviour::Greet("220 node-a ESMTP"));
    let addr = srv.addr();
    t.b.ns
        .block_on(|| async move { check(Service::Smtp, addr, T).await.unwrap() });

    // Nothing at .99 on the segment: no ARP answer, so the connect hangs
    // until our timeout, which must win over the kernel's ~3 s.
    let ghost = SocketAddr::from((Ipv4Addr::new(10, 200, 1, 99), 25));
    let limit = Duration::from_millis(300);
    let (res, took) = t.b.ns.block_on(|| async move {
        let started = Instant::now();
        (check(Service::Smtp, ghost, limit).await, started.elapsed())
    });
    assert!(
        matches!(
            res,
            Err(RemoteError::Timeout {
                phase: Phase::Connect,
                ..
            })
        ),
        "{res:?}"
    );
    assert!(took < limit + Duration::from_millis(200), "took {took:?}");
}

/// The task runner: a service that stops answering trips the monitor only
/// after `failures` consecutive failed checks, and status shows the count.
#[tokio::test]
async fn runner_trips_after_consecutive_failures() {
    use ha_agent::monitor::{Check, Health, MonitorSpec, Monitors};
    use std::num::NonZeroU32;

    let srv = BannerServer::local(Behaviour::Greet("220 ok"));
    let interval = Duration::from_millis(100);
    let spec = MonitorSpec {
        name: format!("smtp {}", srv.addr()),
        check: Check::Remote {
            service: Service::Smtp,
            addr: srv.addr(),
            timeout: Duration::from_millis(500),
        },
        interval,
        failures: NonZeroU32::new(3).unwrap(),
    };
    let (conn, h, _) = rtnetlink::new_connection().unwrap();
    tokio::spawn(conn);
    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    let monitors = Monitors::spawn(vec![spec], &h, &tx).unwrap();
    let up = wait(&mut rx).await;
    assert_eq!(up.transition.to, Health::Up);
    let st = &monitors.status()[0];
    assert_eq!(
        (st.health, st.failures, st.failures_to_trip),
        (Health::Up, 0, 3)
    );
    assert!(
        st.next_check > std::time::SystemTime::now(),
        "next check is in the future"
    );

    drop(srv); // now refused
    let stopped = Instant::now();
    let down = wait(&mut rx).await;
    let took = stopped.elapsed();
    assert_eq!(
        (down.transition.from, down.transition.to),
        (Health::Up, Health::Down)
    );
    assert!(down.error.unwrap().contains("connect failed"));
    // Three failures need at least two further intervals after the first.
    assert!(took >= interval * 2, "tripped after {took:?}");
    assert_eq!(monitors.status()[0].failures, 3);
}

async fn wait(
    rx: &mut tokio::sync::mpsc::Receiver<ha_agent::monitor::MonitorEvent>,
) -> ha_agent::monitor::MonitorEvent {
    tokio::time::timeout(Duration::from_secs(3), rx.recv())
        .await
        .expect("event in time")
        .expect("runner alive")
}
