//! Owner and group names ⇄ numeric ids, cached.
//!
//! Appliances do not share uid/gid numbers (`postfix` may be 104 on one and
//! 109 on the other), so ownership travels by name. An id without a name on
//! the sender travels as `#<number>`.
//!
//! A name unknown on the receiver (a `#<number>` included: numbers mean
//! nothing across appliances) is never applied as a number and never left
//! as root: the file is kept (it may be mail) under the fallback owner
//! `nobody`/`nogroup` (65534 when those names are missing), and the name is
//! reported so the receiver can count and log it.

use std::collections::HashMap;

use nix::unistd::{Gid, Group, Uid, User};

/// Caches of passwd/group look-ups (each look-up reads `/etc/passwd`).
#[derive(Debug, Default)]
pub struct Ids {
    users: HashMap<u32, String>,
    groups: HashMap<u32, String>,
    uids: HashMap<String, Option<u32>>,
    gids: HashMap<String, Option<u32>>,
    /// Names that fell back since the last [`take_unknown`](Self::take_unknown).
    unknown: Vec<String>,
}

/// The fallback id when `nobody`/`nogroup` are missing.
const NOBODY: u32 = 65_534;

impl Ids {
    /// Name of a uid.
    pub fn user_name(&mut self, uid: u32) -> String {
        self.users
            .entry(uid)
            .or_insert_with(|| match User::from_uid(Uid::from_raw(uid)) {
                Ok(Some(u)) => u.name,
                _ => format!("#{uid}"),
            })
            .clone()
    }

    /// Name of a gid.
    pub fn group_name(&mut self, gid: u32) -> String {
        self.groups
            .entry(gid)
            .or_insert_with(|| match Group::from_gid(Gid::from_raw(gid)) {
                Ok(Some(g)) => g.name,
                _ => format!("#{gid}"),
            })
            .clone()
    }

    /// Local uid of a user name; `None` if unknown here.
    pub fn uid(&mut self, name: &str) -> Option<u32> {
        if name.starts_with('#') {
            return None;
        }
        *self
            .uids
            .entry(name.to_owned())
            .or_insert_with(|| User::from_name(name).ok().flatten().map(|u| u.uid.as_raw()))
    }

    /// Local gid of a group name; `None` if unknown here.
    pub fn gid(&mut self, name: &str) -> Option<u32> {
        if name.starts_with('#') {
            return None;
        }
        *self.gids.entry(name.to_owned()).or_insert_with(|| {
            Group::from_name(name)
                .ok()
                .flatten()
                .map(|g| g.gid.as_raw())
        })
    }
}

impl Ids {
    /// The uid to apply for `name`: its local uid, or the fallback owner
    /// (never root), remembering the name as unknown.
    pub fn uid_or_fallback(&mut self, name: &str) -> u32 {
        if let Some(u) = self.uid(name) {
            return u;
        }
        self.unknown.push(format!("user {name}"));
        self.uid("nobody").filter(|&u| u != 0).unwrap_or(NOBODY)
    }

    /// The gid to apply for `name`: its local gid, or the fallback group.
    pub fn gid_or_fallback(&mut self, name: &str) -> u32 {
        if let Some(g) = self.gid(name) {
            return g;
        }
        self.unknown.push(format!("group {name}"));
        self.gid("nogroup")
            .or_else(|| self.gid("nobody"))
            .filter(|&g| g != 0)
            .unwrap_or(NOBODY)
    }

    /// Names that fell back to the fallback owner since the last call.
    pub fn take_unknown(&mut self) -> Vec<String> {
        std::mem::take(&mut self.unknown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_maps_both_ways_and_numbers_pass_through() {
        let mut ids = Ids::default();
        assert_eq!(ids.user_name(0), "root");
        assert_eq!(ids.uid("root"), Some(0));
        let g = ids.group_name(0);
        assert_eq!(ids.gid(&g), Some(0));
        assert_eq!(ids.uid("#4242"), None, "numbers mean nothing across nodes");
        assert_eq!(ids.user_name(4_000_000), "#4000000");
        assert_eq!(ids.uid("no-such-user-ha-test"), None);
        assert!(ids.take_unknown().is_empty());
        assert_ne!(ids.uid_or_fallback("no-such-user-ha-test"), 0);
        assert_ne!(ids.gid_or_fallback("#0"), 0, "never root by number");
        assert_eq!(ids.uid_or_fallback("root"), 0);
        assert_eq!(ids.take_unknown().len(), 2);
    }
}
