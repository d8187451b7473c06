//! Remote service checks: connect to host:port and read the service's
//! first line — SMTP `220`, POP3 `+OK`, IMAP `* OK`, HTTP any status line
//! in answer to `GET /` — all within one timeout.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};

/// Longest first line we read; a real banner is far shorter.
const MAX_LINE: u64 = 512;

/// A mail-appliance service that can be checked remotely.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Service {
    /// SMTP: greeting `220 ...`.
    Smtp,
    /// POP3: greeting `+OK ...`.
    Pop3,
    /// IMAP: greeting `* OK ...` (`* PREAUTH` also means alive).
    Imap,
    /// HTTP: any `HTTP/x.y NNN` status line in answer to `GET /`.
    Http,
}

impl Service {
    /// What the client says first (HTTP only; the mail protocols greet).
    fn request(self, addr: SocketAddr) -> Option<String> {
        (self == Self::Http)
            .then(|| format!("GET / HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: ha-agent\r\nConnection: close\r\n\r\n"))
    }

    /// A polite goodbye after a good greeting, so the server logs no
    /// aborted session.
    fn goodbye(self) -> Option<&'static [u8]> {
        match self {
            Self::Smtp | Self::Pop3 => Some(b"QUIT\r\n"),
            Self::Imap => Some(b"a1 LOGOUT\r\n"),
            Self::Http => None,
        }
    }

    /// Whether `line` (the first line received) shows a working service.
    #[must_use]
    pub fn accepts(self, line: &str) -> bool {
        match self {
            // "220 " or a multi-line "220-".
            Self::Smtp => {
                line.starts_with("220")
                    && matches!(
                        line.as_bytes().get(3),
                        None | Some(b' ' | b'-' | b'\r' | b'\n')
                    )
            }
            Self::Pop3 => line.starts_with("+OK"),
            Self::Imap => line.starts_with("* OK") || line.starts_with("* PREAUTH"),
            Self::Http => is_http_status_line(line),
        }
    }
}

/// The first line a service sent, as [`Service::accepts`] judges it:
/// up to the first line feed, lossily decoded, line end and trailing
/// blanks removed; `None` when the server sent nothing at all.
#[must_use]
pub fn first_line(raw: &[u8]) -> Option<String> {
    let line = raw.split_inclusive(|b| *b == b'\n').next()?;
    Some(String::from_utf8_lossy(line).trim_end().to_owned())
}

/// `HTTP/x.y NNN ...` from the line's first byte: a server that sends
/// something else first is not speaking HTTP.
fn is_http_status_line(line: &str) -> bool {
    if !line.starts_with("HTTP/") {
        return false;
    }
    let mut parts = line.split_ascii_whitespace();
    let version_ok = parts.next().is_some_and(|v| v.starts_with("HTTP/"));
    let code_ok = parts
        .next()
        .is_some_and(|c| c.len() == 3 && c.bytes().all(|b| b.is_ascii_digit()));
    version_ok && code_ok
}

/// Where a check stopped when it ran out of time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Establishing the TCP connection.
    Connect,
    /// Sending the request or waiting for the first line.
    Reply,
}

/// Why a remote check failed.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The connection was refused or could not be made.
    #[error("{service:?} {addr}: connect failed: {source}")]
    Connect {
        /// The service checked.
        service: Service,
        /// Its address.
        addr: SocketAddr,
        /// The socket error (e.g. connection refused).
        #[source]
        source: std::io::Error,
    },
    /// No answer within the timeout.
    #[error("{service:?} {addr}: timed out after {timeout:?} during {phase:?}")]
    Timeout {
        /// The service checked.
        service: Service,
        /// Its address.
        addr: SocketAddr,
        /// The configured timeout.
        timeout: Duration,
        /// Where it stopped.
        phase: Phase,
    },
    /// Reading or writing failed after connecting (e.g. reset).
    #[error("{service:?} {addr}: {source}")]
    Io {
        /// The service checked.
        service: Service,
        /// Its address.
        addr: SocketAddr,
        /// The socket error.
        #[source]
        source: std::io::Error,
    },
    /// The server closed the connection before sending a line.
    #[error("{service:?} {addr}: closed without a greeting")]
    Closed {
        /// The service checked.
        service: Service,
        /// Its address.
        addr: SocketAddr,
    },
    /// Something answered, but not as the service should.
    #[error("{service:?} {addr}: unexpected reply {line:?}")]
    UnexpectedReply {
        /// The service checked.
        service: Service,
        /// Its address.
        addr: SocketAddr,
        /// The first line received (at most 512 bytes, lossily decoded).
        line: String,
    },
}

/// Checks `service` at `addr`; the whole exchange (connect, request, first
/// line) must finish within `timeout`.
///
/// # Errors
/// A [`RemoteError`] saying what went wrong.
pub async fn check(
    service: Service,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<(), RemoteError> {
    let deadline = Instant::now() + timeout;
    let timed_out = |phase| RemoteError::Timeout {
        service,
        addr,
        timeout,
        phase,
    };
    let io_err = |source| RemoteError::Io {
        service,
        addr,
        source,
    };

    let stream = timeout_at(deadline, TcpStream::connect(addr))
        .await
        .map_err(|_| timed_out(Phase::Connect))?
        .map_err(|source| RemoteError::Connect {
            service,
            addr,
            source,
        })?;
    let mut stream = BufReader::new(stream);
    let line = timeout_at(deadline, async {
        if let Some(req) = service.request(addr) {
            stream.get_mut().write_all(req.as_bytes()).await?;
        }
        let mut raw = Vec::new();
        (&mut stream)
            .take(MAX_LINE)
            .read_until(b'\n', &mut raw)
            .await?;
        Ok::<_, std::io::Error>(raw)
    })
    .await
    .map_err(|_| timed_out(Phase::Reply))?
    .map_err(io_err)?;

    let Some(line) = first_line(&line) else {
        return Err(RemoteError::Closed { service, addr });
    };
    if !service.accepts(&line) {
        return Err(RemoteError::UnexpectedReply {
            service,
            addr,
            line,
        });
    }
    if let Some(bye) = service.goodbye() {
        // Best effort: the verdict is already in.
        let _ = timeout_at(deadline, stream.get_mut().write_all(bye)).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configuration_reference_names_the_http_request_sent() {
        let req = Service::Http
            .request("10.200.0.1:80".parse().unwrap())
            .unwrap();
        let line = req.lines().next().unwrap();
        let method_path = line.strip_suffix(" HTTP/1.0").unwrap();
        let reference = include_str!("../../../docs/configuration.md");
        let model = include_str!("../config/model.rs");
        assert!(
            reference.contains(&format!("`{method_path}`")),
            "docs/configuration.md names `{method_path}`"
        );
        for other in ["HEAD /", "GET /"] {
            if other != method_path {
                assert!(!reference.contains(other), "docs name {other}");
                assert!(!model.contains(other), "config/model.rs names {other}");
            }
        }
    }

    #[test]
    fn greetings() {
        use Service::*;
        for (svc, line, ok) in [
            (Smtp, "220 mail.example ESMTP Postfix", true),
            (Smtp, "220-mail.example multi-line", true),
            (Smtp, "220", true),
            (Smtp, "421 too busy", false),
            (Smtp, "2200 odd", false),
            (Pop3, "+OK Dovecot ready.", true),
            (Pop3, "-ERR go away", false),
            (Imap, "* OK [CAPABILITY IMAP4rev1] ready", true),
            (Imap, "* PREAUTH ready", true),
            (Imap, "* BYE shutting down", false),
            (Http, "HTTP/1.1 200 OK", true),
            (Http, "HTTP/1.0 503 Service Unavailable", true),
            (Http, "HTTP/1.1 OK", false),
            (Http, "SSH-2.0-OpenSSH_9.2", false),
            (Smtp, "", false),
            // Found by fuzzing: the status line must start the reply.
            (Http, "\n\nHTTP/\n\n555", false),
            (Http, "\x0cHTTP/1.1 200 OK", false),
        ] {
            assert_eq!(svc.accepts(line), ok, "{svc:?} {line:?}");
        }
    }

    #[test]
    fn only_the_first_line_is_judged() {
        // Found by fuzzing: lines after the first never make a reply good.
        let raw = b"\n\n\nHTTP/\n\n555";
        assert_eq!(first_line(raw).as_deref(), Some(""));
        assert!(!Service::Http.accepts(&first_line(raw).unwrap()));
        assert_eq!(first_line(b"").as_deref(), None);
        assert_eq!(
            first_line(b"220 mail ESMTP\r\n250 x\r\n").as_deref(),
            Some("220 mail ESMTP")
        );
    }

    #[test]
    fn only_http_sends_first() {
        let a: SocketAddr = "127.0.0.1:80".parse().unwrap();
        let req = Service::Http.request(a).unwrap();
        assert!(req.starts_with("GET / HTTP/1.0\r\n") && req.ends_with("\r\n\r\n"));
        assert!(Service::Smtp.request(a).is_none());
    }

    #[test]
    fn service_names_in_config() {
        #[derive(serde::Deserialize)]
        struct C {
            service: Service,
        }
        let c: C = toml::from_str("service = \"pop3\"").unwrap();
        assert_eq!(c.service, Service::Pop3);
        assert!(toml::from_str::<C>("service = \"ftp\"").is_err());
    }
}
