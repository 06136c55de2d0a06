//! The typed client of a remote queue.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::Instant;
use tokio_rustls::rustls;
use tokio_util::sync::CancellationToken;

use super::error::{Disconnect, FlushError, PutError, RemoteError};
use super::link::{self, Inbox};
use super::protocol::{self, Refusal, Reply, Request, ServerStats, ENVELOPE, VERSION};
use super::{auth, transport, trim_key};

/// How a client connects: the key, TLS, and its limits and timeouts.
///
/// `Debug` never shows the key.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let server = procq::remote::Server::new(procq::remote::ServerConfig::new("key"))?;
/// # server.declare("jobs", 0)?;
/// # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// # let addr = listener.local_addr()?.to_string();
/// # tokio::spawn({ let server = server.clone(); async move { server.serve_tcp(listener).await } });
/// use procq::remote::ClientOptions;
/// use std::time::Duration;
///
/// // One job at a time per worker (fair), each leased for ten minutes.
/// let jobs = ClientOptions::new("key")
///     .prefetch(1)
///     .lease(Duration::from_secs(600))
///     .connect::<String>(&addr, "jobs")
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ClientOptions {
    pub(crate) key: Vec<u8>,
    pub(crate) tls: Option<(Arc<rustls::ClientConfig>, String)>,
    pub(crate) prefetch: u32,
    pub(crate) window: u64,
    pub(crate) window_bytes: usize,
    max_frame: u64,
    pub(crate) connect_timeout: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) lease: Option<Duration>,
    pub(crate) pack_items: usize,
    pub(crate) pack_bytes: usize,
}

impl fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientOptions")
            .field("key", &"<redacted>")
            .field("tls", &self.tls.as_ref().map(|(_, name)| name))
            .field("prefetch", &self.prefetch)
            .field("window", &self.window)
            .field("window_bytes", &self.window_bytes)
            .field("max_frame", &self.max_frame)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("lease", &self.lease)
            .field("pack_items", &self.pack_items)
            .field("pack_bytes", &self.pack_bytes)
            .finish()
    }
}

impl ClientOptions {
    /// Options with the shared `key` (trailing ASCII whitespace removed, see
    /// [`trim_key`](super::trim_key)) and the defaults: no TLS, a prefetch of 256, up to
    /// 4,096 puts or 8 MiB unconfirmed, frames up to 64 MiB, 10 s to connect, 30 s for
    /// the server to answer a request, the server's lease.
    pub fn new(key: impl AsRef<[u8]>) -> Self {
        ClientOptions {
            key: trim_key(key.as_ref()).to_vec(),
            tls: None,
            prefetch: 1024,
            window: 4096,
            window_bytes: 8 * 1024 * 1024,
            max_frame: 64 * 1024 * 1024,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            lease: None,
            pack_items: 64,
            pack_bytes: 64 * 1024,
        }
    }

    /// Speak TLS with this rustls configuration (see
    /// [`tls::client_config`](super::tls::client_config)), expecting a certificate for
    /// `server_name`.
    pub fn tls(mut self, config: Arc<rustls::ClientConfig>, server_name: &str) -> Self {
        self.tls = Some((config, server_name.to_string()));
        self
    }

    /// How many items the server may push ahead of this consumer's gets (its credit).
    /// 1 is the fair setting: a consumer holds only the item it works on, so items go to
    /// whichever consumer is free. Larger values are faster. At least 1.
    pub fn prefetch(mut self, n: u32) -> Self {
        self.prefetch = n;
        self
    }

    /// How many puts, and how many bytes of them, may be sent and not yet confirmed
    /// before [`feed`](RemoteQueue::feed) waits.
    pub fn put_window(mut self, puts: u64, bytes: usize) -> Self {
        self.window = puts;
        self.window_bytes = bytes;
        self
    }

    /// The largest frame this client accepts. A server whose limit is above it refuses
    /// the connection ([`Refusal::FrameLimit`]), since it could hold items this client
    /// cannot receive.
    pub fn max_frame(mut self, bytes: u64) -> Self {
        self.max_frame = bytes;
        self
    }

    /// How long connecting may take: TCP, TLS, the handshake and opening the queue.
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// How long to wait for the server's answer to a request that needs no waiting on
    /// its side: an ack, a keep-alive, `len`, `task_done`, `try_put`, `stats`, and what
    /// [`close`](RemoteQueue::close) waits for.
    pub fn request_timeout(mut self, d: Duration) -> Self {
        self.request_timeout = d;
        self
    }

    /// The lease to ask for: how long each delivery stays with this consumer without an
    /// acknowledgement (or [`Delivery::keep_alive`]) before it goes back to the queue.
    /// At least 10 ms; by default the server's.
    pub fn lease(mut self, d: Duration) -> Self {
        self.lease = Some(d);
        self
    }

    /// Over JetStream, how many fed items, and how many bytes of them, may share one
    /// message (a pack, see `remote::jetstream`, feature `nats`); 1 sends one message per
    /// item. At least 1 item and 1 byte (an item larger than `bytes` travels alone). By
    /// default 64 items or 64 KiB. procq's own server ignores it: it carries many puts
    /// per frame anyway, each its own item.
    pub fn pack(mut self, items: usize, bytes: usize) -> Self {
        self.pack_items = items;
        self.pack_bytes = bytes;
        self
    }

    pub(crate) fn check(&self) -> Result<(), RemoteError> {
        let fail = |what| Err(RemoteError::InvalidOptions(what));
        if self.key.is_empty() {
            return fail("the key is empty");
        }
        if self.prefetch == 0 {
            return fail("prefetch must be at least 1");
        }
        if self.window == 0 || self.window_bytes == 0 {
            return fail("the put window must be at least one put and one byte");
        }
        if self.max_frame < 1024 || self.max_frame > u32::MAX as u64 {
            return fail("max_frame must be between 1 KiB and 4 GiB");
        }
        if self.connect_timeout.is_zero() || self.request_timeout.is_zero() {
            return fail("timeouts must be above zero");
        }
        if self.lease.is_some_and(|d| d < Duration::from_millis(10)) {
            return fail("lease must be at least 10 ms");
        }
        if self.pack_items == 0 || self.pack_bytes == 0 {
            return fail("a pack must be at least one item and one byte");
        }
        Ok(())
    }

    /// Connects to the server at `addr` (`host:port`, or `unix:/path/to/socket`),
    /// authenticates and opens the queue `name`.
    ///
    /// Fails with [`RemoteError::Auth`] on a key mismatch, [`RemoteError::Refused`] for
    /// an unknown queue ([`Refusal::UnknownQueue`]), a full server ([`Refusal::Busy`]) or
    /// one shutting down, [`RemoteError::Timeout`] after the connect timeout.
    ///
    /// With the `nats` feature, an address starting with `nats://` or `tls://` (several
    /// may be given, separated by commas) connects to NATS and opens the JetStream queue
    /// `name` (see `remote::jetstream`): the key is sent as the NATS token unless the URL
    /// carries credentials; a stream or consumer that is not there is
    /// [`Refusal::UnknownQueue`]; a [`lease`](Self::lease) other than the queue's ack wait
    /// is [`RemoteError::InvalidOptions`]; a server that refuses the token is
    /// [`AuthError::Rejected`](super::AuthError::Rejected); no server listening is
    /// [`RemoteError::Io`].
    ///
    /// # Cancel safety
    ///
    /// Dropping the future closes the half-made connection; nothing is left behind.
    pub async fn connect<T>(&self, addr: &str, name: &str) -> Result<RemoteQueue<T>, RemoteError> {
        #[cfg(feature = "nats")]
        if super::jetstream::is_nats(addr) {
            self.check()?;
            let queue = super::jetstream::queue::Queue::connect(self, addr, name).await?;
            return Ok(RemoteQueue {
                backend: Backend::JetStream(Arc::new(queue)),
                _item: PhantomData,
            });
        }
        protocol::check_name(name).map_err(RemoteError::InvalidName)?;
        let opened = open(self, addr, Some(name)).await?;
        Ok(RemoteQueue {
            backend: Backend::Server(Arc::new(Client::start(self.clone(), addr, name, opened))),
            _item: PhantomData,
        })
    }

    /// The statistics of the server at `addr`, without opening a queue: what `procq
    /// stat` shows. Bounded by the connect timeout plus the request timeout.
    pub async fn stats(&self, addr: &str) -> Result<ServerStats, RemoteError> {
        let opened = open(self, addr, None).await?;
        let client = Client::start(self.clone(), addr, "", opened);
        let stats = client.call(|req| Request::Stat { req }, true).await;
        client.stop.cancel();
        match stats? {
            Reply::Stats { stats, .. } => Ok(stats),
            _ => Err(unexpected()),
        }
    }
}

/// Every queue's statistics from the server at `addr` (`host:port` or `unix:/path`),
/// over a plain connection: `ClientOptions::new(key).stats(addr)`.
pub async fn server_stats(addr: &str, key: impl AsRef<[u8]>) -> Result<ServerStats, RemoteError> {
    ClientOptions::new(key).stats(addr).await
}

fn unexpected() -> RemoteError {
    RemoteError::Disconnected(Disconnect::Protocol("unexpected reply"))
}

/// What the server said when the connection opened.
struct Opened {
    inbox: Inbox<Reply>,
    writer: link::Writer<Request>,
    maxsize: u64,
    max_item: u64,
    idle_timeout: Duration,
    lease: Duration,
}

async fn open(
    options: &ClientOptions,
    addr: &str,
    queue: Option<&str>,
) -> Result<Opened, RemoteError> {
    options.check()?;
    let opening = async {
        let (stream, binding) = transport::connect(addr, options.tls.as_ref()).await?;
        let mut framed = auth::framed(stream);
        auth::client(&mut framed, &options.key, &binding).await?;
        let mut session = link::session::<Reply, Request>(framed, options.max_frame as usize);
        let hello = Request::Hello {
            version: VERSION,
            queue: queue.map(str::to_string),
            max_frame: options.max_frame,
            lease_ms: options.lease.map(|d| d.as_millis() as u64),
        };
        session
            .send(hello)
            .await
            .map_err(|e| RemoteError::Disconnected(e.into()))?;
        match session.next().await {
            Some(Ok(Reply::Welcome {
                maxsize,
                max_item,
                idle_timeout_ms,
                lease_ms,
            })) => Ok((session, maxsize, max_item, idle_timeout_ms, lease_ms)),
            Some(Ok(Reply::Refused { code })) => Err(RemoteError::Refused(code)),
            Some(Ok(_)) => Err(unexpected()),
            Some(Err(e)) => Err(RemoteError::Disconnected(e.into())),
            None => Err(RemoteError::Disconnected(Disconnect::Closed)),
        }
    };
    let (session, maxsize, max_item, idle_ms, lease_ms) =
        match tokio::time::timeout(options.connect_timeout, opening).await {
            Ok(opened) => opened?,
            Err(_) => return Err(RemoteError::Timeout),
        };
    if max_item + ENVELOPE as u64 > options.max_frame {
        return Err(RemoteError::Refused(Refusal::FrameLimit));
    }
    let idle_timeout = Duration::from_millis(idle_ms.max(200));
    let (mut inbox, writer) = link::split(session, idle_timeout);
    inbox.set_limits(max_item as usize + ENVELOPE, idle_timeout);
    Ok(Opened {
        inbox,
        writer,
        maxsize,
        max_item,
        idle_timeout,
        lease: Duration::from_millis(lease_ms),
    })
}

/// A put sent and not yet confirmed.
struct Unconfirmed {
    seq: u64,
    len: usize,
    /// The encoded item, kept for puts made with `feed` (handed back if refused or in
    /// doubt); `put` keeps its own item.
    fed: Option<Bytes>,
    refused: Option<Refusal>,
}

/// What the connection's tasks and its handles share.
#[derive(Default)]
struct State {
    puts_sent: u64,
    puts_done: u64,
    unconfirmed: VecDeque<Unconfirmed>,
    unconfirmed_bytes: usize,
    /// Puts whose caller waits for their outcome, and refusals for them.
    put_waiters: HashSet<u64>,
    put_refused: HashMap<u64, Refusal>,
    /// Fed puts the server refused, not yet reported by a flush.
    fed_refused: Vec<(Bytes, Refusal)>,
    settles_sent: u64,
    settles_done: u64,
    settle_waiters: HashSet<u64>,
    settle_refused: HashMap<u64, Refusal>,
    /// Acks sent by `get`, not yet confirmed, and those that failed.
    auto_acks: VecDeque<u64>,
    acks_failed: u64,
    /// Items pushed by the server and not yet taken by a get.
    buffer: VecDeque<(u64, Bytes)>,
    /// Credit granted and not yet used by a delivery.
    credit_out: u64,
    pending: HashMap<u64, oneshot::Sender<Reply>>,
    next_req: u64,
    broken: Option<Disconnect>,
    closed_here: bool,
}

struct Shared {
    state: Mutex<State>,
    /// Puts or settles were resolved, or the connection ended.
    changed: Notify,
    /// An item arrived (one waiter per item), or the connection ended (all).
    arrived: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn end(&self, reason: Disconnect) {
        let mut st = self.lock();
        if st.broken.is_none() {
            st.broken = Some(reason);
        }
        st.acks_failed += st.auto_acks.len() as u64;
        st.auto_acks.clear();
        st.pending.clear();
        drop(st);
        self.changed.notify_waiters();
        self.arrived.notify_waiters();
    }

    /// Applies one message from the server.
    fn dispatch(&self, reply: Reply) -> Result<(), Disconnect> {
        let mut st = self.lock();
        match reply {
            Reply::PutsDone { upto } => {
                st.puts_done = st.puts_done.max(upto);
                while st.unconfirmed.front().is_some_and(|u| u.seq <= upto) {
                    let u = st.unconfirmed.pop_front().expect("front");
                    st.unconfirmed_bytes -= u.len;
                    if let (Some(item), Some(code)) = (u.fed, u.refused) {
                        st.fed_refused.push((item, code));
                    }
                }
                drop(st);
                self.changed.notify_waiters();
            }
            Reply::PutRefused { seq, code } => {
                if st.put_waiters.contains(&seq) {
                    st.put_refused.insert(seq, code);
                } else if let Ok(at) = st.unconfirmed.binary_search_by_key(&seq, |u| u.seq) {
                    st.unconfirmed[at].refused = Some(code);
                }
                drop(st);
                self.changed.notify_waiters();
            }
            Reply::SettlesDone { upto } => {
                st.settles_done = st.settles_done.max(upto);
                while st.auto_acks.front().is_some_and(|&seq| seq <= upto) {
                    st.auto_acks.pop_front();
                }
                drop(st);
                self.changed.notify_waiters();
            }
            Reply::SettleRefused { seq, code } => {
                if st.settle_waiters.contains(&seq) {
                    st.settle_refused.insert(seq, code);
                } else if let Ok(at) = st.auto_acks.binary_search(&seq) {
                    st.auto_acks.remove(at);
                    st.acks_failed += 1;
                }
                drop(st);
                self.changed.notify_waiters();
            }
            // After `close`, items still pushed here go back to the queue with the
            // connection: nobody takes them here.
            Reply::Deliver { .. } | Reply::Deliveries { .. } if st.closed_here => {}
            Reply::Deliver { delivery, item } => {
                st.credit_out = st.credit_out.saturating_sub(1);
                st.buffer.push_back((delivery, item));
                drop(st);
                self.arrived.notify_one();
            }
            Reply::Deliveries { first, items } => {
                let n = items.len();
                st.credit_out = st.credit_out.saturating_sub(n as u64);
                st.buffer.extend((first..).zip(items));
                drop(st);
                for _ in 0..n {
                    self.arrived.notify_one();
                }
            }
            Reply::Expired { deliveries } => {
                // Not yet taken: nobody will work on them here; they are back in the
                // queue. Taken ones fail to ack.
                st.buffer.retain(|(d, _)| !deliveries.contains(d));
            }
            Reply::Value { req, .. }
            | Reply::Done { req }
            | Reply::Error { req, .. }
            | Reply::Stats { req, .. } => {
                if let Some(tx) = st.pending.remove(&req) {
                    let _ = tx.send(reply);
                }
            }
            Reply::Refused { code } => return Err(Disconnect::Refused(code)),
            Reply::Ping | Reply::Welcome { .. } => {
                return Err(Disconnect::Protocol("unexpected message"))
            }
        }
        Ok(())
    }
}

/// One connection: the handle side.
struct Client {
    shared: Arc<Shared>,
    /// Unbounded: what it carries is bounded by the put window, the deliveries held and
    /// the callers waiting for replies.
    requests: mpsc::UnboundedSender<Request>,
    /// Requests sent, for charging them to tokio's cooperative budget.
    sent: std::sync::atomic::AtomicU32,
    /// Stops the writer: it writes what is queued and closes its side.
    stop: CancellationToken,
    options: ClientOptions,
    addr: String,
    name: String,
    maxsize: u64,
    max_item: u64,
    lease: Duration,
    /// Serializes `close`.
    closing: tokio::sync::Semaphore,
    /// Where items are encoded, 64 KiB at a time.
    arena: Mutex<bytes::BytesMut>,
}

impl Client {
    fn start(options: ClientOptions, addr: &str, name: &str, opened: Opened) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Notify::new(),
            arrived: Notify::new(),
        });
        let (requests, outgoing) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        // Merged puts and acks stay within the server's frame limit.
        let merge_limit = (opened.max_item as usize + ENVELOPE).min(256 * 1024) - ENVELOPE;
        let writing = link::write_loop(
            opened.writer,
            outgoing,
            merge_limit,
            opened.idle_timeout / 4,
            None,
            stop.clone(),
        );
        let on_write_error = shared.clone();
        let writer = tokio::spawn(async move {
            if let Err(reason) = writing.await {
                on_write_error.end(reason);
            }
        });
        let reading = shared.clone();
        let mut inbox = opened.inbox;
        tokio::spawn(async move {
            // Once the connection is over, a write blocked on a dead peer must not keep
            // the socket.
            let _stop_writer = AbortOnDrop(writer);
            let reason = loop {
                match inbox.next().await {
                    Ok(reply) => {
                        if let Err(reason) = reading.dispatch(reply) {
                            break reason;
                        }
                    }
                    Err(reason) => break reason,
                }
            };
            reading.end(reason);
        });
        Client {
            shared,
            requests,
            sent: std::sync::atomic::AtomicU32::new(0),
            stop,
            options,
            addr: addr.to_string(),
            name: name.to_string(),
            maxsize: opened.maxsize,
            max_item: opened.max_item,
            lease: opened.lease,
            closing: tokio::sync::Semaphore::new(1),
            arena: Mutex::new(bytes::BytesMut::new()),
        }
    }

    fn gone(st: &State) -> Option<RemoteError> {
        if st.closed_here {
            return Some(RemoteError::Disconnected(Disconnect::ClosedHere));
        }
        st.broken.map(RemoteError::Disconnected)
    }

    /// Sends a request made under the state lock, so requests numbered there reach the
    /// server in their numbers' order.
    async fn send_with<R>(
        &self,
        make: impl FnOnce(&mut State) -> (Request, R),
    ) -> Result<R, RemoteError> {
        // Sending never waits for the channel, so it counts against the task's cooperative
        // budget: a loop of puts or gets still lets other tasks (the writer among them)
        // run. One unit per 8 requests: at one unit each, the writer woke every 128
        // requests and the remote bench lost 7% (17% over TLS) to the smaller writes.
        if self
            .sent
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .is_multiple_of(8)
        {
            tokio::task::coop::consume_budget().await;
        }
        let mut st = self.shared.lock();
        if let Some(e) = Self::gone(&st) {
            return Err(e);
        }
        if self.requests.is_closed() {
            return Err(RemoteError::Disconnected(Disconnect::Closed));
        }
        let (request, out) = make(&mut st);
        // Sent under the lock: requests reach the writer in the order they were numbered.
        // (Closed in between only if the connection just ended; its end is reported.)
        let _ = self.requests.send(request);
        Ok(out)
    }

    /// Sends a put; returns its number. Waits while the put window is full.
    async fn send_put(&self, item: Bytes, wait: bool, fed: bool) -> Result<u64, RemoteError> {
        let room = |st: &State| {
            st.puts_sent - st.puts_done < self.options.window
                && st.unconfirmed_bytes < self.options.window_bytes
        };
        while !room(&self.shared.lock()) {
            let changed = self.shared.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let st = self.shared.lock();
                if let Some(e) = Self::gone(&st) {
                    return Err(e);
                }
                if room(&st) {
                    break;
                }
            }
            changed.await;
        }
        self.send_with(|st| {
            st.puts_sent += 1;
            let seq = st.puts_sent;
            st.unconfirmed_bytes += item.len();
            st.unconfirmed.push_back(Unconfirmed {
                seq,
                len: item.len(),
                fed: fed.then(|| item.clone()),
                refused: None,
            });
            if !fed {
                st.put_waiters.insert(seq);
            }
            (Request::Put { item, wait }, seq)
        })
        .await
    }

    /// Waits for the outcome of a put whose number is in `put_waiters`.
    async fn put_outcome(&self, seq: u64) -> Result<(), RemoteError> {
        loop {
            let changed = self.shared.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let mut st = self.shared.lock();
                if let Some(code) = st.put_refused.remove(&seq) {
                    st.put_waiters.remove(&seq);
                    return Err(RemoteError::Refused(code));
                }
                if st.puts_done >= seq {
                    st.put_waiters.remove(&seq);
                    return Ok(());
                }
                if let Some(reason) = st.broken {
                    st.put_waiters.remove(&seq);
                    return Err(RemoteError::Disconnected(reason));
                }
            }
            changed.await;
        }
    }

    /// Sends an ack, touch or release; returns its number.
    async fn send_settle(
        &self,
        make: impl FnOnce() -> Request,
        watch: bool,
        auto: bool,
    ) -> Result<u64, RemoteError> {
        self.send_with(|st| {
            st.settles_sent += 1;
            let seq = st.settles_sent;
            if watch {
                st.settle_waiters.insert(seq);
            }
            if auto {
                st.auto_acks.push_back(seq);
            }
            (make(), seq)
        })
        .await
    }

    async fn settle_outcome(&self, seq: u64) -> Result<(), RemoteError> {
        let _forget = Forget {
            shared: &self.shared,
            seq,
        };
        let waiting = async {
            loop {
                let changed = self.shared.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                {
                    let mut st = self.shared.lock();
                    if let Some(code) = st.settle_refused.remove(&seq) {
                        return Err(RemoteError::Refused(code));
                    }
                    if st.settles_done >= seq {
                        return Ok(());
                    }
                    if let Some(reason) = st.broken {
                        return Err(RemoteError::Disconnected(reason));
                    }
                }
                changed.await;
            }
        };
        tokio::time::timeout(self.options.request_timeout, waiting)
            .await
            .unwrap_or(Err(RemoteError::Timeout))
    }

    /// Sends a request with an id and waits for its reply (within the request timeout
    /// if `bounded`).
    async fn call(
        &self,
        make: impl FnOnce(u64) -> Request,
        bounded: bool,
    ) -> Result<Reply, RemoteError> {
        let (tx, rx) = oneshot::channel();
        let req = self
            .send_with(|st| {
                st.next_req += 1;
                let req = st.next_req;
                st.pending.insert(req, tx);
                (make(req), req)
            })
            .await?;
        let _forget = ForgetCall {
            shared: &self.shared,
            req,
        };
        let answer = async {
            rx.await.map_err(|_| {
                Self::gone(&self.shared.lock())
                    .unwrap_or(RemoteError::Disconnected(Disconnect::Closed))
            })
        };
        if bounded {
            tokio::time::timeout(self.options.request_timeout, answer)
                .await
                .unwrap_or(Err(RemoteError::Timeout))
        } else {
            answer.await
        }
    }

    /// Keeps the server's credit for this consumer near the prefetch window.
    async fn top_up(&self) -> Result<(), RemoteError> {
        let prefetch = self.options.prefetch as u64;
        let need = |st: &State| {
            let have = st.credit_out + st.buffer.len() as u64;
            (have <= prefetch / 2).then(|| prefetch - have)
        };
        if need(&self.shared.lock()).is_none() {
            return Ok(());
        }
        let mut st = self.shared.lock();
        if let Some(n) = need(&st) {
            // If the connection is gone the get reports the end.
            if self.requests.send(Request::Credit { n: n as u32 }).is_ok() {
                st.credit_out += n;
            }
        }
        Ok(())
    }

    /// Waits until every put and settle sent so far is resolved (or the connection is
    /// gone), then takes what failed.
    async fn settle_all(&self, deadline: Option<Instant>) -> Result<Failures, RemoteError> {
        let (puts, settles) = {
            let st = self.shared.lock();
            (st.puts_sent, st.settles_sent)
        };
        let waiting = async {
            loop {
                let changed = self.shared.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                {
                    let st = self.shared.lock();
                    if (st.puts_done >= puts && st.settles_done >= settles) || st.broken.is_some() {
                        return;
                    }
                }
                changed.await;
            }
        };
        match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, waiting)
                .await
                .map_err(|_| RemoteError::Timeout)?,
            None => waiting.await,
        }
        let mut st = self.shared.lock();
        let mut failures = Failures {
            refused: std::mem::take(&mut st.fed_refused),
            in_doubt: Vec::new(),
            acks_failed: std::mem::take(&mut st.acks_failed),
            broken: st.broken,
            cause: None,
        };
        if st.broken.is_some() {
            // Nothing more will be resolved: every fed put left is in doubt, unless the
            // server refused it already.
            let left: Vec<Unconfirmed> = st.unconfirmed.drain(..).collect();
            st.unconfirmed_bytes = 0;
            for u in left {
                match (u.fed, u.refused) {
                    (Some(item), Some(code)) => failures.refused.push((item, code)),
                    (Some(item), None) => failures.in_doubt.push(item),
                    (None, _) => {}
                }
            }
        }
        Ok(failures)
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What a flush found.
#[derive(Default)]
pub(crate) struct Failures {
    pub(crate) refused: Vec<(Bytes, Refusal)>,
    pub(crate) in_doubt: Vec<Bytes>,
    pub(crate) acks_failed: u64,
    pub(crate) broken: Option<Disconnect>,
    /// The cause to report before any other (a JetStream error behind a refusal).
    pub(crate) cause: Option<RemoteError>,
}

impl Failures {
    #[cfg(feature = "nats")]
    pub(crate) fn merge(&mut self, more: Failures) {
        self.refused.extend(more.refused);
        self.in_doubt.extend(more.in_doubt);
        self.acks_failed += more.acks_failed;
        self.broken = self.broken.or(more.broken);
        if self.cause.is_none() {
            self.cause = more.cause;
        }
    }

    pub(crate) fn into_result<T: DeserializeOwned>(self) -> Result<(), FlushError<T>> {
        if self.refused.is_empty() && self.in_doubt.is_empty() && self.acks_failed == 0 {
            return Ok(());
        }
        let error = match (self.cause, self.refused.first(), self.broken) {
            (Some(cause), _, _) => cause,
            (None, Some((_, code)), _) => RemoteError::Refused(*code),
            (None, None, Some(reason)) => RemoteError::Disconnected(reason),
            // Over JetStream: no answer within the request timeout.
            (None, None, None) if !self.in_doubt.is_empty() => RemoteError::Timeout,
            (None, None, None) => RemoteError::Refused(Refusal::LeaseExpired),
        };
        let decode = |bytes: &Bytes| match postcard::from_bytes::<T>(bytes) {
            Ok(item) => Some(item),
            Err(e) => {
                super::report(&format!(
                    "an item handed back by flush does not decode ({e}); {} bytes dropped",
                    bytes.len()
                ));
                None
            }
        };
        Err(FlushError {
            error,
            refused: self
                .refused
                .iter()
                .filter_map(|(bytes, code)| decode(bytes).map(|item| (item, *code)))
                .collect(),
            in_doubt: self.in_doubt.iter().filter_map(decode).collect(),
            acks_failed: self.acks_failed,
        })
    }
}

/// Forgets a settle's outcome when its waiter goes.
struct Forget<'a> {
    shared: &'a Shared,
    seq: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        st.settle_waiters.remove(&self.seq);
        st.settle_refused.remove(&self.seq);
    }
}

/// Forgets a call's reply slot when its waiter goes.
struct ForgetCall<'a> {
    shared: &'a Shared,
    req: u64,
}

impl Drop for ForgetCall<'_> {
    fn drop(&mut self) {
        self.shared.lock().pending.remove(&self.req);
    }
}

/// Withdraws a put whose caller stopped waiting before it was resolved.
struct Withdraw<'a> {
    client: &'a Client,
    seq: u64,
    armed: bool,
}

impl Drop for Withdraw<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut st = self.client.shared.lock();
        st.put_waiters.remove(&self.seq);
        st.put_refused.remove(&self.seq);
        if st.puts_done < self.seq && st.broken.is_none() {
            // If the connection ends first the put's fate is reported as in doubt.
            let _ = self
                .client
                .requests
                .send(Request::Withdraw { seq: self.seq });
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let st = self.shared.lock();
        if st.closed_here || st.broken.is_some() {
            return;
        }
        let puts = st.puts_sent - st.puts_done;
        let acks = st.auto_acks.len();
        if puts > 0 || acks > 0 {
            super::report(&format!(
                "remote queue {:?} dropped with {puts} puts and {acks} acks not yet \
                 confirmed by the server; they are still being sent, but only \
                 `close().await` says whether they arrived",
                self.name
            ));
        }
    }
}

/// A queue on a [`Server`](super::Server), used from this process with the local queue's
/// methods. Clone it freely: clones share one connection, and any number of tasks may
/// put and get through them at once (each item goes to exactly one get).
///
/// * **Puts** are confirmed: [`put`](Self::put) resolves once the server holds the item
///   (for a bounded queue, once there is room). [`feed`](Self::feed) sends without
///   waiting for the confirmation (at most a window of puts unconfirmed);
///   [`flush`](Self::flush) and [`close`](Self::close) wait for it and hand back every
///   fed item the server did not take.
/// * **Gets** are pushed by the server against credit (the prefetch window). Each item
///   stays the server's until acknowledged, for at most its lease:
///   [`get_unacked`](Self::get_unacked) gives a [`Delivery`] whose
///   [`ack`](Delivery::ack) resolves when the server has the ack; [`get`](Self::get)
///   acknowledges without waiting (flush and close say if an ack failed). An item whose
///   consumer disconnects, is killed, drops its delivery, or lets the lease run out goes
///   back to the front of the queue.
/// * **Liveness**: the client pings the server while connected, so a consumer waiting on
///   an empty queue or working on a long job is never cut for silence; a dead server or
///   network shows as [`RemoteError::Disconnected`] within the server's idle timeout.
///
/// A broken connection is an error value from every call, never a hang; use
/// [`reconnect`](Self::reconnect) to continue.
///
/// **On NATS JetStream** (feature `nats`): an address `nats://host:4222` (or several,
/// comma-separated) opens the same queue API on a durable, replicated JetStream stream
/// declared by `jetstream::declare`. The module `remote::jetstream` documents the
/// mapping and what differs: packs of fed items, leases counted by the client, no
/// disconnects (the client reconnects by itself), redelivered items after newer ones.
pub struct RemoteQueue<T> {
    backend: Backend,
    _item: PhantomData<fn(T) -> T>,
}

/// Where a queue lives.
#[derive(Clone)]
enum Backend {
    /// procq's own server.
    Server(Arc<Client>),
    /// A NATS JetStream stream.
    #[cfg(feature = "nats")]
    JetStream(Arc<super::jetstream::queue::Queue>),
}

/// The JetStream side of a method, or the procq server's client. Without the `nats`
/// feature every queue is on procq's server.
#[cfg(feature = "nats")]
macro_rules! backend {
    ($self:expr, $js:ident => $on_js:expr) => {
        match &$self.backend {
            Backend::Server(client) => client,
            Backend::JetStream($js) => $on_js,
        }
    };
}

#[cfg(not(feature = "nats"))]
macro_rules! backend {
    ($self:expr, $js:ident => $on_js:expr) => {{
        let Backend::Server(client) = &$self.backend;
        client
    }};
}

impl<T> Clone for RemoteQueue<T> {
    fn clone(&self) -> Self {
        RemoteQueue {
            backend: self.backend.clone(),
            _item: PhantomData,
        }
    }
}

impl<T> fmt::Debug for RemoteQueue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let client = backend!(self, js => return js.fmt(f));
        let st = client.shared.lock();
        f.debug_struct("RemoteQueue")
            .field("addr", &client.addr)
            .field("queue", &client.name)
            .field("maxsize", &client.maxsize)
            .field("unconfirmed_puts", &(st.puts_sent - st.puts_done))
            .field("buffered", &st.buffer.len())
            .field("broken", &st.broken)
            .field("closed", &st.closed_here)
            .finish_non_exhaustive()
    }
}

impl<T: Serialize + DeserializeOwned> RemoteQueue<T> {
    /// Connects to the server at `addr` (`host:port`, or `unix:/path/to/socket`) with the
    /// shared `key`, over a plain connection with the default options, and opens the
    /// queue `name`. See [`ClientOptions`] for TLS and the rest.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future closes the half-made connection; nothing is left behind.
    pub async fn connect(
        addr: &str,
        name: &str,
        key: impl AsRef<[u8]>,
    ) -> Result<Self, RemoteError> {
        ClientOptions::new(key).connect(addr, name).await
    }

    /// The queue's name.
    pub fn name(&self) -> &str {
        let client = backend!(self, js => return &js.inner.name);
        &client.name
    }

    /// The queue's bound, as declared on the server (over JetStream: the stream's max
    /// messages); `None` for an unbounded queue.
    pub fn maxsize(&self) -> Option<u64> {
        let client =
            backend!(self, js => return (js.inner.maxsize > 0).then_some(js.inner.maxsize));
        (client.maxsize > 0).then_some(client.maxsize)
    }

    /// The lease the server gives this connection's deliveries (over JetStream: the
    /// consumer's ack wait).
    pub fn lease(&self) -> Duration {
        let client = backend!(self, js => return js.inner.lease);
        client.lease
    }

    /// Encodes an item into the connection's encoding buffer: items share its
    /// allocations, and the copies kept until the server confirms them cost no more.
    fn encode(&self, item: T) -> Result<(Bytes, T), PutError<T>> {
        use bytes::BufMut;
        let (arena, max_item) = match &self.backend {
            Backend::Server(client) => (&client.arena, client.max_item),
            #[cfg(feature = "nats")]
            Backend::JetStream(js) => (&js.arena, js.inner.max_item),
        };
        let bytes = {
            let mut arena = arena.lock().unwrap_or_else(|e| e.into_inner());
            if arena.capacity() - arena.len() < 1024 {
                arena.reserve(64 * 1024);
            }
            match postcard::to_io(&item, (&mut *arena).writer()) {
                Ok(_) => arena.split().freeze(),
                Err(e) => {
                    arena.clear();
                    return Err(PutError::new(RemoteError::Encode(e), item));
                }
            }
        };
        if bytes.len() as u64 > max_item {
            let error = RemoteError::TooLarge {
                size: bytes.len() as u64,
                max: max_item,
            };
            return Err(PutError::new(error, item));
        }
        Ok((bytes, item))
    }

    /// Puts an item and waits until the server holds it; for a bounded queue that is
    /// once there is room. On failure the item comes back in the error; the server does
    /// not hold it unless [`RemoteError::put_in_doubt`] says it may.
    ///
    /// Fails with [`Refusal::ShuttingDown`] once the server is shutting down, and
    /// [`RemoteError::TooLarge`] (nothing sent) for an item above the server's limit.
    ///
    /// Over JetStream: resolves once JetStream's publish ack says the stream
    /// holds the item (one message); a full bounded queue is waited on by publishing again
    /// (pauses of up to 100 ms), a lost ack or an election by publishing again with the same
    /// message id, for at most the request timeout, then [`RemoteError::Timeout`] (in
    /// doubt).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future withdraws the put if the server has not admitted it yet; if
    /// it had, the item stays queued, as after a put that completed.
    ///
    /// Over JetStream, a publish already sent cannot be withdrawn: dropping
    /// the future may leave the item stored.
    pub async fn put(&self, item: T) -> Result<(), PutError<T>> {
        let (bytes, item) = self.encode(item)?;
        let client = backend!(self, js => {
            return js.put(bytes, true, None).await.map_err(|e| PutError::new(e, item));
        });
        let seq = match client.send_put(bytes, true, false).await {
            Ok(seq) => seq,
            Err(e) => return Err(PutError::new(e, item)),
        };
        let mut withdraw = Withdraw {
            client,
            seq,
            armed: true,
        };
        let outcome = client.put_outcome(seq).await;
        withdraw.armed = false;
        outcome.map_err(|e| PutError::new(e, item))
    }

    /// [`put`](Self::put), waiting at most `timeout` (for the window, the connection and
    /// room in the queue). On timeout the put is withdrawn and the server says whether it
    /// got in first: [`RemoteError::Timeout`] means it did not (unless no answer came
    /// within the request timeout either, then the put is in doubt).
    ///
    /// Over JetStream, nothing is withdrawn: [`RemoteError::Timeout`] means
    /// the item may be stored if a publish went out (it is in doubt, see
    /// [`RemoteError::put_in_doubt`]).
    ///
    /// # Cancel safety
    ///
    /// As [`put`](Self::put).
    pub async fn put_timeout(&self, item: T, timeout: Duration) -> Result<(), PutError<T>> {
        let deadline = Instant::now() + timeout;
        let (bytes, item) = self.encode(item)?;
        let client = backend!(self, js => {
            return js
                .put(bytes, true, Some(deadline))
                .await
                .map_err(|e| PutError::new(e, item));
        });
        let seq = match tokio::time::timeout_at(deadline, client.send_put(bytes, true, false)).await
        {
            Ok(Ok(seq)) => seq,
            Ok(Err(e)) => return Err(PutError::new(e, item)),
            Err(_) => return Err(PutError::new(RemoteError::Timeout, item)),
        };
        let mut withdraw = Withdraw {
            client,
            seq,
            armed: true,
        };
        let outcome = match tokio::time::timeout_at(deadline, client.put_outcome(seq)).await {
            Ok(outcome) => outcome,
            Err(_) => {
                let sent = client.send_with(|_| (Request::Withdraw { seq }, ())).await;
                match sent {
                    Err(e) => Err(e),
                    Ok(()) => match tokio::time::timeout(
                        client.options.request_timeout,
                        client.put_outcome(seq),
                    )
                    .await
                    {
                        Ok(Err(RemoteError::Refused(Refusal::Withdrawn))) => {
                            Err(RemoteError::Timeout)
                        }
                        Ok(outcome) => outcome,
                        Err(_) => Err(RemoteError::Timeout),
                    },
                }
            }
        };
        withdraw.armed = matches!(outcome, Err(RemoteError::Timeout)) && {
            let st = client.shared.lock();
            st.puts_done < seq && !st.put_refused.contains_key(&seq)
        };
        outcome.map_err(|e| PutError::new(e, item))
    }

    /// Puts an item only if the queue has room now: [`Refusal::Full`] otherwise (and also
    /// when earlier puts of this connection still wait for room). One round trip to the
    /// server, bounded by the request timeout.
    ///
    /// Over JetStream, [`Refusal::Full`] is JetStream's refusal of the publish
    /// (the stream is at its max messages or max bytes); a publish that gets no answer
    /// within the request timeout is [`RemoteError::Timeout`] (in doubt).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future leaves the put to the server: it is held if there was room.
    pub async fn try_put(&self, item: T) -> Result<(), PutError<T>> {
        let (bytes, item) = self.encode(item)?;
        let client = backend!(self, js => {
            let deadline = Instant::now() + js.inner.options.request_timeout;
            return js
                .put(bytes, false, Some(deadline))
                .await
                .map_err(|e| PutError::new(e, item));
        });
        let seq = match client.send_put(bytes, false, false).await {
            Ok(seq) => seq,
            Err(e) => return Err(PutError::new(e, item)),
        };
        let mut withdraw = Withdraw {
            client,
            seq,
            armed: true,
        };
        let outcome = tokio::time::timeout(client.options.request_timeout, client.put_outcome(seq))
            .await
            .unwrap_or(Err(RemoteError::Timeout));
        withdraw.armed = false;
        outcome.map_err(|e| PutError::new(e, item))
    }

    /// Sends an item without waiting for the server to hold it; waits only while the put
    /// window ([`ClientOptions::put_window`]) is full. [`flush`](Self::flush) and
    /// [`close`](Self::close) then say what the server did not take, and hand those items
    /// back.
    ///
    /// Over JetStream, fed items sent back to back share one message (a pack,
    /// up to [`ClientOptions::pack`]); the handle's task sends what is fed whenever the
    /// feeding task yields, never holding an item back for more.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future before it resolves sends nothing.
    pub async fn feed(&self, item: T) -> Result<(), PutError<T>> {
        let (bytes, item) = self.encode(item)?;
        let client = backend!(self, js => {
            return js.feed(bytes).await.map_err(|e| PutError::new(e, item));
        });
        match client.send_put(bytes, true, true).await {
            Ok(_) => Ok(()),
            Err(e) => Err(PutError::new(e, item)),
        }
    }

    /// Waits until every put fed and every ack sent so far is resolved. Returns the fed
    /// items the server refused and, if the connection ended, those whose fate is
    /// unknown, plus how many acks of [`get`](Self::get) failed; each is reported once.
    ///
    /// Over JetStream, a fed item is in doubt when no publish of its pack got an
    /// answer within the request timeout; acks of `get` are written to the connection (as
    /// far as it allows within the request timeout), and those not sent because the lease
    /// had run out are counted as failed.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: nothing is taken before the wait is over.
    pub async fn flush(&self) -> Result<(), FlushError<T>> {
        self.flush_until(None).await
    }

    /// [`flush`](Self::flush), waiting at most `timeout`; on timeout the error is
    /// [`RemoteError::Timeout`] with no items (a later flush reports them).
    ///
    /// # Cancel safety
    ///
    /// As [`flush`](Self::flush).
    pub async fn flush_timeout(&self, timeout: Duration) -> Result<(), FlushError<T>> {
        self.flush_until(Some(Instant::now() + timeout)).await
    }

    async fn flush_until(&self, deadline: Option<Instant>) -> Result<(), FlushError<T>> {
        let settled = match &self.backend {
            Backend::Server(client) => client.settle_all(deadline).await,
            #[cfg(feature = "nats")]
            Backend::JetStream(js) => js.settle_all(deadline).await,
        };
        match settled {
            Ok(failures) => failures.into_result(),
            Err(error) => Err(FlushError {
                error,
                refused: Vec::new(),
                in_doubt: Vec::new(),
                acks_failed: 0,
            }),
        }
    }

    /// Closes the connection for every clone of this handle, after waiting (at most the
    /// request timeout) for every put and ack to be resolved; says what failed, as
    /// [`flush`](Self::flush) does. Items pushed to this client and not taken go back to
    /// the queue. Later calls fail with [`Disconnect::ClosedHere`].
    ///
    /// Over JetStream, items pulled to this handle and not taken are given back at
    /// once (a negative ack), except those that share a pack with a delivery still held:
    /// their pack goes back when that delivery is settled or its lease runs out. Pulling
    /// stops and the NATS connection is drained; deliveries
    /// still held fail with [`Disconnect::ClosedHere`] and come back after their lease.
    /// What is still unresolved at the deadline is handed back (in doubt if a publish may
    /// have been stored, refused otherwise).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future may leave the connection closing; what it has not reported is
    /// reported by no one (call `close` to completion to know).
    pub async fn close(&self) -> Result<(), FlushError<T>> {
        let client = backend!(self, js => {
            let deadline = Instant::now() + js.inner.options.request_timeout;
            return match js.close(deadline).await {
                Ok(failures) => failures.into_result(),
                Err(error) => Err(FlushError {
                    error,
                    refused: Vec::new(),
                    in_doubt: Vec::new(),
                    acks_failed: 0,
                }),
            };
        });
        let _one = client.closing.acquire().await;
        let deadline = Instant::now() + client.options.request_timeout;
        let settled = client.settle_all(Some(deadline)).await;
        {
            let mut st = client.shared.lock();
            st.closed_here = true;
            // Pushed here and not taken: they go back to the queue when the connection
            // ends, so no later call may hand them out as well.
            st.buffer.clear();
        }
        client.shared.arrived.notify_waiters();
        client.stop.cancel();
        // The server answers what is left, then closes; wait for that.
        let ended = async {
            loop {
                let changed = client.shared.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if client.shared.lock().broken.is_some() {
                    return;
                }
                changed.await;
            }
        };
        let _ = tokio::time::timeout_at(deadline, ended).await;
        let mut failures: Failures = settled.unwrap_or_default();
        {
            // Whatever is still unresolved is now final.
            let mut st = client.shared.lock();
            failures.refused.append(&mut st.fed_refused);
            failures.acks_failed += std::mem::take(&mut st.acks_failed) + st.auto_acks.len() as u64;
            st.auto_acks.clear();
            let puts_done = st.puts_done;
            for u in st.unconfirmed.drain(..) {
                match (u.fed, u.refused) {
                    (Some(item), Some(code)) => failures.refused.push((item, code)),
                    (Some(item), None) if u.seq > puts_done => failures.in_doubt.push(item),
                    _ => {}
                }
            }
            st.unconfirmed_bytes = 0;
            failures.broken = Some(st.broken.unwrap_or(Disconnect::ClosedHere));
        }
        failures.into_result()
    }

    fn take(
        &self,
        client: &Arc<Client>,
        id: u64,
        bytes: Bytes,
    ) -> Result<(T, Delivery), RemoteError> {
        match postcard::from_bytes(&bytes) {
            Ok(item) => Ok((
                item,
                Delivery(Lease::Server(ServerDelivery {
                    client: client.clone(),
                    id,
                    settled: false,
                })),
            )),
            Err(error) => {
                // Undecodable for every consumer of this type: take it off the queue and
                // hand its bytes to the caller.
                let mut st = client.shared.lock();
                if client.requests.send(Request::Ack { delivery: id }).is_ok() {
                    st.settles_sent += 1;
                }
                Err(RemoteError::Decode { error, item: bytes })
            }
        }
    }

    #[cfg(feature = "nats")]
    fn take_js(
        bytes: Bytes,
        delivery: super::jetstream::queue::Delivery,
    ) -> Result<(T, Delivery), RemoteError> {
        match postcard::from_bytes(&bytes) {
            Ok(item) => Ok((item, Delivery(Lease::JetStream(delivery)))),
            Err(error) => {
                // Undecodable for every consumer of this type: take it off the stream.
                delivery.ack_nowait_sync();
                Err(RemoteError::Decode { error, item: bytes })
            }
        }
    }

    /// Gets an item without acknowledging it: the server keeps it until
    /// [`Delivery::ack`], and gives it to another consumer if this connection ends, the
    /// delivery is dropped, or its lease runs out first. Items already pushed to this
    /// client are handed out even after the connection ended (their acks then fail).
    ///
    /// Over JetStream, nothing disconnects: a lost server or an election is
    /// waited through (the client reconnects by itself); bound the wait with
    /// [`get_unacked_timeout`](Self::get_unacked_timeout). Items whose lease ran out while
    /// they waited in this handle are skipped (JetStream delivers them again).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: an item is taken only when the future completes.
    pub async fn get_unacked(&self) -> Result<(T, Delivery), RemoteError> {
        let client = backend!(self, js => {
            let (bytes, delivery) = js.get_unacked().await?;
            return Self::take_js(bytes, delivery);
        });
        client.top_up().await?;
        // Fast path: an item is already here.
        let first = client.shared.lock().buffer.pop_front();
        if let Some((id, bytes)) = first {
            return self.take(client, id, bytes);
        }
        loop {
            client.top_up().await?;
            let arrived = client.shared.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            {
                let mut st = client.shared.lock();
                if let Some((id, bytes)) = st.buffer.pop_front() {
                    drop(st);
                    return self.take(client, id, bytes);
                }
                if let Some(e) = Client::gone(&st) {
                    return Err(e);
                }
            }
            arrived.await;
        }
    }

    /// [`get_unacked`](Self::get_unacked), giving up with [`RemoteError::Timeout`] after
    /// `timeout`. A timeout loses nothing.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn get_unacked_timeout(
        &self,
        timeout: Duration,
    ) -> Result<(T, Delivery), RemoteError> {
        tokio::time::timeout(timeout, self.get_unacked())
            .await
            .unwrap_or(Err(RemoteError::Timeout))
    }

    /// Gets an item and acknowledges it without waiting for the server to confirm the
    /// ack ([`flush`](Self::flush) and [`close`](Self::close) count acks that failed: their
    /// items were, or will be, delivered again). Use [`get_unacked`](Self::get_unacked)
    /// and [`Delivery::ack`] to know each ack arrived. Items already pushed to this client
    /// are handed out even after the connection ended, as by `get_unacked`: their acks
    /// cannot be sent, and are counted as failed. After [`close`](Self::close) nothing is
    /// handed out. Over JetStream, an ack handed to the NATS connection and then lost with
    /// a server that died is not seen (the message is delivered again all the same); only
    /// acks that could not be handed over are counted.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: an item is taken only when the future completes.
    pub async fn get(&self) -> Result<T, RemoteError> {
        let (item, delivery) = self.get_unacked().await?;
        delivery.ack_nowait().await?;
        Ok(item)
    }

    /// [`get`](Self::get), giving up with [`RemoteError::Timeout`] after `timeout`. A
    /// timeout loses nothing: an item that arrives later waits for the next get.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn get_timeout(&self, timeout: Duration) -> Result<T, RemoteError> {
        let (item, delivery) = self.get_unacked_timeout(timeout).await?;
        delivery.ack_nowait().await?;
        Ok(item)
    }

    /// Gets an item only if one has already been pushed to this client, acknowledging it
    /// as [`get`](Self::get) does; otherwise [`RemoteError::Empty`] (and the server is
    /// asked for items for next time).
    pub fn try_get(&self) -> Result<T, RemoteError> {
        let client = backend!(self, js => {
            let (bytes, delivery) = js.try_get()?;
            let (item, delivery) = Self::take_js(bytes, delivery)?;
            if let Delivery(Lease::JetStream(delivery)) = delivery {
                delivery.ack_nowait_sync();
            }
            return Ok(item);
        });
        let mut st = client.shared.lock();
        let Some((id, bytes)) = st.buffer.pop_front() else {
            if let Some(e) = Client::gone(&st) {
                return Err(e);
            }
            let prefetch = client.options.prefetch as u64;
            if st.credit_out <= prefetch / 2 {
                let n = prefetch - st.credit_out;
                if client
                    .requests
                    .send(Request::Credit { n: n as u32 })
                    .is_ok()
                {
                    st.credit_out += n;
                }
            }
            return Err(RemoteError::Empty);
        };
        let item = match postcard::from_bytes(&bytes) {
            Ok(item) => item,
            Err(error) => {
                drop(st);
                return Err(self
                    .take(client, id, bytes)
                    .err()
                    .unwrap_or(RemoteError::Decode {
                        error,
                        item: Bytes::new(),
                    }));
            }
        };
        // Ack in order with the other settles; if the connection is gone the item goes
        // back to the queue with it, and flush counts the ack as failed.
        st.settles_sent += 1;
        let seq = st.settles_sent;
        if client.requests.send(Request::Ack { delivery: id }).is_ok() {
            st.auto_acks.push_back(seq);
        } else {
            st.settles_sent -= 1;
            st.acks_failed += 1;
        }
        Ok(item)
    }

    /// Items waiting in the server's queue (not counting those delivered and not yet
    /// acknowledged). It counts every put of this connection sent before it.
    ///
    /// Over JetStream, the messages JetStream stores and never delivered (the
    /// durable consumer's `num_pending`): a pack of fed items counts as one, and messages
    /// waiting to be delivered again (a lease ran out) are not counted. One request,
    /// bounded by the request timeout.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe; bounded by the request timeout.
    pub async fn len(&self) -> Result<u64, RemoteError> {
        let client = backend!(self, js => return js.len().await);
        match client.call(|req| Request::Len { req }, true).await? {
            Reply::Value { value, .. } => Ok(value),
            _ => Err(unexpected()),
        }
    }

    /// `len() == 0`.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe; bounded by the request timeout.
    pub async fn is_empty(&self) -> Result<bool, RemoteError> {
        Ok(self.len().await? == 0)
    }

    /// Marks one task done. Every put counts as a task of the queue; a connection may
    /// mark done only as many tasks as it acknowledged items ([`Refusal::TaskDoneMisuse`]
    /// otherwise).
    ///
    /// Over JetStream, an item's task is done when its message is acknowledged;
    /// `task_done` only checks, on this handle, that it is not called more often than
    /// items were acknowledged.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future may or may not leave the task marked done; bounded by the
    /// request timeout.
    pub async fn task_done(&self) -> Result<(), RemoteError> {
        let client = backend!(self, js => return js.task_done());
        match client.call(|req| Request::TaskDone { req }, true).await? {
            Reply::Done { .. } => Ok(()),
            Reply::Error { code, .. } => Err(RemoteError::Refused(code)),
            _ => Err(unexpected()),
        }
    }

    /// Waits until every task put by anyone is marked done. Waits without bound; see
    /// [`join_timeout`](Self::join_timeout).
    ///
    /// Over JetStream, waits until the stream holds no message (acknowledged work
    /// is removed), after this handle's fed items are resolved; it asks JetStream, with
    /// pauses growing to 100 ms.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future withdraws the join on the server.
    pub async fn join(&self) -> Result<(), RemoteError> {
        self.join_until(None).await
    }

    /// [`join`](Self::join), giving up with [`RemoteError::Timeout`] after `timeout` (and
    /// withdrawing the join on the server).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn join_timeout(&self, timeout: Duration) -> Result<(), RemoteError> {
        self.join_until(Some(Instant::now() + timeout)).await
    }

    async fn join_until(&self, deadline: Option<Instant>) -> Result<(), RemoteError> {
        let client = backend!(self, js => return js.join(deadline).await);
        let (tx, rx) = oneshot::channel();
        let req = client
            .send_with(|st| {
                st.next_req += 1;
                let req = st.next_req;
                st.pending.insert(req, tx);
                (Request::Join { req }, req)
            })
            .await?;
        let mut cancel = CancelJoin {
            client,
            req,
            armed: true,
        };
        let answer = async {
            rx.await.map_err(|_| {
                Client::gone(&client.shared.lock())
                    .unwrap_or(RemoteError::Disconnected(Disconnect::Closed))
            })
        };
        let reply = match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, answer)
                .await
                .unwrap_or(Err(RemoteError::Timeout)),
            None => answer.await,
        };
        if reply.is_ok() {
            cancel.armed = false;
        }
        match reply? {
            Reply::Done { .. } => Ok(()),
            Reply::Error { code, .. } => Err(RemoteError::Refused(code)),
            _ => Err(unexpected()),
        }
    }

    /// The server's statistics (every queue, connections, memory).
    ///
    /// Over JetStream: [`Refusal::NotAllowed`] (JetStream has its own
    /// monitoring; see `jetstream::info`).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe; bounded by the request timeout.
    pub async fn stats(&self) -> Result<ServerStats, RemoteError> {
        let client = backend!(self, _js => return Err(RemoteError::Refused(Refusal::NotAllowed)));
        match client.call(|req| Request::Stat { req }, true).await? {
            Reply::Stats { stats, .. } => Ok(stats),
            _ => Err(unexpected()),
        }
    }

    /// Connects again, to the same server and queue with the same options: what to do
    /// after a [`RemoteError::Disconnected`]. Items this connection had got and not
    /// acknowledged have gone back to the queue.
    ///
    /// # Cancel safety
    ///
    /// As [`connect`](Self::connect).
    pub async fn reconnect(&self) -> Result<Self, RemoteError> {
        let client = backend!(self, js => {
            return js.inner.options.connect(&js.inner.addr, &js.inner.name).await;
        });
        client.options.connect(&client.addr, &client.name).await
    }
}

/// Withdraws a join whose caller stopped waiting.
struct CancelJoin<'a> {
    client: &'a Client,
    req: u64,
    armed: bool,
}

impl Drop for CancelJoin<'_> {
    fn drop(&mut self) {
        self.client.shared.lock().pending.remove(&self.req);
        if self.armed {
            let _ = self
                .client
                .requests
                .send(Request::CancelJoin { req: self.req });
        }
    }
}

/// An item got with [`RemoteQueue::get_unacked`]: the server keeps it for this consumer
/// until [`ack`](Self::ack), for at most its lease (extended by
/// [`keep_alive`](Self::keep_alive)). Dropped without an ack, it goes back to the front
/// of the queue at once (over JetStream: to the back, once the other items of its pack
/// are settled; see `remote::jetstream`, feature `nats`).
#[must_use = "a delivery dropped without an ack goes back to the queue"]
pub struct Delivery(Lease);

/// A delivery, by backend.
enum Lease {
    Server(ServerDelivery),
    #[cfg(feature = "nats")]
    JetStream(super::jetstream::queue::Delivery),
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Lease::Server(d) => d.fmt(f),
            #[cfg(feature = "nats")]
            Lease::JetStream(d) => d.fmt(f),
        }
    }
}

impl Delivery {
    /// The delivery's number on its connection (over JetStream: on its handle).
    pub fn id(&self) -> u64 {
        match &self.0 {
            Lease::Server(d) => d.id(),
            #[cfg(feature = "nats")]
            Lease::JetStream(d) => d.id(),
        }
    }

    /// Tells the server this item is done with, and waits (at most the request timeout)
    /// until the server confirms. Fails with [`Refusal::LeaseExpired`] if the lease ran
    /// out first (the item went back to the queue and may be worked on again), and with
    /// [`RemoteError::Disconnected`] if the connection ended (it went back too).
    ///
    /// Over JetStream, an item that shares its message with others (a pack of fed items)
    /// is recorded and `ack` resolves at once; the ack of the pack's last unsettled item
    /// acknowledges the message and waits for JetStream's confirmation
    /// ([`RemoteError::Timeout`] if none comes within the request timeout: the message may
    /// or may not be acknowledged). A lease that ran out is found by the client's own
    /// clock (see `remote::jetstream`, feature `nats`); then nothing is sent.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future before the ack is sent gives the item back as dropping the
    /// delivery does; after, the item may or may not be acknowledged.
    pub async fn ack(self) -> Result<(), RemoteError> {
        match self.0 {
            Lease::Server(d) => d.ack().await,
            #[cfg(feature = "nats")]
            Lease::JetStream(d) => d.ack().await,
        }
    }

    /// Sends the ack without waiting for the server's confirmation. On procq's server, an
    /// ack that cannot be sent (the connection ended) is counted for `flush` and `close`
    /// and is no error here: the item is the caller's, as `try_get` hands it out.
    async fn ack_nowait(self) -> Result<(), RemoteError> {
        match self.0 {
            Lease::Server(d) => {
                let client = d.client.clone();
                if d.ack_nowait().await.is_err() {
                    client.shared.lock().acks_failed += 1;
                }
                Ok(())
            }
            #[cfg(feature = "nats")]
            Lease::JetStream(d) => {
                d.ack_nowait_sync();
                Ok(())
            }
        }
    }

    /// Extends the lease by a full lease from now, for a job that runs long; waits (at
    /// most the request timeout) for the server to confirm. Fails with
    /// [`Refusal::LeaseExpired`] if the lease had already run out. Over JetStream it
    /// extends the lease of the item's whole pack.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future may or may not leave the lease extended.
    pub async fn keep_alive(&self) -> Result<(), RemoteError> {
        match &self.0 {
            Lease::Server(d) => d.keep_alive().await,
            #[cfg(feature = "nats")]
            Lease::JetStream(d) => d.keep_alive().await,
        }
    }
}

struct ServerDelivery {
    client: Arc<Client>,
    id: u64,
    settled: bool,
}

impl fmt::Debug for ServerDelivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery").field("id", &self.id).finish()
    }
}

impl ServerDelivery {
    /// The delivery's number on its connection.
    fn id(&self) -> u64 {
        self.id
    }

    /// Tells the server this item is done with, and waits (at most the request timeout)
    /// until the server confirms. Fails with [`Refusal::LeaseExpired`] if the lease ran
    /// out first (the item went back to the queue and may be worked on again), and with
    /// [`RemoteError::Disconnected`] if the connection ended (it went back too).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future before the ack is sent gives the item back as dropping the
    /// delivery does; after, the item may or may not be acknowledged.
    async fn ack(mut self) -> Result<(), RemoteError> {
        let id = self.id;
        let seq = self
            .client
            .send_settle(|| Request::Ack { delivery: id }, true, false)
            .await;
        self.settled = true;
        self.client.settle_outcome(seq?).await
    }

    /// Sends the ack without waiting for the server's confirmation.
    async fn ack_nowait(mut self) -> Result<(), RemoteError> {
        let id = self.id;
        let sent = self
            .client
            .send_settle(|| Request::Ack { delivery: id }, false, true)
            .await;
        self.settled = true;
        sent.map(drop)
    }

    /// Extends the lease by a full lease from now, for a job that runs long; waits (at
    /// most the request timeout) for the server to confirm. Fails with
    /// [`Refusal::LeaseExpired`] if the lease had already run out.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future may or may not leave the lease extended.
    async fn keep_alive(&self) -> Result<(), RemoteError> {
        let id = self.id;
        let seq = self
            .client
            .send_settle(|| Request::Touch { delivery: id }, true, false)
            .await?;
        self.client.settle_outcome(seq).await
    }
}

impl Drop for ServerDelivery {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let mut st = self.client.shared.lock();
        if st.broken.is_some() {
            return;
        }
        // In order with the other settles; if the connection is gone, the item goes back
        // to the queue with it.
        if self
            .client
            .requests
            .send(Request::Release { delivery: self.id })
            .is_ok()
        {
            st.settles_sent += 1;
        }
    }
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<RemoteQueue<String>>();
    is::<Delivery>();
}
