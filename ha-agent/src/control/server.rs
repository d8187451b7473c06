use std::{
    os::unix::fs::PermissionsExt as _,
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
    /// Binds the socket: parent directory 0700, socket 0600, so only root
    /// (the agent's user) can talk to it. A stale socket file is replaced.
    ///
    /// # Errors
    /// The directory or socket cannot be created.
    pub fn bind(path: &Path) -> std::io::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
            if dir != Path::new("/run") && dir != Path::new("/tmp") {
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
            }
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("another agent already serves {}", path.display()),
            ));
        }
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        Ok(Self {
            listener,
            path: path.to_owned(),
        })
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
