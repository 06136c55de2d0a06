//! Cross-process wake-ups for queues: eventfds awaited through the reactor (or, without a
//! runtime, with `poll(2)`), so any process holding a copy can wake the waiters of every
//! other, and any number of tasks in a process can wait at once.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use tokio::io::Interest;

use crate::send::Deadline;
use crate::sys::eventfd;
use crate::sys::socket::wait_any_readable;
use crate::sys::Waitable;

/// How a blocking acquire ended.
#[derive(Debug)]
pub(crate) enum Acquired<E> {
    Yes,
    TimedOut,
    /// Given up, and why.
    Refused(E),
}

pub(crate) struct Event {
    fd: Waitable,
    /// Wakes this process's other waiters whenever one of them clears the readiness of a
    /// signal, so that none sleeps through the write that was cleared.
    local: tokio::sync::Notify,
}

impl Event {
    /// A counting semaphore holding `permits` (a bounded queue's free slots).
    pub(crate) fn semaphore(permits: u64) -> io::Result<Event> {
        let event = Event::adopt(eventfd::create(0, true)?);
        if permits > 0 {
            event.add(permits)?;
        }
        Ok(event)
    }

    /// A signal: writers announce that something changed; waiters re-check their condition.
    pub(crate) fn signal() -> io::Result<Event> {
        Ok(Event::adopt(eventfd::create(0, false)?))
    }

    /// Wraps an eventfd another process made.
    pub(crate) fn adopt(fd: OwnedFd) -> Event {
        Event {
            fd: Waitable::new(fd, Interest::READABLE),
            local: tokio::sync::Notify::new(),
        }
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.fd().as_fd()
    }

    /// Adds `n` to the counter (releases `n` permits, or signals), waking every waiter.
    pub(crate) fn add(&self, n: u64) -> io::Result<()> {
        eventfd::add(self.fd(), n)
    }

    /// Takes one permit if there is one, without waiting.
    pub(crate) fn try_acquire(&self) -> io::Result<bool> {
        match eventfd::read(self.fd()) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Takes one permit, waiting for one. Cancel-safe: a permit is taken only when the
    /// future completes.
    pub(crate) async fn acquire(&self) -> io::Result<()> {
        if self.try_acquire()? {
            return Ok(());
        }
        loop {
            let reactor = self.fd.reactor()?;
            let mut guard = match reactor.readable().await {
                Ok(guard) => guard,
                Err(_) if self.fd.renew(&reactor) => continue,
                Err(e) => return Err(e),
            };
            match guard.try_io(|_| eventfd::read(self.fd())) {
                Ok(result) => return result.map(drop),
                Err(_would_block) => continue,
            }
        }
    }

    /// Takes one permit from the calling thread, blocking until `deadline`, unless
    /// `refused` says why not first; `refused` is asked again whenever `stop` (a
    /// descriptor that turns readable when the reason may have come) is readable.
    pub(crate) fn blocking_acquire_unless<E>(
        &self,
        stop: BorrowedFd<'_>,
        refused: impl Fn() -> Option<E>,
        deadline: Deadline,
    ) -> io::Result<Acquired<E>> {
        loop {
            if let Some(why) = refused() {
                return Ok(Acquired::Refused(why));
            }
            if self.try_acquire()? {
                return Ok(Acquired::Yes);
            }
            if !wait_any_readable(&[self.fd(), stop], deadline)? {
                return Ok(Acquired::TimedOut);
            }
        }
    }

    /// Waits until `done()` holds, re-checking it after every signal. A signal's counter is
    /// never read, so it stays readable; every write is still a fresh edge for the reactor.
    /// Any number of tasks may wait at once: the one that clears the readiness of a write
    /// wakes the others here, so none sleeps through it.
    pub(crate) async fn wait_until(&self, mut done: impl FnMut() -> bool) -> io::Result<()> {
        loop {
            let cleared_elsewhere = self.local.notified();
            tokio::pin!(cleared_elsewhere);
            cleared_elsewhere.as_mut().enable();
            if done() {
                return Ok(());
            }
            let reactor = self.fd.reactor()?;
            tokio::select! {
                ready = reactor.readable() => match ready {
                    Ok(mut guard) => {
                        guard.clear_ready();
                        self.local.notify_waiters();
                    }
                    Err(_) if self.fd.renew(&reactor) => {}
                    Err(e) => return Err(e),
                },
                _ = &mut cleared_elsewhere => {}
            }
        }
    }
}
