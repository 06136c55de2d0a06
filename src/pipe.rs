//! Python's `multiprocessing.Pipe`: unbuffered connections, typed or raw.
//!
//! A pipe is a channel or duplex built with [`Options::direct`]: every send writes its own
//! datagram and completes once the kernel holds it, as `Connection.send` does. Besides
//! typed messages, the ends carry raw byte messages:
//! [`Sender::send_bytes`], [`Receiver::recv_bytes`], [`Receiver::recv_bytes_into`] (with a
//! clear error, and the message kept, when the caller's buffer is too small), and
//! [`Receiver::poll`] to ask whether a message is ready.
//!
//! # Waiting on many connections
//!
//! `multiprocessing.connection.wait(conns, timeout)` becomes `tokio::select!` when the set
//! is fixed, and `futures::stream::select_all` when it is not:
//!
//! ```no_run
//! # async fn demo(a: procq::Receiver<String>, b: procq::Receiver<u64>,
//! #               many: Vec<procq::Receiver<String>>) {
//! use futures::StreamExt;
//! use std::time::Duration;
//!
//! // A fixed set: each branch is cancel-safe, so the losers lose nothing.
//! tokio::select! {
//!     msg = a.recv() => println!("a: {msg:?}"),
//!     n = b.recv() => println!("b: {n:?}"),
//!     _ = tokio::time::sleep(Duration::from_secs(1)) => println!("nothing for a second"),
//! }
//!
//! // Any number of receivers of one type: one stream of everything they receive.
//! let mut all = futures::stream::select_all(many);
//! while let Some(msg) = all.next().await {
//!     println!("{msg:?}");
//! }
//! # }
//! ```
//!
//! | Python | procq |
//! |---|---|
//! | `a, b = Pipe()` | `let (a, b) = procq::pipe_duplex::<A, B>()?` |
//! | `r, w = Pipe(duplex=False)` | `let (w, r) = procq::pipe::<T>()?` (sender first, as with channels) |
//! | `send(obj)` / `recv()` | `send(x).await` / `recv().await` (and `_timeout` forms) |
//! | `send_bytes(b)` / `recv_bytes()` | `send_bytes(&b).await` / `recv_bytes().await` |
//! | `recv_bytes_into(buf)` | `recv_bytes_into(&mut buf).await` (`BufferTooSmall { needed }`) |
//! | `poll(timeout)` | `poll(timeout).await` |
//! | `close()` | drop the end, or `Sender::close` |
//! | `connection.wait(conns)` | `tokio::select!`, `futures::stream::select_all` |

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::duplex::DuplexPair;
use crate::error::Error;
use crate::options::Options;
use crate::{Receiver, Sender};

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
pub fn pipe<T>() -> Result<(Sender<T>, Receiver<T>), Error>
where
    T: Serialize + DeserializeOwned + Send + 'static,
{
    Options::new().direct().channel()
}

/// A two-way pipe (Python's `Pipe()`): an unbuffered [`Duplex`](crate::Duplex) pair. See
/// the [module docs](self).
pub fn pipe_duplex<A, B>() -> Result<DuplexPair<A, B>, Error>
where
    A: Serialize + DeserializeOwned + Send + 'static,
    B: Serialize + DeserializeOwned + Send + 'static,
{
    Options::new().direct().duplex()
}
