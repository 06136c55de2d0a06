//! The sending half of a channel.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::direct::Direct;
use crate::error::{Error, FlushError, SendError, SendErrorKind};
use crate::frame::{Frame, Limits};
use crate::options::{Options, Socket};
use crate::outbox::{End, Frames, Outbox};
use crate::{pass, sys, wire};

/// The sending half of a channel. Clone it freely inside a process (clones share one
/// buffer and one flush task); [`pass`](crate::pass) it to give child processes their own.
///
/// `send` encodes the item at once, so an encoding error is returned to the caller, and
/// appends the bytes to a buffer that a task on the current tokio runtime packs into
/// datagrams. The buffer is bounded in bytes ([`Options::buffer_bytes`]): `send` waits
/// while it is full, which is how a slow receiver slows its producers down.
///
/// Sending never blocks process exit. Dropping the last `Sender` lets the flush task finish
/// writing while the runtime runs; if the runtime stops first, the items left are reported
/// in a `tracing` warning. To keep them, call [`drain`](Self::drain).
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
    flavor: Flavor,
    sink: SinkState,
    _item: PhantomData<fn(T)>,
}

/// The two ways of sending, behind one API (as crossbeam-channel's flavors are).
#[derive(Clone)]
enum Flavor {
    /// Buffered and batched by a flush task: the default.
    Buffered(Arc<Outbox>),
    /// Every send writes its own datagram: [`Options::direct`].
    Direct(Arc<Direct>),
}

/// The futures a `Sender` used as a [`futures_sink::Sink`] keeps between polls.
#[derive(Default)]
struct SinkState {
    room: Option<BoxFuture<()>>,
    flush: Option<BoxFuture<Result<(), FlushError>>>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + Sync>>;

impl<T> Sender<T>
where
    T: Serialize + DeserializeOwned + Send + 'static,
{
    pub(crate) fn from_socket(socket: Arc<Socket>, opts: &Options) -> Result<Self, Error> {
        crate::options::runtime()?;
        let flavor = if opts.direct {
            let limits = Limits::new(opts, &socket);
            Flavor::Direct(Arc::new(Direct::new(socket, limits)))
        } else {
            Flavor::Buffered(Outbox::spawn(socket, opts))
        };
        Ok(Sender {
            flavor,
            sink: SinkState::default(),
            _item: PhantomData,
        })
    }

    /// Rebuilds a sender that a parent passed to this process under `name` with
    /// [`pass`](crate::pass). Fails with [`Error::NotPassed`] if nothing was passed under
    /// that name, [`Error::WrongKind`] if something else was. Takes the descriptor: a second
    /// call for the same name fails. Must run inside a tokio runtime.
    pub fn from_env(name: &str) -> Result<Self, Error> {
        Self::from_env_with(name, &Options::default())
    }

    /// [`from_env`](Self::from_env) with this process's own [`Options`].
    pub fn from_env_with(name: &str, opts: &Options) -> Result<Self, Error> {
        crate::options::runtime()?;
        let socket =
            pass::take(name, pass::Kind::Sender, 1)?.socket(tokio::io::Interest::WRITABLE)?;
        Self::from_socket(socket, opts)
    }

    /// Sends an item, waiting while this process's buffer is full.
    ///
    /// Resolves once the item is encoded and buffered, which is before it reaches the
    /// kernel: use [`flush`](Self::flush) to wait for that, and [`drain`](Self::drain) to
    /// take back what never got there. Errors give the item back: `Closed` after
    /// [`close`](Self::close) or `drain`, `Disconnected` once no process holds the
    /// receiving side, `Encode` / `TooLarge` for an item that cannot be sent at all.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe in the sense that matters: if the future is dropped before it
    /// completes, the item was not buffered and is dropped with the future; nothing is
    /// half-sent. Once it returns `Ok`, the item will be written unless the runtime stops
    /// first or the channel loses its last receiver.
    pub async fn send(&self, item: T) -> Result<(), SendError<T>> {
        self.send_until(item, None).await
    }

    /// Like [`send`](Self::send), but gives up at `timeout` with
    /// [`SendErrorKind::Timeout`] and the item. Cancel-safe as `send` is.
    pub async fn send_timeout(&self, item: T, timeout: Duration) -> Result<(), SendError<T>> {
        self.send_until(item, Some(tokio::time::Instant::now() + timeout))
            .await
    }

    pub(crate) async fn send_until(
        &self,
        item: T,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<(), SendError<T>> {
        let result = match &self.flavor {
            Flavor::Buffered(outbox) => match outbox.try_push(&item, true) {
                Err(SendErrorKind::Full) => match Frame::encode(&item, outbox.limits()) {
                    // Slow path: keep the encoding (and any memfd) while waiting for room.
                    Ok(frame) => wait_and_push(outbox, frame, deadline).await,
                    Err(kind) => Err(kind),
                },
                other => other,
            },
            Flavor::Direct(direct) => match Frame::encode(&item, direct.limits()) {
                Ok(frame) => write_until(direct, &frame, deadline).await,
                Err(kind) => Err(kind),
            },
        };
        result.map_err(|kind| SendError::new(item, kind))
    }

    /// Sends an item if the buffer has room now, without waiting; `Full` gives it back.
    pub fn try_send(&self, item: T) -> Result<(), SendError<T>> {
        let result = match &self.flavor {
            Flavor::Buffered(outbox) => outbox.try_push(&item, true),
            Flavor::Direct(direct) => {
                Frame::encode(&item, direct.limits()).and_then(|f| direct.try_write(&f))
            }
        };
        result.map_err(|kind| SendError::new(item, kind))
    }

    /// Resolves when every item this process sent before the call (through any clone) is
    /// in the kernel, where it survives this process's death and will reach a receiver.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: dropping the future only stops the waiting. On a deadline, wrap it in
    /// [`tokio::time::timeout`]; the items keep flowing either way.
    pub async fn flush(&self) -> Result<(), FlushError> {
        match &self.flavor {
            Flavor::Buffered(outbox) => outbox.flush().await,
            Flavor::Direct(direct) => match direct.socket() {
                Err(SendErrorKind::Disconnected) => {
                    Err(FlushError::Disconnected { undelivered: 0 })
                }
                _ => Ok(()),
            },
        }
    }

    /// Stops this process's sending side: every clone's later sends fail with `Closed`.
    /// Items already sent are still written. Once they are, and once every process's
    /// senders are closed or gone, receivers see the end of the channel.
    pub fn close(&self) {
        match &self.flavor {
            Flavor::Buffered(outbox) => outbox.close(),
            Flavor::Direct(direct) => direct.close(),
        }
    }

    /// Has this process's sending side been closed, drained or cut off from every
    /// receiver?
    pub fn is_closed(&self) -> bool {
        match &self.flavor {
            Flavor::Buffered(outbox) => outbox.is_closed(),
            Flavor::Direct(direct) => direct.is_closed(),
        }
    }

    /// Closes this process's sending side, flushes for at most `timeout`, and hands back
    /// every item that did not reach the kernel, decoded. Returns early once everything is
    /// written or no receiver is left; never waits past `timeout`.
    ///
    /// This is the graceful exit that Python's `Queue.join_thread()` cannot give: a writer
    /// whose reader died decides what to do with its items instead of hanging.
    ///
    /// ```no_run
    /// # async fn demo(tx: procq::Sender<String>) {
    /// let left = tx.drain(std::time::Duration::from_secs(2)).await;
    /// for item in left.undelivered() {
    ///     eprintln!("not delivered: {item}");
    /// }
    /// # }
    /// ```
    ///
    /// # Cancel safety
    ///
    /// Not cancel-safe: if the future is dropped, the channel is closed and the items not
    /// yet written stay buffered (reported when the sender drops) instead of returned.
    pub async fn drain(&self, timeout: Duration) -> Drained<T> {
        match &self.flavor {
            Flavor::Buffered(outbox) => {
                let (frames, end) = outbox.drain(timeout).await;
                Drained::decode(frames, end, outbox.limits().max_item)
            }
            Flavor::Direct(direct) => {
                // Nothing is ever buffered: every send completed in the kernel or failed.
                let outcome = match direct.socket() {
                    Err(SendErrorKind::Disconnected) => DrainOutcome::Disconnected,
                    _ => DrainOutcome::Flushed,
                };
                direct.close();
                Drained {
                    items: Vec::new(),
                    undecodable: 0,
                    outcome,
                }
            }
        }
    }
}

impl<T> Sender<T> {
    /// Sends `bytes` as one message, exactly as given: the receiver gets them back with
    /// [`Receiver::recv_bytes`](crate::Receiver::recv_bytes). Python's
    /// `Connection.send_bytes()`. Waits for room as [`send`](Self::send) does and is
    /// cancel-safe in the same way.
    pub async fn send_bytes(&self, bytes: &[u8]) -> Result<(), SendErrorKind> {
        self.send_bytes_until(bytes, None).await
    }

    /// [`send_bytes`](Self::send_bytes) with a deadline: [`SendErrorKind::Timeout`] if
    /// there was no room by then (nothing was sent).
    pub async fn send_bytes_timeout(
        &self,
        bytes: &[u8],
        timeout: Duration,
    ) -> Result<(), SendErrorKind> {
        let deadline = tokio::time::Instant::now() + timeout;
        self.send_bytes_until(bytes, Some(deadline)).await
    }

    async fn send_bytes_until(
        &self,
        bytes: &[u8],
        deadline: Option<tokio::time::Instant>,
    ) -> Result<(), SendErrorKind> {
        match &self.flavor {
            Flavor::Buffered(outbox) => match outbox.try_push_raw(bytes, true) {
                Err(SendErrorKind::Full) => {
                    let frame = Frame::raw(bytes, outbox.limits())?;
                    wait_and_push(outbox, frame, deadline).await
                }
                other => other,
            },
            Flavor::Direct(direct) => {
                let frame = Frame::raw(bytes, direct.limits())?;
                write_until(direct, &frame, deadline).await
            }
        }
    }
}

/// Appends `frame` once the outbox has room, or gives up at `deadline`.
async fn wait_and_push(
    outbox: &Outbox,
    mut frame: Frame,
    deadline: Option<tokio::time::Instant>,
) -> Result<(), SendErrorKind> {
    loop {
        match deadline {
            None => outbox.room().await,
            Some(at) => {
                if tokio::time::timeout_at(at, outbox.room()).await.is_err() {
                    return Err(SendErrorKind::Timeout);
                }
            }
        }
        match outbox.push_owned(frame, true) {
            Ok(()) => return Ok(()),
            Err((back, SendErrorKind::Full)) => frame = back,
            Err((_, kind)) => return Err(kind),
        }
    }
}

/// Writes `frame` directly, waiting for room in the kernel until `deadline`.
async fn write_until(
    direct: &Direct,
    frame: &Frame,
    deadline: Option<tokio::time::Instant>,
) -> Result<(), SendErrorKind> {
    match direct.try_write(frame) {
        Err(SendErrorKind::Full) => {}
        other => return other,
    }
    match deadline {
        None => direct.write(frame).await,
        Some(at) => match tokio::time::timeout_at(at, direct.write(frame)).await {
            Ok(result) => result,
            Err(_) => Err(SendErrorKind::Timeout),
        },
    }
}

impl<T> Sender<T> {
    /// The socket, for passing to a child; fails once this side is closed.
    pub(crate) fn socket(&self) -> Result<Arc<Socket>, Error> {
        match &self.flavor {
            Flavor::Buffered(outbox) => outbox.socket().ok_or(Error::Closed),
            Flavor::Direct(direct) => direct.socket().map_err(|_| Error::Closed),
        }
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        if let Flavor::Buffered(outbox) = &self.flavor {
            outbox.add_handle();
        }
        Sender {
            flavor: self.flavor.clone(),
            sink: SinkState::default(),
            _item: PhantomData,
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        if let Flavor::Buffered(outbox) = &self.flavor {
            outbox.drop_handle();
        }
    }
}

impl<T> fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sender")
            .field("direct", &matches!(self.flavor, Flavor::Direct(_)))
            .finish_non_exhaustive()
    }
}

/// A `Sender` is a [`Sink`](futures_sink::Sink). `poll_ready` waits for room;
/// `start_send` then always buffers (it may take the buffer over its limit by that one
/// item); `poll_flush` is [`flush`](Sender::flush); `poll_close` closes and flushes.
///
/// The error is `SendError<Option<T>>`: the item when `start_send` could not take it,
/// `None` when flushing failed.
impl<T> futures_sink::Sink<T> for Sender<T>
where
    T: Serialize + DeserializeOwned + Send + 'static,
{
    type Error = SendError<Option<T>>;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let this = self.get_mut();
        if this.sink.room.is_none() {
            let room: BoxFuture<()> = match &this.flavor {
                Flavor::Buffered(outbox) if outbox.has_room() => return Poll::Ready(Ok(())),
                Flavor::Buffered(outbox) => {
                    let outbox = outbox.clone();
                    Box::pin(async move { outbox.room().await })
                }
                Flavor::Direct(direct) => match direct.socket() {
                    Ok(socket) => Box::pin(async move {
                        if let Ok(reactor) = socket.reactor() {
                            let _ = reactor.writable().await;
                        }
                    }),
                    Err(_) => return Poll::Ready(Ok(())), // start_send reports it
                },
            };
            this.sink.room = Some(room);
        }
        let room = this.sink.room.as_mut().expect("set above");
        ready!(room.as_mut().poll(cx));
        this.sink.room = None;
        Poll::Ready(Ok(()))
    }

    fn start_send(self: Pin<&mut Self>, item: T) -> Result<(), Self::Error> {
        let result = match &self.flavor {
            Flavor::Buffered(outbox) => outbox.try_push(&item, false),
            Flavor::Direct(direct) => {
                Frame::encode(&item, direct.limits()).and_then(|f| direct.try_write(&f))
            }
        };
        result.map_err(|kind| SendError::new(Some(item), kind))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let this = self.get_mut();
        let flush = this.sink.flush.get_or_insert_with(|| {
            let flavor = this.flavor.clone();
            Box::pin(async move {
                match flavor {
                    Flavor::Buffered(outbox) => outbox.flush().await,
                    Flavor::Direct(_) => Ok(()),
                }
            })
        });
        let result = ready!(flush.as_mut().poll(cx));
        this.sink.flush = None;
        Poll::Ready(result.map_err(|e| SendError::new(None, e.into())))
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let this = self.get_mut();
        if let Flavor::Buffered(outbox) = &this.flavor {
            outbox.close();
        }
        let result = ready!(Pin::new(&mut *this).poll_flush(cx));
        if let Flavor::Direct(direct) = &this.flavor {
            direct.close();
        }
        Poll::Ready(result)
    }
}

impl From<FlushError> for SendErrorKind {
    fn from(e: FlushError) -> Self {
        match e {
            FlushError::Disconnected { .. } => SendErrorKind::Disconnected,
            FlushError::Drained => SendErrorKind::Closed,
            FlushError::Io(e) => SendErrorKind::Io(e),
        }
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
pub struct Drained<T> {
    items: Vec<T>,
    undecodable: usize,
    outcome: DrainOutcome,
}

impl<T: DeserializeOwned> Drained<T> {
    fn decode(mut frames: Frames, end: End, max_item: u64) -> Self {
        let outcome = match end {
            End::Finished => DrainOutcome::Flushed,
            End::Stopped => DrainOutcome::TimedOut,
            End::Disconnected => DrainOutcome::Disconnected,
            End::Failed(..) => DrainOutcome::Failed,
        };
        let mut items = Vec::with_capacity(frames.items);
        let mut undecodable = 0;
        let bytes = &frames.bytes;
        let mut at = 0;
        while at + wire::FRAME_PREFIX <= bytes.len() {
            let prefix = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("prefix"));
            let decoded = if prefix == wire::OUTBOX_OUT_OF_LINE {
                let size = u64::from_le_bytes(bytes[at + 4..at + 12].try_into().expect("size"));
                at += 12;
                match frames.fds.pop_front() {
                    Some(fd) if size <= max_item => match sys::map_sealed_memfd(&fd, size) {
                        Ok(map) => wire::decode::<T>(&map).ok(),
                        Err(_) => None,
                    },
                    _ => None,
                }
            } else {
                let start = at + wire::FRAME_PREFIX;
                at = start + prefix as usize;
                wire::decode::<T>(&bytes[start..at]).ok()
            };
            match decoded {
                Some(item) => items.push(item),
                None => undecodable += 1,
            }
        }
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
