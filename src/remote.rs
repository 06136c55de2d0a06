//! Remote queues: a queue server reached over TCP or a Unix socket (with optional TLS),
//! and its typed client.
//!
//! Python's answer for sharing a queue between machines is a Manager server: one
//! synchronous round trip per call, pickle on the wire, and items lost when a client dies
//! holding them. procq's remote queue keeps the local API over a streaming protocol:
//!
//! * **Authentication before anything else**: a mutual HMAC-SHA256 challenge-response with
//!   a shared key (modelled on CPython 3.12), compared in constant time, under a handshake
//!   deadline. A peer without the key learns nothing but a random challenge. Over TLS
//!   ([`tls`]) the handshake is bound to the TLS session, so a relay fails.
//! * **Confirmed puts**: [`RemoteQueue::put`] resolves when the server holds the item;
//!   [`RemoteQueue::feed`] pipelines, and [`RemoteQueue::flush`] / [`RemoteQueue::close`]
//!   hand back what the server did not take.
//! * **Pushed gets with leases**: consumers grant credit (a prefetch window) and the server
//!   pushes items against it. An item stays the server's until acknowledged
//!   ([`Delivery::ack`] resolves when the server has the ack), for at most its lease
//!   ([`Delivery::keep_alive`] extends it); when a consumer disconnects, is killed, drops
//!   a delivery, or lets a lease run out, the item goes back to the front of the queue.
//! * **Limits**: frame sizes agreed at connect, memory per connection and for the whole
//!   server, connection slots apart from handshake slots, idle, handshake and stall
//!   timeouts; both sides ping, so only a dead peer is cut. Garbage closes that
//!   connection only.
//! * **Shutdown that says what it loses**: [`Server::shutdown`] refuses new puts at once,
//!   lets consumers drain, and reports every item it discards.
//! * **In memory**: the server keeps its queues in memory; what must survive a restart
//!   belongs in a durable backend: with the `nats` feature, the same [`RemoteQueue`] on a
//!   NATS JetStream cluster (`jetstream`), reached by a `nats://` address.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use procq::remote::{RemoteQueue, Server, ServerConfig};
//!
//! // A server, embedded in any tokio program (or run `procq serve`):
//! let server = Server::new(ServerConfig::new("shared key"))?;
//! server.declare("jobs", 10_000)?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let addr = listener.local_addr()?.to_string();
//! tokio::spawn({ let server = server.clone(); async move { server.serve_tcp(listener).await } });
//!
//! // A client, anywhere:
//! let jobs = RemoteQueue::<String>::connect(&addr, "jobs", "shared key").await?;
//! jobs.put("resize /img/1.png".to_string()).await?;
//! let (job, delivery) = jobs.get_unacked().await?;
//! assert_eq!(job, "resize /img/1.png");
//! delivery.ack().await?; // resolves once the server has the ack
//! jobs.close().await?;
//! # Ok(()) }
//! ```

mod auth;
mod client;
mod codec;
mod error;
#[cfg(feature = "nats")]
pub mod jetstream;
mod link;
pub mod protocol;
mod server;
pub mod tls;
mod transport;

pub use client::{server_stats, ClientOptions, Delivery, RemoteQueue};
pub use error::{AuthError, ConfigError, Disconnect, FlushError, PutError, RemoteError};
pub use protocol::{QueueStats, Refusal, ServerStats};
pub use server::{Server, ServerConfig, ShutdownReport};
pub use tokio_rustls::rustls;
pub use transport::bind_unix;

/// The one rule for shared keys, in the library and the `procq` command alike: trailing
/// ASCII whitespace (spaces, tabs, carriage returns, newlines) is not part of the key, so
/// a key file written by `echo secret > key.txt` holds the key `secret`. Leading and
/// inner bytes are kept as they are.
///
/// ```
/// assert_eq!(procq::remote::trim_key(b"secret\n"), b"secret");
/// assert_eq!(procq::remote::trim_key(b"two words \r\n"), b"two words");
/// ```
pub fn trim_key(key: &[u8]) -> &[u8] {
    key.trim_ascii_end()
}

/// Reports something the library could not do and nobody else would learn: through
/// `tracing` at error level, and on stderr when no `tracing` subscriber is installed.
pub(crate) fn report(message: &str) {
    tracing::error!("procq: {message}");
    if !tracing::dispatcher::has_been_set() {
        eprintln!("procq: {message}");
    }
}

/// Runs the remote protocol's decoder over `data` as a stream of frames, as a server
/// reading a client would: for fuzzing. Not part of the API.
#[doc(hidden)]
pub fn fuzz_decode_stream(data: &[u8]) {
    use tokio_util::codec::Decoder;
    let mut codec = codec::MessageCodec::<protocol::Request, ()>::new(64 * 1024);
    let mut buf = bytes::BytesMut::from(data);
    while let Ok(Some(_)) = codec.decode(&mut buf) {}
}
