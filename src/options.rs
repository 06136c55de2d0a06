//! Per-channel settings and the constructors that use them.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::Interest;

use crate::duplex::{Duplex, DuplexPair};
use crate::error::Error;
use crate::receiver::Receiver;
use crate::sender::Sender;
use crate::{sys, wire};

/// A socket, registered with the tokio reactor when first waited on, shared by the halves
/// that use it.
pub(crate) type Socket = sys::Waitable;

/// Settings for one channel: how much a process may buffer, how items are batched, how large
/// an item may be.
///
/// The settings apply to the handles built with them, in the process that builds them; a
/// child rebuilding a passed half uses [`Options::default`] unless it calls a `*_with`
/// constructor such as [`Receiver::from_env_with`].
///
/// ```
/// # async fn demo() -> Result<(), procq::Error> {
/// // One item per datagram: each waiting worker process gets the next job (fair
/// // distribution), at the cost of one system call per item.
/// let (jobs, rx) = procq::Options::new().batch_items(1).channel::<String>()?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Options {
    pub(crate) buffer_bytes: usize,
    pub(crate) batch_items: usize,
    pub(crate) datagram_bytes: usize,
    pub(crate) max_item_bytes: u64,
    pub(crate) direct: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            buffer_bytes: 2 * 1024 * 1024,
            batch_items: usize::MAX,
            datagram_bytes: 64 * 1024,
            max_item_bytes: 4 * 1024 * 1024 * 1024,
            direct: false,
        }
    }
}

/// How many datagrams of the configured size the kernel's send buffer should hold.
///
/// The send buffer is the only buffer between the two processes. Measured here (512 B
/// items, 64 KiB datagrams, 3M items): with the 208 KiB default (3 datagrams) the two
/// sides kept putting each other to sleep, ~10,000 context switches and 1.4 CPUs busy,
/// 1.1–3.0M items/s; with room for 32 datagrams, ~200 context switches, 1.85 CPUs busy,
/// 4.2–4.6M items/s; 64 gave no more. Unprivileged processes are capped at
/// `net.core.wmem_max` (raise it with sysctl to get the same).
const DATAGRAMS_IN_FLIGHT: usize = 32;

impl Options {
    /// The defaults: a 2 MiB in-process buffer, datagrams of up to 64 KiB holding as many
    /// items as fit, items of up to 4 GiB.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes of encoded items a process may hold that the kernel has not taken yet. When the
    /// buffer is at the limit `send` waits and `try_send` reports
    /// [`Full`](crate::SendErrorKind::Full). One item may take the buffer over the limit,
    /// so the bound is this plus the largest item. Default 2 MiB.
    pub fn buffer_bytes(mut self, bytes: usize) -> Self {
        self.buffer_bytes = bytes.max(1);
        self
    }

    /// The most items one datagram may carry. A datagram goes to exactly one receiving
    /// process, so with many workers reading one channel, `batch_items(1)` hands each item
    /// to whichever worker asks first (fair distribution, about 1–2 µs of system call per
    /// item), while the default packs as many as fit into [`datagram_bytes`](Self::datagram_bytes)
    /// (throughput, but a worker may get a whole batch). Default: unlimited.
    pub fn batch_items(mut self, items: usize) -> Self {
        self.batch_items = items.max(1);
        self
    }

    /// The largest datagram a sender writes, 4 KiB to 256 KiB. Items whose encoding does not
    /// fit in one datagram travel out of line in a sealed memfd (Linux). Default 64 KiB.
    pub fn datagram_bytes(mut self, bytes: usize) -> Self {
        self.datagram_bytes = bytes.clamp(4096, wire::MAX_DATAGRAM);
        self
    }

    /// The largest encoded item this side sends or accepts. A larger send fails with
    /// [`TooLarge`](crate::SendErrorKind::TooLarge); a larger announced item is rejected
    /// by the receiver before it maps anything. Default 4 GiB.
    pub fn max_item_bytes(mut self, bytes: u64) -> Self {
        self.max_item_bytes = bytes;
        self
    }

    /// Sends without a buffer: every `send` writes its own datagram and completes once the
    /// kernel holds the item (or fails then and there); no flush task, nothing to drain.
    /// Python's `Pipe` and `SimpleQueue` behave so. Lower latency for a lone message, far
    /// lower throughput for a stream of small ones (one system call each). Default: off.
    pub fn direct(mut self) -> Self {
        self.direct = true;
        self
    }

    /// Creates a channel: a [`Sender`] and a [`Receiver`] joined by a `SOCK_SEQPACKET`
    /// socket pair. Either half can be passed to child processes with [`pass`](crate::pass).
    ///
    /// Must be called inside a tokio runtime (the halves register with its reactor, and
    /// the sender spawns its flush task there).
    pub fn channel<T>(&self) -> Result<(Sender<T>, Receiver<T>), Error>
    where
        T: Serialize + DeserializeOwned + Send + 'static,
    {
        let (send_end, recv_end) = self.pair()?;
        let tx = Sender::from_socket(Arc::new(socket(send_end, Interest::WRITABLE)?), self)?;
        let rx = Receiver::from_socket(Arc::new(socket(recv_end, Interest::READABLE)?), self);
        Ok((tx, rx))
    }

    /// Creates a two-way connection: each end sends its first type and receives the
    /// other's. See [`Duplex`].
    pub fn duplex<A, B>(&self) -> Result<DuplexPair<A, B>, Error>
    where
        A: Serialize + DeserializeOwned + Send + 'static,
        B: Serialize + DeserializeOwned + Send + 'static,
    {
        let (one, two) = self.pair()?;
        Ok((
            Duplex::from_socket(Arc::new(socket(one, BOTH)?), self)?,
            Duplex::from_socket(Arc::new(socket(two, BOTH)?), self)?,
        ))
    }

    fn pair(&self) -> Result<(OwnedFd, OwnedFd), Error> {
        runtime()?;
        let (a, b) = sys::seqpacket_pair()?;
        // A datagram larger than the send buffer fails with EMSGSIZE: make room for a few.
        let want = DATAGRAMS_IN_FLIGHT * self.datagram_bytes;
        for fd in [a.as_fd(), b.as_fd()] {
            if sys::send_buffer_size(fd)? < want {
                sys::raise_send_buffer(fd, want);
            }
        }
        Ok((a, b))
    }
}

/// Checks that we are inside a tokio runtime, with a clear error instead of tokio's panic.
pub(crate) fn runtime() -> Result<tokio::runtime::Handle, Error> {
    tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)
}

/// Both directions: a duplex end sends and receives on one socket.
pub(crate) const BOTH: Interest = Interest::READABLE.add(Interest::WRITABLE);

/// Wraps a socket for the reactor, to be registered with `interest` on first wait.
pub(crate) fn socket(fd: OwnedFd, interest: Interest) -> Result<Socket, Error> {
    runtime()?;
    Ok(sys::Waitable::new(fd, interest))
}

/// Creates a channel with the default [`Options`].
///
/// ```no_run
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let (tx, rx) = procq::channel::<String>()?;
/// tx.send("hello".to_string()).await?;
/// assert_eq!(rx.recv().await?, "hello");
/// # Ok(()) }
/// ```
pub fn channel<T>() -> Result<(Sender<T>, Receiver<T>), Error>
where
    T: Serialize + DeserializeOwned + Send + 'static,
{
    Options::default().channel()
}

/// Creates a two-way connection with the default [`Options`]. See [`Duplex`].
pub fn duplex<A, B>() -> Result<DuplexPair<A, B>, Error>
where
    A: Serialize + DeserializeOwned + Send + 'static,
    B: Serialize + DeserializeOwned + Send + 'static,
{
    Options::default().duplex()
}
