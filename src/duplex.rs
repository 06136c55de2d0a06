//! Two-way connections: one socket pair, used in both directions.

use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, FlushError, RecvError, SendError, SendErrorKind};
use crate::options::{Options, Socket};
use crate::{pass, Receiver, Sender};

/// The two ends [`duplex`](crate::duplex) makes: the first sends `A`, the second sends `B`.
pub type DuplexPair<A, B> = (Duplex<A, B>, Duplex<B, A>);

/// One end of a two-way connection: sends `S`, receives `R`. Made in pairs by
/// [`duplex`](crate::duplex); the other end is a `Duplex<R, S>`.
///
/// For request/response between a parent and one child: pass one end to the child with
/// [`pass`](crate::pass), keep the other. [`split`](Self::split) gives a [`Sender`] and a
/// [`Receiver`] that can move to different tasks. The end of the connection is seen by
/// the other side once every handle to this end (in every process) is gone.
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
#[derive(Debug)]
pub struct Duplex<S, R> {
    tx: Sender<S>,
    rx: Receiver<R>,
}

impl<S, R> Duplex<S, R>
where
    S: Serialize + DeserializeOwned + Send + 'static,
    R: Serialize + DeserializeOwned + Send + 'static,
{
    pub(crate) fn from_socket(socket: Arc<Socket>, opts: &Options) -> Result<Self, Error> {
        Ok(Duplex {
            tx: Sender::from_socket(socket.clone(), opts)?,
            rx: Receiver::from_socket(socket, opts),
        })
    }

    /// Rebuilds the end a parent passed under `name`. See [`Receiver::from_env`].
    pub fn from_env(name: &str) -> Result<Self, Error> {
        Self::from_env_with(name, &Options::default())
    }

    /// [`from_env`](Self::from_env) with this process's own [`Options`].
    pub fn from_env_with(name: &str, opts: &Options) -> Result<Self, Error> {
        crate::options::runtime()?;
        let socket = pass::take(name, pass::Kind::Duplex, 1)?.socket(crate::options::BOTH)?;
        Self::from_socket(socket, opts)
    }

    /// [`Sender::send`]; cancel-safe as it is.
    pub async fn send(&self, item: S) -> Result<(), SendError<S>> {
        self.tx.send(item).await
    }

    /// [`Sender::send_timeout`].
    pub async fn send_timeout(&self, item: S, timeout: Duration) -> Result<(), SendError<S>> {
        self.tx.send_timeout(item, timeout).await
    }

    /// [`Sender::try_send`].
    pub fn try_send(&self, item: S) -> Result<(), SendError<S>> {
        self.tx.try_send(item)
    }

    /// [`Sender::flush`].
    pub async fn flush(&self) -> Result<(), FlushError> {
        self.tx.flush().await
    }

    /// [`Receiver::recv`]; cancel-safe.
    pub async fn recv(&self) -> Result<R, RecvError> {
        self.rx.recv().await
    }

    /// [`Receiver::recv_timeout`].
    pub async fn recv_timeout(&self, timeout: Duration) -> Result<R, RecvError> {
        self.rx.recv_timeout(timeout).await
    }

    /// [`Receiver::try_recv`].
    pub fn try_recv(&self) -> Result<R, RecvError> {
        self.rx.try_recv()
    }

    /// [`Sender::send_bytes`]: one raw message.
    pub async fn send_bytes(&self, bytes: &[u8]) -> Result<(), SendErrorKind> {
        self.tx.send_bytes(bytes).await
    }

    /// [`Receiver::recv_bytes`]: the next message's bytes, undecoded.
    pub async fn recv_bytes(&self) -> Result<Vec<u8>, RecvError> {
        self.rx.recv_bytes().await
    }

    /// [`Receiver::recv_bytes_into`]: the next message into `buf`.
    pub async fn recv_bytes_into(&self, buf: &mut [u8]) -> Result<usize, RecvError> {
        self.rx.recv_bytes_into(buf).await
    }

    /// [`Receiver::poll`]: is a message ready within `timeout`?
    pub async fn poll(&self, timeout: Duration) -> bool {
        self.rx.poll(timeout).await
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

impl<S, R> Duplex<S, R> {
    /// The socket, for passing to a child.
    pub(crate) fn socket(&self) -> &Arc<Socket> {
        self.rx.socket()
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
