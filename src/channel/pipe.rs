//! Python's `multiprocessing.Pipe`: unbuffered connections, typed or raw.
//!
//! A pipe is a channel or duplex built with [`Options::direct`]: every send writes its own
//! datagram and completes once the kernel holds it, as `Connection.send` does — so a
//! process may exit right after a send without losing it, in this process and in a child
//! the end was passed to (the setting travels with the handle). Besides typed messages,
//! the ends carry raw byte messages: [`Sender::send_bytes`], [`Receiver::recv_bytes`],
//! [`Receiver::recv_bytes_into`] (with a clear error, and the message kept, when the
//! caller's buffer is too small), and [`Receiver::poll`] to ask whether a message is ready.
//!
//! # Waiting on many connections
//!
//! `multiprocessing.connection.wait(conns, timeout)` becomes `tokio::select!` when the set
//! is fixed, and `futures::stream::select_all` when it is not:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use futures::StreamExt;
//! use std::time::Duration;
//! let (wa, a) = procq::pipe::<String>()?;
//! let (wb, b) = procq::pipe::<u64>()?;
//! wb.send(7).await?;
//!
//! // A fixed set: each branch is cancel-safe, so the losers lose nothing.
//! tokio::select! {
//!     msg = a.recv() => println!("a: {msg:?}"),
//!     n = b.recv() => assert_eq!(n?, 7),
//!     _ = tokio::time::sleep(Duration::from_secs(5)) => panic!("nothing for 5 s"),
//! }
//!
//! // Any number of receivers of one type: one stream of everything they receive.
//! let mut many = Vec::new();
//! for i in 0..3 {
//!     let (w, r) = procq::pipe::<String>()?;
//!     w.send(format!("from {i}")).await?;
//!     many.push(r); // `w` is dropped: each stream ends after its one message
//! }
//! let all: Vec<_> = futures::stream::select_all(many).collect().await;
//! assert_eq!(all.len(), 3);
//! # drop(wa);
//! # Ok(()) }
//! ```
//!
//! | Python | procq |
//! |---|---|
//! | `a, b = Pipe()` | `let (a, b) = procq::pipe_duplex::<A, B>()?` |
//! | `r, w = Pipe(duplex=False)` | `let (w, r) = procq::pipe::<T>()?` (sender first, as with channels) |
//! | `send(obj)` / `recv()` | `send(x).await` / `recv().await` (and `_timeout`, `blocking_` forms) |
//! | `send_bytes(b)` / `recv_bytes()` | `send_bytes(&b).await` / `recv_bytes().await` |
//! | `recv_bytes_into(buf)` | `recv_bytes_into(&mut buf).await` (`BufferTooSmall { needed }`) |
//! | `poll(timeout)` | `poll(timeout).await` |
//! | `close()` | drop the end, or `Sender::close` |
//! | `connection.wait(conns)` | `tokio::select!`, `futures::stream::select_all` |

use super::{DuplexPair, Receiver, Sender};
use crate::error::Error;
use crate::options::Options;

/// A one-way pipe (Python's `Pipe(duplex=False)`): an unbuffered channel. See the
/// [module docs](self).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let (w, r) = procq::pipe::<String>()?;
/// w.send_bytes(b"raw").await?;
/// let mut buf = [0u8; 16];
/// let n = r.recv_bytes_into(&mut buf).await?;
/// assert_eq!(&buf[..n], b"raw");
/// # Ok(()) }
/// ```
pub fn pipe<T>() -> Result<(Sender<T>, Receiver<T>), Error> {
    Options::new().direct().channel()
}

/// A two-way pipe (Python's `Pipe()`): an unbuffered [`Duplex`](crate::Duplex) pair. See
/// the [module docs](self).
pub fn pipe_duplex<A, B>() -> Result<DuplexPair<A, B>, Error> {
    Options::new().direct().duplex()
}
