//! What clients and the server say to each other after the handshake.
//!
//! Every message is one [`frame`](super::frame) of kind [`MESSAGE`] whose body is the
//! postcard encoding of a [`Request`] (client to server) or a [`Reply`] (server to client).
//! Items travel as opaque bytes: the server never decodes them.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// The frame kind of every protocol message.
pub const MESSAGE: u8 = 1;

/// Client to server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Use the named queue for the rest of the connection. Answered by
    /// [`Reply::Opened`] or [`Reply::Error`] (request id 0).
    Open {
        /// The queue's name.
        queue: String,
    },
    /// Put an item. Puts are pipelined: the server acknowledges them in windows with
    /// [`Reply::PutAck`], counting every put of the connection so far.
    Put {
        /// The encoded item.
        #[serde(with = "serde_bytes_compat")]
        item: Bytes,
    },
    /// Allow the server to push `n` more items to this connection.
    Credit {
        /// How many.
        n: u32,
    },
    /// The consumer is done with this delivery; the server forgets it. Until then it
    /// would go back to the queue if the connection ended.
    Ack {
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
    /// Ask for every queue's statistics. Answered by [`Reply::Stats`].
    Stat {
        /// Request id.
        req: u64,
    },
}

/// Server to client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// The queue is open; `maxsize` 0 means unbounded.
    Opened {
        /// The queue's bound.
        maxsize: u64,
    },
    /// The server holds the first `count` items this connection put.
    PutAck {
        /// Puts held, counted from the start of the connection.
        count: u64,
    },
    /// An item, pushed against credit.
    Deliver {
        /// Its delivery number, to acknowledge.
        delivery: u64,
        /// The encoded item.
        #[serde(with = "serde_bytes_compat")]
        item: Bytes,
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
    /// The answer to [`Request::Stat`].
    Stats {
        /// Request id.
        req: u64,
        /// One entry per queue.
        queues: Vec<QueueStats>,
    },
    /// A request failed; request id 0 for failures of the connection itself.
    Error {
        /// Request id.
        req: u64,
        /// What went wrong.
        message: String,
    },
}

/// What `procq stat` shows of a queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueStats {
    /// The queue's name.
    pub name: String,
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
    /// Items that went back to the queue because their consumer disconnected.
    pub redeliveries: u64,
}

/// `bytes::Bytes` serialized as bytes (one length, then the bytes), not as a sequence.
mod serde_bytes_compat {
    use bytes::Bytes;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(b)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        serde::Deserialize::deserialize(d)
    }
}

/// Encodes a message as a frame body.
pub fn encode<M: Serialize>(message: &M) -> Vec<u8> {
    postcard::to_stdvec(message).expect("protocol messages always encode")
}

/// Decodes a frame body; `None` for a body that is not a valid message.
pub fn decode<'a, M: Deserialize<'a>>(body: &'a [u8]) -> Option<M> {
    postcard::from_bytes(body).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let r = Request::Put {
            item: Bytes::from_static(b"abc"),
        };
        assert_eq!(decode::<Request>(&encode(&r)), Some(r));
        let r = Reply::Deliver {
            delivery: 9,
            item: Bytes::from_static(b"xyz"),
        };
        assert_eq!(decode::<Reply>(&encode(&r)), Some(r));
        assert_eq!(decode::<Request>(&[0xff, 0xff]), None);
    }
}
