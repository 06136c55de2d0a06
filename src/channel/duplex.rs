//! Two-way connections: one socket pair, used in both directions.

use std::fmt;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::TypeName;
use crate::error::{
    FlushError, FlushTimeoutError, RecvError, RecvIntoError, RecvTimeoutError, SendError,
    SendTimeoutError, TryRecvError, TrySendError,
};
use crate::{Receiver, Sender};

/// The two ends [`duplex`](crate::duplex()) makes: the first sends `A`, the second sends `B`.
pub type DuplexPair<A, B> = (Duplex<A, B>, Duplex<B, A>);

/// One end of a two-way connection: sends `S`, receives `R`. Made in pairs by
/// [`duplex`](crate::duplex()) (buffered) or [`pipe_duplex`](crate::pipe_duplex)
/// (unbuffered, like Python's `Pipe()`); the other end is a `Duplex<R, S>`.
///
/// For request/response between a parent and one child: pass one end to the child with
/// [`pass`](crate::pass), keep the other. [`split`](Self::split) gives a [`Sender`] and a
/// [`Receiver`] that can move to different tasks; clones may be used by any number of
/// tasks at once, in both directions. The other side sees the end of the connection once
/// every handle to this end (in every process) is gone.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let (client, server) = procq::duplex::<String, usize>()?;
/// client.send("hello".into()).await?;
/// let question = server.recv().await?;
/// server.send(question.len()).await?;
/// assert_eq!(client.recv().await?, 5);
/// # Ok(()) }
/// ```
pub struct Duplex<S, R> {
    pub(crate) tx: Sender<S>,
    pub(crate) rx: Receiver<R>,
}

impl<S: Serialize, R> Duplex<S, R> {
    /// [`Sender::send`]; cancel-safe as it is.
    pub async fn send(&self, item: S) -> Result<(), SendError<S>> {
        self.tx.send(item).await
    }

    /// [`Sender::send_timeout`]: the item back at the timeout. Cancel-safe.
    pub async fn send_timeout(
        &self,
        item: S,
        timeout: Duration,
    ) -> Result<(), SendTimeoutError<S>> {
        self.tx.send_timeout(item, timeout).await
    }

    /// [`Sender::try_send`].
    pub fn try_send(&self, item: S) -> Result<(), TrySendError<S>> {
        self.tx.try_send(item)
    }

    /// [`Sender::blocking_send`]: from synchronous code.
    pub fn blocking_send(&self, item: S) -> Result<(), SendError<S>> {
        self.tx.blocking_send(item)
    }
}

impl<S, R: DeserializeOwned> Duplex<S, R> {
    /// [`Receiver::recv`]; cancel-safe.
    pub async fn recv(&self) -> Result<R, RecvError> {
        self.rx.recv().await
    }

    /// [`Receiver::recv_timeout`]; cancel-safe.
    pub async fn recv_timeout(&self, timeout: Duration) -> Result<R, RecvTimeoutError> {
        self.rx.recv_timeout(timeout).await
    }

    /// [`Receiver::try_recv`].
    pub fn try_recv(&self) -> Result<R, TryRecvError> {
        self.rx.try_recv()
    }

    /// [`Receiver::blocking_recv`]: from synchronous code.
    pub fn blocking_recv(&self) -> Result<R, RecvError> {
        self.rx.blocking_recv()
    }

    /// [`Receiver::blocking_recv_timeout`]: `Timeout` at the deadline, nothing lost.
    pub fn blocking_recv_timeout(&self, timeout: Duration) -> Result<R, RecvTimeoutError> {
        self.rx.blocking_recv_timeout(timeout)
    }
}

impl<S, R> Duplex<S, R> {
    /// [`Sender::flush`]. Cancel-safe.
    pub async fn flush(&self) -> Result<(), FlushError> {
        self.tx.flush().await
    }

    /// [`Sender::flush_timeout`]. Cancel-safe.
    pub async fn flush_timeout(&self, timeout: Duration) -> Result<(), FlushTimeoutError> {
        self.tx.flush_timeout(timeout).await
    }

    /// [`Sender::send_bytes`]: one raw message. Cancel-safe.
    pub async fn send_bytes(&self, bytes: &[u8]) -> Result<(), SendError<()>> {
        self.tx.send_bytes(bytes).await
    }

    /// [`Receiver::recv_bytes`]: the next message's bytes, undecoded. Cancel-safe.
    pub async fn recv_bytes(&self) -> Result<Vec<u8>, RecvError> {
        self.rx.recv_bytes().await
    }

    /// [`Receiver::recv_bytes_into`]: the next message into `buf`. Cancel-safe.
    pub async fn recv_bytes_into(&self, buf: &mut [u8]) -> Result<usize, RecvIntoError> {
        self.rx.recv_bytes_into(buf).await
    }

    /// [`Receiver::poll`]: is a message ready within `timeout`? Cancel-safe.
    pub async fn poll(&self, timeout: Duration) -> bool {
        self.rx.poll(timeout).await
    }

    /// [`Sender::closed`]: resolves once the other end is gone. Cancel-safe.
    pub async fn closed(&self) -> std::io::Result<()> {
        self.tx.closed().await
    }

    /// The sending side.
    pub fn sender(&self) -> &Sender<S> {
        &self.tx
    }

    /// The receiving side.
    pub fn receiver(&self) -> &Receiver<R> {
        &self.rx
    }

    /// Splits into the two sides, to use from different tasks.
    pub fn split(self) -> (Sender<S>, Receiver<R>) {
        (self.tx, self.rx)
    }
}

impl<S, R> Clone for Duplex<S, R> {
    fn clone(&self) -> Self {
        Duplex {
            tx: self.tx.clone(),
            rx: self.rx.clone(),
        }
    }
}

impl<S, R> fmt::Debug for Duplex<S, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Duplex")
            .field("sends", &TypeName::<S>::new())
            .field("receives", &TypeName::<R>::new())
            .finish_non_exhaustive()
    }
}
