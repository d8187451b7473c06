//! Realtime scheduling and memory locking for the sender thread: the two
//! things keepalived users turn on so that load cannot starve heartbeats.

use std::io;

/// Puts the calling thread in SCHED_FIFO at `priority` (1..=99).
pub fn set_fifo(priority: i32) -> io::Result<()> {
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: plain syscall wrapper; `param` is a valid, initialised struct
    // that outlives the call; pid 0 means the calling thread.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &raw const param) };
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

/// The calling thread's scheduling policy (`libc::SCHED_*`).
pub fn current_policy() -> io::Result<i32> {
    // SAFETY: plain syscall wrapper; pid 0 means the calling thread.
    let rc = unsafe { libc::sched_getscheduler(0) };
    if rc >= 0 {
        Ok(rc)
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifo_on_a_scratch_thread() {
        std::thread::spawn(|| match set_fifo(10) {
            Ok(()) => assert_eq!(current_policy().unwrap(), libc::SCHED_FIFO),
            // Not permitted here: the caller falls back; the error must say why.
            Err(e) => assert!(matches!(e.raw_os_error(), Some(libc::EPERM)), "{e}"),
        })
        .join()
        .unwrap();
        // Only the scratch thread changed.
        assert_eq!(current_policy().unwrap(), libc::SCHED_OTHER);
    }

    #[test]
    fn out_of_range_priority_is_an_error() {
        std::thread::spawn(|| assert!(set_fifo(1000).is_err()))
            .join()
            .unwrap();
    }
}
