//! The receiving half of a channel.

use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::os::fd::{AsFd, OwnedFd};
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
    frames: wire::Frames,
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
                    frames: wire::Frames::default(),
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
        let [fd] = pass::take(name, pass::Kind::Receiver)?;
        Ok(Self::from_socket(
            Arc::new(crate::options::register(fd)?),
            opts,
        ))
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
        match tokio::time::timeout(timeout, self.recv()).await {
            Ok(result) => result,
            Err(_) => Err(RecvError::Timeout),
        }
    }

    /// Receives an item if one is ready now; [`RecvError::Empty`] if not.
    pub fn try_recv(&self) -> Result<T, RecvError> {
        if let Some(result) = self.inbox.next_buffered() {
            return result;
        }
        match self
            .inbox
            .read_datagram(self.inbox.socket.get_ref().as_fd())
        {
            Ok(Some(result)) => result,
            Ok(None) => self.inbox.next_buffered().unwrap_or(Err(RecvError::Empty)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(RecvError::Empty),
            Err(e) => Err(RecvError::Io(e)),
        }
    }

    /// Polls for the next item: the building block of [`recv`](Self::recv) for hand-written
    /// futures. On `Pending`, the task is woken when the socket becomes readable.
    pub fn poll_recv(&self, cx: &mut Context<'_>) -> Poll<Result<T, RecvError>> {
        loop {
            if let Some(result) = self.inbox.next_buffered() {
                return Poll::Ready(result);
            }
            let mut guard = match self.inbox.socket.poll_read_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(guard)) => guard,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(RecvError::Io(e))),
            };
            match guard.try_io(|socket| self.inbox.read_datagram(socket.get_ref().as_fd())) {
                Ok(Ok(Some(result))) => return Poll::Ready(result),
                Ok(Ok(None)) => continue,
                Ok(Err(e)) => return Poll::Ready(Err(RecvError::Io(e))),
                // Readiness was stale and is now cleared; the next poll registers a waker.
                Err(_would_block) => continue,
            }
        }
    }

    /// Is there an item ready to receive right now (buffered or in the socket)? Does not
    /// consume anything. Python's `Connection.poll()` with no timeout.
    pub fn is_ready(&self) -> bool {
        {
            let st = self.inbox.lock();
            if !st.frames.is_empty() || st.closed {
                return true;
            }
        }
        use rustix::event::{PollFd, PollFlags};
        let fd = self.inbox.socket.get_ref();
        let mut fds = [PollFd::new(fd, PollFlags::IN)];
        let zero = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        matches!(rustix::event::poll(&mut fds, Some(&zero)), Ok(n) if n > 0)
    }
}

impl<T> Receiver<T> {
    pub(crate) fn descriptor(&self) -> Result<OwnedFd, Error> {
        Ok(sys::dup(self.inbox.socket.get_ref().as_fd())?)
    }
}

impl Inbox {
    fn lock(&self) -> MutexGuard<'_, InboxState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next item of the current datagram, or `Closed` once the channel ended.
    fn next_buffered<T: DeserializeOwned>(&self) -> Option<Result<T, RecvError>> {
        let mut st = self.lock();
        let st = &mut *st;
        if let Some(range) = st.frames.next_range(&st.buf) {
            return Some(wire::decode(&st.buf[range]).map_err(RecvError::Decode));
        }
        st.closed.then_some(Err(RecvError::Closed))
    }

    /// Reads one datagram. An inline batch is kept for [`next_buffered`]; an out-of-line
    /// item, an invalid datagram and the end of the channel produce a result at once.
    /// `WouldBlock` passes through so the reactor can clear readiness.
    fn read_datagram<T: DeserializeOwned>(
        &self,
        socket: std::os::fd::BorrowedFd<'_>,
    ) -> io::Result<Option<Result<T, RecvError>>> {
        let mut st = self.lock();
        let st = &mut *st;
        if !st.frames.is_empty() || st.closed {
            return Ok(None); // another clone got here first
        }
        st.fds.clear();
        let got = sys::recv_datagram(socket, &mut st.buf, &mut st.fds)?;
        let fail = |e: DecodeError| Ok(Some(Err(RecvError::Decode(e))));
        if got.truncated {
            st.fds.clear();
            return fail(DecodeError::TooLong(wire::MAX_DATAGRAM));
        }
        if got.len == 0 && st.fds.is_empty() {
            // End-of-channel and an empty datagram both read as 0 bytes; the socket's
            // hang-up flag tells them apart.
            if sys::peer_hung_up(socket) {
                st.closed = true;
                return Ok(None);
            }
            return fail(DecodeError::Empty);
        }
        let body = match wire::parse(&st.buf[..got.len], self.max_item) {
            Ok(body) => body,
            Err(e) => {
                st.fds.clear();
                return fail(e);
            }
        };
        match body {
            wire::Body::Inline { count } => {
                if !st.fds.is_empty() || got.control_truncated {
                    st.fds.clear();
                    return fail(DecodeError::Descriptor);
                }
                st.frames = wire::Frames::new(count);
                Ok(None)
            }
            wire::Body::OutOfLine { size } => {
                if st.fds.len() != 1 || got.control_truncated {
                    st.fds.clear();
                    return fail(DecodeError::Descriptor);
                }
                let fd = st.fds.pop().expect("one descriptor");
                let result = match sys::map_sealed_memfd(&fd, size) {
                    Ok(map) => wire::decode(&map).map_err(RecvError::Decode),
                    Err(sys::MapError::Io(e)) => Err(RecvError::Io(e)),
                    Err(_) => Err(RecvError::Decode(DecodeError::NotSealed)),
                };
                Ok(Some(result))
            }
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
