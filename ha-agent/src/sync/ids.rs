//! Owner and group names ⇄ numeric ids, cached.
//!
//! Appliances do not share uid/gid numbers (`postfix` may be 104 on one and
//! 109 on the other), so ownership travels by name. An id without a name on
//! the sender travels as `#<number>` and is applied as that number.

use std::collections::HashMap;

use nix::unistd::{Gid, Group, Uid, User};

/// Caches of passwd/group look-ups (each look-up reads `/etc/passwd`).
#[derive(Debug, Default)]
pub struct Ids {
    users: HashMap<u32, String>,
    groups: HashMap<u32, String>,
    uids: HashMap<String, Option<u32>>,
    gids: HashMap<String, Option<u32>>,
}

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
        if let Some(n) = numeric(name) {
            return Some(n);
        }
        *self
            .uids
            .entry(name.to_owned())
            .or_insert_with(|| User::from_name(name).ok().flatten().map(|u| u.uid.as_raw()))
    }

    /// Local gid of a group name; `None` if unknown here.
    pub fn gid(&mut self, name: &str) -> Option<u32> {
        if let Some(n) = numeric(name) {
            return Some(n);
        }
        *self.gids.entry(name.to_owned()).or_insert_with(|| {
            Group::from_name(name)
                .ok()
                .flatten()
                .map(|g| g.gid.as_raw())
        })
    }
}

fn numeric(name: &str) -> Option<u32> {
    name.strip_prefix('#').and_then(|n| n.parse().ok())
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
        assert_eq!(ids.uid("#4242"), Some(4242));
        assert_eq!(ids.user_name(4_000_000), "#4000000");
        assert_eq!(ids.uid("no-such-user-ha-test"), None);
    }
}
