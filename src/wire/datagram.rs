//! The one place that assembles and writes a datagram: the outbox's batches, direct sends,
//! and a queue handing unread items back all go through [`send`].

use std::io::{self, IoSlice};
use std::os::fd::BorrowedFd;

use super::{header, KIND_INLINE, KIND_OUT_OF_LINE};
use crate::sys::socket;

/// A datagram to write.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Outgoing<'a> {
    /// `count` entries (each a `u32` length and the item's bytes), back to back.
    Inline { count: u32, entries: &'a [u8] },
    /// One item of `size` bytes in a sealed memfd.
    OutOfLine { size: u64, memfd: BorrowedFd<'a> },
}

/// Writes `datagram` to `socket` without waiting: `WouldBlock` when the kernel has no room.
/// Either the whole datagram is written or nothing is.
pub(crate) fn send(socket: BorrowedFd<'_>, datagram: Outgoing<'_>) -> io::Result<()> {
    match datagram {
        Outgoing::Inline { count, entries } => {
            let header = header(KIND_INLINE, count);
            let parts = [IoSlice::new(&header), IoSlice::new(entries)];
            socket::send_datagram(socket, &parts, &[])?;
        }
        Outgoing::OutOfLine { size, memfd } => {
            let header = header(KIND_OUT_OF_LINE, 1);
            let size = size.to_le_bytes();
            let parts = [IoSlice::new(&header), IoSlice::new(&size)];
            socket::send_datagram(socket, &parts, &[memfd])?;
        }
    }
    Ok(())
}
