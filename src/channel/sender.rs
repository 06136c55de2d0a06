//! The sending half of a channel.

use std::fmt;
use std::marker::PhantomData;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::sink::SinkState;
use super::{deadline_in_runtime, TypeName};
use crate::error::{
    FlushError, FlushTimeoutError, SendError, SendErrorKind, SendTimeoutError, TrySendError,
};
use crate::send::outbox::Pending;
use crate::send::{DrainEnd, Fail, Item, Raw, SendHandle};

/// The sending half of a channel. Clone it freely inside a process (clones share one
/// buffer and one flush task); [`pass`](crate::pass) it to give a child process its own.
///
/// `send` encodes the item at once, so an encoding error is returned to the caller, and
/// appends the bytes to a buffer that a task on the current tokio runtime packs into
/// datagrams. The buffer is bounded in bytes ([`Options::buffer_bytes`](crate::Options::buffer_bytes)):
/// `send` waits while it is full, which is how a slow receiver slows its producers down.
/// A channel made with [`Options::direct`](crate::Options::direct) (pipes) has no buffer:
/// every send completes in the kernel.
///
/// Sending never blocks process exit. When the last `Sender` of a process is dropped, what
/// the socket takes is written at once, without waiting, and the descriptor is closed when
/// nothing is left; the rest is written by the flush task while the runtime runs. When the
/// runtime shuts down first, what the socket takes is written then and the rest is reported
/// (through `tracing`, or on stderr when no subscriber would show it). To get the items
/// back instead, call [`drain`](Self::drain); to know they are in the kernel,
/// [`flush`](Self::flush).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let (tx, rx) = procq::channel::<(u32, String)>()?;
/// tx.send((1, "one".into())).await?;
/// tx.flush().await?; // in the kernel now, safe from this process dying
/// assert_eq!(rx.recv().await?, (1, "one".into()));
/// # Ok(()) }
/// ```
pub struct Sender<T> {
    pub(crate) handle: SendHandle,
    pub(crate) sink: SinkState<T>,
    _item: PhantomData<fn(T)>,
}

impl<T> Sender<T> {
    pub(crate) fn from_handle(handle: SendHandle) -> Self {
        Sender {
            handle,
            sink: SinkState::default(),
            _item: PhantomData,
        }
    }
}

impl<T: Serialize> Sender<T> {
    /// Sends an item, waiting while this process's buffer is full (or, for a direct
    /// channel, while the kernel's is). Resolves once the item is buffered (direct: in the
    /// kernel); see [`flush`](Self::flush).
    ///
    /// Errors give the item back: [`SendErrorKind::Disconnected`] once no receiver is left
    /// (known from the socket's hang-up, before any write fails), `Closed` after
    /// [`close`](Self::close) or [`drain`](Self::drain), `Encode` / `TooLarge` for an item
    /// that cannot be sent.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: a send dropped before it completes has not sent its item (it is
    /// dropped with the future).
    pub async fn send(&self, item: T) -> Result<(), SendError<T>> {
        match self.handle.send(&Item(&item), None).await {
            Ok(()) => Ok(()),
            Err(fail) => Err(SendError::new(item, fail_kind(fail))),
        }
    }

    /// Like [`send`](Self::send), but gives up once `timeout` has passed without room:
    /// [`SendTimeoutError::Timeout`] with the item, nothing sent. Cancel-safe.
    pub async fn send_timeout(
        &self,
        item: T,
        timeout: Duration,
    ) -> Result<(), SendTimeoutError<T>> {
        match self.handle.try_send(&Item(&item)) {
            Ok(()) => return Ok(()),
            Err(Fail::Full) => {}
            Err(fail) => return Err(timeout_error(item, fail)),
        }
        let deadline = match deadline_in_runtime(timeout) {
            Ok(at) => at,
            Err(e) => return Err(SendError::new(item, SendErrorKind::Io(e)).into()),
        };
        match self.handle.send(&Item(&item), Some(deadline)).await {
            Ok(()) => Ok(()),
            Err(fail) => Err(timeout_error(item, fail)),
        }
    }

    /// Sends an item if there is room now, without waiting; [`TrySendError::Full`] gives
    /// it back.
    pub fn try_send(&self, item: T) -> Result<(), TrySendError<T>> {
        match self.handle.try_send(&Item(&item)) {
            Ok(()) => Ok(()),
            Err(Fail::Full | Fail::Timeout) => Err(TrySendError::Full(item)),
            Err(Fail::Failed(kind)) => Err(SendError::new(item, kind).into()),
        }
    }

    /// Sends an item from synchronous code: the calling thread writes what this process
    /// buffered before (so its sends stay in order), then the item as a datagram of its own,
    /// blocking while the kernel has no room. Works with or without a tokio runtime (it
    /// waits with `poll(2)`); do not call it from async code, where it would block a runtime
    /// thread.
    ///
    /// When it returns `Ok` the item is in the kernel, so a program may exit right after
    /// it. One system call per item; for a stream of small items from async code,
    /// [`send`](Self::send) batches.
    pub fn blocking_send(&self, item: T) -> Result<(), SendError<T>> {
        match self.handle.blocking_send(&Item(&item), None) {
            Ok(()) => Ok(()),
            Err(fail) => Err(SendError::new(item, fail_kind(fail))),
        }
    }

    /// [`blocking_send`](Self::blocking_send), giving up after `timeout`:
    /// [`SendTimeoutError::Timeout`] with the item, none of which was sent.
    pub fn blocking_send_timeout(
        &self,
        item: T,
        timeout: Duration,
    ) -> Result<(), SendTimeoutError<T>> {
        match self
            .handle
            .blocking_send(&Item(&item), Instant::now().checked_add(timeout))
        {
            Ok(()) => Ok(()),
            Err(fail) => Err(timeout_error(item, fail)),
        }
    }
}

impl<T> Sender<T> {
    /// Sends `bytes` as one message, exactly as given: the receiver gets them back with
    /// [`Receiver::recv_bytes`](crate::Receiver::recv_bytes). Python's
    /// `Connection.send_bytes()`. Waits for room as [`send`](Self::send) does and is
    /// cancel-safe in the same way. The error says why; the bytes are still yours.
    pub async fn send_bytes(&self, bytes: &[u8]) -> Result<(), SendError<()>> {
        self.handle
            .send(&Raw(bytes), None)
            .await
            .map_err(|fail| SendError::new((), fail_kind(fail)))
    }

    /// [`send_bytes`](Self::send_bytes), giving up once `timeout` has passed without
    /// room. Cancel-safe.
    pub async fn send_bytes_timeout(
        &self,
        bytes: &[u8],
        timeout: Duration,
    ) -> Result<(), SendTimeoutError<()>> {
        let deadline =
            deadline_in_runtime(timeout).map_err(|e| SendError::new((), SendErrorKind::Io(e)))?;
        self.handle
            .send(&Raw(bytes), Some(deadline))
            .await
            .map_err(|fail| timeout_error((), fail))
    }

    /// [`send_bytes`](Self::send_bytes) from synchronous code, as
    /// [`blocking_send`](Self::blocking_send).
    pub fn blocking_send_bytes(&self, bytes: &[u8]) -> Result<(), SendError<()>> {
        self.handle
            .blocking_send(&Raw(bytes), None)
            .map_err(|fail| SendError::new((), fail_kind(fail)))
    }

    /// Resolves when every item this process sent before the call (through any clone) is
    /// in the kernel, where it survives this process's death and will reach a receiver.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: dropping the future only stops the waiting; the items keep flowing.
    pub async fn flush(&self) -> Result<(), FlushError> {
        self.handle.flush().await
    }

    /// [`flush`](Self::flush), giving up after `timeout`:
    /// [`FlushTimeoutError::Timeout`] says how many items were not yet written (they keep
    /// flowing). Cancel-safe.
    pub async fn flush_timeout(&self, timeout: Duration) -> Result<(), FlushTimeoutError> {
        let deadline = deadline_in_runtime(timeout).map_err(FlushError::Io)?;
        match tokio::time::timeout_at(deadline, self.handle.flush()).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(FlushTimeoutError::Timeout {
                unwritten: self.handle.unwritten(),
            }),
        }
    }

    /// [`flush`](Self::flush) from synchronous code: the calling thread writes the buffer
    /// itself, blocking while the kernel is full.
    pub fn blocking_flush(&self) -> Result<(), FlushError> {
        self.handle.blocking_flush(None).map(drop)
    }

    /// [`blocking_flush`](Self::blocking_flush), giving up after `timeout`.
    pub fn blocking_flush_timeout(&self, timeout: Duration) -> Result<(), FlushTimeoutError> {
        match self
            .handle
            .blocking_flush(Instant::now().checked_add(timeout))?
        {
            true => Ok(()),
            false => Err(FlushTimeoutError::Timeout {
                unwritten: self.handle.unwritten(),
            }),
        }
    }

    /// Stops this process's sending side: every clone's later sends fail with `Closed`.
    /// Items already sent are still written; once they are, the descriptor is closed, and
    /// once every process's senders are closed or gone, receivers see the end. (The sending
    /// half of a [`Duplex`](crate::Duplex) shares its socket with the receiving half: the
    /// other end sees the end once every handle to this end is gone.)
    pub fn close(&self) {
        self.handle.close()
    }

    /// Is this side closed, drained, or cut off from every receiver? Asks the kernel
    /// whether any receiver is left (no item is sent to find out). Once this is true,
    /// sends fail at once.
    pub fn is_closed(&self) -> bool {
        self.handle.is_closed()
    }

    /// Resolves once no process holds a receiver any more (from the socket's hang-up, with
    /// nothing sent), or once this process's side is closed or drained. Use it in
    /// `tokio::select!` to stop producing work nobody will take; every later send fails
    /// with [`SendErrorKind::Disconnected`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let (tx, rx) = procq::channel::<u64>()?;
    /// drop(rx); // the only receiver
    /// tx.closed().await?;
    /// assert!(tx.send(1).await.unwrap_err().is_disconnected());
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors and cancel safety
    ///
    /// Fails only outside a tokio runtime (it waits through the reactor). Cancel-safe.
    pub async fn closed(&self) -> std::io::Result<()> {
        self.handle.closed().await
    }
}

impl<T: DeserializeOwned> Sender<T> {
    /// Closes this process's sending side, flushes for at most `timeout`, and hands back
    /// every item that did not reach the kernel, decoded. Returns early once everything is
    /// written or no receiver is left; never waits past `timeout`.
    ///
    /// This is the graceful exit that Python's `Queue.join_thread()` cannot give: a writer
    /// whose reader died decides what to do with its items instead of hanging.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let (tx, rx) = procq::channel::<String>()?;
    /// tx.send("job".into()).await?;
    /// let left = tx.drain(std::time::Duration::from_secs(2)).await;
    /// assert!(left.is_complete()); // the receiver is alive: everything got out
    /// # drop(rx);
    /// # Ok(()) }
    /// ```
    ///
    /// # Cancel safety
    ///
    /// Not cancel-safe: if the future is dropped, the side is closed and the items not yet
    /// written stay buffered (written while the runtime runs, reported if they never are)
    /// instead of being returned. Outside a tokio runtime it does not wait: it returns at
    /// once with what the socket did not take (see [`blocking_drain`](Self::blocking_drain)).
    pub async fn drain(&self, timeout: Duration) -> Drained<T> {
        let (left, end) = self.handle.drain(timeout).await;
        Drained::decode(left, end, self.handle.limits().max_item)
    }

    /// [`drain`](Self::drain) from synchronous code: the calling thread writes, blocking
    /// while the kernel is full, for at most `timeout`.
    pub fn blocking_drain(&self, timeout: Duration) -> Drained<T> {
        let (left, end) = self.handle.blocking_drain(timeout);
        Drained::decode(left, end, self.handle.limits().max_item)
    }
}

/// The reason of a send that will not happen.
pub(crate) fn fail_kind(fail: Fail) -> SendErrorKind {
    match fail {
        Fail::Failed(kind) => kind,
        // Only `try_*` and `*_timeout` ask for these; others never see them.
        Fail::Full | Fail::Timeout => {
            SendErrorKind::Io(std::io::Error::from(std::io::ErrorKind::WouldBlock))
        }
    }
}

pub(crate) fn timeout_error<T>(item: T, fail: Fail) -> SendTimeoutError<T> {
    match fail {
        Fail::Full | Fail::Timeout => SendTimeoutError::Timeout(item),
        Fail::Failed(kind) => SendError::new(item, kind).into(),
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        Sender::from_handle(self.handle.clone())
    }
}

impl<T> fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sender")
            .field("item", &TypeName::<T>::new())
            .field("direct", &self.handle.is_direct())
            .field("closed", &self.handle.is_closed())
            .finish_non_exhaustive()
    }
}

/// How a [`drain`](Sender::drain) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DrainOutcome {
    /// Everything sent reached the kernel.
    Flushed,
    /// The timeout passed first.
    TimedOut,
    /// No receiver was left.
    Disconnected,
    /// Writing failed for another reason.
    Failed,
}

/// What [`Sender::drain`] returns: the items that did not reach the kernel, in the order
/// they were sent.
#[derive(Debug)]
#[must_use = "the items that did not reach a receiver are in here"]
pub struct Drained<T> {
    items: Vec<T>,
    undecodable: usize,
    outcome: DrainOutcome,
}

impl<T: DeserializeOwned> Drained<T> {
    pub(crate) fn decode(left: Pending, end: DrainEnd, max_item: u64) -> Self {
        let outcome = match end {
            DrainEnd::Flushed => DrainOutcome::Flushed,
            DrainEnd::TimedOut => DrainOutcome::TimedOut,
            DrainEnd::Disconnected => DrainOutcome::Disconnected,
            DrainEnd::Failed => DrainOutcome::Failed,
        };
        let (items, undecodable) = left.decode_all(max_item);
        Drained {
            items,
            undecodable,
            outcome,
        }
    }
}

impl<T> Drained<T> {
    /// The items that did not reach the kernel, oldest first.
    pub fn undelivered(self) -> Vec<T> {
        self.items
    }

    /// Borrows the undelivered items.
    pub fn items(&self) -> &[T] {
        &self.items
    }

    /// Did every item reach the kernel?
    pub fn is_complete(&self) -> bool {
        self.items.is_empty() && self.undecodable == 0
    }

    /// Why draining stopped.
    pub fn outcome(&self) -> DrainOutcome {
        self.outcome
    }

    /// Undelivered items whose bytes did not decode back into `T` (a `Serialize` /
    /// `Deserialize` pair that does not round-trip). Normally 0.
    pub fn undecodable(&self) -> usize {
        self.undecodable
    }
}
