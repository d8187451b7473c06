//! One agent per instance: an exclusive `flock` on `<state_dir>/agent.lock`.

use std::{fs::File, os::fd::AsFd as _, path::Path};

use anyhow::{Context as _, Result, bail};
use nix::fcntl::{Flock, FlockArg};

/// Holds the lock while alive.
pub struct InstanceLock(#[allow(dead_code, reason = "held for its Drop")] Flock<File>);

/// Takes the instance lock, or says which instance is already running.
pub fn take(state_dir: &Path, instance: &str) -> Result<InstanceLock> {
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("creating {}", state_dir.display()))?;
    let path = state_dir.join("agent.lock");
    let f = File::create(&path).with_context(|| format!("opening {}", path.display()))?;
    let _ = f.as_fd();
    match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
        Ok(l) => Ok(InstanceLock(l)),
        Err((_, e)) => bail!(
            "another ha-agent already runs instance {instance} ({}: {e})",
            path.display()
        ),
    }
}
