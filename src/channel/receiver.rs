//! The receiving half of a channel.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

use super::{deadline_in_runtime, TypeName};
use crate::error::{DecodeError, RecvError, RecvIntoError, RecvTimeoutError, TryRecvError};
use crate::recv::{Inbox, Message, Take};

type Filling = Pin<Box<dyn Future<Output = Result<(), RecvError>> + Send>>;

/// The receiving half of a channel. Clones share one socket and one inbox, so the items
/// of a datagram are spread over every clone in this process that asks; any number of
/// tasks (and threads) may wait on clones at once, each item reaches exactly one of them,
/// and all of them see the end.
///
/// `recv` returns items in the order each sending process sent them (items from different
/// processes interleave). [`RecvError::Closed`] means every sender in every process is gone
/// (or closed) and everything they wrote has been received. As a
/// [`Stream`](futures_core::Stream) it yields `Result<T, RecvError>` and ends at `Closed`.
///
/// Items already read from the socket into this process (the rest of a batch) are
/// reported, and lost, if every `Receiver` in the process is dropped before taking them;
/// with [`Options::batch_items`](crate::Options::batch_items)`(1)` there are none.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// let (tx, rx) = procq::channel::<u64>()?;
/// tx.send(42).await?;
/// tokio::select! {
///     item = rx.recv() => assert_eq!(item?, 42),
///     _ = tokio::time::sleep(Duration::from_secs(5)) => panic!("nothing arrived"),
/// }
/// # Ok(()) }
/// ```
pub struct Receiver<T> {
    pub(crate) inbox: Arc<Inbox>,
    /// A wait kept between polls by `poll_recv` and the `Stream`; this handle's own.
    filling: Mutex<Option<Filling>>,
    done: bool,
    _item: PhantomData<fn() -> T>,
}

fn decode<T: DeserializeOwned>(message: Message<'_>) -> Take<Result<T, DecodeError>> {
    Take::Consume(message.decode())
}

/// A raw message's bytes (descriptors, which raw messages never carry, are closed).
fn bytes(message: Message<'_>) -> Take<Vec<u8>> {
    Take::Consume(message.bytes.to_vec())
}

impl<T> Receiver<T> {
    pub(crate) fn from_inbox(inbox: Arc<Inbox>) -> Self {
        Receiver {
            inbox,
            filling: Mutex::new(None),
            done: false,
            _item: PhantomData,
        }
    }
}

impl<T: DeserializeOwned> Receiver<T> {
    /// Receives the next item, waiting for one.
    ///
    /// Errors: [`RecvError::Closed`] once the channel is finished (and on every call after);
    /// [`RecvError::Decode`] for a datagram or item that was not valid (only that one is
    /// lost: call again for the next).
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: if the future is dropped (say, another branch of `tokio::select!` won),
    /// no item is lost. Everything read from the socket is kept in the receiver for the
    /// next call, by this task or any other.
    pub async fn recv(&self) -> Result<T, RecvError> {
        self.inbox
            .take(&mut decode::<T>)
            .await?
            .map_err(RecvError::Decode)
    }

    /// Like [`recv`](Self::recv), but gives up with [`RecvTimeoutError::Timeout`] after
    /// `timeout`. Cancel-safe; a timeout loses nothing.
    pub async fn recv_timeout(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        match self.try_recv() {
            Err(TryRecvError::Empty) => {}
            other => return other.map_err(try_to_timeout),
        }
        let deadline = deadline_in_runtime(timeout).map_err(RecvTimeoutError::Io)?;
        match tokio::time::timeout_at(deadline, self.recv()).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(RecvTimeoutError::Timeout),
        }
    }

    /// Receives an item if one is ready now; [`TryRecvError::Empty`] if not.
    pub fn try_recv(&self) -> Result<T, TryRecvError> {
        self.inbox
            .try_take(&mut decode::<T>)?
            .map_err(TryRecvError::Decode)
    }

    /// Receives the next item from synchronous code, blocking the calling thread until one
    /// comes or the channel ends. Works with or without a tokio runtime (it waits with
    /// `poll(2)`, not the reactor); do not call it from async code.
    pub fn blocking_recv(&self) -> Result<T, RecvError> {
        match self.inbox.blocking_take(&mut decode::<T>, None) {
            Ok(item) => item.map_err(RecvError::Decode),
            Err(RecvTimeoutError::Closed) => Err(RecvError::Closed),
            Err(RecvTimeoutError::Decode(d)) => Err(RecvError::Decode(d)),
            Err(RecvTimeoutError::Io(e)) => Err(RecvError::Io(e)),
            Err(RecvTimeoutError::Timeout) => unreachable!("no deadline"),
        }
    }

    /// [`blocking_recv`](Self::blocking_recv), giving up with
    /// [`RecvTimeoutError::Timeout`] after `timeout`; nothing is lost.
    pub fn blocking_recv_timeout(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        self.inbox
            .blocking_take(&mut decode::<T>, Instant::now().checked_add(timeout))?
            .map_err(RecvTimeoutError::Decode)
    }

    /// Polls for the next item: the building block of hand-written futures (and of the
    /// `Stream`). On `Pending`, the task is woken when there may be an item for it; the
    /// wait is this handle's own, so clones polled from different tasks do not steal each
    /// other's wake-ups.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<T, RecvError>> {
        loop {
            match self.inbox.try_take(&mut decode::<T>) {
                Ok(item) => {
                    *self.filling_slot() = None;
                    return Poll::Ready(item.map_err(RecvError::Decode));
                }
                Err(TryRecvError::Empty) => {}
                Err(e) => {
                    *self.filling_slot() = None;
                    return Poll::Ready(Err(e.into_recv()));
                }
            }
            let inbox = self.inbox.clone();
            let filling = self
                .filling_slot()
                .get_or_insert_with(|| Box::pin(inbox.fill_owned()));
            match filling.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(result) => {
                    *self.filling_slot() = None;
                    result?;
                }
            }
        }
    }

    fn filling_slot(&mut self) -> &mut Option<Filling> {
        self.filling.get_mut().unwrap_or_else(|e| e.into_inner())
    }
}

fn try_to_timeout(e: TryRecvError) -> RecvTimeoutError {
    match e {
        TryRecvError::Closed => RecvTimeoutError::Closed,
        TryRecvError::Decode(d) => RecvTimeoutError::Decode(d),
        TryRecvError::Io(e) => RecvTimeoutError::Io(e),
        TryRecvError::Empty => RecvTimeoutError::Timeout,
    }
}

impl<T> Receiver<T> {
    /// Receives the next message's bytes as they were sent, without decoding: what
    /// [`Sender::send_bytes`](crate::Sender::send_bytes) sent, or an item's postcard
    /// encoding. Python's `Connection.recv_bytes()`. Cancel-safe.
    pub async fn recv_bytes(&self) -> Result<Vec<u8>, RecvError> {
        self.inbox.take(&mut bytes).await
    }

    /// [`recv_bytes`](Self::recv_bytes) with a deadline. Cancel-safe.
    pub async fn recv_bytes_timeout(&self, timeout: Duration) -> Result<Vec<u8>, RecvTimeoutError> {
        let deadline = deadline_in_runtime(timeout).map_err(RecvTimeoutError::Io)?;
        match tokio::time::timeout_at(deadline, self.recv_bytes()).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(RecvTimeoutError::Timeout),
        }
    }

    /// [`recv_bytes`](Self::recv_bytes) if a message is ready now.
    pub fn try_recv_bytes(&self) -> Result<Vec<u8>, TryRecvError> {
        self.inbox.try_take(&mut bytes)
    }

    /// [`recv_bytes`](Self::recv_bytes) from synchronous code, blocking as
    /// [`blocking_recv`](Self::blocking_recv) does.
    pub fn blocking_recv_bytes(&self) -> Result<Vec<u8>, RecvError> {
        match self.inbox.blocking_take(&mut bytes, None) {
            Ok(b) => Ok(b),
            Err(RecvTimeoutError::Closed) => Err(RecvError::Closed),
            Err(RecvTimeoutError::Decode(d)) => Err(RecvError::Decode(d)),
            Err(RecvTimeoutError::Io(e)) => Err(RecvError::Io(e)),
            Err(RecvTimeoutError::Timeout) => unreachable!("no deadline"),
        }
    }

    /// [`blocking_recv_bytes`](Self::blocking_recv_bytes), giving up with
    /// [`RecvTimeoutError::Timeout`] after `timeout`; nothing is lost.
    pub fn blocking_recv_bytes_timeout(
        &self,
        timeout: Duration,
    ) -> Result<Vec<u8>, RecvTimeoutError> {
        self.inbox
            .blocking_take(&mut bytes, Instant::now().checked_add(timeout))
    }

    /// Receives the next message's bytes into `buf`, returning their length. If `buf` is too
    /// small, fails with [`RecvIntoError::BufferTooSmall`] saying how much is needed, and the
    /// message stays first in line for the next call. Python's
    /// `Connection.recv_bytes_into()`. Cancel-safe; for a deadline, wrap it in
    /// `tokio::time::timeout` (a timeout consumes nothing).
    pub async fn recv_bytes_into(&self, buf: &mut [u8]) -> Result<usize, RecvIntoError> {
        let mut take = |message: Message<'_>| {
            let b = message.bytes;
            if b.len() > buf.len() {
                Take::Keep(Err(RecvIntoError::BufferTooSmall { needed: b.len() }))
            } else {
                buf[..b.len()].copy_from_slice(b);
                Take::Consume(Ok(b.len()))
            }
        };
        self.inbox.take(&mut take).await?
    }

    /// Waits up to `timeout` for a message (or the end of the channel) to be ready to
    /// receive, without receiving it. Python's `Connection.poll(timeout)`. Cancel-safe.
    /// `false` at the timeout, and outside a tokio runtime unless one is ready now.
    pub async fn poll(&self, timeout: Duration) -> bool {
        if self.is_ready() {
            return true;
        }
        let Ok(deadline) = deadline_in_runtime(timeout) else {
            return false;
        };
        matches!(
            tokio::time::timeout_at(deadline, self.inbox.ready()).await,
            Ok(Ok(()))
        )
    }

    /// Is a message (or the end of the channel) ready to receive right now? Does not
    /// consume anything. Python's `Connection.poll()` with no timeout.
    pub fn is_ready(&self) -> bool {
        self.inbox.is_ready()
    }
}

impl<T> Clone for Receiver<T> {
    fn clone(&self) -> Self {
        Receiver::from_inbox(self.inbox.clone())
    }
}

impl<T> fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receiver")
            .field("item", &TypeName::<T>::new())
            .finish_non_exhaustive()
    }
}

impl<T: DeserializeOwned> futures_core::Stream for Receiver<T> {
    type Item = Result<T, RecvError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        match this.poll_recv(cx) {
            Poll::Ready(Err(RecvError::Closed)) => {
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Ready(other) => Poll::Ready(Some(other)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: DeserializeOwned> futures_core::FusedStream for Receiver<T> {
    fn is_terminated(&self) -> bool {
        self.done
    }
}
