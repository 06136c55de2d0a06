//! eventfds: counters in the kernel that any process holding one can add to, wait on, and
//! take from.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};

use rustix::event::EventfdFlags;

/// A new eventfd, nonblocking and close-on-exec. In semaphore mode each read takes 1 from
/// the counter (a slot); otherwise a read takes the whole count.
pub(crate) fn create(initial: u32, semaphore: bool) -> io::Result<OwnedFd> {
    let mut flags = EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK;
    if semaphore {
        flags |= EventfdFlags::SEMAPHORE;
    }
    Ok(rustix::event::eventfd(initial, flags)?)
}

/// Reads an eventfd without blocking (`WouldBlock` when its counter is 0).
pub(crate) fn read(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let mut buf = [0u8; 8];
    let n = rustix::io::read(fd, &mut buf)?;
    if n != 8 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(u64::from_ne_bytes(buf))
}

/// Adds `n` to an eventfd's counter, waking its waiters.
pub(crate) fn add(fd: BorrowedFd<'_>, n: u64) -> io::Result<()> {
    rustix::io::write(fd, &n.to_ne_bytes())?;
    Ok(())
}
