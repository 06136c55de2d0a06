//! Every system call procq makes, behind small safe wrappers.
//!
//! This is the only module where `unsafe` code is allowed (the crate root denies it
//! everywhere else); each block says why it is sound. The rest of the crate handles
//! descriptors as [`OwnedFd`](std::os::fd::OwnedFd) / [`BorrowedFd`](std::os::fd::BorrowedFd),
//! so who owns, and closes, a descriptor is visible in the types.
//!
//! * [`socket`]: the `SOCK_SEQPACKET` pairs channels run on, datagrams with descriptors
//!   attached, and blocking waits for code without a runtime;
//! * [`waitable`]: descriptors registered with the tokio reactor on first wait;
//! * [`memfd`]: sealed memfds that carry out-of-line items;
//! * [`shared`]: the sealed, typed header every holder of a queue maps;
//! * [`eventfd`]: cross-process counters and wake-ups;
//! * [`inherit`]: handing descriptors to a child, and taking them back there.

pub(crate) mod eventfd;
pub(crate) mod inherit;
pub(crate) mod memfd;
pub(crate) mod shared;
pub(crate) mod socket;
pub(crate) mod waitable;

pub(crate) use waitable::Waitable;

/// What is left of `deadline` as a relative timeout for a blocking system call: `Ok(None)`
/// for no deadline, `Err(())` once it has passed.
pub(crate) fn time_left(
    deadline: Option<std::time::Instant>,
) -> Result<Option<rustix::event::Timespec>, ()> {
    let Some(at) = deadline else {
        return Ok(None);
    };
    let left = at.saturating_duration_since(std::time::Instant::now());
    if left.is_zero() {
        return Err(());
    }
    Ok(Some(rustix::event::Timespec {
        tv_sec: left.as_secs() as _,
        tv_nsec: left.subsec_nanos() as _,
    }))
}
