//! What clients and the server say to each other, for tools that speak the protocol.
//!
//! A connection is a byte stream (TCP, a Unix socket, or TLS over either) cut into frames
//! by [`tokio_util::codec::LengthDelimitedCodec`]: a `u32` big-endian length, then that
//! many bytes. Both sides cap the length they accept and refuse a larger one before
//! buffering any of it.
//!
//! 1. **Handshake** (frames of at most [`MAX_HANDSHAKE_MESSAGE`] bytes): the server sends
//!    `#CHALLENGE#{sha256}` and 40 random bytes; the client answers `{sha256}` and the
//!    HMAC-SHA256, under the shared key, of what follows `#CHALLENGE#` concatenated with
//!    the *binding*; the server answers `#WELCOME#` or `#FAILURE#`. Then the roles swap.
//!    The binding is empty on a plain connection; over TLS it is 32 bytes of keying
//!    material exported from the TLS session with the label [`TLS_EXPORTER_LABEL`], so an
//!    answer computed on one TLS session is worthless on another (a relay fails).
//! 2. **Session**: every frame is the postcard encoding of one [`Request`] (client to
//!    server) or [`Reply`] (server to client), with no trailing bytes. The client's first
//!    request is [`Request::Hello`]; the server answers [`Reply::Welcome`] or
//!    [`Reply::Refused`] (and closes).
//!
//! Items travel as opaque bytes: the server never decodes them.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// The protocol version this build speaks (sent in [`Request::Hello`]).
pub const VERSION: u16 = 2;

/// The longest handshake message accepted, in bytes.
pub const MAX_HANDSHAKE_MESSAGE: usize = 256;

/// The label of the TLS keying-material exporter (RFC 5705 / RFC 8446 §7.5) whose output
/// binds the handshake to the TLS session.
pub const TLS_EXPORTER_LABEL: &[u8] = b"EXPORTER-procq-handshake-v2";

/// The longest queue name, in bytes.
pub const MAX_NAME_LEN: usize = 128;

/// Bytes a frame may hold beyond its item (message tag, varints): frame limits are item
/// limits plus this.
pub const ENVELOPE: usize = 32;

/// Checks a queue name: 1 to [`MAX_NAME_LEN`] printable ASCII characters (`!` to `~`),
/// so no spaces, no control characters and nothing a terminal would interpret.
///
/// ```
/// use procq::remote::protocol::check_name;
/// assert!(check_name("jobs.high-priority").is_ok());
/// assert!(check_name("").is_err());
/// assert!(check_name("bell\x07").is_err());
/// ```
pub fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("queue name is empty");
    }
    if name.len() > MAX_NAME_LEN {
        return Err("queue name is longer than 128 bytes");
    }
    if !name.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("queue name has a character that is not printable ascii");
    }
    Ok(())
}

/// Why the server refused a request: a code on the wire, a variant in
/// [`RemoteError::Refused`](crate::remote::RemoteError::Refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// No queue has that name (and the server does not create queues on use).
    #[error("no such queue")]
    UnknownQueue,
    /// The queue name is not valid (see [`check_name`]).
    #[error("invalid queue name")]
    InvalidName,
    /// The bounded queue has no room (a put that was not allowed to wait).
    #[error("queue is full")]
    Full,
    /// The server is shutting down: it takes no more puts or connections.
    #[error("server is shutting down")]
    ShuttingDown,
    /// `task_done` was called more times than this connection acknowledged items.
    #[error("task_done called more times than items were acknowledged on this connection")]
    TaskDoneMisuse,
    /// The delivery is no longer held for this consumer: its lease ran out (it went back
    /// to the queue) or it was already acknowledged.
    #[error("delivery is no longer held by this consumer")]
    LeaseExpired,
    /// The server already serves its maximum number of connections.
    #[error("server has no free connection slot")]
    Busy,
    /// Too many requests of this kind are pending on this connection.
    #[error("too many pending requests on this connection")]
    TooManyRequests,
    /// The server does not speak this client's protocol version.
    #[error("protocol version not supported")]
    Version,
    /// The put was withdrawn by the client before it was admitted (its timeout passed,
    /// its future was dropped, or `close` reached its deadline while it waited for room).
    #[error("put withdrawn before it was admitted")]
    Withdrawn,
    /// The item is larger than the server accepts.
    #[error("item too large")]
    TooLarge,
    /// The client accepts smaller frames than the server's limit, so it could not
    /// receive every item the server may hold.
    #[error("client frame limit below the server's")]
    FrameLimit,
    /// The request is not allowed on this connection (a put or get before a queue is
    /// open, a second hello; over JetStream, a publish the NATS server does not permit
    /// this user).
    #[error("request not allowed on this connection")]
    NotAllowed,
}

/// Client to server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Nothing: keeps the connection alive. Either side sends one when it has sent
    /// nothing for a while.
    Ping,
    /// The first request: the protocol version, the queue to open (none for a
    /// statistics-only connection), the largest frame the client accepts, and the lease
    /// it wants for deliveries (the server's default if none). Answered by
    /// [`Reply::Welcome`] or [`Reply::Refused`].
    Hello {
        /// [`VERSION`].
        version: u16,
        /// The queue's name.
        queue: Option<String>,
        /// The largest frame the client accepts.
        max_frame: u64,
        /// Delivery lease in milliseconds.
        lease_ms: Option<u64>,
    },
    /// Put an item. Puts are numbered 1, 2, … in the order the server reads them and
    /// resolved by [`Reply::PutsDone`] and [`Reply::PutRefused`].
    Put {
        /// The encoded item.
        #[serde(with = "bytes_as_bytes")]
        item: Bytes,
        /// Wait for room in a bounded queue (false: refuse with [`Refusal::Full`]).
        wait: bool,
    },
    /// [`Request::Put`] (waiting for room) for each of these items, in order (numbered as
    /// that many puts).
    Puts {
        /// The encoded items.
        items: Vec<Bytes>,
    },
    /// Withdraw put number `seq` if it is still waiting for room.
    Withdraw {
        /// The put's number.
        seq: u64,
    },
    /// Allow the server to push `n` more items to this connection.
    Credit {
        /// How many.
        n: u32,
    },
    /// The consumer is done with this delivery. Ack, Touch and Release are numbered
    /// together 1, 2, … and resolved by [`Reply::SettlesDone`] and
    /// [`Reply::SettleRefused`].
    Ack {
        /// The delivery's number.
        delivery: u64,
    },
    /// [`Request::Ack`] for each of these deliveries, in order (numbered as that many
    /// settles).
    Acks {
        /// The deliveries' numbers.
        deliveries: Vec<u64>,
    },
    /// Extend this delivery's lease by a full lease from now.
    Touch {
        /// The delivery's number.
        delivery: u64,
    },
    /// Give this delivery back: it goes to the front of the queue at once.
    Release {
        /// The delivery's number.
        delivery: u64,
    },
    /// Ask for the queue's length. Answered by [`Reply::Value`].
    Len {
        /// Request id, echoed in the reply.
        req: u64,
    },
    /// Mark one task done. Answered by [`Reply::Done`] or [`Reply::Error`].
    TaskDone {
        /// Request id.
        req: u64,
    },
    /// Answered by [`Reply::Done`] once no task of the queue is unfinished.
    Join {
        /// Request id.
        req: u64,
    },
    /// Forget the pending [`Request::Join`] with this id.
    CancelJoin {
        /// Request id of the join.
        req: u64,
    },
    /// Ask for the server's statistics. Answered by [`Reply::Stats`].
    Stat {
        /// Request id.
        req: u64,
    },
}

/// Server to client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// Nothing: keeps the connection alive.
    Ping,
    /// The connection is set up.
    Welcome {
        /// The queue's bound, 0 for unbounded (0 for a statistics-only connection).
        maxsize: u64,
        /// The largest item the server accepts, in bytes; frames are at most this plus
        /// [`ENVELOPE`].
        max_item: u64,
        /// The server disconnects a peer silent for this long; the client sends a
        /// [`Request::Ping`] well within it.
        idle_timeout_ms: u64,
        /// The lease of each delivery on this connection.
        lease_ms: u64,
    },
    /// The connection is refused or ended; the server closes it after this.
    Refused {
        /// Why.
        code: Refusal,
    },
    /// Every put up to number `upto` is resolved: held by the server, unless a
    /// [`Reply::PutRefused`] said otherwise (always sent before this).
    PutsDone {
        /// The highest put number resolved.
        upto: u64,
    },
    /// Put number `seq` is not held.
    PutRefused {
        /// The put's number.
        seq: u64,
        /// Why.
        code: Refusal,
    },
    /// Every ack, touch and release up to number `upto` succeeded, unless a
    /// [`Reply::SettleRefused`] said otherwise.
    SettlesDone {
        /// The highest number resolved.
        upto: u64,
    },
    /// Settle request number `seq` failed.
    SettleRefused {
        /// Its number.
        seq: u64,
        /// Why.
        code: Refusal,
    },
    /// An item, pushed against credit.
    Deliver {
        /// Its delivery number, to acknowledge.
        delivery: u64,
        /// The encoded item.
        #[serde(with = "bytes_as_bytes")]
        item: Bytes,
    },
    /// Items pushed against credit, numbered `first`, `first + 1`, …
    Deliveries {
        /// The first item's delivery number.
        first: u64,
        /// The encoded items.
        items: Vec<Bytes>,
    },
    /// These deliveries' leases ran out: they went back to the queue, and acknowledging
    /// them fails.
    Expired {
        /// Their numbers.
        deliveries: Vec<u64>,
    },
    /// The answer to [`Request::Len`].
    Value {
        /// Request id.
        req: u64,
        /// The value.
        value: u64,
    },
    /// A request finished.
    Done {
        /// Request id.
        req: u64,
    },
    /// A request failed.
    Error {
        /// Request id.
        req: u64,
        /// Why.
        code: Refusal,
    },
    /// The answer to [`Request::Stat`].
    Stats {
        /// Request id.
        req: u64,
        /// The statistics.
        stats: ServerStats,
    },
}

/// What the server holds and serves: what `procq stat` shows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerStats {
    /// Authenticated connections open.
    pub connections: u64,
    /// Connections still in the handshake.
    pub handshaking: u64,
    /// Bytes of items held: queued, delivered and not acknowledged, or read and waiting
    /// for room.
    pub memory: u64,
    /// One entry per queue, sorted by name.
    pub queues: Vec<QueueStats>,
}

/// One queue's statistics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueStats {
    /// The queue's name.
    pub name: String,
    /// The queue's bound, 0 for unbounded.
    pub maxsize: u64,
    /// Items waiting.
    pub len: u64,
    /// Items delivered and not yet acknowledged.
    pub in_flight: u64,
    /// Connections that have granted credit.
    pub consumers: u64,
    /// Items put since the server started.
    pub puts: u64,
    /// Items acknowledged since the server started.
    pub acks: u64,
    /// Deliveries that went back to the queue (consumer gone, lease ran out, released).
    pub redeliveries: u64,
}

/// `bytes::Bytes` serialized as bytes (one length, then the bytes), not as a sequence.
mod bytes_as_bytes {
    use bytes::Bytes;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(b)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        serde::Deserialize::deserialize(d)
    }
}

/// Decodes one message that must fill `body` exactly; `None` for anything else (an
/// unknown variant, a truncated message, trailing bytes).
pub fn decode<'a, M: Deserialize<'a>>(body: &'a [u8]) -> Option<M> {
    match postcard::take_from_bytes(body) {
        Ok((message, [])) => Some(message),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_trailing_bytes_are_refused() {
        let r = Request::Put {
            item: Bytes::from_static(b"abc"),
            wait: true,
        };
        let mut wire = postcard::to_stdvec(&r).unwrap();
        assert_eq!(decode::<Request>(&wire), Some(r));
        wire.push(0);
        assert_eq!(decode::<Request>(&wire), None);
        assert_eq!(decode::<Request>(&[0xff, 0xff]), None);
    }

    #[test]
    fn names_are_printable_ascii_of_bounded_length() {
        assert!(check_name("a").is_ok());
        assert!(check_name(&"x".repeat(128)).is_ok());
        assert!(check_name(&"x".repeat(129)).is_err());
        assert!(check_name("two words").is_err());
        assert!(check_name("\x1b[2J").is_err());
        assert!(check_name("caf\u{e9}").is_err());
    }
}
