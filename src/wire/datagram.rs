//! The one place that assembles and writes a datagram: the outbox's batches, direct sends,
//! blocking sends and a queue handing unread items back all go through [`send`].

use std::io::{self, IoSlice};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use super::{header, FD_COUNT_LEN, KIND_INLINE, KIND_OUT_OF_LINE};
use crate::sys::socket;

/// A datagram to write.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Outgoing<'a> {
    /// `count` entries back to back, exactly as the wire carries them, and the descriptors
    /// their items carry, in order.
    Inline {
        count: u32,
        entries: &'a [u8],
        fds: &'a [OwnedFd],
    },
    /// One item of `size` bytes in a sealed memfd, carrying `fds`.
    OutOfLine {
        size: u64,
        memfd: BorrowedFd<'a>,
        fds: &'a [OwnedFd],
    },
}

/// Writes several inline datagrams without descriptors — `(count, entries)` each — in one
/// system call, without waiting. Returns how many the kernel took, in order (at least one),
/// or `WouldBlock` when it took none.
pub(crate) fn send_many(socket: BorrowedFd<'_>, datagrams: &[(u32, &[u8])]) -> io::Result<usize> {
    let headers: Vec<[u8; super::HEADER_LEN]> = datagrams
        .iter()
        .map(|&(count, _)| header(KIND_INLINE, count))
        .collect();
    let parts: Vec<[IoSlice<'_>; 2]> = headers
        .iter()
        .zip(datagrams)
        .map(|(h, &(_, entries))| [IoSlice::new(h), IoSlice::new(entries)])
        .collect();
    let slices: Vec<&[IoSlice<'_>]> = parts.iter().map(|p| &p[..]).collect();
    socket::send_datagrams(socket, &slices)
}

/// Writes `datagram` to `socket` without waiting: `WouldBlock` when the kernel has no room.
/// Either the whole datagram is written, descriptors and all, or nothing is.
pub(crate) fn send(socket: BorrowedFd<'_>, datagram: Outgoing<'_>) -> io::Result<()> {
    match datagram {
        Outgoing::Inline {
            count,
            entries,
            fds,
        } => {
            let header = header(KIND_INLINE, count);
            let parts = [IoSlice::new(&header), IoSlice::new(entries)];
            let fds: Vec<BorrowedFd<'_>> = fds.iter().map(AsFd::as_fd).collect();
            socket::send_datagram(socket, &parts, &fds)?;
        }
        Outgoing::OutOfLine { size, memfd, fds } => {
            let header = header(KIND_OUT_OF_LINE, 1);
            let mut body = [0u8; 8 + FD_COUNT_LEN];
            body[..8].copy_from_slice(&size.to_le_bytes());
            let count = u16::try_from(fds.len()).expect("callers bound descriptors per item");
            body[8..].copy_from_slice(&count.to_le_bytes());
            let parts = [IoSlice::new(&header), IoSlice::new(&body)];
            let mut all = Vec::with_capacity(1 + fds.len());
            all.push(memfd);
            all.extend(fds.iter().map(AsFd::as_fd));
            socket::send_datagram(socket, &parts, &all)?;
        }
    }
    Ok(())
}
