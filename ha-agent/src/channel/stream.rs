//! The handshake on a blocking TCP socket.
//!
//! One deadline covers the whole handshake, however the peer spreads its
//! bytes: a peer that sends one byte a second is cut off when the deadline
//! passes, not when a per-read timeout would. The listener reads at most
//! [`CLIENT_HELLO_MAX`] bytes before it has checked anything.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::handshake::{
    self, CLIENT_FIXED, Client, Established, HandshakeError, MAX_NAME, PROOF_LEN, Refusal,
    SERVER_FIXED, Server,
};
use super::{Local, Purpose};

/// The whole handshake must be done within this, on either side. A genuine
/// peer needs two round trips; the margin is for a loaded machine.
pub const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(5);

/// Reads and writes bounded by one deadline.
struct Deadline<'a> {
    s: &'a TcpStream,
    until: Instant,
    total: Duration,
}

impl Deadline<'_> {
    fn left(&self) -> Result<Duration, HandshakeError> {
        let left = self.until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            Err(HandshakeError::Timeout(self.total))
        } else {
            Ok(left)
        }
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), HandshakeError> {
        let mut off = 0;
        while off < buf.len() {
            self.s.set_read_timeout(Some(self.left()?))?;
            match (&*self.s).read(&mut buf[off..]) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
                Ok(n) => off += n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    fn write_all(&mut self, buf: &[u8]) -> Result<(), HandshakeError> {
        let mut off = 0;
        while off < buf.len() {
            self.s.set_write_timeout(Some(self.left()?))?;
            match (&*self.s).write(&buf[off..]) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero).into()),
                Ok(n) => off += n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    fn done(self) -> io::Result<()> {
        self.s.set_read_timeout(None)?;
        self.s.set_write_timeout(None)
    }
}

/// Client side: proves the password to the server at the other end of `s`
/// and checks its proof, within `deadline`.
///
/// # Errors
/// The server refused, failed its proof, or did not answer in time.
pub fn connect(
    s: &TcpStream,
    local: Local<'_>,
    purpose: Purpose,
    deadline: Duration,
) -> Result<Established, HandshakeError> {
    let mut d = Deadline {
        s,
        until: Instant::now() + deadline,
        total: deadline,
    };
    let (client, hello) = Client::start(local, purpose, handshake::nonce());
    d.write_all(&hello)?;
    let mut status = [0u8; 1];
    d.read_exact(&mut status)?;
    let reply = if status[0] == 0 {
        let mut fixed = [0u8; SERVER_FIXED];
        d.read_exact(&mut fixed)?;
        let n = fixed[SERVER_FIXED - 1] as usize;
        if n > MAX_NAME {
            return Err(HandshakeError::Malformed("server name too long"));
        }
        let mut rest = vec![0u8; n + PROOF_LEN];
        d.read_exact(&mut rest)?;
        [&status[..], &fixed, &rest].concat()
    } else {
        let mut v = [0u8; 1];
        // An older peer may close without its version: keep the code.
        let _ = d.read_exact(&mut v);
        vec![status[0], v[0]]
    };
    let (finish, est) = match client.on_server_hello(&reply) {
        Ok(x) => x,
        Err(e @ HandshakeError::BadProof { .. }) => {
            // Finish anyway, with a proof that cannot verify: the server
            // then logs and counts the failure too, so that both operators
            // see that the passwords differ.
            let _ = d.write_all(&[0; PROOF_LEN]);
            return Err(e);
        }
        Err(e) => return Err(e),
    };
    d.write_all(&finish)?;
    d.read_exact(&mut status)?;
    handshake::on_verdict(status[0])?;
    d.done()?;
    Ok(est)
}

/// Server side: checks the client at the other end of `s`, for one of the
/// purposes in `serves`, within `deadline`. `on_hello` is told the name the
/// client claims as soon as its hello parses (before it is proved). Every
/// refusal is sent to the client before this returns.
///
/// # Errors
/// The client was refused, failed its proof, or was too slow.
pub fn accept(
    s: &TcpStream,
    local: Local<'_>,
    serves: &[Purpose],
    deadline: Duration,
    on_hello: impl FnOnce(&str),
) -> Result<Established, HandshakeError> {
    let mut d = Deadline {
        s,
        until: Instant::now() + deadline,
        total: deadline,
    };
    let refuse = |d: &mut Deadline<'_>, e: HandshakeError| -> HandshakeError {
        if let HandshakeError::Refused { code, .. } = &e {
            let _ = d.write_all(&code.encode());
        }
        e
    };
    let mut hello = vec![0u8; CLIENT_FIXED];
    d.read_exact(&mut hello)?;
    let n = hello[CLIENT_FIXED - 1] as usize;
    if n > MAX_NAME {
        let e = HandshakeError::Refused {
            code: Refusal::Malformed,
            why: format!("client name of {n} bytes"),
        };
        return Err(refuse(&mut d, e));
    }
    hello.resize(CLIENT_FIXED + n, 0);
    d.read_exact(&mut hello[CLIENT_FIXED..])?;
    let (server, reply) = match Server::on_client_hello(local, serves, &hello, handshake::nonce()) {
        Ok(x) => x,
        Err(e) => return Err(refuse(&mut d, e)),
    };
    on_hello(server.claimed_peer());
    d.write_all(&reply)?;
    let mut finish = [0u8; PROOF_LEN];
    d.read_exact(&mut finish)?;
    match server.on_client_finish(&finish) {
        Ok(est) => {
            d.write_all(&[handshake::ACCEPTED])?;
            d.done()?;
            Ok(est)
        }
        Err(e) => {
            // The verdict is one byte: the refusal code alone.
            let _ = d.write_all(&[Refusal::Auth as u8]);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::thread;

    use super::*;

    fn local(node: &str) -> Local<'_> {
        Local {
            node,
            cluster: 1,
            password: b"pw",
            encrypt: false,
        }
    }

    #[test]
    fn handshake_over_tcp_and_one_deadline_for_a_slow_client() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let ok = accept(
                &s,
                local("b"),
                &[Purpose::Replicate],
                HANDSHAKE_DEADLINE,
                |_| {},
            );
            let (s2, _) = l.accept().unwrap();
            let started = Instant::now();
            let slow = accept(
                &s2,
                local("b"),
                &[Purpose::Replicate],
                Duration::from_millis(600),
                |_| {},
            );
            (ok.map(|e| e.peer), slow.map(|e| e.peer), started.elapsed())
        });
        let s = TcpStream::connect(addr).unwrap();
        let est = connect(&s, local("a"), Purpose::Replicate, HANDSHAKE_DEADLINE).unwrap();
        assert_eq!(est.peer, "b");
        // One byte every 100 ms: each read is quick, the whole is too slow.
        let mut slow = TcpStream::connect(addr).unwrap();
        let (_, hello) = Client::start(local("a"), Purpose::Replicate, handshake::nonce());
        for b in &hello {
            if slow.write_all(&[*b]).is_err() {
                break;
            }
            thread::sleep(Duration::from_millis(100));
        }
        let (ok, slow_res, took) = t.join().unwrap();
        assert_eq!(ok.unwrap(), "a");
        let e = slow_res.unwrap_err();
        assert_eq!(e.label(), "handshake_timeout", "{e}");
        assert!(took < Duration::from_secs(3), "{took:?}");
    }

    #[test]
    fn refusal_is_told_to_the_client() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            accept(
                &s,
                local("b"),
                &[Purpose::Config],
                HANDSHAKE_DEADLINE,
                |_| {},
            )
            .unwrap_err()
        });
        let s = TcpStream::connect(addr).unwrap();
        let e = connect(&s, local("a"), Purpose::Replicate, HANDSHAKE_DEADLINE).unwrap_err();
        assert!(
            matches!(
                e,
                HandshakeError::PeerRefused {
                    code: Refusal::Purpose,
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(t.join().unwrap().label(), "purpose");
    }
}
