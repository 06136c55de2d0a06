//! The receiving half of a channel.

use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use serde::de::DeserializeOwned;

use crate::error::{DecodeError, Error, RecvError};
use crate::options::{Options, Socket};
use crate::{pass, sys, wire};

/// The receiving half of a channel. Clones share one socket and one read buffer, so the
/// items of a datagram are spread over every clone in this process that asks.
///
/// `recv` returns items in the order each sending process sent them (items from different
/// processes interleave). [`RecvError::Closed`] means every sender in every process is gone
/// and everything they wrote has been received. As a [`Stream`](futures_core::Stream) it
/// yields `Result<T, RecvError>` and ends at `Closed`.
///
/// Items already read from the socket into this process (the rest of a batch) are lost if
/// every `Receiver` in the process is dropped; with
/// [`Options::batch_items`]`(1)` there are none.
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
    inbox: Arc<Inbox>,
    done: bool,
    _item: PhantomData<fn() -> T>,
}

struct Inbox {
    socket: Arc<Socket>,
    max_item: u64,
    state: Mutex<InboxState>,
}

/// The datagram being taken apart. Kept here, not in any future, which is what makes
/// `recv` cancel-safe.
struct InboxState {
    buf: Box<[u8]>,
    /// Bytes of the current datagram in `buf`.
    len: usize,
    frames: wire::Frames,
    /// An out-of-line item received and not yet taken.
    out_of_line: Option<sys::Mapping>,
    fds: Vec<OwnedFd>,
    closed: bool,
}

impl<T: DeserializeOwned> Receiver<T> {
    pub(crate) fn from_socket(socket: Arc<Socket>, opts: &Options) -> Self {
        Receiver {
            inbox: Arc::new(Inbox {
                socket,
                max_item: opts.max_item_bytes,
                state: Mutex::new(InboxState {
                    buf: vec![0; wire::MAX_DATAGRAM].into_boxed_slice(),
                    len: 0,
                    frames: wire::Frames::default(),
                    out_of_line: None,
                    fds: Vec::new(),
                    closed: false,
                }),
            }),
            done: false,
            _item: PhantomData,
        }
    }

    /// Rebuilds a receiver that a parent passed to this process under `name` with
    /// [`pass`](crate::pass). Fails with [`Error::NotPassed`] if nothing was passed under
    /// that name, [`Error::WrongKind`] if something else was. Takes the descriptor: a second
    /// call for the same name fails. Must run inside a tokio runtime.
    pub fn from_env(name: &str) -> Result<Self, Error> {
        Self::from_env_with(name, &Options::default())
    }

    /// [`from_env`](Self::from_env) with this process's own [`Options`] (its
    /// `max_item_bytes` is the one that matters for a receiver).
    pub fn from_env_with(name: &str, opts: &Options) -> Result<Self, Error> {
        crate::options::runtime()?;
        let socket =
            pass::take(name, pass::Kind::Receiver, 1)?.socket(tokio::io::Interest::READABLE)?;
        Ok(Self::from_socket(socket, opts))
    }

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
    /// next call.
    pub async fn recv(&self) -> Result<T, RecvError> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Like [`recv`](Self::recv), but gives up with [`RecvError::Timeout`] after `timeout`.
    /// Cancel-safe; a timeout loses nothing.
    pub async fn recv_timeout(&self, timeout: Duration) -> Result<T, RecvError> {
        with_timeout(timeout, self.recv()).await
    }

    /// Receives an item if one is ready now; [`RecvError::Empty`] if not.
    pub fn try_recv(&self) -> Result<T, RecvError> {
        self.inbox.try_take(&mut decode::<T>).and_then(flatten)
    }

    /// Polls for the next item: the building block of [`recv`](Self::recv) for hand-written
    /// futures. On `Pending`, the task is woken when the socket becomes readable.
    pub fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Result<T, RecvError>> {
        self.inbox
            .poll_take(cx, &mut decode::<T>)
            .map(|r| r.and_then(flatten))
    }
}

impl<T> Receiver<T> {
    /// Receives the next message's bytes as they were sent, without decoding: what
    /// [`Sender::send_bytes`](crate::Sender::send_bytes) sent, or an item's postcard
    /// encoding. Python's `Connection.recv_bytes()`. Cancel-safe.
    pub async fn recv_bytes(&self) -> Result<Vec<u8>, RecvError> {
        std::future::poll_fn(|cx| {
            self.inbox
                .poll_take(cx, &mut |b: &[u8]| Take::Consume(b.to_vec()))
        })
        .await
    }

    /// [`recv_bytes`](Self::recv_bytes) with a deadline. Cancel-safe.
    pub async fn recv_bytes_timeout(&self, timeout: Duration) -> Result<Vec<u8>, RecvError> {
        with_timeout(timeout, self.recv_bytes()).await
    }

    /// Receives the next message's bytes into `buf`, returning their length. If `buf` is too
    /// small, fails with [`RecvError::BufferTooSmall`] saying how much is needed, and the
    /// message stays first in line for the next call. Python's
    /// `Connection.recv_bytes_into()`. Cancel-safe.
    pub async fn recv_bytes_into(&self, buf: &mut [u8]) -> Result<usize, RecvError> {
        let mut take = |b: &[u8]| {
            if b.len() > buf.len() {
                Take::Keep(Err(RecvError::BufferTooSmall { needed: b.len() }))
            } else {
                buf[..b.len()].copy_from_slice(b);
                Take::Consume(Ok(b.len()))
            }
        };
        std::future::poll_fn(|cx| self.inbox.poll_take(cx, &mut take))
            .await
            .and_then(|r| r)
    }

    /// [`recv_bytes_into`](Self::recv_bytes_into) with a deadline: [`RecvError::Timeout`]
    /// if no message came (nothing is consumed). Cancel-safe.
    pub async fn recv_bytes_into_timeout(
        &self,
        buf: &mut [u8],
        timeout: Duration,
    ) -> Result<usize, RecvError> {
        with_timeout(timeout, self.recv_bytes_into(buf)).await
    }

    /// Waits up to `timeout` for a message (or the end of the channel) to be ready to
    /// receive, without receiving it. Python's `Connection.poll(timeout)`. Cancel-safe.
    pub async fn poll(&self, timeout: Duration) -> bool {
        let ready = std::future::poll_fn(|cx| self.inbox.poll_ready(cx));
        tokio::time::timeout(timeout, ready).await.is_ok()
    }

    /// Is a message (or the end of the channel) ready to receive right now? Does not
    /// consume anything. Python's `Connection.poll()` with no timeout.
    pub fn is_ready(&self) -> bool {
        self.inbox.has_buffered() || sys::has_input(self.inbox.socket.get_ref().as_fd())
    }
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Take<Result<T, DecodeError>> {
    Take::Consume(wire::decode(bytes))
}

fn flatten<T>(r: Result<T, DecodeError>) -> Result<T, RecvError> {
    r.map_err(RecvError::Decode)
}

/// Runs a receive with a deadline, mapping the deadline to [`RecvError::Timeout`].
pub(crate) async fn with_timeout<R>(
    timeout: Duration,
    recv: impl std::future::Future<Output = Result<R, RecvError>>,
) -> Result<R, RecvError> {
    match tokio::time::timeout(timeout, recv).await {
        Ok(result) => result,
        Err(_) => Err(RecvError::Timeout),
    }
}

/// What a taker decided about the message it was shown.
enum Take<R> {
    /// Done with it: the next call sees the next message.
    Consume(R),
    /// Leave it first in line (`recv_bytes_into` with a buffer too small).
    Keep(R),
}

impl<T> Receiver<T> {
    /// The socket, for passing to a child.
    pub(crate) fn socket(&self) -> &Arc<Socket> {
        &self.inbox.socket
    }
}

impl Inbox {
    fn lock(&self) -> MutexGuard<'_, InboxState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn has_buffered(&self) -> bool {
        let st = self.lock();
        st.out_of_line.is_some() || !st.frames.is_empty() || st.closed
    }

    /// Shows the next message to `take`, waiting for one.
    fn poll_take<R>(
        &self,
        cx: &mut Context<'_>,
        take: &mut dyn FnMut(&[u8]) -> Take<R>,
    ) -> Poll<Result<R, RecvError>> {
        loop {
            if let Some(result) = self.take_buffered(take) {
                return Poll::Ready(result);
            }
            let reactor = match self.socket.reactor() {
                Ok(reactor) => reactor,
                Err(e) => return Poll::Ready(Err(RecvError::Io(e))),
            };
            let mut guard = match reactor.poll_read_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(guard)) => guard,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(RecvError::Io(e))),
            };
            match guard.try_io(|_| self.read_datagram(self.socket.get_ref().as_fd())) {
                Ok(Ok(None)) => continue,
                Ok(Ok(Some(bad))) => return Poll::Ready(Err(RecvError::Decode(bad))),
                Ok(Err(e)) => return Poll::Ready(Err(RecvError::Io(e))),
                // Readiness was stale and is now cleared; the next poll registers a waker.
                Err(_would_block) => continue,
            }
        }
    }

    /// Shows the next message to `take` if one is ready now.
    fn try_take<R>(&self, take: &mut dyn FnMut(&[u8]) -> Take<R>) -> Result<R, RecvError> {
        loop {
            if let Some(result) = self.take_buffered(take) {
                return result;
            }
            match self.read_datagram(self.socket.get_ref().as_fd()) {
                Ok(None) => continue,
                Ok(Some(bad)) => return Err(RecvError::Decode(bad)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(RecvError::Empty),
                Err(e) => return Err(RecvError::Io(e)),
            }
        }
    }

    /// Ready once a message or the end of the channel is there; consumes nothing.
    fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            if self.has_buffered() {
                return Poll::Ready(());
            }
            let Ok(reactor) = self.socket.reactor() else {
                return Poll::Ready(());
            };
            let mut guard = match reactor.poll_read_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(guard)) => guard,
                Poll::Ready(Err(_)) => return Poll::Ready(()),
            };
            if sys::has_input(self.socket.get_ref().as_fd()) {
                return Poll::Ready(());
            }
            guard.clear_ready();
        }
    }

    /// Shows the next message of the current datagram to `take`, or reports the end of the
    /// channel; `None` when a datagram must be read first.
    fn take_buffered<R>(
        &self,
        take: &mut dyn FnMut(&[u8]) -> Take<R>,
    ) -> Option<Result<R, RecvError>> {
        let mut st = self.lock();
        let st = &mut *st;
        if let Some(map) = &st.out_of_line {
            return Some(Ok(match take(map) {
                Take::Consume(r) => {
                    st.out_of_line = None;
                    r
                }
                Take::Keep(r) => r,
            }));
        }
        let mut after = st.frames.clone();
        if let Some(range) = after.next_range(&st.buf) {
            return Some(Ok(match take(&st.buf[range]) {
                Take::Consume(r) => {
                    st.frames = after;
                    r
                }
                Take::Keep(r) => r,
            }));
        }
        st.closed.then_some(Err(RecvError::Closed))
    }

    /// Reads one datagram and keeps it for [`take_buffered`](Self::take_buffered). Returns
    /// the error of a datagram that was not valid (already dropped), or `None`.
    /// `WouldBlock` passes through so the reactor can clear readiness.
    fn read_datagram(&self, socket: BorrowedFd<'_>) -> io::Result<Option<DecodeError>> {
        let mut st = self.lock();
        let st = &mut *st;
        if !st.frames.is_empty() || st.out_of_line.is_some() || st.closed {
            return Ok(None); // another clone got here first
        }
        st.fds.clear();
        let got = sys::recv_datagram(socket, &mut st.buf, &mut st.fds)?;
        let bad = self.accept(st, &got);
        if bad.is_some() {
            st.fds.clear(); // close whatever came with it
        }
        Ok(bad)
    }

    /// Validates a datagram just read into `st.buf`.
    fn accept(&self, st: &mut InboxState, got: &sys::Datagram) -> Option<DecodeError> {
        if got.truncated {
            return Some(DecodeError::TooLong(wire::MAX_DATAGRAM));
        }
        if got.len == 0 && st.fds.is_empty() {
            // End-of-channel and an empty datagram both read as 0 bytes; the socket's
            // hang-up flag tells them apart.
            if sys::peer_hung_up(self.socket.get_ref().as_fd()) {
                st.closed = true;
                return None;
            }
            return Some(DecodeError::Empty);
        }
        let body = match wire::parse(&st.buf[..got.len], self.max_item) {
            Ok(body) => body,
            Err(e) => return Some(e),
        };
        match body {
            wire::Body::Inline { count } => {
                if !st.fds.is_empty() || got.control_truncated {
                    return Some(DecodeError::Descriptor);
                }
                st.frames = wire::Frames::new(count);
                st.len = got.len;
                None
            }
            wire::Body::OutOfLine { size } => {
                if st.fds.len() != 1 || got.control_truncated {
                    return Some(DecodeError::Descriptor);
                }
                let fd = st.fds.pop().expect("one descriptor");
                match sys::map_sealed_memfd(&fd, size) {
                    Ok(map) => {
                        st.out_of_line = Some(map);
                        None
                    }
                    Err(sys::MapError::Io(e)) => Some(DecodeError::Map(e.kind())),
                    Err(_) => Some(DecodeError::NotSealed),
                }
            }
        }
    }
}

impl<T> Receiver<T> {
    /// Writes the items this process read (as part of a batch) but nobody received back
    /// into the channel through `socket`, the channel's sending end, as one datagram. Used
    /// by a queue's last handle in a process, so a consumer that stops getting hands its
    /// unread batch back instead of losing it. Returns how many could not be given back.
    pub(crate) fn give_back(&self, socket: &Socket) -> usize {
        let mut st = self.inbox.lock();
        let left = st.frames.len();
        let mut lost = usize::from(st.out_of_line.take().is_some());
        if left > 0 {
            let header = wire::header(wire::KIND_INLINE, left as u32);
            let frames = &st.buf[st.frames.position()..st.len];
            let parts = [
                std::io::IoSlice::new(&header),
                std::io::IoSlice::new(frames),
            ];
            if sys::send_datagram(socket.get_ref().as_fd(), &parts, None).is_err() {
                lost += left;
            }
            st.frames = wire::Frames::default();
        }
        lost
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        let st = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        let left = st.frames.len() + usize::from(st.out_of_line.is_some());
        if left > 0 {
            // Read from the socket, so no other process can get them now: say so.
            tracing::warn!(
                items = left,
                "procq: last receiver in this process dropped with {left} items it had \
                 read but not returned (use Options::batch_items(1) to read one at a time)"
            );
        }
    }
}

impl<T> Clone for Receiver<T> {
    fn clone(&self) -> Self {
        Receiver {
            inbox: self.inbox.clone(),
            done: false,
            _item: PhantomData,
        }
    }
}

impl<T> fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receiver").finish_non_exhaustive()
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
