//! Encoded items, ready to be written, and the size limits both engines enforce.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use serde::Serialize;

use crate::error::SendErrorKind;
use crate::options::Options;
use crate::sys::{memfd, socket};
use crate::wire::datagram::Outgoing;
use crate::wire::{self, encode};

/// Sizes fixed when a sending side is made.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    pub(crate) buffer_bytes: usize,
    pub(crate) batch_items: usize,
    /// Largest datagram body (entries) written.
    pub(crate) body_bytes: usize,
    /// Largest item encoding sent inline; larger ones go out of line.
    pub(crate) inline_item: usize,
    pub(crate) max_item: u64,
}

impl Limits {
    pub(crate) fn new(opts: &Options, socket: BorrowedFd<'_>) -> Self {
        // A datagram must also fit the kernel's send buffer (EMSGSIZE otherwise).
        let kernel = socket::send_buffer_size(socket).unwrap_or(200 * 1024);
        let datagram = opts
            .datagram_bytes
            .min(kernel.saturating_sub(1024))
            .max(crate::options::MIN_DATAGRAM_BYTES);
        let body_bytes = datagram - wire::HEADER_LEN;
        // An item too large to share a datagram still travels inline, alone in a datagram
        // as long as any receiver reads (`wire::MAX_DATAGRAM`): below that a memfd costs
        // several times more (64 KiB items: 27k/s out of line, 190k/s inline, here). And
        // never above `max_item_bytes`, which bounds every item.
        let single = wire::MAX_DATAGRAM
            .min(kernel.saturating_sub(1024))
            .max(datagram);
        let inline_item = (single - wire::HEADER_LEN - wire::MAX_ENTRY_HEADER)
            .min(usize::try_from(opts.max_item_bytes).unwrap_or(usize::MAX));
        Limits {
            buffer_bytes: opts.buffer_bytes,
            batch_items: opts.batch_items,
            body_bytes,
            inline_item,
            max_item: opts.max_item_bytes,
        }
    }
}

/// One encoded item, and the descriptors it carries (duplicates, owned until written).
#[derive(Debug)]
pub(crate) enum Encoded {
    /// An entry: its header and bytes.
    Inline { entry: Vec<u8>, fds: Vec<OwnedFd> },
    /// The bytes are in a sealed memfd.
    OutOfLine {
        memfd: OwnedFd,
        size: u64,
        fds: Vec<OwnedFd>,
    },
}

fn too_many(count: usize) -> SendErrorKind {
    SendErrorKind::TooManyDescriptors {
        count,
        max: wire::MAX_FDS,
    }
}

impl Encoded {
    /// Encodes `item`: inline if it fits a datagram, else straight into a sealed memfd.
    pub(crate) fn item<T: Serialize + ?Sized>(
        item: &T,
        limits: &Limits,
    ) -> Result<Encoded, SendErrorKind> {
        let mut entry = Vec::new();
        match encode::append_entry(item, &mut entry, limits.inline_item) {
            Ok(fds) => Ok(Encoded::Inline { entry, fds }),
            Err(encode::EntryFail::Encode(e)) => Err(SendErrorKind::Encode(e)),
            Err(encode::EntryFail::TooManyFds(n)) => Err(too_many(n)),
            Err(encode::EntryFail::TooLong) => Self::out_of_line(item, limits.max_item),
        }
    }

    /// An item carrying `bytes` exactly as given (a raw message).
    pub(crate) fn raw(bytes: &[u8], limits: &Limits) -> Result<Encoded, SendErrorKind> {
        if bytes.len() <= limits.inline_item {
            let mut entry = Vec::with_capacity(wire::ENTRY_PREFIX + bytes.len());
            encode::append_raw_entry(bytes, &mut entry);
            return Ok(Encoded::Inline {
                entry,
                fds: Vec::new(),
            });
        }
        let size = bytes.len() as u64;
        if size > limits.max_item {
            return Err(SendErrorKind::TooLarge {
                size,
                max: limits.max_item,
            });
        }
        let mut file = std::fs::File::from(memfd::create("procq-item").map_err(SendErrorKind::Io)?);
        std::io::Write::write_all(&mut file, bytes).map_err(SendErrorKind::Io)?;
        let fd = OwnedFd::from(file);
        memfd::seal_item(&fd).map_err(SendErrorKind::Io)?;
        Ok(Encoded::OutOfLine {
            memfd: fd,
            size,
            fds: Vec::new(),
        })
    }

    /// Encodes `item` straight into a new sealed memfd.
    pub(crate) fn out_of_line<T: Serialize + ?Sized>(
        item: &T,
        max: u64,
    ) -> Result<Encoded, SendErrorKind> {
        let file = std::fs::File::from(memfd::create("procq-item").map_err(SendErrorKind::Io)?);
        let (size, fds) = encode::into_file(item, &file, max).map_err(|e| match e {
            encode::FileFail::TooLarge { size } => SendErrorKind::TooLarge { size, max },
            encode::FileFail::Encode(e) => SendErrorKind::Encode(e),
            encode::FileFail::Io(e) => SendErrorKind::Io(e),
            encode::FileFail::TooManyFds(n) => too_many(n),
        })?;
        let fd = OwnedFd::from(file);
        memfd::seal_item(&fd).map_err(SendErrorKind::Io)?;
        Ok(Encoded::OutOfLine {
            memfd: fd,
            size,
            fds,
        })
    }

    /// Bytes this item holds (what it counts against a buffer limit).
    pub(crate) fn cost(&self) -> usize {
        match self {
            Encoded::Inline { entry, .. } => entry.len(),
            Encoded::OutOfLine { size, .. } => usize::try_from(*size).unwrap_or(usize::MAX),
        }
    }

    /// This item as a datagram of its own.
    pub(crate) fn datagram(&self) -> Outgoing<'_> {
        match self {
            Encoded::Inline { entry, fds } => Outgoing::Inline {
                count: 1,
                entries: entry,
                fds,
            },
            Encoded::OutOfLine { memfd, size, fds } => Outgoing::OutOfLine {
                size: *size,
                memfd: memfd.as_fd(),
                fds,
            },
        }
    }
}
