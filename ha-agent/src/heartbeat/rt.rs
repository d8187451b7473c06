//! Realtime scheduling and memory locking for the sender thread: the two
//! things keepalived users turn on so that load cannot starve heartbeats.

use std::io;

/// Puts the calling thread in SCHED_FIFO at `priority` (1..=99), with
/// `SCHED_RESET_ON_FORK`: threads and processes it creates (sync workers,
/// hooks, an MTA started by a hook) start at normal priority instead of
/// inheriting a realtime one that could starve the control loop.
pub fn set_fifo(priority: i32) -> io::Result<()> {
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: plain syscall wrapper; `param` is a valid, initialised struct
    // that outlives the call; pid 0 means the calling thread.
    let rc = unsafe {
        libc::sched_setscheduler(
            0,
            libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK,
            &raw const param,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Locks current and future pages of the process in memory, so that a page
/// fault under memory pressure cannot delay a heartbeat.
pub fn lock_memory() -> io::Result<()> {
    // SAFETY: plain syscall wrapper with constant flags; no pointers.
    let rc = unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The calling thread's scheduling policy (`libc::SCHED_*`, without the
/// reset-on-fork flag).
pub fn current_policy() -> io::Result<i32> {
    // SAFETY: plain syscall wrapper; pid 0 means the calling thread.
    let rc = unsafe { libc::sched_getscheduler(0) };
    if rc >= 0 {
        Ok(rc & !libc::SCHED_RESET_ON_FORK)
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifo_on_a_scratch_thread() {
        let r = std::thread::spawn(|| set_fifo(10).map(|()| current_policy().unwrap()))
            .join()
            .unwrap();
        match r {
            Ok(policy) => assert_eq!(policy, libc::SCHED_FIFO),
            // Not permitted here: the caller falls back; the error must say why.
            Err(e) => {
                assert!(matches!(e.raw_os_error(), Some(libc::EPERM)), "{e}");
                crate::testing::skip("SCHED_FIFO is not permitted here");
            }
        }
        // Only the scratch thread changed.
        assert_eq!(current_policy().unwrap(), libc::SCHED_OTHER);
    }

    #[test]
    fn threads_made_by_a_realtime_thread_start_at_normal_priority() {
        let ran = std::thread::spawn(|| {
            if set_fifo(10).is_err() {
                return false; // not permitted here: nothing to inherit
            }
            let child = std::thread::spawn(|| current_policy().unwrap())
                .join()
                .unwrap();
            assert_eq!(
                child,
                libc::SCHED_OTHER,
                "a sync worker must not run realtime"
            );
            assert_eq!(current_policy().unwrap(), libc::SCHED_FIFO);
            true
        })
        .join()
        .unwrap();
        if !ran {
            crate::testing::skip("SCHED_FIFO is not permitted here");
        }
    }

    #[test]
    fn out_of_range_priority_is_an_error() {
        std::thread::spawn(|| assert!(set_fifo(1000).is_err()))
            .join()
            .unwrap();
    }
}
