//! Tiny TCP servers that greet like mail services, for monitor and
//! remote-service tests. Each runs on its own thread, serves every
//! connection until dropped, and records what clients sent.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How the server behaves on each connection.
#[derive(Clone, Debug)]
pub enum Behaviour {
    /// Send this line at once (SMTP/POP3/IMAP style).
    Greet(&'static str),
    /// Read a request up to the blank line, then send this line (HTTP).
    Respond(&'static str),
    /// Accept and say nothing (the client must time out).
    Silent,
    /// Accept and close at once.
    Close,
}

/// A running server; stops (and joins its thread) on drop.
#[derive(Debug)]
pub struct BannerServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    received: Arc<Mutex<Vec<Vec<u8>>>>,
    thread: Option<JoinHandle<()>>,
}

impl BannerServer {
    /// Serves on 127.0.0.1 with a free port.
    ///
    /// # Panics
    /// When no port can be bound.
    #[must_use]
    pub fn local(behaviour: Behaviour) -> Self {
        Self::serve(
            TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1"),
            behaviour,
        )
    }

    /// Serves on a listener bound by the caller (e.g. inside a namespace
    /// with `Netns::run`; the socket stays in that namespace).
    ///
    /// # Panics
    /// When the listener is unusable.
    #[must_use]
    pub fn serve(listener: TcpListener, behaviour: Behaviour) -> Self {
        let addr = listener.local_addr().expect("bound");
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(Mutex::new(Vec::new()));
        let (stop2, received2) = (Arc::clone(&stop), Arc::clone(&received));
        let thread = thread::spawn(move || {
            let mut held = Vec::new(); // Silent connections stay open until drop
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        if let Some(c) = handle(conn, &behaviour, &received2) {
                            held.push(c);
                        }
                    }
                    Err(_) => thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Self {
            addr,
            stop,
            received,
            thread: Some(thread),
        }
    }

    /// Where it listens.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What each client sent (one entry per connection, after the greeting).
    #[must_use]
    pub fn received(&self) -> Vec<Vec<u8>> {
        self.received.lock().expect("lock").clone()
    }
}

impl Drop for BannerServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Serves one connection; returns it when it must be kept open.
fn handle(mut conn: TcpStream, b: &Behaviour, received: &Mutex<Vec<Vec<u8>>>) -> Option<TcpStream> {
    conn.set_nonblocking(false).ok()?;
    conn.set_read_timeout(Some(Duration::from_millis(300)))
        .ok()?;
    match b {
        Behaviour::Silent => return Some(conn),
        Behaviour::Close => return None,
        Behaviour::Greet(line) => {
            let _ = conn.write_all(format!("{line}\r\n").as_bytes());
        }
        Behaviour::Respond(line) => {
            let req = read_bounded(&mut conn, |r| r.windows(4).any(|w| w == b"\r\n\r\n"));
            received.lock().expect("lock").push(req);
            let _ = conn.write_all(format!("{line}\r\n\r\n").as_bytes());
            return None;
        }
    }
    let after = read_bounded(&mut conn, |r| r.ends_with(b"\n"));
    received.lock().expect("lock").push(after);
    None
}

/// Reads until `done` says so, EOF, 4 KiB or 300 ms.
fn read_bounded(conn: &mut TcpStream, done: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    let end = Instant::now() + Duration::from_millis(300);
    while Instant::now() < end && got.len() < 4096 && !done(&got) {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    got
}
