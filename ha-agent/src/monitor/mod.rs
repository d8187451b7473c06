//! Service monitors:
//!
//! - local, checked by the primary on itself: [`link`] state of an
//!   interface, [`disk`] space and writability;
//! - remote, checked by the secondary against the primary: [`remote`]
//!   SMTP, POP3, IMAP, HTTP at host:port.
//!
//! [`schedule::Schedule`] (pure) turns results into health changes after
//! `failures` consecutive failures; [`task`] runs the checks on their
//! intervals and reports changes and status.

pub mod disk;
pub mod link;
pub mod remote;
pub mod schedule;
pub mod task;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use schedule::{Health, Schedule, Transition};
pub use task::{MonitorEvent, MonitorSpec, MonitorStatus, Monitors};

/// What one monitor checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Check {
    /// A service answering at `addr` within `timeout`.
    Remote {
        /// Which protocol's greeting to expect.
        service: remote::Service,
        /// Where.
        addr: SocketAddr,
        /// For connect and first line together.
        timeout: Duration,
    },
    /// An interface being up with carrier.
    Link {
        /// The interface.
        ifname: String,
    },
    /// The file system of `path` having room and accepting writes.
    Disk {
        /// A directory on the monitored file system.
        path: PathBuf,
        /// Free space limits.
        limits: disk::DiskLimits,
        /// A check taking longer (hung disk) counts as failed.
        timeout: Duration,
    },
}

/// Why a check failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The remote service did not answer properly.
    #[error(transparent)]
    Remote(#[from] remote::RemoteError),
    /// The link is down.
    #[error("link {ifname} is down: {reason:?}")]
    LinkDown {
        /// The interface.
        ifname: String,
        /// Why it counts as down.
        reason: link::DownReason,
    },
    /// The link state could not be read.
    #[error(transparent)]
    LinkQuery(#[from] crate::vip::VipError),
    /// The disk check failed.
    #[error(transparent)]
    Disk(#[from] disk::DiskError),
    /// The disk check did not finish in time (hung I/O).
    #[error("disk check of {path} did not finish within {timeout:?}")]
    DiskTimeout {
        /// The monitored path.
        path: PathBuf,
        /// The limit.
        timeout: Duration,
    },
    /// The blocking thread running the disk check died.
    #[error("disk check of {path} panicked")]
    DiskPanicked {
        /// The monitored path.
        path: PathBuf,
    },
}

impl Check {
    /// Runs the check once. `handle` is the rtnetlink handle for link
    /// checks (of the agent's own network namespace).
    ///
    /// # Errors
    /// Why the check failed.
    pub async fn run(&self, handle: &rtnetlink::Handle) -> Result<(), CheckError> {
        match self {
            Self::Remote {
                service,
                addr,
                timeout,
            } => Ok(remote::check(*service, *addr, *timeout).await?),
            Self::Link { ifname } => match link::check(handle, ifname).await? {
                link::LinkState::Up => Ok(()),
                link::LinkState::Down(reason) => Err(CheckError::LinkDown {
                    ifname: ifname.clone(),
                    reason,
                }),
            },
            Self::Disk {
                path,
                limits,
                timeout,
            } => {
                let (p, l) = (path.clone(), *limits);
                // A hung disk leaves this thread blocked; the timeout still
                // answers, and the leaked thread ends when the I/O does.
                let job = tokio::task::spawn_blocking(move || disk::check(&p, l));
                match tokio::time::timeout(*timeout, job).await {
                    Err(_) => Err(CheckError::DiskTimeout {
                        path: path.clone(),
                        timeout: *timeout,
                    }),
                    Ok(Err(_)) => Err(CheckError::DiskPanicked { path: path.clone() }),
                    Ok(Ok(result)) => result.map(|_| ()).map_err(CheckError::from),
                }
            }
        }
    }
}
