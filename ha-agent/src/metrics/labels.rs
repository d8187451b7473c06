//! Label values and label sets. Label values are closed enums or static
//! strings chosen by the code, never data from the network, so that a peer
//! cannot grow the number of series.

use prometheus_client::encoding::EncodeLabelSet;

use crate::config::Mode;

/// A node's role, as shown by `ha_configured_role` and `ha_effective_role`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Active-passive primary: carries the VIPs.
    Primary,
    /// Active-passive secondary: standing by.
    Secondary,
    /// Config-only cluster: pushes configuration.
    ConfigPrimary,
    /// Config-only cluster: receives configuration.
    ConfigSecondary,
    /// Out of service after a failure (effective role only).
    Failed,
    /// Not taking part in HA.
    Off,
}

impl Role {
    /// Every role, so that each has a series (0 or 1) from the start.
    pub const ALL: [Role; 6] = [
        Role::Primary,
        Role::Secondary,
        Role::ConfigPrimary,
        Role::ConfigSecondary,
        Role::Failed,
        Role::Off,
    ];

    /// The label value, spelt as in the configuration file.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Secondary => "secondary",
            Role::ConfigPrimary => "config-primary",
            Role::ConfigSecondary => "config-secondary",
            Role::Failed => "failed",
            Role::Off => "off",
        }
    }
}

impl From<Mode> for Role {
    fn from(mode: Mode) -> Self {
        match mode {
            Mode::Primary => Role::Primary,
            Mode::Secondary => Role::Secondary,
            Mode::ConfigPrimary => Role::ConfigPrimary,
            Mode::ConfigSecondary => Role::ConfigSecondary,
            Mode::Off => Role::Off,
        }
    }
}

/// Which way sync traffic went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// This node sent it (primary, or a returning node handing back mail).
    Sent,
    /// This node received and made it durable.
    Received,
}

impl Direction {
    /// The label value.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Direction::Sent => "sent",
            Direction::Received => "received",
        }
    }
}

/// What a sync timestamp refers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SyncKind {
    /// Application and cluster configuration.
    Config,
    /// Mail data and MTA spool.
    Data,
}

impl SyncKind {
    /// The label value.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            SyncKind::Config => "config",
            SyncKind::Data => "data",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct RoleLabel {
    pub role: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct LinkLabel {
    pub link: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct KindLabel {
    pub kind: &'static str,
}

/// A kind named at run time (sync error kinds come from the sync status).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct OwnedKindLabel {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct TransitionLabel {
    pub from: &'static str,
    pub to: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct PacketLabel {
    pub action: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ResultLabel {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct DirectionLabel {
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct MemberLabel {
    pub member: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct MonitorLabel {
    pub monitor: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct MonitorStateLabel {
    pub monitor: String,
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct BuildLabel {
    pub version: &'static str,
    pub node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct OutcomeLabel {
    pub outcome: &'static str,
    pub reason: &'static str,
}
