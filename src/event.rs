//! Cross-process wake-ups: eventfds registered with the tokio reactor, so waiting on one
//! is an `.await` (no polling loop, no thread per wait) and any process holding a copy can
//! wake the waiters of every other.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use tokio::io::Interest;

use crate::sys::{self, Waitable};

pub(crate) struct Event {
    fd: Waitable,
}

impl Event {
    /// A counting semaphore holding `permits` (for a bounded queue's free slots).
    pub(crate) fn semaphore(permits: u64) -> io::Result<Event> {
        let event = Event::adopt(sys::eventfd(0, true)?)?;
        if permits > 0 {
            event.add(permits)?;
        }
        Ok(event)
    }

    /// A signal: writers announce that something changed; waiters re-check their condition.
    pub(crate) fn signal() -> io::Result<Event> {
        Event::adopt(sys::eventfd(0, false)?)
    }

    /// Wraps an eventfd another process made.
    pub(crate) fn adopt(fd: OwnedFd) -> io::Result<Event> {
        Ok(Event {
            fd: Waitable::new(fd, Interest::READABLE),
        })
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.get_ref().as_fd()
    }

    /// Adds `n` to the counter (releases `n` permits, or signals), waking every waiter.
    pub(crate) fn add(&self, n: u64) -> io::Result<()> {
        sys::eventfd_write(self.fd(), n)
    }

    /// Takes one permit if there is one, without waiting.
    pub(crate) fn try_acquire(&self) -> io::Result<bool> {
        match sys::eventfd_read(self.fd()) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Takes one permit, waiting for one. Cancel-safe: a permit is taken only when the
    /// future completes.
    pub(crate) async fn acquire(&self) -> io::Result<()> {
        loop {
            let mut guard = self.fd.reactor()?.readable().await?;
            match guard.try_io(|_| sys::eventfd_read(self.fd())) {
                Ok(result) => return result.map(drop),
                Err(_would_block) => continue,
            }
        }
    }

    /// Waits until `done()` holds, re-checking it after every signal. A signal's counter is
    /// never read, so it stays readable; every write is still a fresh edge for the reactor,
    /// and clearing readiness before re-checking means no write is missed.
    pub(crate) async fn wait_until(&self, mut done: impl FnMut() -> bool) -> io::Result<()> {
        loop {
            if done() {
                return Ok(());
            }
            let mut guard = self.fd.reactor()?.readable().await?;
            guard.clear_ready();
        }
    }
}
