//! Encoded items on the sending side, shared by both ways of sending: the batching outbox
//! and direct (unbuffered) writes.

use std::io::{self, IoSlice};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use serde::Serialize;

use crate::error::SendErrorKind;
use crate::options::{Options, Socket};
use crate::{sys, wire};

/// Sizes fixed when a sending side is created.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    pub(crate) buffer_bytes: usize,
    pub(crate) batch_items: usize,
    /// Largest datagram body (frames) written.
    pub(crate) body_bytes: usize,
    /// Largest item encoding sent inline; larger ones go out of line.
    pub(crate) inline_item: usize,
    pub(crate) max_item: u64,
}

impl Limits {
    pub(crate) fn new(opts: &Options, socket: &Socket) -> Self {
        // A datagram must also fit the kernel's send buffer (EMSGSIZE otherwise).
        let kernel = sys::send_buffer_size(socket.get_ref().as_fd()).unwrap_or(200 * 1024);
        let datagram = opts
            .datagram_bytes
            .min(kernel.saturating_sub(1024))
            .max(4096);
        let body_bytes = datagram - wire::HEADER_LEN;
        Limits {
            buffer_bytes: opts.buffer_bytes,
            batch_items: opts.batch_items,
            body_bytes,
            inline_item: body_bytes - wire::FRAME_PREFIX,
            max_item: opts.max_item_bytes,
        }
    }
}

/// One encoded item, ready to be written.
#[derive(Debug)]
pub(crate) enum Frame {
    /// A wire frame: length prefix and bytes.
    Inline(Vec<u8>),
    /// The bytes are in a sealed memfd.
    OutOfLine { fd: OwnedFd, size: u64 },
}

impl Frame {
    /// Bytes this frame holds (what it counts against a buffer limit).
    pub(crate) fn cost(&self) -> usize {
        match self {
            Frame::Inline(b) => b.len(),
            Frame::OutOfLine { size, .. } => usize::try_from(*size).unwrap_or(usize::MAX),
        }
    }

    /// Encodes `item`: inline if it fits a datagram, else straight into a sealed memfd.
    pub(crate) fn encode<T: Serialize>(item: &T, limits: &Limits) -> Result<Frame, SendErrorKind> {
        let mut bytes = Vec::new();
        match wire::encode_frame(item, &mut bytes, limits.inline_item) {
            Ok(_) => Ok(Frame::Inline(bytes)),
            Err(wire::EncodeFail::Encode(e)) => Err(SendErrorKind::Encode(e)),
            Err(wire::EncodeFail::TooLong) => Self::out_of_line(item, limits.max_item),
        }
    }

    /// A frame carrying `bytes` exactly as given (raw messages).
    pub(crate) fn raw(bytes: &[u8], limits: &Limits) -> Result<Frame, SendErrorKind> {
        if bytes.len() <= limits.inline_item {
            let mut frame = Vec::with_capacity(wire::FRAME_PREFIX + bytes.len());
            frame.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            frame.extend_from_slice(bytes);
            return Ok(Frame::Inline(frame));
        }
        let size = bytes.len() as u64;
        if size > limits.max_item {
            return Err(SendErrorKind::TooLarge {
                size,
                max: limits.max_item,
            });
        }
        let mut file = std::fs::File::from(sys::memfd().map_err(SendErrorKind::Io)?);
        std::io::Write::write_all(&mut file, bytes).map_err(SendErrorKind::Io)?;
        let fd = OwnedFd::from(file);
        sys::seal(&fd).map_err(SendErrorKind::Io)?;
        Ok(Frame::OutOfLine { fd, size })
    }

    fn out_of_line<T: Serialize + ?Sized>(item: &T, max: u64) -> Result<Frame, SendErrorKind> {
        let file = std::fs::File::from(sys::memfd().map_err(SendErrorKind::Io)?);
        let size = wire::encode_into_file(item, &file, max).map_err(|e| match e {
            wire::FileEncodeFail::TooLarge { size } => SendErrorKind::TooLarge { size, max },
            wire::FileEncodeFail::Encode(e) => SendErrorKind::Encode(e),
            wire::FileEncodeFail::Io(e) => SendErrorKind::Io(e),
        })?;
        let fd = OwnedFd::from(file);
        sys::seal(&fd).map_err(SendErrorKind::Io)?;
        Ok(Frame::OutOfLine { fd, size })
    }

    /// Writes this frame as a datagram of its own, without waiting.
    pub(crate) fn write_alone(&self, socket: BorrowedFd<'_>) -> io::Result<()> {
        match self {
            Frame::Inline(bytes) => {
                let header = wire::header(wire::KIND_INLINE, 1);
                sys::send_datagram(socket, &[IoSlice::new(&header), IoSlice::new(bytes)], None)?;
            }
            Frame::OutOfLine { fd, size } => {
                let header = wire::header(wire::KIND_OUT_OF_LINE, 1);
                let size = size.to_le_bytes();
                let parts = [IoSlice::new(&header), IoSlice::new(&size)];
                sys::send_datagram(socket, &parts, Some(fd.as_fd()))?;
            }
        }
        Ok(())
    }
}
