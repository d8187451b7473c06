//! Checks of single values. Each returns `None` after recording a problem
//! at `key`, so callers carry on and report everything.

use std::net::{IpAddr, SocketAddr};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

use crate::config::error::Problems;
use crate::config::model::MinFree;

/// `value`, or a "required" problem at `key`.
pub(super) fn required<T>(p: &mut Problems, key: &str, value: Option<T>, hint: &str) -> Option<T> {
    if value.is_none() {
        p.push(key, format!("required{hint}"));
    }
    value
}

/// A humantime duration such as `"15s"`, `"30ms"`, `"1m"`.
pub(super) fn duration(p: &mut Problems, key: &str, text: &str) -> Option<Duration> {
    match humantime::parse_duration(text.trim()) {
        Ok(d) => Some(d),
        Err(err) => {
            p.push(
                key,
                format!("{text:?} is not a duration ({err}); write e.g. \"15s\" or \"30ms\""),
            );
            None
        }
    }
}

/// A duration, `default` when absent, that must be longer than zero.
pub(super) fn positive_duration(
    p: &mut Problems,
    key: &str,
    text: Option<&str>,
    default: Duration,
) -> Option<Duration> {
    let d = match text {
        Some(text) => duration(p, key, text)?,
        None => default,
    };
    if d.is_zero() {
        p.push(key, "must be longer than 0");
        return None;
    }
    Some(d)
}

/// An IP address literal.
pub(super) fn ip(p: &mut Problems, key: &str, text: &str) -> Option<IpAddr> {
    let parsed = text.trim().parse::<IpAddr>();
    if parsed.is_err() {
        p.push(key, format!("{text:?} is not an IP address"));
    }
    parsed.ok()
}

/// A unicast address usable on a link: refuses unspecified, multicast,
/// loopback and the IPv4 limited broadcast.
pub(super) fn unicast(p: &mut Problems, key: &str, addr: IpAddr) -> Option<IpAddr> {
    let what = if addr.is_unspecified() {
        "unspecified"
    } else if addr.is_multicast() {
        "a multicast address"
    } else if addr.is_loopback() {
        "a loopback address"
    } else if matches!(addr, IpAddr::V4(a) if a.is_broadcast()) {
        "the broadcast address"
    } else {
        return Some(addr);
    };
    p.push(
        key,
        format!("{addr} is {what}; a unicast address is needed"),
    );
    None
}

/// An address with prefix length, e.g. `10.0.0.100/24`, that a host can
/// carry: unicast, and neither the network nor the broadcast address of its
/// prefix.
pub(super) fn vip_prefix(p: &mut Problems, key: &str, text: &str) -> Option<IpNet> {
    let text = text.trim();
    if !text.contains('/') {
        p.push(
            key,
            format!("{text:?} needs a prefix length, e.g. \"{text}/24\""),
        );
        return None;
    }
    let Ok(net) = text.parse::<IpNet>() else {
        p.push(
            key,
            format!(
                "{text:?} is not an address with a valid prefix length, e.g. \"10.0.0.100/24\""
            ),
        );
        return None;
    };
    unicast(p, key, net.addr())?;
    let host_bits = net.max_prefix_len() - net.prefix_len();
    if host_bits >= 2 && net.addr() == net.network() {
        p.push(
            key,
            format!("{} is the network address of {}", net.addr(), net.trunc()),
        );
        return None;
    }
    if let IpNet::V4(v4) = net
        && host_bits >= 2
        && v4.addr() == v4.broadcast()
    {
        p.push(
            key,
            format!("{} is the broadcast address of {}", v4.addr(), net.trunc()),
        );
        return None;
    }
    Some(net)
}

/// An `IP:port` socket address with a non-zero port.
pub(super) fn socket_addr(
    p: &mut Problems,
    key: &str,
    text: &str,
    example: &str,
) -> Option<SocketAddr> {
    match text.trim().parse::<SocketAddr>() {
        Ok(addr) if addr.port() == 0 => {
            p.push(key, format!("{text:?}: port 0 cannot be reached"));
            None
        }
        Ok(addr) => Some(addr),
        Err(_) => {
            p.push(
                key,
                format!("{text:?} is not an IP:port address (e.g. \"{example}\"; IPv6 as \"[2001:db8::1]:25\"; host names are not accepted)"),
            );
            None
        }
    }
}

/// An absolute path without `..` (synced roots must not be escapable).
pub(super) fn abs_path(p: &mut Problems, key: &str, text: &str) -> Option<PathBuf> {
    let path = Path::new(text);
    if text.is_empty() || text.contains('\0') {
        p.push(key, "must be a non-empty path without NUL");
        return None;
    }
    if !path.is_absolute() {
        p.push(key, format!("{text:?} must be an absolute path"));
        return None;
    }
    if path.components().any(|c| c == Component::ParentDir) {
        p.push(key, format!("{text:?} must not contain \"..\""));
        return None;
    }
    // Normalise `//` and trailing `/` so that overlap checks compare like with like.
    Some(path.components().collect())
}

/// A node or instance name: it ends up in file names and the bpffs path.
pub(super) fn name(p: &mut Problems, key: &str, text: &str) -> Option<String> {
    let ok_chars = text
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    let ok_start = text
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    if text.is_empty() || text.len() > 64 || !ok_chars || !ok_start {
        p.push(
            key,
            format!("{text:?} is not a valid name: 1 to 64 of A-Z a-z 0-9 . _ -, starting with a letter or digit"),
        );
        return None;
    }
    Some(text.to_owned())
}

/// A Linux interface name (what `dev_valid_name` accepts).
pub(super) fn ifname(p: &mut Problems, key: &str, text: &str) -> Option<String> {
    let bad_char = text
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c == '\0');
    if text.is_empty() || text.len() > 15 || text == "." || text == ".." || bad_char {
        p.push(
            key,
            format!(
                "{text:?} is not a valid interface name (1 to 15 bytes, no '/', ':' or spaces)"
            ),
        );
        return None;
    }
    Some(text.to_owned())
}

/// A command line: non-empty.
pub(super) fn command(p: &mut Problems, key: &str, text: &str) -> Option<String> {
    if text.trim().is_empty() || text.contains('\0') {
        p.push(key, "must be a non-empty command");
        return None;
    }
    Some(text.to_owned())
}

/// A free-space threshold: bytes (`"2GiB"`, `"500MB"`, `"1048576"`) or a
/// percentage (`"5%"`).
pub(super) fn min_free(p: &mut Problems, key: &str, text: &str) -> Option<MinFree> {
    let text = text.trim();
    if let Some(number) = text.strip_suffix('%') {
        return match number.trim().parse::<u8>() {
            Ok(pct) if pct <= 100 => Some(MinFree::Percent(pct)),
            _ => {
                p.push(
                    key,
                    format!("{text:?}: a percentage must be a whole number from 0 to 100"),
                );
                None
            }
        };
    }
    if let Ok(size) = text.parse::<bytesize::ByteSize>() {
        Some(MinFree::Bytes(size.as_u64()))
    } else {
        p.push(
            key,
            format!("{text:?} is not a size (e.g. \"2GiB\", \"500MB\", \"5%\")"),
        );
        None
    }
}
