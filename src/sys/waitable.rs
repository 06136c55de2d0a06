//! Descriptors registered with the tokio reactor the first time a task waits on them.

use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};

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
/// A sending end is registered for writing and "priority", a readiness a unix socket
/// never signals otherwise: the hang-up that says no receiver is left (`EPOLLHUP`, always
/// reported) shows up as read-closed readiness, which a priority waiter sees without
/// touching the writable readiness the flush task waits on.
///
/// A registration belongs to the runtime that was current when it was made. Once that
/// runtime shuts down, a wait on it fails, the waiter [`renew`](Self::renew)s, and the next
/// wait registers with the runtime current then: a handle goes on working in any number of
/// runtimes, one after another.
pub(crate) struct Waitable {
    // Declared before `fd`, so it is dropped (deregistered) before the descriptor closes;
    // a registration replaced by `renew` lives on only in the `Registration`s that borrow
    // this `Waitable`, so it too is gone before the descriptor closes.
    registration: Mutex<Option<Arc<AsyncFd<FdNumber>>>>,
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

/// A reactor registration of a [`Waitable`], which it borrows (so the descriptor is open
/// for as long as it lives).
pub(crate) struct Registration<'a> {
    registered: Arc<AsyncFd<FdNumber>>,
    _waitable: PhantomData<&'a Waitable>,
}

impl std::ops::Deref for Registration<'_> {
    type Target = AsyncFd<FdNumber>;
    fn deref(&self) -> &AsyncFd<FdNumber> {
        &self.registered
    }
}

impl Waitable {
    pub(crate) fn new(fd: OwnedFd, interest: Interest) -> Waitable {
        Waitable {
            registration: Mutex::new(None),
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

    /// The reactor registration, made now (with the current runtime) if this is the first
    /// wait or the last registration was [`renew`](Self::renew)ed. Fails (never panics)
    /// outside a tokio runtime.
    pub(crate) fn reactor(&self) -> io::Result<Registration<'_>> {
        let mut current = self.registration.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(registered) = &*current {
            return Ok(Registration {
                registered: registered.clone(),
                _waitable: PhantomData,
            });
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(no_runtime());
        }
        let number = FdNumber(self.fd.as_raw_fd());
        // SAFETY: `number` names `self.fd`, which stays open and refers to the same socket
        // until every registration is dropped: the one held here is dropped before `fd`
        // (declared first), and every other clone lives in a `Registration` that borrows
        // `self`. FdNumber always reports that same number.
        let registered =
            Arc::new(unsafe { AsyncFd::register_with_interest(number, self.interest) }?);
        *current = Some(registered.clone());
        Ok(Registration {
            registered,
            _waitable: PhantomData,
        })
    }

    /// A wait on `stale` failed, which happens only when the runtime it was registered
    /// with shut down: the next wait registers with the runtime current then. Returns
    /// `false` when there is nothing more to try (the error stands): outside a runtime.
    /// (This cannot loop: registering with a runtime that is shutting down fails.)
    pub(crate) fn renew(&self, stale: &Registration<'_>) -> bool {
        let mut current = self.registration.lock().unwrap_or_else(|e| e.into_inner());
        if current
            .as_ref()
            .is_some_and(|r| Arc::ptr_eq(r, &stale.registered))
        {
            *current = None;
        }
        tokio::runtime::Handle::try_current().is_ok()
    }
}

/// The error every wait made outside a tokio runtime returns.
pub(crate) fn no_runtime() -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        "procq: waiting needs a tokio runtime (outside one, use the blocking_* methods)",
    )
}
