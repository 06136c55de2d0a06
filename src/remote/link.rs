//! The one read loop and the one write loop of a remote connection, shared by the client
//! and the server.
//!
//! After the handshake a connection is split: an [`Inbox`] yields the peer's messages
//! (skipping pings, failing once the peer has been silent past its limit) and
//! [`write_loop`] writes ours, coalescing what is queued into few writes, sending a ping
//! when it has written nothing for a while, and giving up on a write the peer does not
//! take in time.

use std::pin::Pin;
use std::time::Duration;

use futures_util::{FutureExt, SinkExt, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{ReadHalf, WriteHalf};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;

use super::auth::Handshaking;
use super::codec::{FrameError, MessageCodec};
use super::error::Disconnect;
use super::protocol::{Reply, Request};
use super::transport::Stream;

/// Bytes a connection reads at most per system call (the read buffer grows beyond only
/// for a larger frame).
const READ_BUFFER: usize = 64 * 1024;
/// Bytes gathered before a write.
const WRITE_BATCH: usize = 256 * 1024;

/// A message type of the session, with its keepalive, and the merging of messages of a
/// kind into one frame (acks, deliveries) while they queue for the writer.
pub(crate) trait Wire: Serialize + DeserializeOwned + Send + 'static {
    fn ping() -> Self;
    fn is_ping(&self) -> bool;
    /// About how many bytes the message encodes to, if it can merge with others.
    fn weight(&self) -> Option<usize> {
        None
    }
    /// Appends `next` to this message if both are of a kind that merges; else hands it
    /// back.
    fn merge(&mut self, next: Self) -> Result<(), Self> {
        Err(next)
    }
}

impl Wire for Request {
    fn ping() -> Self {
        Request::Ping
    }
    fn is_ping(&self) -> bool {
        matches!(self, Request::Ping)
    }
    fn weight(&self) -> Option<usize> {
        match self {
            Request::Ack { .. } => Some(11),
            Request::Acks { deliveries } => Some(11 * deliveries.len() + 8),
            Request::Put { item, wait: true } => Some(item.len() + 5),
            Request::Puts { items } => Some(items.iter().map(|i| i.len() + 5).sum::<usize>() + 8),
            _ => None,
        }
    }
    fn merge(&mut self, next: Self) -> Result<(), Self> {
        match (&mut *self, next) {
            (
                Request::Put {
                    item: first,
                    wait: true,
                },
                Request::Put { item, wait: true },
            ) => {
                let items = vec![std::mem::take(first), item];
                *self = Request::Puts { items };
                Ok(())
            }
            (Request::Puts { items }, Request::Put { item, wait: true }) => {
                items.push(item);
                Ok(())
            }
            (Request::Ack { delivery: first }, Request::Ack { delivery }) => {
                *self = Request::Acks {
                    deliveries: vec![*first, delivery],
                };
                Ok(())
            }
            (Request::Acks { deliveries }, Request::Ack { delivery }) => {
                deliveries.push(delivery);
                Ok(())
            }
            (_, next) => Err(next),
        }
    }
}

impl Wire for Reply {
    fn ping() -> Self {
        Reply::Ping
    }
    fn is_ping(&self) -> bool {
        matches!(self, Reply::Ping)
    }
    fn weight(&self) -> Option<usize> {
        match self {
            Reply::Deliver { item, .. } => Some(item.len() + 16),
            Reply::Deliveries { items, .. } => {
                Some(items.iter().map(|i| i.len() + 5).sum::<usize>() + 16)
            }
            _ => None,
        }
    }
    fn merge(&mut self, next: Self) -> Result<(), Self> {
        match (&mut *self, next) {
            (
                Reply::Deliver {
                    delivery: first,
                    item: first_item,
                },
                Reply::Deliver { delivery, item },
            ) if delivery == *first + 1 => {
                let items = vec![std::mem::take(first_item), item];
                *self = Reply::Deliveries {
                    first: *first,
                    items,
                };
                Ok(())
            }
            (Reply::Deliveries { first, items }, Reply::Deliver { delivery, item })
                if delivery == *first + items.len() as u64 =>
            {
                items.push(item);
                Ok(())
            }
            (_, next) => Err(next),
        }
    }
}

impl From<FrameError> for Disconnect {
    fn from(e: FrameError) -> Self {
        match e {
            FrameError::TooLarge => Disconnect::Protocol("frame too large"),
            FrameError::Undecodable => Disconnect::Protocol("undecodable message"),
            FrameError::Io(e) => Disconnect::Io(e.kind()),
        }
    }
}

/// A session's framing on the whole stream, before it is split.
pub(crate) type Session<In, Out> = tokio_util::codec::Framed<Stream, MessageCodec<In, Out>>;

/// Moves from handshake framing to session framing, keeping whatever was read ahead.
pub(crate) fn session<In, Out>(framed: Handshaking<Stream>, max_in: usize) -> Session<In, Out> {
    framed.map_codec(|_| MessageCodec::new(max_in))
}

/// Splits a session into its inbox and its writing half.
pub(crate) fn split<In: Wire, Out>(
    session: Session<In, Out>,
    silent_after: Duration,
) -> (Inbox<In>, Writer<Out>) {
    let parts = session.into_parts();
    let (read, write) = tokio::io::split(parts.io);
    let mut frames =
        FramedRead::with_capacity(read, MessageCodec::new(parts.codec.max_in()), READ_BUFFER);
    frames.read_buffer_mut().extend_from_slice(&parts.read_buf);
    let mut writer = FramedWrite::new(write, MessageCodec::new(0));
    writer.set_backpressure_boundary(WRITE_BATCH);
    (Inbox::new(frames, silent_after), writer)
}

/// The writing half of a session.
pub(crate) type Writer<Out> = FramedWrite<WriteHalf<Stream>, MessageCodec<(), Out>>;

/// The peer's messages.
pub(crate) struct Inbox<In> {
    frames: FramedRead<ReadHalf<Stream>, MessageCodec<In, ()>>,
    silent_after: Duration,
    /// Fires every quarter of `silent_after`.
    tick: Pin<Box<tokio::time::Sleep>>,
    /// A frame came since the last tick.
    seen: bool,
    /// Ticks in a row without a frame.
    quiet: u32,
}

/// Ticks per silence limit.
const TICKS: u32 = 4;
/// Ticks in a row without a frame after which the peer is silent: it has sent nothing for
/// between three and four quarters of the limit at least, and at most the limit.
const QUIET_TICKS: u32 = 3;

impl<In: Wire> Inbox<In> {
    fn new(
        frames: FramedRead<ReadHalf<Stream>, MessageCodec<In, ()>>,
        silent_after: Duration,
    ) -> Self {
        Inbox {
            frames,
            silent_after,
            tick: Box::pin(tokio::time::sleep(silent_after / TICKS)),
            seen: false,
            quiet: 0,
        }
    }

    /// The next message other than a ping. Fails once nothing (not even a ping) has come
    /// for the silence limit at most (and three quarters of it at least), counted from
    /// the last frame or [`refresh`](Self::refresh). Peers ping every quarter of it.
    ///
    /// Cancel safe: a message is never half-consumed; its bytes stay buffered.
    pub(crate) async fn next(&mut self) -> Result<In, Disconnect> {
        loop {
            tokio::select! {
                biased;
                frame = self.frames.next() => match frame {
                    None => return Err(Disconnect::Closed),
                    Some(Err(e)) => return Err(e.into()),
                    Some(Ok(message)) => {
                        self.seen = true;
                        if !message.is_ping() {
                            return Ok(message);
                        }
                    }
                },
                _ = &mut self.tick => {
                    if std::mem::take(&mut self.seen) {
                        self.quiet = 0;
                    } else {
                        self.quiet += 1;
                        if self.quiet >= QUIET_TICKS {
                            return Err(Disconnect::Silent);
                        }
                    }
                    let next = Instant::now() + self.silent_after / TICKS;
                    self.tick.as_mut().reset(next);
                }
            }
        }
    }

    /// The next message if one is already buffered or readable without waiting.
    pub(crate) fn next_now(&mut self) -> Option<Result<In, Disconnect>> {
        loop {
            match self.frames.next().now_or_never()? {
                None => return Some(Err(Disconnect::Closed)),
                Some(Err(e)) => return Some(Err(e.into())),
                Some(Ok(message)) => {
                    self.seen = true;
                    if !message.is_ping() {
                        return Some(Ok(message));
                    }
                }
            }
        }
    }

    /// Restarts the silence limit: for a reader that paused reading on purpose.
    pub(crate) fn refresh(&mut self) {
        self.seen = false;
        self.quiet = 0;
        let next = Instant::now() + self.silent_after / TICKS;
        self.tick.as_mut().reset(next);
    }

    /// Changes the largest frame accepted and the silence limit.
    pub(crate) fn set_limits(&mut self, max_frame: usize, silent_after: Duration) {
        self.frames.decoder_mut().set_max_in(max_frame);
        self.silent_after = silent_after;
        self.refresh();
    }
}

/// Where [`write_loop`] takes the messages it writes: a bounded channel (the server's
/// replies, so that a client that stops reading holds back its connection, not the
/// server's memory) or an unbounded one (the client's requests, already bounded by its
/// put window, its deliveries and its callers; a bounded channel's semaphore cost the
/// client 10% of its CPU per put or ack).
pub(crate) trait Outgoing<T>: Send {
    /// The next message; `None` once closed and empty.
    fn recv(&mut self) -> impl std::future::Future<Output = Option<T>> + Send;
    /// A message if one is queued.
    fn try_recv(&mut self) -> Option<T>;
    /// Refuses new messages; those queued are still taken.
    fn close(&mut self);
}

impl<T: Send> Outgoing<T> for mpsc::Receiver<T> {
    fn recv(&mut self) -> impl std::future::Future<Output = Option<T>> + Send {
        mpsc::Receiver::recv(self)
    }
    fn try_recv(&mut self) -> Option<T> {
        mpsc::Receiver::try_recv(self).ok()
    }
    fn close(&mut self) {
        mpsc::Receiver::close(self)
    }
}

impl<T: Send> Outgoing<T> for mpsc::UnboundedReceiver<T> {
    fn recv(&mut self) -> impl std::future::Future<Output = Option<T>> + Send {
        mpsc::UnboundedReceiver::recv(self)
    }
    fn try_recv(&mut self) -> Option<T> {
        mpsc::UnboundedReceiver::try_recv(self).ok()
    }
    fn close(&mut self) {
        mpsc::UnboundedReceiver::close(self)
    }
}

/// Writes every message sent on `outgoing` until it closes or `stop` is cancelled (then
/// writes what is queued and shuts the stream's write side), coalescing queued messages
/// into one write and merging those that merge into frames of about `merge_limit` bytes
/// at most, sending a ping after `ping_every` without a write. With `stall_after`, a
/// write the peer does not take within that time ends the loop with
/// [`Disconnect::Stalled`].
pub(crate) async fn write_loop<Out: Wire>(
    mut frames: Writer<Out>,
    mut outgoing: impl Outgoing<Out>,
    merge_limit: usize,
    ping_every: Duration,
    stall_after: Option<Duration>,
    stop: CancellationToken,
) -> Result<(), Disconnect> {
    let ping = tokio::time::sleep(ping_every);
    tokio::pin!(ping);
    let mut stopping = false;
    loop {
        let first = tokio::select! {
            biased;
            message = outgoing.recv() => match message {
                Some(message) => message,
                None => break,
            },
            _ = stop.cancelled(), if !stopping => {
                stopping = true;
                outgoing.close(); // take what is queued, then `recv` ends
                continue;
            }
            _ = &mut ping => Out::ping(),
        };
        let batch = async {
            let mut pending = first;
            let mut weight = pending.weight();
            while frames.write_buffer().len() < WRITE_BATCH {
                let Some(next) = outgoing.try_recv() else {
                    break;
                };
                let next_weight = next.weight();
                match (weight, next_weight) {
                    (Some(w), Some(n)) if w + n <= merge_limit => match pending.merge(next) {
                        Ok(()) => {
                            weight = Some(w + n);
                            continue;
                        }
                        Err(next) => {
                            frames.feed(std::mem::replace(&mut pending, next)).await?;
                        }
                    },
                    _ => frames.feed(std::mem::replace(&mut pending, next)).await?,
                }
                weight = next_weight;
            }
            frames.feed(pending).await?;
            SinkExt::<Out>::flush(&mut frames).await
        };
        match stall_after {
            Some(limit) => match tokio::time::timeout(limit, batch).await {
                Ok(result) => result.map_err(Disconnect::from)?,
                Err(_) => return Err(Disconnect::Stalled),
            },
            None => batch.await.map_err(Disconnect::from)?,
        }
        ping.as_mut().reset(Instant::now() + ping_every);
    }
    let closing = SinkExt::<Out>::close(&mut frames);
    match tokio::time::timeout(stall_after.unwrap_or(Duration::from_secs(10)), closing).await {
        Ok(result) => result.map_err(Disconnect::from),
        Err(_) => Err(Disconnect::Stalled),
    }
}
