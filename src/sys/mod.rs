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
