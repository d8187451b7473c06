//! Validation of `[[monitor.remote]]` and `[[monitor.local]]`.

use super::scalar::{abs_path, ifname, min_free, positive_duration, required, socket_addr};
use crate::config::decode::RawList;
use crate::config::defaults as d;
use crate::config::error::Problems;
use crate::config::model::{LocalCheck, LocalKind, LocalMonitor, RemoteMonitor};
use crate::config::raw::{RawLocalMonitor, RawRemoteMonitor};

pub(super) fn remote(
    p: &mut Problems,
    raw: RawList<RawRemoteMonitor>,
) -> Option<Vec<RemoteMonitor>> {
    collect(
        raw.into_iter()
            .enumerate()
            .map(|(i, m)| m.and_then(|m| one_remote(p, i, m))),
    )
}

fn one_remote(p: &mut Problems, i: usize, raw: RawRemoteMonitor) -> Option<RemoteMonitor> {
    let key = |k: &str| format!("monitor.remote[{i}].{k}");
    let service = required(
        p,
        &key("service"),
        raw.service,
        ": smtp, pop3, imap or http",
    );
    let address = required(
        p,
        &key("address"),
        raw.address,
        " (IP:port of the primary's service, e.g. the VIP)",
    )
    .and_then(|a| socket_addr(p, &key("address"), &a, "10.0.0.100:25"));
    let interval = positive_duration(
        p,
        &key("interval"),
        raw.interval.as_deref(),
        d::REMOTE_INTERVAL,
    );
    // Default timeout: half the interval, so a check always ends before the next.
    let timeout = interval
        .and_then(|iv| positive_duration(p, &key("timeout"), raw.timeout.as_deref(), iv / 2));
    let failures = failures(p, &key("failures"), raw.failures);
    let (interval, timeout) = (interval?, timeout?);
    if timeout >= interval {
        p.push(
            key("timeout"),
            format!(
                "timeout {} must be below interval {}",
                humantime::format_duration(timeout),
                humantime::format_duration(interval)
            ),
        );
        return None;
    }
    Some(RemoteMonitor {
        service: service?,
        address: address?,
        interval,
        timeout,
        failures: failures?,
    })
}

pub(super) fn local(p: &mut Problems, raw: RawList<RawLocalMonitor>) -> Option<Vec<LocalMonitor>> {
    collect(
        raw.into_iter()
            .enumerate()
            .map(|(i, m)| m.and_then(|m| one_local(p, i, m))),
    )
}

fn one_local(p: &mut Problems, i: usize, raw: RawLocalMonitor) -> Option<LocalMonitor> {
    let key = |k: &str| format!("monitor.local[{i}].{k}");
    let interval = positive_duration(
        p,
        &key("interval"),
        raw.interval.as_deref(),
        d::LOCAL_INTERVAL,
    );
    let failures = failures(p, &key("failures"), raw.failures);
    let kind = required(p, &key("kind"), raw.kind, ": interface or disk")?;
    let not_for = |p: &mut Problems, k: &str, present: bool, kind: &str| {
        if present {
            p.push(key(k), format!("only for kind = \"{kind}\""));
        }
        !present
    };
    let check = match kind {
        LocalKind::Interface => {
            let path_ok = not_for(p, "path", raw.path.is_some(), "disk");
            let min_free_ok = not_for(p, "min_free", raw.min_free.is_some(), "disk");
            let interface = required(
                p,
                &key("interface"),
                raw.interface,
                " for kind = \"interface\"",
            )
            .and_then(|n| ifname(p, &key("interface"), &n));
            (path_ok && min_free_ok).then_some(LocalCheck::Interface {
                interface: interface?,
            })
        }
        LocalKind::Disk => {
            let interface_ok = not_for(p, "interface", raw.interface.is_some(), "interface");
            let path = required(
                p,
                &key("path"),
                raw.path,
                " for kind = \"disk\" (a path on the file system to watch)",
            )
            .and_then(|t| abs_path(p, &key("path"), &t));
            let min_free = min_free(
                p,
                &key("min_free"),
                raw.min_free.as_deref().unwrap_or(d::MIN_FREE),
            );
            interface_ok.then_some(LocalCheck::Disk {
                path: path?,
                min_free: min_free?,
            })
        }
    };
    Some(LocalMonitor {
        check: check?,
        interval: interval?,
        failures: failures?,
    })
}

fn failures(p: &mut Problems, key: &str, value: Option<u32>) -> Option<u32> {
    match value.unwrap_or(d::FAILURES) {
        0 => {
            p.push(key, "must be at least 1");
            None
        }
        n => Some(n),
    }
}

/// All items, or `None` when any failed (after every one was checked).
fn collect<T>(items: impl Iterator<Item = Option<T>>) -> Option<Vec<T>> {
    let all: Vec<Option<T>> = items.collect();
    all.into_iter().collect()
}
