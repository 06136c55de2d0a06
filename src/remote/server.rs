//! The queue server: named queues of opaque items, served to authenticated clients.

mod connection;
mod queue;

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::{watch, Notify, Semaphore};
use tokio_rustls::rustls;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::error::{ConfigError, RemoteError};
use super::protocol::{self, Refusal, Reply, Request, ServerStats, ENVELOPE, VERSION};
use super::transport::{self, Io, Probe};
use super::{auth, link, trim_key};
use connection::Conn;
use queue::{Memory, ServedQueue};

/// Limits and policy of a [`Server`]. Every value is checked by [`Server::new`].
///
/// `Debug` never shows the key.
#[derive(Clone)]
pub struct ServerConfig {
    pub(crate) key: Vec<u8>,
    pub(crate) create_on_use: bool,
    pub(crate) max_frame: usize,
    pub(crate) max_connections: usize,
    pub(crate) max_handshakes: usize,
    pub(crate) connection_memory: usize,
    pub(crate) memory_limit: usize,
    pub(crate) handshake_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) lease: Duration,
    pub(crate) tls: Option<Arc<rustls::ServerConfig>>,
}

impl fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerConfig")
            .field("key", &"<redacted>")
            .field("create_on_use", &self.create_on_use)
            .field("max_frame", &self.max_frame)
            .field("max_connections", &self.max_connections)
            .field("max_handshakes", &self.max_handshakes)
            .field("connection_memory", &self.connection_memory)
            .field("memory_limit", &self.memory_limit)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("lease", &self.lease)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl ServerConfig {
    /// A configuration with the shared `key` (trailing ASCII whitespace removed, see
    /// [`trim_key`](super::trim_key)) and the defaults: queues must be declared, frames
    /// up to 16 MiB, 1,024 authenticated connections and 256 more in the handshake, 64 MiB
    /// of puts waiting for room per connection, 1 GiB of items held in all, 5 s to
    /// authenticate, 30 s of silence (or of not reading) before a peer is disconnected,
    /// deliveries leased for 30 s, no TLS.
    pub fn new(key: impl AsRef<[u8]>) -> Self {
        ServerConfig {
            key: trim_key(key.as_ref()).to_vec(),
            create_on_use: false,
            max_frame: 16 * 1024 * 1024,
            max_connections: 1024,
            max_handshakes: 256,
            connection_memory: 64 * 1024 * 1024,
            memory_limit: 1024 * 1024 * 1024,
            handshake_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            lease: Duration::from_secs(30),
            tls: None,
        }
    }

    /// Create an unbounded queue the first time a client opens an unknown (valid) name.
    pub fn create_on_use(mut self, yes: bool) -> Self {
        self.create_on_use = yes;
        self
    }

    /// The largest frame, in bytes, either side sends: an item plus
    /// [`ENVELOPE`](super::protocol::ENVELOPE) bytes. Clients learn it when they connect
    /// and refuse to connect if they could not receive such a frame, so the server never
    /// holds an item a client cannot take. At least 1 KiB, at most 1 GiB.
    pub fn max_frame(mut self, bytes: usize) -> Self {
        self.max_frame = bytes;
        self
    }

    /// How many authenticated connections may be open at once; a client beyond that is
    /// refused with [`Refusal::Busy`].
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n;
        self
    }

    /// How many connections may be in the handshake at once. When all these slots are
    /// taken, a new connection evicts the one that has waited longest if that one has
    /// waited a tenth of the handshake timeout (a real client is done long before), so
    /// silent connections cannot keep real clients out; otherwise the new connection is
    /// closed at once.
    pub fn max_handshakes(mut self, n: usize) -> Self {
        self.max_handshakes = n;
        self
    }

    /// Bytes of puts a connection may have waiting for room (in a bounded queue, or under
    /// the memory limit) before the server stops reading from it. At least `max_frame`.
    pub fn connection_memory(mut self, bytes: usize) -> Self {
        self.connection_memory = bytes;
        self
    }

    /// Bytes of items the server holds in all queues (waiting or delivered and not yet
    /// acknowledged); puts beyond it wait as for a full queue. At least `max_frame`. The
    /// server's memory for items is bounded by this plus `connection_memory` for each
    /// connection.
    pub fn memory_limit(mut self, bytes: usize) -> Self {
        self.memory_limit = bytes;
        self
    }

    /// How long a client has to finish TLS, authenticate and say hello.
    pub fn handshake_timeout(mut self, d: Duration) -> Self {
        self.handshake_timeout = d;
        self
    }

    /// A peer that sends nothing (clients ping at a quarter of this while connected),
    /// or does not take what the server writes, for this long is disconnected and its
    /// deliveries go back to their queue. A producer the server has stopped reading from
    /// (its puts wait for room) is let go when it hangs up: at once if the kernel says
    /// so, else when the server's next ping (every quarter of this) draws a reset from
    /// its host, or, over TCP, when that ping stays unacknowledged for this long. At
    /// least 200 ms.
    pub fn idle_timeout(mut self, d: Duration) -> Self {
        self.idle_timeout = d;
        self
    }

    /// How long a delivery stays with its consumer without an acknowledgement before it
    /// goes back to the queue (and its ack fails with [`Refusal::LeaseExpired`]);
    /// [`Delivery::keep_alive`](super::Delivery::keep_alive) extends it. A client may ask
    /// for its own ([`ClientOptions::lease`](super::ClientOptions::lease)). At least 10 ms.
    pub fn lease(mut self, d: Duration) -> Self {
        self.lease = d;
        self
    }

    /// Speak TLS on every connection, with this rustls configuration (see
    /// [`tls::server_config`](super::tls::server_config)).
    pub fn tls(mut self, config: Arc<rustls::ServerConfig>) -> Self {
        self.tls = Some(config);
        self
    }

    fn check(&self) -> Result<(), ConfigError> {
        let fail = |what| Err(ConfigError(what));
        if self.key.is_empty() {
            return fail("the key is empty");
        }
        if self.max_frame < 1024 || self.max_frame > 1 << 30 {
            return fail("max_frame must be between 1 KiB and 1 GiB");
        }
        if self.max_connections == 0 || self.max_handshakes == 0 {
            return fail("max_connections and max_handshakes must be at least 1");
        }
        if self.connection_memory < self.max_frame {
            return fail("connection_memory must be at least max_frame");
        }
        if self.memory_limit < self.max_frame {
            return fail("memory_limit must be at least max_frame");
        }
        if self.handshake_timeout.is_zero() {
            return fail("handshake_timeout must be above zero");
        }
        if self.idle_timeout < Duration::from_millis(200) {
            return fail("idle_timeout must be at least 200 ms");
        }
        if self.lease < Duration::from_millis(10) {
            return fail("lease must be at least 10 ms");
        }
        Ok(())
    }
}

/// Where the server is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Running,
    /// Shutting down: no new connections or puts; consumers drain.
    Draining,
    /// The grace period is over: connections close.
    Closing,
}

/// A queue server, embeddable in any tokio program. Clone it freely: clones are handles
/// to the same server.
///
/// The server keeps its queues in memory: what it holds is gone when it stops. It never
/// drops an acknowledged item without saying so: [`shutdown`](Self::shutdown) returns
/// (and logs at error level) every item it discards.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use procq::remote::{RemoteQueue, Server, ServerConfig};
/// use std::time::Duration;
///
/// let server = Server::new(ServerConfig::new("shared key"))?;
/// server.declare("jobs", 10_000)?;
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// let addr = listener.local_addr()?.to_string();
/// tokio::spawn({ let server = server.clone(); async move { server.serve_tcp(listener).await } });
///
/// let jobs = RemoteQueue::<String>::connect(&addr, "jobs", "shared key").await?;
/// jobs.put("resize /img/1.png".to_string()).await?;
/// assert_eq!(jobs.get().await?, "resize /img/1.png");
/// jobs.close().await?;
///
/// let report = server.shutdown(Duration::from_secs(1)).await;
/// assert!(report.is_clean());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Server {
    shared: Arc<Shared>,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("config", &self.shared.config)
            .field("phase", &*self.shared.phase.borrow())
            .finish_non_exhaustive()
    }
}

pub(crate) struct Shared {
    pub(crate) config: ServerConfig,
    /// The largest item accepted.
    pub(crate) max_item: usize,
    queues: Mutex<HashMap<String, Arc<ServedQueue>>>,
    connections: Arc<Semaphore>,
    handshakes: Mutex<VecDeque<(u64, tokio::time::Instant, CancellationToken)>>,
    next_handshake: AtomicU64,
    pub(crate) memory: Memory,
    pub(crate) phase: watch::Sender<Phase>,
    pub(crate) draining: AtomicBool,
    /// Something a draining shutdown waits for happened (an ack, a requeue, a
    /// connection's end); notified only while draining.
    activity: Notify,
    tasks: TaskTracker,
}

impl Shared {
    pub(crate) fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    pub(crate) fn note_activity(&self) {
        if self.draining.load(Ordering::Relaxed) {
            self.activity.notify_waiters();
        }
    }

    pub(crate) fn stats(&self) -> ServerStats {
        let queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        let mut list: Vec<_> = queues.values().map(|q| q.stats()).collect();
        drop(queues);
        list.sort_by(|a, b| a.name.cmp(&b.name));
        let open = self.config.max_connections - self.connections.available_permits();
        ServerStats {
            connections: open as u64,
            handshaking: self
                .handshakes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .len() as u64,
            memory: (self.memory.stored.load(Ordering::Relaxed)
                + self.memory.waiting.load(Ordering::Relaxed)) as u64,
            queues: list,
        }
    }

    fn queue(&self, name: &str) -> Result<Arc<ServedQueue>, Refusal> {
        protocol::check_name(name).map_err(|_| Refusal::InvalidName)?;
        let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(q) = queues.get(name) {
            return Ok(q.clone());
        }
        if !self.config.create_on_use {
            return Err(Refusal::UnknownQueue);
        }
        let q = Arc::new(ServedQueue::new(name, 0));
        queues.insert(name.to_string(), q.clone());
        Ok(q)
    }

    /// Takes a handshake slot, evicting the oldest handshake if none is free and it has
    /// waited long enough; `None` if no slot can be had.
    fn enter_handshake(self: &Arc<Self>) -> Option<HandshakeSlot> {
        let id = self.next_handshake.fetch_add(1, Ordering::Relaxed);
        let token = CancellationToken::new();
        let now = tokio::time::Instant::now();
        let mut pending = self.handshakes.lock().unwrap_or_else(|e| e.into_inner());
        if pending.len() >= self.config.max_handshakes {
            let patience = self.config.handshake_timeout / 10;
            match pending.front() {
                Some((_, since, _)) if now.duration_since(*since) >= patience => {
                    let (_, _, oldest) = pending.pop_front().expect("front");
                    oldest.cancel();
                }
                _ => return None,
            }
        }
        pending.push_back((id, now, token.clone()));
        Some(HandshakeSlot {
            shared: self.clone(),
            id,
            evicted: token,
        })
    }
}

/// A connection's place among those in the handshake; given up on drop.
struct HandshakeSlot {
    shared: Arc<Shared>,
    id: u64,
    evicted: CancellationToken,
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut pending = self
            .shared
            .handshakes
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        pending.retain(|(id, _, _)| *id != self.id);
    }
}

/// What [`Server::shutdown`] discarded: items still queued, or delivered and never
/// acknowledged, when the grace period ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[must_use = "a shutdown report says which items were discarded"]
pub struct ShutdownReport {
    /// Items discarded, per queue (only queues that lost any), sorted by name.
    pub discarded: Vec<(String, u64)>,
}

impl ShutdownReport {
    /// Nothing was discarded.
    pub fn is_clean(&self) -> bool {
        self.discarded.is_empty()
    }

    /// Items discarded in all.
    pub fn total(&self) -> u64 {
        self.discarded.iter().map(|(_, n)| n).sum()
    }
}

impl fmt::Display for ShutdownReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_clean() {
            return f.write_str("no items discarded");
        }
        write!(f, "discarded {} items:", self.total())?;
        for (name, n) in &self.discarded {
            write!(f, " {name} {n}")?;
        }
        Ok(())
    }
}

impl Server {
    /// A server with no queues yet; see [`declare`](Self::declare). Fails if a
    /// configuration value cannot work (an empty key, limits that contradict each other,
    /// zero timeouts).
    pub fn new(config: ServerConfig) -> Result<Self, ConfigError> {
        config.check()?;
        let (phase, _) = watch::channel(Phase::Running);
        Ok(Server {
            shared: Arc::new(Shared {
                max_item: config.max_frame - ENVELOPE,
                connections: Arc::new(Semaphore::new(config.max_connections)),
                memory: Memory::new(config.memory_limit),
                config,
                queues: Mutex::new(HashMap::new()),
                handshakes: Mutex::new(VecDeque::new()),
                next_handshake: AtomicU64::new(0),
                phase,
                draining: AtomicBool::new(false),
                activity: Notify::new(),
                tasks: TaskTracker::new(),
            }),
        })
    }

    /// Declares a queue holding at most `maxsize` items (0: unbounded). Declaring an
    /// existing name changes nothing. Fails with [`RemoteError::InvalidName`] for a name
    /// that [`check_name`](super::protocol::check_name) refuses.
    pub fn declare(&self, name: &str, maxsize: usize) -> Result<(), RemoteError> {
        protocol::check_name(name).map_err(RemoteError::InvalidName)?;
        let mut queues = self.shared.queues.lock().unwrap_or_else(|e| e.into_inner());
        queues
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(ServedQueue::new(name, maxsize)));
        Ok(())
    }

    /// The server's statistics: connections, memory, and every queue, sorted by name.
    pub fn stats(&self) -> ServerStats {
        self.shared.stats()
    }

    /// Serves connections accepted from a TCP listener, each on its own task, until
    /// [`shutdown`](Self::shutdown) begins (then returns `Ok` and drops the listener, so
    /// new connections are refused). An accept that fails (a client gone already,
    /// descriptors exhausted) is logged and does not end the server.
    ///
    /// # Cancel safety
    ///
    /// Dropping this future stops accepting; connections already accepted go on.
    pub async fn serve_tcp(&self, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        // Data the peer's host does not acknowledge (a dead host, a cut network) for the
        // idle timeout ends the connection in the kernel, even while the server is not
        // reading from it.
        let unacked_limit = self
            .shared
            .config
            .idle_timeout
            .as_millis()
            .min(u32::MAX as u128) as u32;
        self.accept_loop(|| async {
            let (stream, peer) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let _ = rustix::net::sockopt::set_tcp_user_timeout(&stream, unacked_limit);
            let probe = Probe::tcp(&stream);
            Ok((stream, peer.to_string(), probe))
        })
        .await
    }

    /// Serves connections accepted from a Unix-socket listener (see
    /// [`bind_unix`](super::bind_unix)), as [`serve_tcp`](Self::serve_tcp) does.
    ///
    /// # Cancel safety
    ///
    /// Dropping this future stops accepting; connections already accepted go on.
    pub async fn serve_unix(&self, listener: tokio::net::UnixListener) -> std::io::Result<()> {
        self.accept_loop(|| async {
            let (stream, _) = listener.accept().await?;
            let probe = Probe::unix(&stream);
            Ok((stream, "unix socket".to_string(), probe))
        })
        .await
    }

    async fn accept_loop<S, F, Fut>(&self, mut accept: F) -> std::io::Result<()>
    where
        S: Io,
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = std::io::Result<(S, String, Option<Probe>)>>,
    {
        let mut phase = self.shared.phase.subscribe();
        loop {
            let accepted = tokio::select! {
                biased;
                _ = phase.wait_for(|p| *p != Phase::Running) => return Ok(()),
                accepted = accept() => accepted,
            };
            match accepted {
                Ok((stream, peer, probe)) => {
                    let Some(slot) = self.shared.enter_handshake() else {
                        tracing::warn!(%peer, "procq server: handshake slots full, connection closed");
                        continue;
                    };
                    let shared = self.shared.clone();
                    self.shared
                        .tasks
                        .spawn(connection(shared, stream, peer, probe, slot));
                }
                Err(e) => {
                    tracing::error!(error = %e, "procq server: accept failed");
                    // Descriptors exhausted: do not spin.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }

    /// The first step of [`shutdown`](Self::shutdown), at once and without waiting: the
    /// accept loops return, and every put not yet held is refused with
    /// [`Refusal::ShuttingDown`]. Consumers go on. Calling it again does nothing.
    pub fn begin_shutdown(&self) {
        let shared = &self.shared;
        shared.draining.store(true, Ordering::SeqCst);
        shared.phase.send_if_modified(|p| {
            let was = *p;
            if was == Phase::Running {
                *p = Phase::Draining;
            }
            was == Phase::Running
        });
    }

    /// True once [`shutdown`](Self::shutdown) has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.shared.phase() != Phase::Running
    }

    /// Shuts the server down without losing anything silently:
    ///
    /// 1. at once, the accept loops return (new connections are refused), and every put
    ///    not yet held, from now on, is refused with [`Refusal::ShuttingDown`] (the
    ///    client's `put` fails, and `flush` hands the item back);
    /// 2. consumers go on getting and acknowledging until every queue is empty and
    ///    nothing is in flight, or no connection is left, or `grace` has passed;
    /// 3. then every connection is closed (unacknowledged deliveries go back to their
    ///    queue), and whatever the queues still hold is discarded: returned in the
    ///    report and logged at error level.
    ///
    /// # Cancel safety
    ///
    /// Dropping this future after it began leaves the server refusing puts and new
    /// connections, with its queues intact; calling it again resumes.
    pub async fn shutdown(&self, grace: Duration) -> ShutdownReport {
        self.begin_shutdown();
        let shared = &self.shared;
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let activity = shared.activity.notified();
            tokio::pin!(activity);
            activity.as_mut().enable();
            let stats = shared.stats();
            let drained = stats.queues.iter().all(|q| q.len == 0 && q.in_flight == 0);
            if drained || stats.connections == 0 {
                break;
            }
            if tokio::time::timeout_at(deadline, activity).await.is_err() {
                break;
            }
        }
        shared.phase.send_replace(Phase::Closing);
        shared.tasks.close();
        let closing = shared.config.idle_timeout + shared.config.handshake_timeout;
        if tokio::time::timeout(closing, shared.tasks.wait())
            .await
            .is_err()
        {
            tracing::error!("procq server: connections still open after the grace period");
        }
        let queues: Vec<Arc<ServedQueue>> = shared
            .queues
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        let mut report = ShutdownReport::default();
        for q in queues {
            // In flight only if a connection did not close in time.
            let n = q.clear(&shared.memory) + q.in_flight.load(Ordering::Relaxed);
            if n > 0 {
                tracing::error!(
                    queue = %q.name,
                    items = n,
                    "procq server: shutdown discards items still held"
                );
                report.discarded.push((q.name.clone(), n));
            }
        }
        report.discarded.sort();
        report
    }
}

/// One client, from TLS and handshake to close. Never panics on what the client sends:
/// any protocol violation closes this connection only.
async fn connection<S: Io>(
    shared: Arc<Shared>,
    stream: S,
    peer: String,
    probe: Option<Probe>,
    slot: HandshakeSlot,
) {
    let config = &shared.config;
    let setup = async {
        let (stream, binding) = transport::accept(stream, config.tls.as_ref())
            .await
            .map_err(|e| format!("tls: {e}"))?;
        let mut framed = auth::framed(stream);
        auth::server(&mut framed, &config.key, &binding)
            .await
            .map_err(|e| e.to_string())?;
        let mut session = link::session::<Request, Reply>(framed, config.max_frame);
        match session.next().await {
            Some(Ok(Request::Hello {
                version,
                queue,
                max_frame,
                lease_ms,
            })) => Ok((session, version, queue, max_frame, lease_ms)),
            Some(Ok(_)) => Err("expected hello".to_string()),
            Some(Err(e)) => Err(format!("hello: {e}")),
            None => Err("closed before hello".to_string()),
        }
    };
    let setup = tokio::select! {
        _ = slot.evicted.cancelled() => {
            tracing::debug!(%peer, "procq server: handshake evicted (handshake slots full)");
            return;
        }
        setup = tokio::time::timeout(config.handshake_timeout, setup) => setup,
    };
    let (mut session, version, queue, max_frame, lease_ms) = match setup {
        Ok(Ok(setup)) => setup,
        Ok(Err(e)) => {
            tracing::warn!(%peer, error = %e, "procq server: handshake failed");
            return;
        }
        Err(_) => {
            tracing::warn!(%peer, "procq server: handshake timed out");
            return;
        }
    };
    drop(slot);
    let refuse = |code| Reply::Refused { code };
    let admitted = (|| {
        if version != VERSION {
            return Err(Refusal::Version);
        }
        if shared.phase() != Phase::Running {
            return Err(Refusal::ShuttingDown);
        }
        if max_frame < config.max_frame as u64 {
            return Err(Refusal::FrameLimit);
        }
        let queue = queue
            .as_deref()
            .map(|name| shared.queue(name))
            .transpose()?;
        let permit = shared
            .connections
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refusal::Busy)?;
        Ok((queue, permit))
    })();
    let (queue, permit) = match admitted {
        Ok(admitted) => admitted,
        Err(code) => {
            tracing::debug!(%peer, %code, "procq server: connection refused");
            let _ = tokio::time::timeout(config.handshake_timeout, async {
                session.send(refuse(code)).await?;
                SinkExt::<Reply>::close(&mut session).await
            })
            .await;
            return;
        }
    };
    let lease = lease_ms
        .map(|ms| Duration::from_millis(ms.clamp(10, 24 * 3600 * 1000)))
        .unwrap_or(config.lease);
    let welcome = Reply::Welcome {
        maxsize: queue.as_ref().map_or(0, |q| q.maxsize as u64),
        max_item: shared.max_item as u64,
        idle_timeout_ms: config.idle_timeout.as_millis() as u64,
        lease_ms: lease.as_millis() as u64,
    };
    if tokio::time::timeout(config.handshake_timeout, session.send(welcome))
        .await
        .map_or(true, |sent| sent.is_err())
    {
        return;
    }
    let (mut inbox, writer) = link::split::<Request, Reply>(session, config.idle_timeout);
    let (replies, outgoing) = tokio::sync::mpsc::channel(1024);
    // Deliveries stay within the client's frame limit (at least ours).
    let merge_limit = (max_frame as usize).min(256 * 1024) - ENVELOPE;
    let writing = tokio::spawn(link::write_loop(
        writer,
        outgoing,
        merge_limit,
        config.idle_timeout / 4,
        Some(config.idle_timeout),
        CancellationToken::new(),
    ));
    let mut conn = Conn::new(
        shared.clone(),
        replies,
        queue,
        lease,
        peer.clone(),
        merge_limit,
    );
    let ended = conn.run(&mut inbox, probe.as_ref()).await;
    tracing::debug!(%peer, reason = %ended, "procq server: connection closed");
    conn.finish(ended);
    drop(conn);
    drop(inbox);
    let _ = writing.await;
    drop(permit);
    shared.note_activity();
}
