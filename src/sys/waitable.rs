//! Descriptors registered with the tokio reactor the first time a task waits on them.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::{Mutex, OnceLock};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// A descriptor that is registered with the tokio reactor the first time a task waits on
/// it, not before, and only for the directions it was made for.
///
/// Every process holding a queue holds both of its sockets and its eventfds, and the
/// kernel wakes every epoll that watches a socket each time a datagram arrives. Registering
/// only where someone actually waits (and only for the direction it waits on) keeps a
/// producer from being woken by every item it did not ask for: measured on a 1 → 1 queue,
/// eager registration of both directions everywhere cost 20× in throughput.
///
/// A sending end is registered for writing only. That is enough to learn that every
/// receiver is gone: the kernel reports the hang-up (`EPOLLHUP`) whatever was asked for,
/// and tokio reports it as write-closed readiness.
pub(crate) struct Waitable {
    // Declared before `fd`, so it is dropped (deregistered) before the descriptor closes.
    registration: OnceLock<AsyncFd<FdNumber>>,
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
            registration: OnceLock::new(),
            registering: Mutex::new(()),
            interest,
            fd,
        }
    }

    pub(crate) fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// The reactor registration, made now if this is the first wait. Fails (never panics)
    /// outside a tokio runtime.
    pub(crate) fn reactor(&self) -> io::Result<&AsyncFd<FdNumber>> {
        if let Some(registered) = self.registration.get() {
            return Ok(registered);
        }
        let _one_at_a_time = self.registering.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(registered) = self.registration.get() {
            return Ok(registered);
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(no_runtime());
        }
        let number = FdNumber(self.fd.as_raw_fd());
        // SAFETY: `number` names `self.fd`, which stays open and refers to the same socket
        // until the registration is dropped (declared first, so dropped first), and
        // FdNumber always reports that same number.
        let registered = unsafe { AsyncFd::register_with_interest(number, self.interest) }?;
        Ok(self.registration.get_or_init(|| registered))
    }
}

/// The error every wait made outside a tokio runtime returns.
pub(crate) fn no_runtime() -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        "procq: waiting needs a tokio runtime (outside one, use the blocking_* methods)",
    )
}
