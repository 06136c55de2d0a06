//! Remote queues on NATS JetStream: durable, replicated, shared by workers on many hosts,
//! through the same [`RemoteQueue`](crate::remote::RemoteQueue) API (feature `nats`).
//!
//! A [`RemoteQueue`](crate::remote::RemoteQueue) whose address starts with `nats://` (or
//! `tls://`; several seed URLs may be given, separated by commas) is a queue on a NATS
//! server or cluster with JetStream enabled. Nothing else in the calling code changes: the
//! same methods, the same errors, the same cancel safety. A queue is declared once, by
//! [`declare`], as [`Server::declare`](crate::remote::Server::declare) declares one on
//! procq's own server.
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use procq::remote::jetstream::{self, QueueConfig};
//! use procq::remote::{ClientOptions, RemoteQueue};
//! use std::time::Duration;
//!
//! let url = "nats://127.0.0.1:4222";
//! let options = ClientOptions::new("token"); // the key is NATS's token (see below)
//! jetstream::declare(&options, url, "jobs", &QueueConfig::new().replicas(3)).await?;
//!
//! let jobs = RemoteQueue::<String>::connect(url, "jobs", "token").await?;
//! jobs.put("resize /img/1.png".to_string()).await?; // resolves once the stream holds it
//! let (job, delivery) = jobs.get_unacked().await?;
//! delivery.ack().await?;                            // resolves once JetStream has the ack
//! jobs.close().await?;
//! # Ok(()) }
//! ```
//!
//! # The mapping
//!
//! | procq | JetStream |
//! |---|---|
//! | a queue `name` | a stream `name` with work-queue retention and file storage, 1 or 3 replicas ([`QueueConfig::replicas`]), on the subject `procq.<name>` |
//! | the consumers of a queue | one durable pull consumer, `procq`, shared by every handle, with explicit acks |
//! | a delivery's lease | the consumer's ack wait ([`QueueConfig::lease`]); [`Delivery::keep_alive`](crate::remote::Delivery::keep_alive) sends an in-progress ack, which starts a full ack wait again |
//! | prefetch ([`ClientOptions::prefetch`](crate::remote::ClientOptions::prefetch)) | this handle's pull requests: it asks for messages while it holds fewer than half its prefetch in items; the consumer's max-ack-pending ([`QueueConfig::max_in_flight`]) bounds the messages delivered and not acknowledged, over all handles together |
//! | a bounded queue (`maxsize`) | the stream's max messages with discard-new: a publish into a full stream is refused, `put` and `feed` publish again until there is room, `try_put` says [`Refusal::Full`](crate::remote::Refusal::Full) |
//! | `put` | one message, published with a message id and confirmed by JetStream's publish ack |
//! | `feed` / `flush` | pipelined publishes; items fed back to back share a message (a *pack*, below) |
//! | `get_unacked` + `Delivery::ack` | a pulled message and its confirmed ack (`+ACK` as a request) |
//! | `get` | the same with a plain ack (no confirmation; `flush` and `close` write it and count the failures seen) |
//! | `len` | the consumer's `num_pending`: messages stored and never delivered (see below) |
//! | `task_done` / `join` | an item's task is done when its message is acknowledged (work-queue retention then removes it); `join` waits until the stream holds no message |
//! | the key | the NATS token, sent unless the URLs carry a user and password (`nats://user:password@host`, percent-escapes decoded; every URL that carries them must carry the same), which are sent instead; a server without authentication ignores it |
//! | a user's permissions | a publish the server refuses this user (its `publish` permissions deny the queue's subject) fails [`Refusal::NotAllowed`](crate::remote::Refusal::NotAllowed), never in doubt: `put` as soon as the server reports the violation, a fed item at its publish's ack timeout |
//! | TLS ([`ClientOptions::tls`](crate::remote::ClientOptions::tls)) | the NATS connection's TLS with that rustls configuration (the certificate is checked against the URL's host, not the name given there) |
//!
//! # Packs: how fed items travel
//!
//! One JetStream message costs the server about 10 µs of CPU (store, deliver, ack,
//! delete), which caps one item per message near 100,000 items/s on a small machine.
//! So items fed ([`feed`](crate::remote::RemoteQueue::feed)) back to back share one message: the
//! handle's sender task takes whatever has been fed and not yet sent, up to
//! [`ClientOptions::pack`](crate::remote::ClientOptions::pack) items and bytes, whenever
//! it runs. It runs as soon as the feeding task yields (awaits anything that waits), so
//! an item is never held back waiting for more: a producer that feeds one item and then
//! waits sends a message of one item. `put`, `try_put` and `put_timeout` always send one
//! item per message, and so does every put into a bounded queue (whose bound counts
//! messages).
//!
//! What a pack changes, and only for items that shared one:
//!
//! * **Redelivery is per message.** Each item of a pack gets its own
//!   [`Delivery`](crate::remote::Delivery). Acknowledging an item records it; the ack of
//!   the pack's last unsettled item acknowledges the message (and is the one that waits
//!   for JetStream's confirmation). If the lease runs out first, or the consumer dies, the
//!   whole pack is delivered again, items already acknowledged included: those come back
//!   as duplicates. A delivery dropped without an ack gives the whole pack back once its
//!   other items are settled. `keep_alive` on any item extends the lease of the whole
//!   pack.
//! * **`len` counts messages**: a pack not yet delivered counts as one.
//! * **Atomicity**: a pack is stored whole or not at all.
//!
//! # What differs from procq's server
//!
//! * **Durability.** What JetStream acknowledged is in its file store, on every replica
//!   that voted for it: a restarted server restores it, and with 3 replicas a lost node
//!   loses nothing acknowledged. nats-server 2.9 does not sync each write to disk; kill -9
//!   of the server loses nothing (the page cache survives), a power loss of a single
//!   node may lose its latest writes (3 replicas cover that).
//! * **Ordering across redeliveries.** The stream keeps the order of its messages, but a
//!   message delivered again (a lease ran out, a consumer died, a delivery was dropped)
//!   comes after newer ones, not at the front of the queue. A fed pack that had to be
//!   published again (its ack was lost, or the stream was full or had no leader) may be
//!   stored after packs fed later.
//! * **Lease bookkeeping is the client's.** JetStream answers an ack for a message whose
//!   ack wait ran out (it may be with another consumer now) with success, and applies
//!   it. So each handle counts a delivery's lease from the moment it asked for the
//!   message, less a margin of a tenth of the ack wait (at most 1 s), and refuses to ack
//!   or extend it after that ([`Refusal::LeaseExpired`](crate::remote::Refusal::LeaseExpired)),
//!   sending nothing. Items whose lease runs out while they wait in the handle's buffer
//!   are skipped by `get`.
//! * **No disconnects.** The NATS client reconnects by itself, to any server of the
//!   cluster it knows (it learns them from the one it reached). A lost server or a leader
//!   election shows as waiting; every call with a bound ends with
//!   [`RemoteError::Timeout`] at its bound, and
//!   `get_unacked` and `get` without a timeout wait until a server is back. The client
//!   pings every 2 s, so a server cut off silently is left after a few seconds.
//! * **Puts are deduplicated.** Every message carries a message id; one sent again (a lost
//!   ack, an election) within the stream's duplicate window (2 minutes by default) is
//!   stored once. A put retried by the caller after an error is a new message.
//! * **Full counts messages in flight.** A bounded stream counts the messages delivered
//!   and not yet acknowledged: room comes back when an item is acknowledged, not when it
//!   is delivered. Waiting for room is the client publishing again, with pauses of up to
//!   100 ms.
//! * **`join` and `task_done`.** An item's task is done when its message is acknowledged;
//!   `task_done` only checks that a handle does not call it more often than it
//!   acknowledged items ([`Refusal::TaskDoneMisuse`](crate::remote::Refusal::TaskDoneMisuse)).
//!   `join` asks the stream for its message count until it is zero (with pauses growing
//!   to 100 ms).
//! * **`stats` and `reconnect`** exist only for procq's server.
//!
//! # Where a loss is possible
//!
//! A put or fed item that JetStream acknowledged is delivered at least once, unless the
//! stream is deleted or purged, or more replicas than a quorum lose their disks (an R1
//! stream: its one node's disk, or a power loss before the page cache reached it). A put
//! that fails is handed back; one whose error is in doubt
//! ([`RemoteError::put_in_doubt`]) may be
//! stored. A fed item that is not confirmed is handed back by `flush` or `close` (refused
//! or in doubt); a handle dropped without `close` keeps sending in the background and says
//! on stderr how many items were unconfirmed, but no one learns their fate.

mod errors;
mod pack;
pub(crate) mod queue;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy};
use async_nats::jetstream::stream::{self, DiscardPolicy, RetentionPolicy, StorageType};
use tokio::time::Instant;

use super::client::ClientOptions;
use super::error::{AuthError, RemoteError};

/// The name of the durable pull consumer every handle of a queue shares.
pub const CONSUMER: &str = "procq";

/// The subject a queue's stream stores.
pub fn subject(name: &str) -> String {
    format!("procq.{name}")
}

/// Checks a queue name for JetStream: procq's rule
/// ([`check_name`](crate::remote::protocol::check_name)), and none of the characters a
/// stream name cannot hold (`.`, `*`, `>`, `/`, `\`).
pub(crate) fn check_name(name: &str) -> Result<(), RemoteError> {
    super::protocol::check_name(name).map_err(RemoteError::InvalidName)?;
    if name.contains(['.', '*', '>', '/', '\\']) {
        return Err(RemoteError::InvalidName(
            "a JetStream queue name cannot hold '.', '*', '>', '/' or '\\'",
        ));
    }
    Ok(())
}

/// Is `addr` a NATS address (`nats://…` or `tls://…`, possibly several, comma-separated)?
pub(crate) fn is_nats(addr: &str) -> bool {
    let addr = addr.trim_start();
    addr.starts_with("nats://") || addr.starts_with("tls://")
}

/// The user and password the URLs carry (`nats://user:password@host`, percent-decoded),
/// if any; URLs that carry different ones are refused.
fn url_credentials(urls: &[String]) -> Result<Option<(String, String)>, RemoteError> {
    let mut found: Option<(String, String)> = None;
    for url in urls {
        let addr: async_nats::ServerAddr = url
            .parse()
            .map_err(|_| RemoteError::InvalidOptions("the NATS URL does not parse"))?;
        if !addr.has_user_pass() {
            continue;
        }
        let pair = (
            percent_decoded(addr.username().unwrap_or_default())?,
            percent_decoded(addr.password().unwrap_or_default())?,
        );
        match &found {
            Some(earlier) if *earlier != pair => {
                return Err(RemoteError::InvalidOptions(
                    "the NATS URLs carry different credentials",
                ))
            }
            _ => found = Some(pair),
        }
    }
    Ok(found)
}

/// `%XX` escapes of a URL's user or password decoded.
fn percent_decoded(text: &str) -> Result<String, RemoteError> {
    let invalid = || RemoteError::InvalidOptions("the NATS URL's credentials are not valid UTF-8");
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| invalid())
}

/// Connects a NATS client as the options say, by `deadline`.
pub(crate) async fn nats_connect(
    options: &ClientOptions,
    addr: &str,
    deadline: Instant,
) -> Result<async_nats::Client, RemoteError> {
    nats_connect_watching(options, addr, deadline, Arc::default()).await
}

/// What a NATS server refused a connection to publish, as it said so: the server drops
/// such a message and answers nothing, so a JetStream publish to a denied subject only
/// times out, and this is how it is told apart from a lost ack.
#[derive(Default)]
pub(crate) struct Denials {
    /// When, on which subject, and what the server said.
    kept: std::sync::Mutex<Vec<(Instant, String, String)>>,
    /// Notified at each denial.
    noted: tokio::sync::Notify,
}

impl Denials {
    /// The most recent denials kept (a server repeats them for every message).
    const KEPT: usize = 16;

    /// Notes a server error if it is a publish permission violation.
    fn note(&self, error: &str) {
        const SAYS: &str = "permissions violation for publish to ";
        let lower = error.to_ascii_lowercase();
        let Some(at) = lower.find(SAYS) else { return };
        let subject = error[at + SAYS.len()..]
            .trim()
            .trim_matches(|c| c == '"' || c == '\'');
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        kept.retain(|(_, s, _)| s != subject);
        if kept.len() == Self::KEPT {
            kept.remove(0);
        }
        kept.push((Instant::now(), subject.to_string(), error.to_string()));
        drop(kept);
        self.noted.notify_waiters();
    }

    /// Returns once the server refuses this connection to publish to `subject` (at
    /// `since` or later).
    pub(crate) async fn wait_publish_denied(&self, subject: &str, since: Instant) {
        loop {
            let noted = self.noted.notified();
            tokio::pin!(noted);
            noted.as_mut().enable();
            if self.publish_denied(subject, since).is_some() {
                return;
            }
            noted.await;
        }
    }

    /// The server's words if it refused to let this connection publish to `subject`
    /// at `since` or later.
    pub(crate) fn publish_denied(&self, subject: &str, since: Instant) -> Option<String> {
        let kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        kept.iter()
            .rev()
            .find(|(at, s, _)| s == subject && *at >= since)
            .map(|(_, _, said)| said.clone())
    }
}

/// [`nats_connect`], noting in `denials` what the server refuses to let it publish.
pub(crate) async fn nats_connect_watching(
    options: &ClientOptions,
    addr: &str,
    deadline: Instant,
    denials: Arc<Denials>,
) -> Result<async_nats::Client, RemoteError> {
    let urls: Vec<String> = addr
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_string)
        .collect();
    if urls.is_empty() || !urls.iter().all(|u| is_nats(u)) {
        return Err(RemoteError::InvalidOptions(
            "a NATS address is one or more nats:// or tls:// URLs, separated by commas",
        ));
    }
    let remaining = deadline.saturating_duration_since(Instant::now());
    let mut nats = async_nats::ConnectOptions::new()
        .name("procq")
        .ping_interval(queue::PING_INTERVAL)
        .connection_timeout(remaining.max(Duration::from_millis(1)))
        .request_timeout(Some(options.request_timeout))
        .event_callback(move |event| {
            if let async_nats::Event::ServerError(async_nats::ServerError::Other(said)) = &event {
                denials.note(said);
            }
            async move {
                tracing::info!("procq: NATS connection: {event}");
            }
        });
    // async-nats parses `user:password@` in a URL but never sends it: pass it on here.
    match url_credentials(&urls)? {
        Some((user, password)) => nats = nats.user_and_password(user, password),
        None => nats = nats.token(String::from_utf8_lossy(&options.key).into_owned()),
    }
    if let Some((config, _)) = &options.tls {
        nats = nats.tls_client_config((**config).clone()).require_tls(true);
    }
    let connected = tokio::time::timeout_at(deadline, nats.connect(urls)).await;
    match connected {
        Err(_) => Err(RemoteError::Timeout),
        Ok(Ok(client)) => Ok(client),
        Ok(Err(e)) => {
            use async_nats::ConnectErrorKind as K;
            Err(match e.kind() {
                K::AuthorizationViolation | K::Authentication => {
                    RemoteError::Auth(AuthError::Rejected)
                }
                K::TimedOut => RemoteError::Timeout,
                K::ServerParse => RemoteError::InvalidOptions("the NATS URL does not parse"),
                _ => {
                    let mut source = std::error::Error::source(&e);
                    let mut kind = std::io::ErrorKind::Other;
                    while let Some(s) = source {
                        if let Some(io) = s.downcast_ref::<std::io::Error>() {
                            kind = io.kind();
                            break;
                        }
                        source = s.source();
                    }
                    RemoteError::Io(std::io::Error::new(kind, e.to_string()))
                }
            })
        }
    }
}

/// How a queue is laid out on JetStream: what [`declare`] creates.
///
/// ```
/// use procq::remote::jetstream::QueueConfig;
/// use std::time::Duration;
///
/// // Three replicas, at most 100,000 items, jobs leased for ten minutes.
/// let config = QueueConfig::new()
///     .replicas(3)
///     .maxsize(100_000)
///     .lease(Duration::from_secs(600));
/// ```
#[derive(Debug, Clone)]
pub struct QueueConfig {
    maxsize: u64,
    replicas: usize,
    lease: Duration,
    max_in_flight: u64,
    max_bytes: u64,
    duplicate_window: Duration,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig::new()
    }
}

impl QueueConfig {
    /// An unbounded queue with 1 replica, a lease (ack wait) of 30 s, at most 20,000
    /// messages delivered and not acknowledged, and a duplicate window of 2 minutes.
    pub fn new() -> Self {
        QueueConfig {
            maxsize: 0,
            replicas: 1,
            lease: Duration::from_secs(30),
            max_in_flight: 20_000,
            max_bytes: 0,
            duplicate_window: Duration::from_secs(120),
        }
    }

    /// At most `n` items (the stream's max messages, discard new; a bounded queue
    /// carries one item per message). 0: unbounded.
    pub fn maxsize(mut self, n: u64) -> Self {
        self.maxsize = n;
        self
    }

    /// How many servers keep the stream: 1, or 3 to survive the loss of one (JetStream
    /// allows up to 5). The cluster must have at least that many JetStream servers.
    pub fn replicas(mut self, n: usize) -> Self {
        self.replicas = n;
        self
    }

    /// The consumer's ack wait: how long a delivery stays with its consumer without an
    /// ack (or a [`keep_alive`](crate::remote::Delivery::keep_alive)) before it is
    /// delivered again. At least 1 s. Size it above prefetch × the time one item takes:
    /// items pulled ahead of a worker's gets use up their lease while they wait.
    pub fn lease(mut self, d: Duration) -> Self {
        self.lease = d;
        self
    }

    /// The consumer's max-ack-pending: messages delivered and not yet acknowledged, over
    /// every handle together. At least 1.
    pub fn max_in_flight(mut self, n: u64) -> Self {
        self.max_in_flight = n;
        self
    }

    /// At most this many bytes stored (discard new, as [`maxsize`](Self::maxsize)). 0:
    /// no limit.
    pub fn max_bytes(mut self, n: u64) -> Self {
        self.max_bytes = n;
        self
    }

    /// The stream's duplicate window: how long a message id is remembered, so a publish
    /// sent again (a lost ack, an election) within it is stored once. At least 1 s.
    pub fn duplicate_window(mut self, d: Duration) -> Self {
        self.duplicate_window = d;
        self
    }

    fn check(&self) -> Result<(), RemoteError> {
        let fail = |what| Err(RemoteError::InvalidOptions(what));
        if !(1..=5).contains(&self.replicas) {
            return fail("replicas must be between 1 and 5");
        }
        if self.lease < Duration::from_secs(1) {
            return fail("the lease must be at least 1 s");
        }
        if self.max_in_flight == 0 || self.max_in_flight > i64::MAX as u64 {
            return fail("max_in_flight must be at least 1");
        }
        if self.maxsize > i64::MAX as u64 || self.max_bytes > i64::MAX as u64 {
            return fail("maxsize and max_bytes must fit an i64");
        }
        if self.duplicate_window < Duration::from_secs(1) {
            return fail("the duplicate window must be at least 1 s");
        }
        Ok(())
    }

    fn stream(&self, name: &str) -> stream::Config {
        let limit = |n: u64| if n == 0 { -1 } else { n as i64 };
        stream::Config {
            name: name.to_string(),
            subjects: vec![subject(name)],
            retention: RetentionPolicy::WorkQueue,
            storage: StorageType::File,
            num_replicas: self.replicas,
            max_messages: limit(self.maxsize),
            max_bytes: limit(self.max_bytes),
            discard: DiscardPolicy::New,
            duplicate_window: self.duplicate_window,
            ..Default::default()
        }
    }

    fn consumer(&self) -> pull::Config {
        pull::Config {
            durable_name: Some(CONSUMER.to_string()),
            ack_policy: AckPolicy::Explicit,
            ack_wait: self.lease,
            max_ack_pending: self.max_in_flight as i64,
            ..Default::default()
        }
    }
}

/// Creates the queue `name` on the NATS server or cluster at `addr` (its stream and its
/// durable consumer), or updates it to `config` if it exists (JetStream can change the
/// bound, the replicas, the lease and max-in-flight of a live queue). Connects with
/// `options` as [`ClientOptions::connect`](crate::remote::ClientOptions::connect) does.
///
/// Retries while the cluster has no leader to answer, until the connect timeout plus the
/// request timeout have passed ([`RemoteError::Timeout`]). A stream of that name that is
/// not a procq queue (another retention) fails with [`RemoteError::JetStream`].
///
/// # Cancel safety
///
/// Dropping the future may leave the stream created without its consumer; declaring
/// again completes it.
pub async fn declare(
    options: &ClientOptions,
    addr: &str,
    name: &str,
    config: &QueueConfig,
) -> Result<(), RemoteError> {
    check_name(name)?;
    config.check()?;
    options.check()?;
    let deadline = Instant::now() + options.connect_timeout + options.request_timeout;
    let client = nats_connect(options, addr, Instant::now() + options.connect_timeout).await?;
    let js = async_nats::jetstream::ContextBuilder::new()
        .timeout(options.request_timeout)
        .build(client.clone());
    let attempt = || async {
        let stream = match js.get_stream(name).await {
            Ok(mut stream) => {
                let have = stream
                    .info()
                    .await
                    .map_err(|e| errors::lookup(&e))?
                    .config
                    .clone();
                let want = config.stream(name);
                if have.retention != want.retention || have.subjects != want.subjects {
                    return Err(RemoteError::JetStream(format!(
                        "stream {name} exists and is not a procq queue"
                    )));
                }
                if have.num_replicas != want.num_replicas
                    || have.max_messages != want.max_messages
                    || have.max_bytes != want.max_bytes
                    || have.duplicate_window != want.duplicate_window
                {
                    js.update_stream(want)
                        .await
                        .map_err(|e| errors::lookup(&e))?;
                }
                stream
            }
            Err(e) => match errors::lookup(&e) {
                RemoteError::Refused(_) => js
                    .create_stream(config.stream(name))
                    .await
                    .map_err(|e| errors::lookup(&e))?,
                other => return Err(other),
            },
        };
        stream
            .create_consumer(config.consumer())
            .await
            .map_err(|e| errors::lookup(&e))?;
        Ok(())
    };
    loop {
        match tokio::time::timeout_at(deadline, attempt()).await {
            Err(_) => return Err(RemoteError::Timeout),
            Ok(Ok(())) => break,
            Ok(Err(RemoteError::Timeout)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(Err(e)) => return Err(e),
        }
    }
    let _ = client.drain().await;
    Ok(())
}

/// Deletes the queue `name` (its stream, with every item it holds, and its consumer).
/// [`Refusal::UnknownQueue`](crate::remote::Refusal::UnknownQueue) if there is none;
/// [`RemoteError::Timeout`] if no server answers within the connect timeout plus the
/// request timeout.
///
/// # Cancel safety
///
/// Dropping the future may or may not leave the queue deleted.
pub async fn delete(options: &ClientOptions, addr: &str, name: &str) -> Result<(), RemoteError> {
    check_name(name)?;
    options.check()?;
    let client = nats_connect(options, addr, Instant::now() + options.connect_timeout).await?;
    let js = async_nats::jetstream::ContextBuilder::new()
        .timeout(options.request_timeout)
        .build(client.clone());
    let deleted = js.delete_stream(name).await.map_err(|e| errors::lookup(&e));
    let _ = client.drain().await;
    deleted.map(drop)
}

/// What JetStream says about a queue: its counts and, in a cluster, who leads it and how
/// current each other replica is. From [`info`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueInfo {
    /// Messages the stream holds: not yet delivered, and delivered but not acknowledged
    /// (a pack of fed items is one message).
    pub messages: u64,
    /// Messages never delivered yet (what [`len`](crate::remote::RemoteQueue::len) says).
    pub pending: u64,
    /// Messages delivered and not yet acknowledged.
    pub in_flight: u64,
    /// The server leading the stream (`None` for a single server, or while it has no
    /// leader).
    pub leader: Option<String>,
    /// The other replicas, as the leader sees them.
    pub replicas: Vec<ReplicaInfo>,
}

/// One follower replica of a stream, as its leader sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplicaInfo {
    /// The server's name.
    pub name: String,
    /// Up to date with the leader.
    pub current: bool,
    /// Considered offline by the group.
    pub offline: bool,
    /// Operations behind the leader, if known.
    pub lag: Option<u64>,
}

/// Asks JetStream about the queue `name` at `addr`: its counts, its leader and how
/// current its replicas are (two API requests, each bounded by the request timeout, after
/// a connect bounded by the connect timeout; [`RemoteError::Timeout`] past them).
///
/// # Cancel safety
///
/// Cancel safe: it only reads.
pub async fn info(
    options: &ClientOptions,
    addr: &str,
    name: &str,
) -> Result<QueueInfo, RemoteError> {
    check_name(name)?;
    options.check()?;
    let client = nats_connect(options, addr, Instant::now() + options.connect_timeout).await?;
    let js = async_nats::jetstream::ContextBuilder::new()
        .timeout(options.request_timeout)
        .build(client.clone());
    let asked = async {
        let mut stream = js.get_stream(name).await.map_err(|e| errors::lookup(&e))?;
        let info = stream.info().await.map_err(|e| errors::lookup(&e))?.clone();
        let consumer = js
            .get_consumer_from_stream::<pull::Config, _, _>(CONSUMER, name)
            .await
            .map_err(|e| errors::lookup(&e))?;
        let consumer = consumer.cached_info().clone();
        Ok::<_, RemoteError>(QueueInfo {
            messages: info.state.messages,
            pending: consumer.num_pending,
            in_flight: consumer.num_ack_pending as u64,
            leader: info.cluster.as_ref().and_then(|c| c.leader.clone()),
            replicas: info
                .cluster
                .map(|c| {
                    c.replicas
                        .into_iter()
                        .map(|p| ReplicaInfo {
                            name: p.name,
                            current: p.current,
                            offline: p.offline,
                            lag: p.lag,
                        })
                        .collect()
                })
                .unwrap_or_default(),
        })
    };
    let answer = asked.await;
    let _ = client.drain().await;
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(urls: &[&str]) -> Result<Option<(String, String)>, RemoteError> {
        url_credentials(&urls.iter().map(|u| u.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn credentials_come_from_the_urls_decoded_and_must_agree() {
        assert_eq!(creds(&["nats://127.0.0.1:4222"]).unwrap(), None);
        assert_eq!(
            creds(&["nats://a:4222", "nats://w%40rk:p%25ss%3A@b:4222"]).unwrap(),
            Some(("w@rk".into(), "p%ss:".into()))
        );
        assert!(matches!(
            creds(&["nats://u:one@a:4222", "nats://u:two@b:4222"]),
            Err(RemoteError::InvalidOptions(_))
        ));
        assert!(matches!(
            creds(&["nats://u:%ff@a:4222"]),
            Err(RemoteError::InvalidOptions(_))
        ));
    }
}
