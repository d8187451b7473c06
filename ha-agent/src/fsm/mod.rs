//! The role state machine: a pure module. Events come in with monotonic
//! nanosecond times, actions go out; no sockets, clocks or files. See `docs/fsm.md` for the states,
//! the transition table and why the pair never has two gates open while a
//! path joins it.
//!
//! ```text
//! daemon ──Event──▶ Fsm::handle ──Vec<Action>──▶ daemon (gate, VIPs, hooks, sync)
//!           heartbeat sender ◀── Fsm::advert      status ◀── Fsm::status
//! ```

mod config;
mod machine;
mod reason;
mod status;
mod types;

#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;

pub use config::{FsmConfig, FsmError};
pub use machine::Fsm;
pub use reason::{LinkSilence, Reason};
pub use status::{Blocked, FsmStatus, LinkStatus, PeerStatus, StateName, Transition};
pub use types::{
    Action, Advert, ConfiguredMode, EffectiveMode, Event, HB_FLAG_CLAIM, LinkId, Nanos, OnFailure,
    PeerView, SwitchTarget,
};
