//! Descriptors registered with the tokio reactor the first time a task waits on them.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// How many times a descriptor may be registered anew after the runtime it was registered
/// with shut down (a handle used by one runtime, then another).
const GENERATIONS: usize = 8;

/// A descriptor that is registered with the tokio reactor the first time a task waits on
/// it, not before, and only for the directions it was made for.
///
/// Every process holding a queue holds both of its sockets and its eventfds, and the
/// kernel wakes every epoll that watches a socket each time a datagram arrives. Registering
/// only where someone actually waits (and only for the direction it waits on) keeps a
/// producer from being woken by every item it did not ask for: measured on a 1 → 1 queue,
/// eager registration of both directions everywhere cost 20× in throughput.
///
/// A sending end is registered for writing and "priority", a readiness a unix socket
/// never signals otherwise: the hang-up that says no receiver is left (`EPOLLHUP`, always
/// reported) shows up as read-closed readiness, which a priority waiter sees without
/// touching the writable readiness the flush task waits on.
pub(crate) struct Waitable {
    // Declared before `fd`, so they are dropped (deregistered) before the descriptor
    // closes. Registrations of runtimes that shut down stay here until then.
    registrations: [OnceLock<AsyncFd<FdNumber>>; GENERATIONS],
    current: AtomicUsize,
    registering: Mutex<()>,
    interest: Interest,
    fd: OwnedFd,
}

/// A descriptor number the reactor may watch; the [`Waitable`] owning the descriptor
/// outlives it.
pub(crate) struct FdNumber(RawFd);

impl AsRawFd for FdNumber {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

impl Waitable {
    pub(crate) fn new(fd: OwnedFd, interest: Interest) -> Waitable {
        Waitable {
            registrations: Default::default(),
            current: AtomicUsize::new(0),
            registering: Mutex::new(()),
            interest,
            fd,
        }
    }

    pub(crate) fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// Was this descriptor made to be read from (a receiving or duplex end)?
    pub(crate) fn is_readable(&self) -> bool {
        self.interest.is_readable()
    }

    /// The reactor registration, made now if this is the first wait (in this runtime).
    /// Fails (never panics) outside a tokio runtime.
    pub(crate) fn reactor(&self) -> io::Result<&AsyncFd<FdNumber>> {
        let i = self.current.load(Ordering::Acquire);
        if let Some(registered) = self.registrations[i].get() {
            return Ok(registered);
        }
        let _one_at_a_time = self.registering.lock().unwrap_or_else(|e| e.into_inner());
        let i = self.current.load(Ordering::Acquire);
        if let Some(registered) = self.registrations[i].get() {
            return Ok(registered);
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(no_runtime());
        }
        let number = FdNumber(self.fd.as_raw_fd());
        // SAFETY: `number` names `self.fd`, which stays open and refers to the same socket
        // until every registration is dropped (declared first, so dropped first), and
        // FdNumber always reports that same number.
        let registered = unsafe { AsyncFd::register_with_interest(number, self.interest) }?;
        Ok(self.registrations[i].get_or_init(|| registered))
    }

    /// A wait on `stale` failed, which happens when the runtime it was registered with shut
    /// down: the next wait registers with the runtime current then. Returns `false` when
    /// there is nothing more to try (the error stands).
    pub(crate) fn renew(&self, stale: &AsyncFd<FdNumber>) -> bool {
        let _one_at_a_time = self.registering.lock().unwrap_or_else(|e| e.into_inner());
        let i = self.current.load(Ordering::Acquire);
        let is_current = self.registrations[i]
            .get()
            .is_some_and(|r| std::ptr::eq(r, stale));
        if !is_current {
            return true; // renewed already by another waiter
        }
        if i + 1 >= GENERATIONS || tokio::runtime::Handle::try_current().is_err() {
            return false;
        }
        self.current.store(i + 1, Ordering::Release);
        true
    }
}

/// The error every wait made outside a tokio runtime returns.
pub(crate) fn no_runtime() -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        "procq: waiting needs a tokio runtime (outside one, use the blocking_* methods)",
    )
}
