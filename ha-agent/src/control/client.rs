use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use super::{Request, Response};

/// Errors of the control client.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The socket is missing or refuses connections: no agent runs there.
    #[error(
        "cannot reach the agent at {path}: {source} (is `ha-agent run` running with this config?)"
    )]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The socket exists but this user may not open it: it is root's.
    #[error(
        "permission denied on the agent's control socket {path}: it is root's; run this command as root (e.g. with sudo)"
    )]
    NotRoot {
        /// Socket path.
        path: PathBuf,
    },
    /// The connection broke or timed out.
    #[error("talking to the agent at {path}: {source}")]
    Io {
        /// Socket path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The agent answered something this client does not understand.
    #[error("the agent at {path} sent an unreadable answer: {source}")]
    Decode {
        /// Socket path.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
}

/// Sends one request and waits (at most 5 s) for the answer.
///
/// # Errors
/// No agent, broken connection, or an unreadable answer.
pub fn request(path: &Path, req: &Request) -> Result<Response, ControlError> {
    let io = |source| ControlError::Io {
        path: path.to_owned(),
        source,
    };
    let mut s = UnixStream::connect(path).map_err(|source| connect_error(path, source))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(io)?;
    let mut line = serde_json::to_vec(req).expect("requests serialise");
    line.push(b'\n');
    s.write_all(&line).map_err(io)?;
    let mut answer = String::new();
    BufReader::new(s).read_line(&mut answer).map_err(io)?;
    serde_json::from_str(&answer).map_err(|source| ControlError::Decode {
        path: path.to_owned(),
        source,
    })
}

fn connect_error(path: &Path, source: std::io::Error) -> ControlError {
    if source.kind() == std::io::ErrorKind::PermissionDenied {
        ControlError::NotRoot {
            path: path.to_owned(),
        }
    } else {
        ControlError::Connect {
            path: path.to_owned(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_denied_says_root_is_needed() {
        let e = connect_error(
            Path::new("/run/ha/a.sock"),
            std::io::Error::from_raw_os_error(libc::EACCES),
        )
        .to_string();
        assert!(e.contains("root"), "{e}");
        assert!(!e.contains("running"), "{e}");
        let e = connect_error(
            Path::new("/run/ha/a.sock"),
            std::io::Error::from_raw_os_error(libc::ENOENT),
        )
        .to_string();
        assert!(e.contains("is `ha-agent run` running"), "{e}");
    }
}
