//! Remote queues: a queue server reached over TCP or a Unix socket, and its typed client.
//!
//! Python's answer for sharing a queue between machines is a Manager server: one
//! synchronous round trip per call, pickle on the wire, and items lost when a client dies
//! holding them. procq's remote queue keeps the local API over a streaming protocol:
//!
//! * **Authentication before anything else**: a mutual HMAC-SHA256 challenge-response with
//!   a shared key ([`auth`], modelled on CPython 3.12), compared in constant time, under a
//!   handshake deadline. A peer without the key learns nothing but a random challenge.
//! * **Pipelined puts**: [`RemoteQueue::feed`] streams items and the server acknowledges
//!   them in windows; [`RemoteQueue::put`] resolves when the server holds the item.
//! * **Pushed gets**: consumers grant credit (a prefetch window) and the server pushes
//!   items against it. An item stays the server's until acknowledged ([`RemoteQueue::get`]
//!   acknowledges on return, [`RemoteQueue::get_unacked`] + [`Delivery::ack`] leave it to
//!   the caller); when a consumer disconnects or is killed, its unacknowledged items go
//!   back to the front of the queue.
//! * **Limits**: a frame size cap checked before buffering ([`frame`]), a per-connection
//!   memory cap, a maximum number of connections, idle and handshake timeouts. Garbage,
//!   truncated frames and oversize lengths close that connection only.
//! * **Opaque items**: the server stores bytes; clients are typed.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use procq::remote::{RemoteQueue, Server, ServerConfig};
//!
//! // A server, embedded in any tokio program (or run `procq serve`):
//! let server = Server::new(ServerConfig::new(b"shared key".to_vec()));
//! server.declare("jobs", 10_000);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:7070").await?;
//! tokio::spawn({ let server = server.clone(); async move { server.serve_tcp(listener).await } });
//!
//! // A client, anywhere:
//! let jobs = RemoteQueue::<String>::connect("127.0.0.1:7070", "jobs", b"shared key").await?;
//! jobs.put(&"resize /img/1.png".to_string()).await?;
//! let job = jobs.get().await?;
//! # Ok(()) }
//! ```

pub mod auth;
mod client;
mod error;
pub mod frame;
pub mod protocol;
mod server;

pub use client::{server_stats, Delivery, RemoteQueue};
pub use error::{AuthError, RemoteError};
pub use server::{Server, ServerConfig};
