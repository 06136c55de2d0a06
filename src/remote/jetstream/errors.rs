//! What the NATS client's errors mean for a queue: procq's codes where one fits.

use std::error::Error as StdError;

use async_nats::jetstream;
use async_nats::jetstream::context::{
    ConsumerInfoError, ConsumerInfoErrorKind, CreateStreamError, CreateStreamErrorKind,
    GetStreamError, GetStreamErrorKind, PublishError, PublishErrorKind, RequestError,
    RequestErrorKind,
};
use async_nats::jetstream::stream::{ConsumerError, ConsumerErrorKind};

use super::super::error::RemoteError;
use super::super::protocol::Refusal;

/// JetStream's code for a failed store; its text says which limit was hit.
const STORE_FAILED: u64 = 10077;
const STREAM_NOT_FOUND: u64 = 10059;
const CONSUMER_NOT_FOUND: u64 = 10014;

/// What a failed publish calls for.
pub(crate) enum Publish {
    /// A bounded stream is at its limit (`max_messages` or `max_bytes`, discard new): the
    /// message was not stored.
    Full,
    /// Try again with the same message id: the ack was lost (it may be stored), or no
    /// server answered for the stream (an election, or the stream is gone).
    Retry { maybe_stored: bool },
    /// The message is above the server's payload limit.
    TooLarge,
    /// JetStream refused it for another reason.
    Fatal(RemoteError),
}

fn is_full(e: &jetstream::Error) -> bool {
    let text = e.to_string();
    e.error_code().0 == STORE_FAILED
        && (text.contains("maximum messages exceeded") || text.contains("maximum bytes exceeded"))
}

pub(crate) fn classify(e: &PublishError) -> Publish {
    match e.kind() {
        PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe => {
            Publish::Retry { maybe_stored: true }
        }
        PublishErrorKind::StreamNotFound | PublishErrorKind::MaxAckPending => Publish::Retry {
            maybe_stored: false,
        },
        PublishErrorKind::MaxPayloadExceeded => Publish::TooLarge,
        _ => match e
            .source()
            .and_then(|s| s.downcast_ref::<jetstream::Error>())
        {
            Some(js) if is_full(js) => Publish::Full,
            // 503: JetStream is there but cannot serve the stream now.
            Some(js) if js.code() == 503 => Publish::Retry {
                maybe_stored: false,
            },
            Some(js) => Publish::Fatal(RemoteError::JetStream(js.to_string())),
            // The client could not send it (connection being re-established).
            None => Publish::Retry { maybe_stored: true },
        },
    }
}

fn from_js(js: &jetstream::Error) -> RemoteError {
    match (js.code(), js.error_code().0) {
        (404, _) | (_, STREAM_NOT_FOUND) | (_, CONSUMER_NOT_FOUND) => {
            RemoteError::Refused(Refusal::UnknownQueue)
        }
        (503, _) => RemoteError::Timeout,
        _ => RemoteError::JetStream(js.to_string()),
    }
}

/// The error of a JetStream API request (stream and consumer look-ups, info, declare):
/// a missing stream or consumer is [`Refusal::UnknownQueue`]; no answer, or no server
/// serving the stream (an election), is [`RemoteError::Timeout`].
pub(crate) fn lookup(e: &(dyn StdError + 'static)) -> RemoteError {
    walk(e).unwrap_or_else(|| RemoteError::JetStream(e.to_string()))
}

fn walk(e: &(dyn StdError + 'static)) -> Option<RemoteError> {
    if let Some(js) = e.downcast_ref::<jetstream::Error>() {
        return Some(from_js(js));
    }
    if let Some(x) = e.downcast_ref::<GetStreamError>() {
        if let GetStreamErrorKind::JetStream(js) = x.kind() {
            return Some(from_js(&js));
        }
    }
    if let Some(x) = e.downcast_ref::<ConsumerError>() {
        match x.kind() {
            ConsumerErrorKind::JetStream(js) => return Some(from_js(&js)),
            ConsumerErrorKind::TimedOut => return Some(RemoteError::Timeout),
            _ => {}
        }
    }
    if let Some(x) = e.downcast_ref::<ConsumerInfoError>() {
        match x.kind() {
            ConsumerInfoErrorKind::JetStream(js) => return Some(from_js(&js)),
            ConsumerInfoErrorKind::NotFound | ConsumerInfoErrorKind::StreamNotFound => {
                return Some(RemoteError::Refused(Refusal::UnknownQueue))
            }
            ConsumerInfoErrorKind::TimedOut
            | ConsumerInfoErrorKind::NoResponders
            | ConsumerInfoErrorKind::Offline => return Some(RemoteError::Timeout),
            _ => {}
        }
    }
    if let Some(x) = e.downcast_ref::<CreateStreamError>() {
        match x.kind() {
            CreateStreamErrorKind::JetStream(js) => return Some(from_js(&js)),
            CreateStreamErrorKind::TimedOut | CreateStreamErrorKind::JetStreamUnavailable => {
                return Some(RemoteError::Timeout)
            }
            CreateStreamErrorKind::NotFound => {
                return Some(RemoteError::Refused(Refusal::UnknownQueue))
            }
            _ => {}
        }
    }
    if let Some(x) = e.downcast_ref::<RequestError>() {
        if matches!(
            x.kind(),
            RequestErrorKind::TimedOut | RequestErrorKind::NoResponders
        ) {
            return Some(RemoteError::Timeout);
        }
    }
    e.source().and_then(walk)
}

/// The error of a confirmed ack or keep-alive (a request to the consumer).
pub(crate) fn ack(e: &(dyn StdError + 'static)) -> RemoteError {
    walk(e).unwrap_or_else(|| {
        let text = e.to_string();
        if text.contains("timed out") || text.contains("no responders") {
            RemoteError::Timeout
        } else {
            RemoteError::JetStream(text)
        }
    })
}
