//! The public handles of a channel — [`Sender`], [`Receiver`], [`Duplex`] — and every
//! constructor: [`channel`], [`duplex`], and the unbuffered [`pipe`](pipe::pipe) and
//! [`pipe_duplex`](pipe::pipe_duplex).

pub(crate) mod duplex;
pub mod pipe;
pub(crate) mod receiver;
pub(crate) mod sender;
pub(crate) mod sink;

use std::fmt;
use std::marker::PhantomData;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::Interest;

pub use self::duplex::{Duplex, DuplexPair};
pub use self::receiver::Receiver;
pub use self::sender::{DrainOutcome, Drained, Sender};
use crate::error::Error;
use crate::options::Options;
use crate::recv::Inbox;
use crate::send::SendHandle;
use crate::sys::socket;
use crate::sys::waitable::no_runtime;
use crate::sys::Waitable;

/// How many datagrams of the configured size the kernel's send buffer should hold.
///
/// The send buffer is the only buffer between the two processes. Measured here (512 B
/// items, 64 KiB datagrams, 3M items, first build): with the 208 KiB default (3 datagrams)
/// the two sides kept putting each other to sleep, ~10,000 context switches and 1.4 CPUs
/// busy, 1.1–3.0M items/s; with room for 32 datagrams, ~200 context switches, 1.85 CPUs
/// busy, 4.2–4.6M items/s. Measured again on the current code (2M items, same buffer
/// memory): 32 × 64 KiB 7.2M items/s, 8 × 256 KiB 8.8M, 4 × 256 KiB 8.9M — each datagram
/// costs a system call and a wake-up on both sides, so fewer, larger ones win once a few
/// are in flight. Unprivileged processes are capped at `net.core.wmem_max` (raise it with
/// sysctl to get the same); even the 208 KiB default does better with one 207 KiB
/// datagram in flight (6.3M) than with three of 64 KiB (5.7M).
const DATAGRAMS_IN_FLIGHT: usize = 8;

/// What a sending end waits for: room, and (as "priority", which a unix socket never
/// signals otherwise) the hang-up that says no receiver is left.
pub(crate) const SEND_INTEREST: Interest = Interest::WRITABLE.add(Interest::PRIORITY);
/// What a receiving end waits for.
pub(crate) const RECV_INTEREST: Interest = Interest::READABLE;
/// A duplex end waits for both.
pub(crate) const DUPLEX_INTEREST: Interest = RECV_INTEREST.add(SEND_INTEREST);

/// A connected socket pair, its send buffers sized for `opts`' datagrams.
pub(crate) fn socket_pair(opts: &Options) -> Result<(OwnedFd, OwnedFd), Error> {
    let (a, b) = socket::seqpacket_pair()?;
    // A datagram larger than the send buffer fails with EMSGSIZE: make room for a few.
    let want = DATAGRAMS_IN_FLIGHT * opts.datagram_bytes;
    for fd in [a.as_fd(), b.as_fd()] {
        if socket::send_buffer_size(fd)? < want {
            socket::raise_send_buffer(fd, want);
        }
    }
    Ok((a, b))
}

/// A sender on the sending end `fd` of a channel made with `opts`.
pub(crate) fn sender_on<T>(fd: OwnedFd, opts: &Options) -> Sender<T> {
    let socket = Arc::new(Waitable::new(fd, SEND_INTEREST));
    Sender::from_handle(SendHandle::new(socket, opts))
}

/// A receiver on the receiving end `fd` of a channel made with `opts`.
pub(crate) fn receiver_on<T>(fd: OwnedFd, opts: &Options) -> Receiver<T> {
    let socket = Arc::new(Waitable::new(fd, RECV_INTEREST));
    Receiver::from_inbox(Arc::new(Inbox::new(socket, opts)))
}

/// A duplex end on `fd`.
pub(crate) fn duplex_on<S, R>(fd: OwnedFd, opts: &Options) -> Duplex<S, R> {
    let socket = Arc::new(Waitable::new(fd, DUPLEX_INTEREST));
    Duplex {
        tx: Sender::from_handle(SendHandle::new(socket.clone(), opts)),
        rx: Receiver::from_inbox(Arc::new(Inbox::new(socket, opts))),
    }
}

impl Options {
    /// Creates a channel: a [`Sender`] and a [`Receiver`] joined by a `SOCK_SEQPACKET`
    /// socket pair. Either half can be passed to child processes with
    /// [`pass`](crate::pass); the settings travel with it. Needs no runtime: a buffered
    /// sender starts its flush task on the first send made inside one.
    pub fn channel<T>(&self) -> Result<(Sender<T>, Receiver<T>), Error> {
        let (send_end, recv_end) = socket_pair(self)?;
        Ok((sender_on(send_end, self), receiver_on(recv_end, self)))
    }

    /// Creates a two-way connection: each end sends its first type and receives the
    /// other's. See [`Duplex`].
    pub fn duplex<A, B>(&self) -> Result<DuplexPair<A, B>, Error> {
        let (one, two) = socket_pair(self)?;
        Ok((duplex_on(one, self), duplex_on(two, self)))
    }
}

/// Creates a channel with the default [`Options`]: buffered, batched, any number of
/// senders and receivers in any processes.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let (tx, rx) = procq::channel::<String>()?;
/// tx.send("hello".to_string()).await?;
/// assert_eq!(rx.recv().await?, "hello");
/// # Ok(()) }
/// ```
pub fn channel<T>() -> Result<(Sender<T>, Receiver<T>), Error> {
    Options::default().channel()
}

/// Creates a two-way connection with the default [`Options`]. See [`Duplex`].
pub fn duplex<A, B>() -> Result<DuplexPair<A, B>, Error> {
    Options::default().duplex()
}

/// The deadline `timeout` from now, on the tokio clock; an error (never a panic) outside a
/// runtime.
pub(crate) fn deadline_in_runtime(timeout: Duration) -> std::io::Result<tokio::time::Instant> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(no_runtime());
    }
    let now = tokio::time::Instant::now();
    Ok(now
        .checked_add(timeout)
        .unwrap_or(now + Duration::from_secs(86_400 * 365 * 30)))
}

/// Shows a type's name in `Debug` output.
pub(crate) struct TypeName<T: ?Sized>(PhantomData<fn() -> T>);

impl<T: ?Sized> TypeName<T> {
    pub(crate) fn new() -> Self {
        TypeName(PhantomData)
    }
}

impl<T: ?Sized> fmt::Debug for TypeName<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(std::any::type_name::<T>())
    }
}
