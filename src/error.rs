//! Every error of the local channels and queues, one type per operation.
//!
//! Send errors hand the item back ([`SendError::into_inner`], [`TrySendError::into_inner`],
//! [`SendTimeoutError::into_inner`]). Receive errors say whether the channel is finished
//! (`Closed`) or only this attempt failed; each receive returns only what it can: `recv`
//! never says `Empty`, `try_recv` never says `Timeout`.
//!
//! Outside a tokio runtime, an async call that has to wait fails with an `Io` error of kind
//! [`Unsupported`](std::io::ErrorKind::Unsupported) (never a panic); the `blocking_*`
//! methods work there.

use std::fmt;
use std::io;

/// Errors from making a channel or queue, or from passing a handle to a child.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The handle was already closed or drained in this process, so there is nothing to
    /// pass.
    #[error("the handle is closed")]
    Closed,
    /// The name to pass a handle under cannot be an environment variable's name, or the
    /// command already sets that variable (another handle was passed under it).
    #[error("`{name}` cannot name a passed handle: it must be non-empty, contain neither '=' nor NUL, and not be set on the command already")]
    InvalidName {
        /// The name given.
        name: String,
    },
    /// A system call failed (creating sockets, memfds or eventfds; duplicating a
    /// descriptor).
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Why `from_env` could not rebuild a handle a parent passed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FromEnvError {
    /// The environment variable is not set: nothing was passed under this name.
    #[error("no procq handle was passed as `{name}` (environment variable not set)")]
    NotPassed {
        /// The name asked for.
        name: String,
    },
    /// The variable is set but is not a value procq wrote.
    #[error("`{name}` does not describe a procq handle: {reason}")]
    Malformed {
        /// The name asked for.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A handle of another kind was passed under this name.
    #[error("`{name}` holds a procq {found}, not a {expected}")]
    WrongKind {
        /// The name asked for.
        name: String,
        /// The kind the caller asked to rebuild.
        expected: &'static str,
        /// The kind that was passed.
        found: String,
    },
    /// The handle was made for another item type.
    #[error("`{name}` carries items of type `{found}`, not `{expected}`")]
    WrongType {
        /// The name asked for.
        name: String,
        /// The item type (or types) the caller asked for, as `std::any::type_name` says.
        expected: String,
        /// The item type (or types) the parent passed.
        found: String,
    },
    /// A descriptor the value names is not there, or is not the one that was passed (for
    /// instance in a grandchild that inherited the variable but not the descriptor).
    /// Nothing was taken and nothing was closed.
    #[error("`{name}`: {reason}")]
    Descriptor {
        /// The name asked for.
        name: String,
        /// Which descriptor, and what is wrong with it.
        reason: String,
    },
}

/// Why a send can never succeed; [`SendError`] carries it together with the item.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendErrorKind {
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
    /// The item carries more descriptors ([`Fd`](crate::Fd)s and handles) than one
    /// message can.
    #[error("item carries {count} descriptors, more than the {max} one message can")]
    TooManyDescriptors {
        /// Descriptors in the item.
        count: usize,
        /// The most one message carries.
        max: usize,
    },
    /// The operating system refused (creating an out-of-line memfd, writing, or waiting
    /// outside a tokio runtime).
    #[error(transparent)]
    Io(io::Error),
}

/// A send that did not happen, with the item that was not sent and the reason
/// ([`SendErrorKind`]). From `send`, `blocking_send`, `put` and friends.
///
/// ```
/// # fn demo(e: procq::SendError<u32>) {
/// eprintln!("not sent ({}), keeping {}", e.kind(), e.item());
/// let seven: u32 = e.into_inner();
/// # }
/// ```
pub struct SendError<T> {
    item: T,
    kind: SendErrorKind,
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
    /// No receiver is left, or this side is closed: no later send can succeed either.
    pub fn is_closed(&self) -> bool {
        matches!(
            self.kind,
            SendErrorKind::Closed | SendErrorKind::Disconnected
        )
    }
    /// No process holds the receiving side any more.
    pub fn is_disconnected(&self) -> bool {
        matches!(self.kind, SendErrorKind::Disconnected)
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

/// Why `try_send` / `try_put` did not send, with the item.
pub enum TrySendError<T> {
    /// No room right now (the buffer is at its limit, the kernel's is full, or a bounded
    /// queue holds its maximum); waiting would have worked.
    Full(T),
    /// The send can never succeed.
    Failed(SendError<T>),
}

impl<T> TrySendError<T> {
    /// Takes the item back.
    pub fn into_inner(self) -> T {
        match self {
            TrySendError::Full(item) => item,
            TrySendError::Failed(e) => e.into_inner(),
        }
    }
    /// There was no room right now.
    pub fn is_full(&self) -> bool {
        matches!(self, TrySendError::Full(_))
    }
    /// The send can never succeed: closed, or no receiver left.
    pub fn is_closed(&self) -> bool {
        matches!(self, TrySendError::Failed(e) if e.is_closed())
    }
    /// Why it failed for good, unless it was only full.
    pub fn kind(&self) -> Option<&SendErrorKind> {
        match self {
            TrySendError::Full(_) => None,
            TrySendError::Failed(e) => Some(e.kind()),
        }
    }
}

impl<T> From<SendError<T>> for TrySendError<T> {
    fn from(e: SendError<T>) -> Self {
        TrySendError::Failed(e)
    }
}

impl<T> fmt::Debug for TrySendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrySendError::Full(_) => f.write_str("Full(..)"),
            TrySendError::Failed(e) => f.debug_tuple("Failed").field(e).finish(),
        }
    }
}

impl<T> fmt::Display for TrySendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrySendError::Full(_) => f.write_str("no room to send without waiting"),
            TrySendError::Failed(e) => fmt::Display::fmt(e, f),
        }
    }
}

impl<T> std::error::Error for TrySendError<T> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TrySendError::Full(_) => None,
            TrySendError::Failed(e) => e.source(),
        }
    }
}

/// Why `send_timeout` / `put_timeout` did not send, with the item.
pub enum SendTimeoutError<T> {
    /// No room came before the deadline; nothing was sent.
    Timeout(T),
    /// The send can never succeed.
    Failed(SendError<T>),
}

impl<T> SendTimeoutError<T> {
    /// Takes the item back.
    pub fn into_inner(self) -> T {
        match self {
            SendTimeoutError::Timeout(item) => item,
            SendTimeoutError::Failed(e) => e.into_inner(),
        }
    }
    /// The deadline passed.
    pub fn is_timeout(&self) -> bool {
        matches!(self, SendTimeoutError::Timeout(_))
    }
    /// The send can never succeed: closed, or no receiver left.
    pub fn is_closed(&self) -> bool {
        matches!(self, SendTimeoutError::Failed(e) if e.is_closed())
    }
    /// Why it failed for good, unless it timed out.
    pub fn kind(&self) -> Option<&SendErrorKind> {
        match self {
            SendTimeoutError::Timeout(_) => None,
            SendTimeoutError::Failed(e) => Some(e.kind()),
        }
    }
}

impl<T> From<SendError<T>> for SendTimeoutError<T> {
    fn from(e: SendError<T>) -> Self {
        SendTimeoutError::Failed(e)
    }
}

impl<T> fmt::Debug for SendTimeoutError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendTimeoutError::Timeout(_) => f.write_str("Timeout(..)"),
            SendTimeoutError::Failed(e) => f.debug_tuple("Failed").field(e).finish(),
        }
    }
}

impl<T> fmt::Display for SendTimeoutError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendTimeoutError::Timeout(_) => f.write_str("timed out waiting for room"),
            SendTimeoutError::Failed(e) => fmt::Display::fmt(e, f),
        }
    }
}

impl<T> std::error::Error for SendTimeoutError<T> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SendTimeoutError::Timeout(_) => None,
            SendTimeoutError::Failed(e) => e.source(),
        }
    }
}

/// Why `flush` could not finish.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FlushError {
    /// No process holds the receiving side; `undelivered` items will never reach one
    /// ([`Sender::drain`](crate::Sender::drain) hands them back).
    #[error("no receiver is left ({undelivered} items undelivered)")]
    Disconnected {
        /// Items accepted by `send` that will never reach the kernel.
        undelivered: usize,
    },
    /// This process's sending side was drained before everything reached the kernel.
    #[error("channel was drained before the flush completed")]
    Drained,
    /// Writing failed for another reason (or the wait happened outside a tokio runtime).
    #[error("write failed: {0}")]
    Io(io::Error),
}

/// Why `flush_timeout` returned before everything reached the kernel.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FlushTimeoutError {
    /// The deadline passed with `unwritten` items not yet in the kernel. They are still
    /// buffered and keep flowing.
    #[error("timed out with {unwritten} items not yet written")]
    Timeout {
        /// Items accepted and not yet in the kernel when the deadline passed.
        unwritten: usize,
    },
    /// The flush failed for good.
    #[error(transparent)]
    Failed(#[from] FlushError),
}

/// Why `recv` (or `get`) produced no item.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecvError {
    /// Every sender in every process is gone (or closed) and everything they sent has been
    /// received: the channel is finished. Every later receive says the same.
    #[error("channel is closed")]
    Closed,
    /// One datagram, or one item in it, was not valid procq data. Only that datagram (or
    /// item) is lost; the next receive continues with the next one.
    #[error("invalid data received: {0}")]
    Decode(#[from] DecodeError),
    /// The operating system refused the read or the wait (or the wait happened outside a
    /// tokio runtime).
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl RecvError {
    /// Is the channel finished for good (as opposed to this one attempt failing)?
    pub fn is_closed(&self) -> bool {
        matches!(self, RecvError::Closed)
    }
}

/// Why `try_recv` (or `try_get`) produced no item.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TryRecvError {
    /// Nothing is ready right now.
    #[error("channel is empty")]
    Empty,
    /// The channel is finished; see [`RecvError::Closed`].
    #[error("channel is closed")]
    Closed,
    /// See [`RecvError::Decode`].
    #[error("invalid data received: {0}")]
    Decode(DecodeError),
    /// See [`RecvError::Io`].
    #[error(transparent)]
    Io(io::Error),
}

impl TryRecvError {
    /// Is the channel finished for good?
    pub fn is_closed(&self) -> bool {
        matches!(self, TryRecvError::Closed)
    }
    /// Was nothing ready?
    pub fn is_empty(&self) -> bool {
        matches!(self, TryRecvError::Empty)
    }

    /// The same failure as a [`RecvError`], for a caller that handled `Empty` first.
    pub(crate) fn into_recv(self) -> RecvError {
        match self {
            TryRecvError::Closed => RecvError::Closed,
            TryRecvError::Decode(d) => RecvError::Decode(d),
            TryRecvError::Io(e) => RecvError::Io(e),
            TryRecvError::Empty => unreachable!("Empty is handled by the caller"),
        }
    }
}

impl From<RecvError> for TryRecvError {
    fn from(e: RecvError) -> Self {
        match e {
            RecvError::Closed => TryRecvError::Closed,
            RecvError::Decode(d) => TryRecvError::Decode(d),
            RecvError::Io(e) => TryRecvError::Io(e),
        }
    }
}

/// Why `recv_timeout` (or `get_timeout`) produced no item.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecvTimeoutError {
    /// Nothing arrived before the deadline; nothing was lost.
    #[error("timed out waiting for an item")]
    Timeout,
    /// The channel is finished; see [`RecvError::Closed`].
    #[error("channel is closed")]
    Closed,
    /// See [`RecvError::Decode`].
    #[error("invalid data received: {0}")]
    Decode(DecodeError),
    /// See [`RecvError::Io`].
    #[error(transparent)]
    Io(io::Error),
}

impl RecvTimeoutError {
    /// Is the channel finished for good?
    pub fn is_closed(&self) -> bool {
        matches!(self, RecvTimeoutError::Closed)
    }
    /// Did the deadline pass?
    pub fn is_timeout(&self) -> bool {
        matches!(self, RecvTimeoutError::Timeout)
    }
}

impl From<RecvError> for RecvTimeoutError {
    fn from(e: RecvError) -> Self {
        match e {
            RecvError::Closed => RecvTimeoutError::Closed,
            RecvError::Decode(d) => RecvTimeoutError::Decode(d),
            RecvError::Io(e) => RecvTimeoutError::Io(e),
        }
    }
}

/// Why `recv_bytes_into` produced no message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecvIntoError {
    /// The caller's buffer cannot hold the next message; the message stays first in line.
    #[error("buffer too small: the next message is {needed} bytes")]
    BufferTooSmall {
        /// The next message's length.
        needed: usize,
    },
    /// The channel is finished; see [`RecvError::Closed`].
    #[error("channel is closed")]
    Closed,
    /// See [`RecvError::Decode`].
    #[error("invalid data received: {0}")]
    Decode(DecodeError),
    /// See [`RecvError::Io`].
    #[error(transparent)]
    Io(io::Error),
}

impl From<RecvError> for RecvIntoError {
    fn from(e: RecvError) -> Self {
        match e {
            RecvError::Closed => RecvIntoError::Closed,
            RecvError::Decode(d) => RecvIntoError::Decode(d),
            RecvError::Io(e) => RecvIntoError::Io(e),
        }
    }
}

/// What was wrong with received data. Produced for foreign or corrupted datagrams, and for
/// items whose bytes do not decode as the receiver's `T`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Shorter than its header or its entry lengths claim.
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
    /// Bytes left over after the last entry or after an item's encoding.
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
    /// A handle or descriptor inside the item was refused: another kind or item type than
    /// the receiver's, or a descriptor the item did not carry.
    #[error("item refused: {0}")]
    Refused(String),
}

/// [`JoinableQueue::task_done`](crate::JoinableQueue::task_done) was called more times
/// than this process got items.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("task_done() called more times than items were got")]
pub struct TaskDoneError;

/// Why [`JoinableQueue::join_timeout`](crate::JoinableQueue::join_timeout) returned with
/// tasks unfinished.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JoinTimeoutError {
    /// The timeout passed with `unfinished` tasks still not marked done.
    #[error("timed out with {unfinished} tasks unfinished")]
    Timeout {
        /// Tasks put and not yet marked done when the timeout passed.
        unfinished: u64,
    },
    /// Waiting on the shared signal failed (or happened outside a tokio runtime).
    #[error(transparent)]
    Io(#[from] io::Error),
}
