use std::{
    os::{
        fd::AsRawFd as _,
        unix::fs::{DirBuilderExt as _, PermissionsExt as _},
    },
    path::{Path, PathBuf},
};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::UnixListener,
    sync::{mpsc, oneshot},
};

use super::{Request, Response};

/// A request handed to the control loop, with the way back.
#[derive(Debug)]
pub struct Command {
    /// What was asked.
    pub request: Request,
    /// Where the answer goes.
    pub reply: oneshot::Sender<Response>,
}

/// The bound control socket; the file is removed on drop.
pub struct ControlServer {
    listener: UnixListener,
    path: PathBuf,
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl ControlServer {
    /// Binds the socket with mode 0600, so only root (the agent's user)
    /// can talk to it. Missing directories on the way are created 0700;
    /// the mode of a directory that exists is never changed (it may be
    /// shared with other programs). A stale socket file is replaced.
    ///
    /// The socket is bound inside a private directory of its own, made
    /// 0600 there and then moved into place, so that it is never reachable
    /// with a wider mode, whatever the umask.
    ///
    /// # Errors
    /// The directory or socket cannot be created.
    pub fn bind(path: &Path) -> std::io::Result<Self> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        create_private_dirs(dir)?;
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("another agent already serves {}", path.display()),
            ));
        }
        let _ = std::fs::remove_file(path);
        let private = dir.join(format!(".ha-bind-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&private);
        std::fs::DirBuilder::new().mode(0o700).create(&private)?;
        let staged = private.join("s");
        let bound = (|| -> std::io::Result<UnixListener> {
            // Bound through the directory's descriptor: a socket address
            // holds at most 107 bytes, and the configured path may use
            // them all.
            let handle = std::fs::File::open(&private)?;
            let short = format!("/proc/self/fd/{}/s", handle.as_raw_fd());
            let listener = UnixListener::bind(&short)?;
            std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))?;
            std::fs::rename(&staged, path)?;
            Ok(listener)
        })();
        let _ = std::fs::remove_file(&staged);
        let _ = std::fs::remove_dir(&private);
        Ok(Self {
            listener: bound?,
            path: path.to_owned(),
        })
    }
}

/// Creates `dir` and its missing parents with mode 0700; leaves every
/// directory that exists as it is.
fn create_private_dirs(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent()
        && !parent.as_os_str().is_empty()
    {
        create_private_dirs(parent)?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt as _;

    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().mode() & 0o7777
    }

    #[tokio::test]
    async fn a_directory_that_exists_keeps_its_mode() {
        let t = tempfile::tempdir().unwrap();
        let shared = t.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
        // Also through a symlink to it.
        let link = t.path().join("link");
        std::os::unix::fs::symlink(&shared, &link).unwrap();
        for sock in [shared.join("a.sock"), link.join("b.sock")] {
            let server = ControlServer::bind(&sock).unwrap();
            assert_eq!(
                mode(&shared),
                0o1777,
                "{} changed its directory",
                sock.display()
            );
            assert_eq!(mode(&sock), 0o600, "socket mode");
            assert!(std::os::unix::net::UnixStream::connect(&sock).is_ok());
            drop(server);
            assert!(!sock.exists(), "socket removed on drop");
        }
        let left: Vec<_> = std::fs::read_dir(&shared).unwrap().collect();
        assert!(left.is_empty(), "nothing left behind: {left:?}");
    }

    #[tokio::test]
    async fn missing_directories_are_created_private() {
        let t = tempfile::tempdir().unwrap();
        std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let sock = t.path().join("ha/run/x.sock");
        let _server = ControlServer::bind(&sock).unwrap();
        assert_eq!(mode(t.path()), 0o755);
        assert_eq!(mode(&t.path().join("ha")), 0o700);
        assert_eq!(mode(&t.path().join("ha/run")), 0o700);
        assert_eq!(mode(&sock), 0o600);
    }

    #[tokio::test]
    async fn a_path_of_the_longest_allowed_length_binds() {
        let t = tempfile::tempdir().unwrap();
        let base = t.path().to_str().unwrap().len() + 1;
        let sock = t.path().join("s".repeat(107 - base));
        assert_eq!(sock.as_os_str().len(), 107);
        let _server = ControlServer::bind(&sock).unwrap();
        assert!(std::os::unix::net::UnixStream::connect(&sock).is_ok());
    }

    #[tokio::test]
    async fn a_second_agent_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let sock = t.path().join("a.sock");
        let _first = ControlServer::bind(&sock).unwrap();
        let e = ControlServer::bind(&sock)
            .err()
            .expect("second bind refused");
        assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse);
    }
}

/// Accepts connections until the channel closes; each request becomes a
/// [`Command`] for the control loop.
pub async fn serve(server: ControlServer, commands: mpsc::Sender<Command>) {
    loop {
        let Ok((stream, _)) = server.listener.accept().await else {
            continue;
        };
        if commands.is_closed() {
            return;
        }
        let commands = commands.clone();
        tokio::spawn(async move {
            let (rd, mut wr) = stream.into_split();
            let mut line = String::new();
            let mut rd = BufReader::new(rd);
            if rd.read_line(&mut line).await.is_err() {
                return;
            }
            let response = match serde_json::from_str::<Request>(&line) {
                Err(e) => Response {
                    ok: false,
                    message: format!("bad request: {e}"),
                    status: None,
                },
                Ok(request) => {
                    let (tx, rx) = oneshot::channel();
                    if commands.send(Command { request, reply: tx }).await.is_err() {
                        return;
                    }
                    match rx.await {
                        Ok(r) => r,
                        Err(_) => Response {
                            ok: false,
                            message: "agent is shutting down".into(),
                            status: None,
                        },
                    }
                }
            };
            let mut out = serde_json::to_vec(&response).unwrap_or_default();
            out.push(b'\n');
            let _ = wr.write_all(&out).await;
        });
    }
}
