//! Errors of remote queues: the handshake and every remote call.

use std::io;

/// Why the shared-key handshake of a remote connection failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The peer answered our challenge wrongly: it does not hold our key.
    #[error("authentication failed: the peer does not know the key")]
    WrongKey,
    /// The peer rejected our answer: we do not hold its key.
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

/// Why a call on a [`RemoteQueue`](crate::remote::RemoteQueue) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RemoteError {
    /// The shared-key handshake failed.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The connection is gone; connect again to continue. Puts not acknowledged may or
    /// may not be held by the server.
    #[error("disconnected: {0}")]
    Disconnected(String),
    /// The server refused the request.
    #[error("server: {0}")]
    Server(String),
    /// The server said something this client does not understand.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The deadline passed.
    #[error("timed out")]
    Timeout,
    /// Nothing is ready (only from `try_get`).
    #[error("nothing ready")]
    Empty,
    /// Too many puts are unacknowledged to send another without waiting (only from
    /// `try_put`).
    #[error("too many puts in flight")]
    Full,
    /// The item could not be encoded.
    #[error("item could not be encoded: {0}")]
    Encode(postcard::Error),
    /// A received item does not decode as `T`.
    #[error("item does not decode: {0}")]
    Decode(postcard::Error),
    /// Connecting failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}
