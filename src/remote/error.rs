//! Errors of remote queues: the handshake, every remote call, and server configuration.

use std::fmt;
use std::io;

use bytes::Bytes;

pub use super::protocol::Refusal;

/// Why the shared-key handshake of a remote connection failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The peer answered our challenge wrongly: it does not hold our key, or it answered
    /// on another TLS session (a relay).
    #[error("authentication failed: the peer does not know the key")]
    WrongKey,
    /// The peer rejected our answer: we do not hold its key, or a relay sits between us.
    #[error("authentication failed: the peer rejected our key")]
    Rejected,
    /// The peer did not follow the handshake.
    #[error("authentication failed: {0}")]
    Protocol(&'static str),
    /// The handshake did not finish before its deadline.
    #[error("authentication timed out")]
    Timeout,
    /// The connection failed during the handshake.
    #[error("authentication failed: {0}")]
    Io(#[from] io::Error),
}

/// Why a connection ended, as every later call on it reports
/// ([`RemoteError::Disconnected`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Disconnect {
    /// The server closed the connection.
    Closed,
    /// Nothing came from the server for its idle timeout (not even a ping): it or the
    /// network is gone.
    Silent,
    /// A write to the server did not complete within the idle timeout.
    Stalled,
    /// The server ended the connection with this code (for example
    /// [`Refusal::ShuttingDown`] at the end of its grace period).
    Refused(Refusal),
    /// The server broke the protocol.
    Protocol(&'static str),
    /// Reading or writing failed.
    Io(io::ErrorKind),
    /// This handle was closed ([`RemoteQueue::close`](crate::remote::RemoteQueue::close)).
    ClosedHere,
}

impl fmt::Display for Disconnect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Disconnect::Closed => f.write_str("server closed the connection"),
            Disconnect::Silent => f.write_str("server silent past the idle timeout"),
            Disconnect::Stalled => f.write_str("write to the server stalled"),
            Disconnect::Refused(code) => write!(f, "server ended the connection: {code}"),
            Disconnect::Protocol(what) => write!(f, "protocol error: {what}"),
            Disconnect::Io(kind) => write!(f, "connection failed: {kind}"),
            Disconnect::ClosedHere => f.write_str("closed by this client"),
        }
    }
}

/// Why a call on a [`RemoteQueue`](crate::remote::RemoteQueue) or a
/// [`Delivery`](crate::remote::Delivery) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RemoteError {
    /// The shared-key handshake failed.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The server refused the request, with a typed reason.
    #[error("refused: {0}")]
    Refused(Refusal),
    /// The connection is gone; connect again to continue.
    #[error("disconnected: {0}")]
    Disconnected(Disconnect),
    /// The deadline passed.
    #[error("timed out")]
    Timeout,
    /// Nothing has been pushed to this client yet (only from `try_get`).
    #[error("nothing ready")]
    Empty,
    /// The encoded item is larger than the server accepts; nothing was sent.
    #[error("encoded item is {size} bytes, more than the server's limit of {max}")]
    TooLarge {
        /// The encoded size.
        size: u64,
        /// The server's limit.
        max: u64,
    },
    /// The server's frame limit is above what this client accepts
    /// ([`ClientOptions::max_frame`](crate::remote::ClientOptions::max_frame)): it could
    /// accept items this client cannot receive, so the client does not connect.
    #[error("server accepts frames of {server} bytes, more than this client's limit of {client}")]
    FrameLimit {
        /// The server's frame limit.
        server: u64,
        /// This client's.
        client: u64,
    },
    /// The queue name is not valid (see [`check_name`](crate::remote::protocol::check_name)).
    #[error("invalid queue name: {0}")]
    InvalidName(&'static str),
    /// The client options are not valid.
    #[error("invalid client options: {0}")]
    InvalidOptions(&'static str),
    /// The item could not be encoded; nothing was sent.
    #[error("item could not be encoded: {0}")]
    Encode(#[source] postcard::Error),
    /// A received item does not decode as `T`. It was acknowledged (it would fail the
    /// same way for every consumer of this type); its bytes are here.
    #[error("item does not decode: {error}")]
    Decode {
        /// The decoding error.
        #[source]
        error: postcard::Error,
        /// The item's encoded bytes.
        item: Bytes,
    },
    /// Connecting failed (name resolution, TCP or Unix connect, TLS handshake).
    #[error("connect failed: {0}")]
    Io(#[from] io::Error),
    /// JetStream (feature `nats`) refused a request for a reason that has no code here;
    /// its description (for example a permissions violation, or a stream of the queue's
    /// name that is not a procq queue).
    #[error("jetstream: {0}")]
    JetStream(String),
}

impl From<Refusal> for RemoteError {
    fn from(code: Refusal) -> Self {
        RemoteError::Refused(code)
    }
}

impl RemoteError {
    /// True if the server may hold an item whose put failed with this error: the
    /// connection ended (or the call timed out) after the item was sent and before its
    /// fate was known. For every other error the item is certainly not held.
    pub fn put_in_doubt(&self) -> bool {
        matches!(self, RemoteError::Disconnected(_) | RemoteError::Timeout)
    }
}

/// A failed put: the error, and the item handed back.
///
/// Unless [`RemoteError::put_in_doubt`] is true for [`error`](Self::error), the server
/// does not hold the item.
#[derive(thiserror::Error)]
#[error("put failed: {error}")]
pub struct PutError<T> {
    error: RemoteError,
    item: T,
}

impl<T> PutError<T> {
    pub(crate) fn new(error: RemoteError, item: T) -> Self {
        PutError { error, item }
    }

    /// Why the put failed.
    pub fn error(&self) -> &RemoteError {
        &self.error
    }

    /// The item.
    pub fn into_inner(self) -> T {
        self.item
    }

    /// The error and the item.
    pub fn into_parts(self) -> (RemoteError, T) {
        (self.error, self.item)
    }
}

impl<T> fmt::Debug for PutError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PutError")
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

/// What a [`flush`](crate::remote::RemoteQueue::flush) or
/// [`close`](crate::remote::RemoteQueue::close) could not confirm: every item fed and not
/// held, handed back in the order fed, and the acknowledgements that failed.
#[derive(thiserror::Error)]
#[error(
    "{} puts refused, {} puts in doubt, {} acks failed: {error}",
    refused.len(), in_doubt.len(), acks_failed
)]
pub struct FlushError<T> {
    pub(crate) error: RemoteError,
    pub(crate) refused: Vec<(T, Refusal)>,
    pub(crate) in_doubt: Vec<T>,
    pub(crate) acks_failed: u64,
}

impl<T> FlushError<T> {
    /// The first cause: the refusal of the first refused put, or why the connection
    /// ended, or [`RemoteError::Timeout`].
    pub fn error(&self) -> &RemoteError {
        &self.error
    }

    /// Items the server refused (it does not hold them), with the reason.
    pub fn refused(&self) -> &[(T, Refusal)] {
        &self.refused
    }

    /// Items sent whose fate is unknown: the connection ended (or the flush timed out)
    /// before the server said. The server may or may not hold each.
    pub fn in_doubt(&self) -> &[T] {
        &self.in_doubt
    }

    /// Acknowledgements sent by [`get`](crate::remote::RemoteQueue::get) that the server
    /// did not confirm (the lease had run out, or the connection ended): those items
    /// were, or will be, delivered again.
    pub fn acks_failed(&self) -> u64 {
        self.acks_failed
    }

    /// Every item not confirmed held, refused first, then in doubt.
    pub fn into_items(self) -> Vec<T> {
        let mut items: Vec<T> = self.refused.into_iter().map(|(item, _)| item).collect();
        items.extend(self.in_doubt);
        items
    }
}

impl<T> fmt::Debug for FlushError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlushError")
            .field("error", &self.error)
            .field("refused", &self.refused.len())
            .field("in_doubt", &self.in_doubt.len())
            .field("acks_failed", &self.acks_failed)
            .finish()
    }
}

/// A [`ServerConfig`](crate::remote::ServerConfig) value that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid server config: {0}")]
pub struct ConfigError(pub(crate) &'static str);
