//! Transition hooks: `/bin/sh -c CMD` with the old and new role and the
//! reason in the environment. Run in the background with a time limit; the
//! outcome is logged, never waited for by the control loop.

use std::{process::Stdio, time::Duration};

use crate::{config::Hooks, fsm::EffectiveMode};

/// Longest a hook may run before it is killed.
const HOOK_TIMEOUT: Duration = Duration::from_secs(120);

/// The hook for a transition into `to`, if configured.
fn command_for(hooks: &Hooks, to: EffectiveMode) -> Option<&str> {
    match to {
        EffectiveMode::Primary => hooks.on_primary.as_deref(),
        EffectiveMode::Secondary => hooks.on_secondary.as_deref(),
        EffectiveMode::Failed => hooks.on_failed.as_deref(),
        EffectiveMode::Off => hooks.on_off.as_deref(),
    }
}

/// Longest wait for the replica sessions to stop before a hook runs.
const REPLICA_STOP_WAIT: Duration = Duration::from_secs(30);

/// Starts the hook for `from -> to` in the background; with `replica`, only
/// once no replica session writes to the tree any more (a promotion hook
/// such as `postsuper -s` must not race the last writes of the old primary).
pub fn spawn(
    io: &tokio::runtime::Handle,
    hooks: &Hooks,
    from: EffectiveMode,
    to: EffectiveMode,
    reason: String,
    replica: Option<crate::sync::ReplicaSessions>,
) {
    let Some(cmd) = command_for(hooks, to).map(str::to_owned) else {
        return;
    };
    io.spawn(async move {
        if let Some(r) = replica {
            let stopped = tokio::task::spawn_blocking(move || {
                r.close();
                r.wait_stopped(REPLICA_STOP_WAIT)
            })
            .await
            .unwrap_or(false);
            if !stopped {
                tracing::error!(hook = %cmd, %from, %to, wait = ?REPLICA_STOP_WAIT, "a replica session is still running; the hook runs anyway");
            }
        }
        let started = std::time::Instant::now();
        let child = tokio::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(&cmd)
            .env("HA_OLD_ROLE", from.to_string())
            .env("HA_NEW_ROLE", to.to_string())
            .env("HA_REASON", &reason)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(hook = %cmd, %from, %to, error = %e, "hook could not start");
                return;
            }
        };
        match tokio::time::timeout(HOOK_TIMEOUT, child.wait_with_output()).await {
            Err(_) => {
                tracing::error!(hook = %cmd, %from, %to, "hook killed after {HOOK_TIMEOUT:?}")
            }
            Ok(Err(e)) => tracing::error!(hook = %cmd, %from, %to, error = %e, "hook failed"),
            Ok(Ok(out)) => {
                let stderr = String::from_utf8_lossy(&out.stderr);
                let stderr = stderr.trim();
                if out.status.success() {
                    tracing::info!(hook = %cmd, %from, %to, ms = started.elapsed().as_millis() as u64, "hook done");
                } else {
                    tracing::error!(hook = %cmd, %from, %to, status = %out.status, stderr, "hook failed");
                }
            }
        }
    });
}
