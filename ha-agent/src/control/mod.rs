//! The local control socket: `ha-agent status`, `switch`, `sync`.
//!
//! One JSON request per line, one JSON response per line, over a Unix
//! stream socket that only root can open (mode 0600; directories the agent
//! creates for it are 0700, directories that exist keep their mode).

mod client;
mod render;
mod server;
mod status;

pub use client::{ControlError, request};
pub use render::render;
pub use server::{Command, ControlServer, serve};
pub use status::*;

use serde::{Deserialize, Serialize};

/// A request on the control socket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Request {
    /// The status page.
    Status,
    /// Planned switch of this node to `to`.
    Switch {
        /// `primary` or `secondary`.
        to: SwitchTo,
    },
    /// Force a full reconcile now.
    Sync {
        /// What to sync.
        what: SyncWhat,
    },
    /// Config-only: the generations kept on this node.
    Generations,
    /// Config-only, on the primary: roll the whole cluster back to a
    /// generation (`EPOCH.COUNTER`).
    Rollback {
        /// The generation.
        version: String,
    },
}

/// Target of a planned switch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum SwitchTo {
    /// Become primary.
    Primary,
    /// Become secondary.
    Secondary,
    /// Config-only: become the config primary (a new epoch).
    ConfigPrimary,
}

/// What `ha-agent sync` reconciles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum SyncWhat {
    /// Configuration and data.
    All,
    /// Configuration only.
    Config,
    /// Mail data and spool only.
    Data,
}

/// The answer to a request.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Response {
    /// Whether the request was carried out (or accepted, for switch/sync).
    pub ok: bool,
    /// What went wrong, or what was done.
    pub message: String,
    /// The status page, for `status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Box<Status>>,
}
