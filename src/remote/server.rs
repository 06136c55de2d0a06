//! The queue server: named queues of opaque items, served to authenticated clients.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, Notify, Semaphore};

use super::auth;
use super::frame::{self, Decoder};
use super::protocol::{self, QueueStats, Reply, Request};

/// Limits and policy of a [`Server`].
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub(crate) key: Vec<u8>,
    pub(crate) create_on_use: bool,
    pub(crate) max_frame: usize,
    pub(crate) max_connections: usize,
    pub(crate) connection_memory: usize,
    pub(crate) handshake_timeout: Duration,
    pub(crate) idle_timeout: Duration,
}

impl ServerConfig {
    /// A configuration with the shared `key` and the defaults: queues must be declared,
    /// frames up to 16 MiB, 1,024 connections, 64 MiB of buffered data per connection, 5 s
    /// to authenticate, 10 minutes of silence before a connection is closed.
    pub fn new(key: impl Into<Vec<u8>>) -> Self {
        ServerConfig {
            key: key.into(),
            create_on_use: false,
            max_frame: 16 * 1024 * 1024,
            max_connections: 1024,
            connection_memory: 64 * 1024 * 1024,
            handshake_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(600),
        }
    }

    /// Create an unbounded queue the first time a client opens an unknown name.
    pub fn create_on_use(mut self, yes: bool) -> Self {
        self.create_on_use = yes;
        self
    }

    /// The largest frame (one item plus a few bytes) a client may send.
    pub fn max_frame(mut self, bytes: usize) -> Self {
        self.max_frame = bytes.max(64);
        self
    }

    /// How many connections may be open at once; more wait to be accepted.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n.max(1);
        self
    }

    /// Bytes a connection may have buffered in the server (puts waiting for room in a
    /// bounded queue) before the server stops reading from it.
    pub fn connection_memory(mut self, bytes: usize) -> Self {
        self.connection_memory = bytes;
        self
    }

    /// How long a client has to authenticate.
    pub fn handshake_timeout(mut self, d: Duration) -> Self {
        self.handshake_timeout = d;
        self
    }

    /// How long a connection may stay silent before it is closed.
    pub fn idle_timeout(mut self, d: Duration) -> Self {
        self.idle_timeout = d;
        self
    }
}

/// A queue server, embeddable in any tokio program. Clone it freely: clones are handles
/// to the same server.
#[derive(Clone)]
pub struct Server {
    inner: Arc<Inner>,
}

struct Inner {
    config: ServerConfig,
    queues: Mutex<HashMap<String, Arc<ServedQueue>>>,
    connections: Arc<Semaphore>,
    shutdown: Notify,
    shutting_down: std::sync::atomic::AtomicBool,
}

/// One named queue.
struct ServedQueue {
    name: String,
    maxsize: usize,
    state: Mutex<QueueState>,
    /// Items were added (or returned): consumers with credit look again.
    items_added: Notify,
    /// Room was made: puts waiting for a bounded queue look again.
    room_made: Notify,
    /// The last unfinished task was done.
    all_done: Notify,
    puts: AtomicU64,
    acks: AtomicU64,
    redeliveries: AtomicU64,
    in_flight: AtomicU64,
    consumers: AtomicU64,
}

struct QueueState {
    items: VecDeque<Bytes>,
    unfinished: u64,
}

impl ServedQueue {
    fn new(name: &str, maxsize: usize) -> Self {
        ServedQueue {
            name: name.to_string(),
            maxsize,
            state: Mutex::new(QueueState {
                items: VecDeque::new(),
                unfinished: 0,
            }),
            items_added: Notify::new(),
            room_made: Notify::new(),
            all_done: Notify::new(),
            puts: AtomicU64::new(0),
            acks: AtomicU64::new(0),
            redeliveries: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            consumers: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits as many of `waiting` as fit; returns how many, and their bytes.
    fn admit(&self, waiting: &mut VecDeque<Bytes>) -> (usize, usize) {
        let mut st = self.lock();
        let (mut n, mut bytes) = (0, 0);
        while !waiting.is_empty() {
            if self.maxsize > 0 && st.items.len() >= self.maxsize {
                break;
            }
            let item = waiting.pop_front().expect("not empty");
            bytes += item.len();
            st.items.push_back(item);
            st.unfinished += 1;
            n += 1;
        }
        drop(st);
        if n > 0 {
            self.puts.fetch_add(n as u64, Ordering::Relaxed);
            self.items_added.notify_waiters();
        }
        (n, bytes)
    }

    fn pop(&self) -> Option<Bytes> {
        let item = self.lock().items.pop_front();
        if item.is_some() && self.maxsize > 0 {
            self.room_made.notify_waiters();
        }
        item
    }

    /// Puts unacknowledged deliveries back at the front, in their original order.
    fn requeue(&self, items: impl DoubleEndedIterator<Item = Bytes>) {
        let mut st = self.lock();
        let mut n = 0u64;
        for item in items.rev() {
            st.items.push_front(item);
            n += 1;
        }
        drop(st);
        if n > 0 {
            self.redeliveries.fetch_add(n, Ordering::Relaxed);
            self.in_flight.fetch_sub(n, Ordering::Relaxed);
            self.items_added.notify_waiters();
        }
    }

    fn stats(&self) -> QueueStats {
        QueueStats {
            name: self.name.clone(),
            len: self.lock().items.len() as u64,
            in_flight: self.in_flight.load(Ordering::Relaxed),
            consumers: self.consumers.load(Ordering::Relaxed),
            puts: self.puts.load(Ordering::Relaxed),
            acks: self.acks.load(Ordering::Relaxed),
            redeliveries: self.redeliveries.load(Ordering::Relaxed),
        }
    }
}

impl Server {
    /// A server with no queues yet; see [`declare`](Self::declare).
    pub fn new(config: ServerConfig) -> Self {
        let connections = Arc::new(Semaphore::new(config.max_connections));
        Server {
            inner: Arc::new(Inner {
                config,
                queues: Mutex::new(HashMap::new()),
                connections,
                shutdown: Notify::new(),
                shutting_down: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// Declares a queue holding at most `maxsize` items (0: unbounded). Declaring an
    /// existing name changes nothing.
    pub fn declare(&self, name: &str, maxsize: usize) {
        let mut queues = self.inner.queues.lock().unwrap_or_else(|e| e.into_inner());
        queues
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(ServedQueue::new(name, maxsize)));
    }

    /// Every queue's statistics, sorted by name.
    pub fn stats(&self) -> Vec<QueueStats> {
        self.inner.stats()
    }

    /// Serves connections accepted from a TCP listener until [`shutdown`](Self::shutdown).
    pub async fn serve_tcp(&self, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        let listener = &listener;
        self.accept_loop(move || async move {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            Ok(stream)
        })
        .await
    }

    /// Serves connections accepted from a Unix-socket listener until
    /// [`shutdown`](Self::shutdown).
    pub async fn serve_unix(&self, listener: tokio::net::UnixListener) -> std::io::Result<()> {
        let listener = &listener;
        self.accept_loop(move || async move { Ok(listener.accept().await?.0) })
            .await
    }

    /// Accepts connections (at most `max_connections` open at once) and serves each on
    /// its own task, until shutdown.
    async fn accept_loop<S, F, Fut>(&self, mut accept: F) -> std::io::Result<()>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = std::io::Result<S>>,
    {
        loop {
            let shutdown = self.inner.shutdown.notified();
            tokio::pin!(shutdown);
            shutdown.as_mut().enable();
            if self.inner.shutting_down.load(Ordering::SeqCst) {
                return Ok(());
            }
            let permit = tokio::select! {
                permit = self.inner.connections.clone().acquire_owned() => permit.expect("never closed"),
                _ = &mut shutdown => return Ok(()),
            };
            let stream = tokio::select! {
                accepted = accept() => accepted,
                _ = &mut shutdown => return Ok(()),
            };
            let stream = match stream {
                Ok(stream) => stream,
                Err(e) => {
                    // A failed accept (a client gone already, descriptors exhausted) must
                    // not end the server; pause briefly so exhaustion does not spin.
                    tracing::warn!(error = %e, "procq server: accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let inner = self.inner.clone();
            tokio::spawn(async move {
                inner.connection(stream).await;
                drop(permit);
            });
        }
    }

    /// Waits until every connection has closed (after [`shutdown`](Self::shutdown)).
    pub async fn closed(&self) {
        let all = self.inner.config.max_connections as u32;
        let _ = self.inner.connections.acquire_many(all).await;
    }

    /// Stops accepting connections. Connected clients have their in-flight puts read and
    /// acknowledged, then their connections close.
    pub fn shutdown(&self) {
        self.inner.shutting_down.store(true, Ordering::SeqCst);
        self.inner.shutdown.notify_waiters();
    }
}

impl Inner {
    fn stats(&self) -> Vec<QueueStats> {
        let queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        let mut stats: Vec<QueueStats> = queues.values().map(|q| q.stats()).collect();
        stats.sort_by(|a, b| a.name.cmp(&b.name));
        stats
    }

    fn queue(&self, name: &str) -> Option<Arc<ServedQueue>> {
        let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(q) = queues.get(name) {
            return Some(q.clone());
        }
        if !self.config.create_on_use {
            return None;
        }
        let q = Arc::new(ServedQueue::new(name, 0));
        queues.insert(name.to_string(), q.clone());
        Some(q)
    }

    /// One client, from handshake to close. Never panics on what the client sends: any
    /// protocol violation closes this connection only.
    async fn connection<S>(self: &Arc<Self>, mut stream: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let handshake = auth::server(&mut stream, &self.config.key);
        match tokio::time::timeout(self.config.handshake_timeout, handshake).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "procq server: handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!("procq server: handshake timed out");
                return;
            }
        }
        let (reader, writer) = tokio::io::split(stream);
        let (replies, outgoing) = mpsc::channel::<Reply>(1024);
        let writing = tokio::spawn(write_replies(writer, outgoing));
        let mut conn = Connection::new(self.clone(), replies);
        if let Err(reason) = conn.run(reader).await {
            tracing::debug!(reason, "procq server: connection closed");
        }
        conn.finish();
        drop(conn);
        let _ = writing.await;
    }
}

/// Writes replies as they come, coalescing whatever is queued into one write.
async fn write_replies<W: AsyncWrite + Unpin>(mut writer: W, mut outgoing: mpsc::Receiver<Reply>) {
    let mut buf = BytesMut::new();
    while let Some(reply) = outgoing.recv().await {
        frame::encode(protocol::MESSAGE, &protocol::encode(&reply), &mut buf);
        while buf.len() < 256 * 1024 {
            match outgoing.try_recv() {
                Ok(reply) => frame::encode(protocol::MESSAGE, &protocol::encode(&reply), &mut buf),
                Err(_) => break,
            }
        }
        if writer.write_all(&buf).await.is_err() {
            return;
        }
        buf.clear();
    }
    let _ = writer.shutdown().await;
}

/// A client connection's state in the server.
struct Connection {
    server: Arc<Inner>,
    replies: mpsc::Sender<Reply>,
    queue: Option<Arc<ServedQueue>>,
    /// Deliveries the client may still receive.
    credits: u64,
    /// Delivered and not yet acknowledged, by delivery number.
    unacked: BTreeMap<u64, Bytes>,
    next_delivery: u64,
    /// Puts read and held (admitted to the queue).
    puts_held: u64,
    puts_acked: u64,
    /// Puts read but waiting for room in a bounded queue.
    waiting: VecDeque<Bytes>,
    waiting_bytes: usize,
    /// This connection has granted credit, so it counts in the queue's consumers.
    counted_consumer: bool,
}

impl Connection {
    fn new(server: Arc<Inner>, replies: mpsc::Sender<Reply>) -> Self {
        Connection {
            server,
            replies,
            queue: None,
            credits: 0,
            unacked: BTreeMap::new(),
            next_delivery: 1,
            puts_held: 0,
            puts_acked: 0,
            waiting: VecDeque::new(),
            waiting_bytes: 0,
            counted_consumer: false,
        }
    }

    async fn run<R: AsyncRead + Unpin>(&mut self, mut reader: R) -> Result<(), &'static str> {
        let decoder = Decoder::new(self.server.config.max_frame);
        let mut buf = BytesMut::with_capacity(64 * 1024);
        loop {
            self.deliver().await?;
            self.admit_waiting();
            self.ack_puts().await?;
            let queue = self.queue.clone();
            let unopened = Notify::new(); // nothing to wait for before a queue is open
            let items_added = queue
                .as_ref()
                .map_or(&unopened, |q| &q.items_added)
                .notified();
            let room_made = queue
                .as_ref()
                .map_or(&unopened, |q| &q.room_made)
                .notified();
            tokio::pin!(items_added, room_made);
            items_added.as_mut().enable();
            room_made.as_mut().enable();
            // Look again after registering, so no wake-up is missed.
            if self.can_deliver() || self.can_admit() {
                continue;
            }
            let reading = self.waiting_bytes < self.server.config.connection_memory;
            let server = self.server.clone();
            let shutdown = server.shutdown.notified();
            tokio::pin!(shutdown);
            shutdown.as_mut().enable();
            let closing = self.server.shutting_down.load(Ordering::SeqCst);
            // Shutting down: keep reading what the client already sent until it has been
            // quiet briefly, so its in-flight puts are held and acknowledged; then close.
            let idle = if closing {
                Duration::from_millis(200)
            } else {
                self.server.config.idle_timeout
            };
            tokio::select! {
                read = tokio::time::timeout(idle, reader.read_buf(&mut buf)), if reading => {
                    match read {
                        Err(_) if closing => {
                            self.admit_waiting();
                            self.ack_puts().await?;
                            return Ok(());
                        }
                        Err(_) => return Err("idle timeout"),
                        Ok(Err(_)) => return Err("read failed"),
                        Ok(Ok(0)) => return Ok(()),
                        Ok(Ok(_)) => {}
                    }
                    while let Some(frame) = decoder.decode(&mut buf).map_err(|_| "bad frame")? {
                        if frame.kind != protocol::MESSAGE {
                            return Err("unknown frame kind");
                        }
                        let request: Request =
                            protocol::decode(&frame.body).ok_or("undecodable request")?;
                        self.handle(request).await?;
                    }
                }
                _ = &mut items_added, if self.credits > 0 => {}
                _ = &mut room_made, if !self.waiting.is_empty() => {}
                _ = &mut shutdown, if !closing => {}
            }
        }
    }

    fn can_deliver(&self) -> bool {
        self.credits > 0
            && self
                .queue
                .as_ref()
                .is_some_and(|q| !q.lock().items.is_empty())
    }

    fn can_admit(&self) -> bool {
        !self.waiting.is_empty()
            && self
                .queue
                .as_ref()
                .is_some_and(|q| q.maxsize == 0 || q.lock().items.len() < q.maxsize)
    }

    async fn send(&self, reply: Reply) -> Result<(), &'static str> {
        self.replies.send(reply).await.map_err(|_| "writer gone")
    }

    async fn handle(&mut self, request: Request) -> Result<(), &'static str> {
        if self.queue.is_none() && !matches!(request, Request::Open { .. } | Request::Stat { .. }) {
            return Err("request before open");
        }
        match request {
            Request::Open { queue } => {
                if self.queue.is_some() {
                    return Err("open twice");
                }
                match self.server.queue(&queue) {
                    Some(q) => {
                        let maxsize = q.maxsize as u64;
                        self.queue = Some(q);
                        self.send(Reply::Opened { maxsize }).await?;
                    }
                    None => {
                        let message = format!("no queue named {queue:?}");
                        self.send(Reply::Error { req: 0, message }).await?;
                        return Err("unknown queue");
                    }
                }
            }
            Request::Put { item } => {
                self.waiting_bytes += item.len();
                self.waiting.push_back(item);
            }
            Request::Credit { n } => {
                self.credits = self.credits.saturating_add(n as u64);
                if !self.counted_consumer {
                    self.counted_consumer = true;
                    if let Some(q) = &self.queue {
                        q.consumers.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Request::Ack { delivery } => {
                if self.unacked.remove(&delivery).is_some() {
                    if let Some(q) = &self.queue {
                        q.acks.fetch_add(1, Ordering::Relaxed);
                        q.in_flight.fetch_sub(1, Ordering::Relaxed);
                    }
                }
            }
            Request::Len { req } => {
                let value = self
                    .queue
                    .as_ref()
                    .map_or(0, |q| q.lock().items.len() as u64);
                self.send(Reply::Value { req, value }).await?;
            }
            Request::TaskDone { req } => {
                let q = self.queue.as_ref().expect("checked above");
                let left = {
                    let mut st = q.lock();
                    if st.unfinished == 0 {
                        None
                    } else {
                        st.unfinished -= 1;
                        Some(st.unfinished)
                    }
                };
                match left {
                    None => {
                        let message = "task_done() called more times than items were put".into();
                        self.send(Reply::Error { req, message }).await?;
                    }
                    Some(left) => {
                        if left == 0 {
                            q.all_done.notify_waiters();
                        }
                        self.send(Reply::Done { req }).await?;
                    }
                }
            }
            Request::Join { req } => {
                let q = self.queue.clone().expect("checked above");
                let replies = self.replies.clone();
                tokio::spawn(async move {
                    loop {
                        let done = q.all_done.notified();
                        tokio::pin!(done);
                        done.as_mut().enable();
                        if q.lock().unfinished == 0 {
                            break;
                        }
                        done.await;
                    }
                    let _ = replies.send(Reply::Done { req }).await;
                });
            }
            Request::Stat { req } => {
                let queues = self.server.stats();
                self.send(Reply::Stats { req, queues }).await?;
            }
        }
        Ok(())
    }

    /// Pushes items while there is credit.
    async fn deliver(&mut self) -> Result<(), &'static str> {
        let Some(q) = self.queue.clone() else {
            return Ok(());
        };
        while self.credits > 0 {
            let Some(item) = q.pop() else { break };
            self.credits -= 1;
            let delivery = self.next_delivery;
            self.next_delivery += 1;
            self.unacked.insert(delivery, item.clone());
            q.in_flight.fetch_add(1, Ordering::Relaxed);
            self.send(Reply::Deliver { delivery, item }).await?;
        }
        Ok(())
    }

    fn admit_waiting(&mut self) {
        let Some(q) = self.queue.clone() else { return };
        let (n, bytes) = q.admit(&mut self.waiting);
        self.waiting_bytes -= bytes;
        self.puts_held += n as u64;
    }

    /// Acknowledges every put held since the last acknowledgement, in one message.
    async fn ack_puts(&mut self) -> Result<(), &'static str> {
        if self.puts_held > self.puts_acked {
            self.puts_acked = self.puts_held;
            self.send(Reply::PutAck {
                count: self.puts_held,
            })
            .await?;
        }
        Ok(())
    }

    /// The connection ended: unacknowledged deliveries go back to the queue.
    fn finish(&mut self) {
        if let Some(q) = &self.queue {
            let unacked = std::mem::take(&mut self.unacked);
            q.requeue(unacked.into_values().collect::<Vec<_>>().into_iter());
            if self.counted_consumer {
                q.consumers.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}
