//! Every error procq returns.
//!
//! Send errors hand the item back ([`SendError::into_inner`]); receive errors say whether the
//! channel is finished ([`RecvError::Closed`]) or only this attempt failed.

use std::fmt;
use std::io;

/// Errors from setting a channel up: creating it, passing it to a child, rebuilding it there.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Channels register with the tokio reactor, so they must be made inside a runtime.
    #[error("no tokio runtime: procq channels must be created inside a tokio runtime")]
    NoRuntime,
    /// The environment variable that should name a passed descriptor is not set.
    #[error("no procq channel was passed as `{name}` (environment variable not set)")]
    NotPassed {
        /// The name asked for.
        name: String,
    },
    /// The environment variable is set but does not describe a passed half.
    #[error("`{name}` does not describe a procq channel: {reason}")]
    BadEnv {
        /// The name asked for.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A half of another shape was passed under this name (a sender where a receiver was
    /// expected, say).
    #[error("`{name}` holds a procq {found}, not a {expected}")]
    WrongKind {
        /// The name asked for.
        name: String,
        /// What the caller asked to rebuild.
        expected: &'static str,
        /// What was passed.
        found: String,
    },
    /// The half was already closed or drained in this process, so there is nothing to pass.
    #[error("the channel half is closed")]
    Closed,
    /// A system call failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Why a send failed; [`SendError`] carries it together with the item.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendErrorKind {
    /// The in-process buffer is at its byte limit (only from `try_send` / `try_put`).
    #[error("channel buffer is full")]
    Full,
    /// No room became free before the deadline (only from the `_timeout` forms).
    #[error("timed out waiting for room in the channel")]
    Timeout,
    /// This process closed or drained its sending side.
    #[error("channel is closed")]
    Closed,
    /// No process holds the receiving side any more: the item can never be delivered.
    #[error("no receiver is left")]
    Disconnected,
    /// The item could not be serialized.
    #[error("item could not be encoded: {0}")]
    Encode(#[source] postcard::Error),
    /// The encoded item is larger than the channel's `max_item_bytes`.
    #[error("encoded item is {size} bytes, more than the limit of {max}")]
    TooLarge {
        /// Encoded size.
        size: u64,
        /// The configured limit.
        max: u64,
    },
    /// The operating system refused (creating the out-of-line memfd, or writing).
    #[error(transparent)]
    Io(io::Error),
}

/// A send that did not happen, with the item that was not sent.
///
/// ```
/// # async fn demo(tx: procq::Sender<u32>) {
/// if let Err(e) = tx.try_send(7) {
///     eprintln!("not sent ({}), keeping {}", e.kind(), e.item());
///     let seven: u32 = e.into_inner();
/// }
/// # }
/// ```
pub struct SendError<T> {
    pub(crate) item: T,
    pub(crate) kind: SendErrorKind,
}

impl<T> SendError<T> {
    pub(crate) fn new(item: T, kind: SendErrorKind) -> Self {
        SendError { item, kind }
    }
    /// Why the send failed.
    pub fn kind(&self) -> &SendErrorKind {
        &self.kind
    }
    /// The item that was not sent.
    pub fn item(&self) -> &T {
        &self.item
    }
    /// Takes the item back.
    pub fn into_inner(self) -> T {
        self.item
    }
    /// Splits into the item and the reason.
    pub fn into_parts(self) -> (T, SendErrorKind) {
        (self.item, self.kind)
    }
    /// The buffer was full (`try_send`): waiting would have worked.
    pub fn is_full(&self) -> bool {
        matches!(self.kind, SendErrorKind::Full)
    }
    /// The deadline passed (`send_timeout`).
    pub fn is_timeout(&self) -> bool {
        matches!(self.kind, SendErrorKind::Timeout)
    }
    /// No receiver is left, or this side is closed: no later send can succeed either.
    pub fn is_closed(&self) -> bool {
        matches!(
            self.kind,
            SendErrorKind::Closed | SendErrorKind::Disconnected
        )
    }
}

impl<T> fmt::Debug for SendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendError")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl<T> fmt::Display for SendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.kind, f)
    }
}

impl<T> std::error::Error for SendError<T> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            SendErrorKind::Encode(e) => Some(e),
            SendErrorKind::Io(e) => Some(e),
            _ => None,
        }
    }
}

/// Why [`Sender::flush`](crate::Sender::flush) could not finish.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FlushError {
    /// No process holds the receiving side; `undelivered` items are waiting for
    /// [`Sender::drain`](crate::Sender::drain) to hand them back.
    #[error("no receiver is left ({undelivered} items undelivered)")]
    Disconnected {
        /// Items accepted by `send` that will never reach the kernel.
        undelivered: usize,
    },
    /// The side was drained before everything reached the kernel.
    #[error("channel was drained before the flush completed")]
    Drained,
    /// Writing failed for another reason.
    #[error("write failed: {0}")]
    Io(io::Error),
}

/// A receive that produced no item.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecvError {
    /// Every sender in every process is gone and everything they sent has been received:
    /// the channel is finished. Every later receive says the same.
    #[error("channel is closed")]
    Closed,
    /// Nothing is ready (only from `try_recv`).
    #[error("channel is empty")]
    Empty,
    /// Nothing arrived before the deadline (only from `recv_timeout`).
    #[error("timed out waiting for an item")]
    Timeout,
    /// The caller's buffer cannot hold the next message (only from `recv_bytes_into`);
    /// the message stays first in line.
    #[error("buffer too small: the next message is {needed} bytes")]
    BufferTooSmall {
        /// The next message's length.
        needed: usize,
    },
    /// One datagram, or one item in it, was not valid procq data. Only that datagram (or
    /// item) is lost; the next receive continues with the next one.
    #[error("invalid data received: {0}")]
    Decode(#[from] DecodeError),
    /// The operating system refused the read.
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl RecvError {
    /// Is the channel finished for good (as opposed to this one attempt failing)?
    pub fn is_closed(&self) -> bool {
        matches!(self, RecvError::Closed)
    }
}

/// What was wrong with received data. Produced for foreign or corrupted datagrams, and for
/// items whose bytes do not decode as the receiver's `T`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Shorter than its header or its frame lengths claim.
    #[error("datagram is truncated")]
    Truncated,
    /// Longer than any procq datagram: the kernel cut it short.
    #[error("datagram is longer than {0} bytes")]
    TooLong(usize),
    /// A zero-length datagram.
    #[error("empty datagram")]
    Empty,
    /// Does not start with procq's magic bytes.
    #[error("not a procq datagram (bad magic)")]
    BadMagic,
    /// Another version of the procq wire format.
    #[error("unsupported wire version {0}")]
    Version(u8),
    /// Unknown datagram kind.
    #[error("unknown datagram kind {0}")]
    Kind(u8),
    /// An item count that the datagram cannot hold.
    #[error("impossible item count {0}")]
    BadCount(u32),
    /// Bytes left over after the last frame or after an item's encoding.
    #[error("{0} unexpected trailing bytes")]
    TrailingBytes(usize),
    /// An out-of-line item above the receiver's `max_item_bytes`.
    #[error("out-of-line item of {size} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Announced size.
        size: u64,
        /// The receiver's limit.
        max: u64,
    },
    /// Descriptors arrived where none belong, or not the one that should.
    #[error("unexpected or missing descriptor in datagram")]
    Descriptor,
    /// The out-of-line item's descriptor is not a sealed memfd of the announced size.
    #[error("out-of-line item is not a sealed memfd of the announced size")]
    NotSealed,
    /// The out-of-line item could not be mapped into memory.
    #[error("out-of-line item could not be mapped: {0}")]
    Map(io::ErrorKind),
    /// The item's bytes are not a valid encoding of the receiver's type.
    #[error("item does not decode: {0}")]
    Item(postcard::Error),
}

/// [`JoinableQueue::task_done`](crate::JoinableQueue::task_done) was called more times
/// than this process got items.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("task_done() called more times than items were got")]
pub struct TaskDoneError;

/// Why [`JoinableQueue::join`](crate::JoinableQueue::join) returned without every task
/// done.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JoinError {
    /// The timeout passed with `unfinished` tasks still not marked done.
    #[error("timed out with {unfinished} tasks unfinished")]
    Timeout {
        /// Tasks put and not yet marked done when the timeout passed.
        unfinished: u64,
    },
    /// Waiting on the shared signal failed.
    #[error(transparent)]
    Io(io::Error),
}
