//! The typed client of a remote queue.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};

use super::auth;
use super::error::RemoteError;
use super::frame::{self, Decoder};
use super::protocol::{self, QueueStats, Reply, Request};

/// How many items a consumer lets the server push ahead of its `get`s.
const DEFAULT_PREFETCH: u32 = 256;
/// How many puts may be unacknowledged before `feed` waits.
const DEFAULT_WINDOW: u64 = 4096;
/// The largest frame a client accepts from the server.
const MAX_FRAME: usize = 64 * 1024 * 1024;

/// A queue on a [`Server`](super::server::Server), used from this process with the local
/// queue's methods.
///
/// Puts are pipelined: [`feed`](Self::feed) returns once the item is on its way (at most
/// a window of unacknowledged puts), [`flush`](Self::flush) waits until the server holds
/// every item fed, and [`put`](Self::put) does both for one item. Gets are pushed by the
/// server against credit (a prefetch window), and each item stays the server's until it
/// is acknowledged: [`get`](Self::get) acknowledges on return; [`get_unacked`](Self::get_unacked)
/// leaves that to the caller, so a consumer that dies mid-task gives its task back.
///
/// A broken connection is an error value from every call, never a hang; connect again to
/// continue.
pub struct RemoteQueue<T> {
    client: Arc<Client>,
    _item: PhantomData<fn(T) -> T>,
}

struct Client {
    requests: mpsc::Sender<Request>,
    /// Serializes puts so their numbering matches the order the server sees.
    put_order: tokio::sync::Mutex<u64>,
    acked: watch::Receiver<u64>,
    /// Set once the connection is gone, with the reason.
    broken: watch::Receiver<Option<String>>,
    deliveries: tokio::sync::Mutex<mpsc::UnboundedReceiver<(u64, Bytes)>>,
    /// Credit granted and not yet used by a delivery.
    credit: AtomicU64,
    prefetch: u32,
    pending: Arc<Mutex<HashMap<u64, oneshot::Sender<Reply>>>>,
    next_req: AtomicU64,
    maxsize: u64,
    /// Address, queue name and key, for `reconnect`.
    target: (String, String, Vec<u8>),
}

/// An item got with [`RemoteQueue::get_unacked`]: the server keeps it (and gives it to
/// another consumer if this connection ends) until [`ack`](Self::ack) is called.
#[must_use = "an unacknowledged delivery goes back to the queue when the connection ends"]
pub struct Delivery {
    client: Arc<Client>,
    id: u64,
}

impl Delivery {
    /// Tells the server this item is done with.
    pub async fn ack(self) -> Result<(), RemoteError> {
        self.client
            .request(Request::Ack { delivery: self.id })
            .await
    }
}

impl<T: Serialize + DeserializeOwned> RemoteQueue<T> {
    /// Connects to the server at `addr` (`host:port`, or `unix:/path/to/socket`),
    /// authenticates with `key` and opens the queue `name`. Fails with
    /// [`RemoteError::Auth`] on a key mismatch and [`RemoteError::Server`] for an unknown
    /// queue; gives up after 10 seconds.
    pub async fn connect(addr: &str, name: &str, key: &[u8]) -> Result<Self, RemoteError> {
        let connecting = async {
            if let Some(path) = addr.strip_prefix("unix:") {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Self::over(stream, addr, name, key).await
            } else {
                let stream = tokio::net::TcpStream::connect(addr).await?;
                let _ = stream.set_nodelay(true);
                Self::over(stream, addr, name, key).await
            }
        };
        match tokio::time::timeout(Duration::from_secs(10), connecting).await {
            Ok(result) => result,
            Err(_) => Err(RemoteError::Timeout),
        }
    }

    async fn over<S>(mut stream: S, addr: &str, name: &str, key: &[u8]) -> Result<Self, RemoteError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        auth::client(&mut stream, key).await?;
        let (mut reader, writer) = tokio::io::split(stream);
        let (requests, outgoing) = mpsc::channel(4096);
        tokio::spawn(write_requests(writer, outgoing));
        let decoder = Decoder::new(MAX_FRAME);
        let mut buf = BytesMut::with_capacity(64 * 1024);
        requests
            .send(Request::Open {
                queue: name.to_string(),
            })
            .await
            .map_err(|_| RemoteError::Disconnected("writer stopped".into()))?;
        let maxsize = loop {
            if let Some(frame) = decoder
                .decode(&mut buf)
                .map_err(|e| RemoteError::Protocol(e.to_string()))?
            {
                match protocol::decode::<Reply>(&frame.body) {
                    Some(Reply::Opened { maxsize }) => break maxsize,
                    Some(Reply::Error { message, .. }) => return Err(RemoteError::Server(message)),
                    _ => return Err(RemoteError::Protocol("expected the queue to open".into())),
                }
            }
            if reader.read_buf(&mut buf).await? == 0 {
                return Err(RemoteError::Disconnected(
                    "server closed the connection".into(),
                ));
            }
        };
        let (acked_tx, acked) = watch::channel(0);
        let (broken_tx, broken) = watch::channel(None);
        let (deliveries_tx, deliveries) = mpsc::unbounded_channel();
        let pending: Arc<Mutex<HashMap<u64, oneshot::Sender<Reply>>>> = Arc::default();
        let replies = pending.clone();
        tokio::spawn(async move {
            let reason = read_replies(
                reader,
                buf,
                decoder,
                acked_tx,
                deliveries_tx,
                replies.clone(),
            )
            .await;
            replies.lock().unwrap_or_else(|e| e.into_inner()).clear();
            let _ = broken_tx.send(Some(reason));
        });
        Ok(RemoteQueue {
            client: Arc::new(Client {
                requests,
                put_order: tokio::sync::Mutex::new(0),
                acked,
                broken,
                deliveries: tokio::sync::Mutex::new(deliveries),
                credit: AtomicU64::new(0),
                prefetch: DEFAULT_PREFETCH,
                pending,
                next_req: AtomicU64::new(1),
                maxsize,
                target: (addr.to_string(), name.to_string(), key.to_vec()),
            }),
            _item: PhantomData,
        })
    }

    /// The queue's bound (0: unbounded), as declared on the server.
    pub fn maxsize(&self) -> u64 {
        self.client.maxsize
    }

    /// Sends an item without waiting for the server to hold it; waits only while
    /// a window of 4,096 puts is unacknowledged. Returns the put's number, which
    /// [`flush`](Self::flush) and [`put`](Self::put) wait for.
    pub async fn feed(&self, item: &T) -> Result<u64, RemoteError> {
        let item = Bytes::from(postcard::to_stdvec(item).map_err(RemoteError::Encode)?);
        let mut sent = self.client.put_order.lock().await;
        let seq = *sent + 1;
        self.client
            .wait_acked(seq.saturating_sub(DEFAULT_WINDOW))
            .await?;
        self.client.request(Request::Put { item }).await?;
        *sent = seq;
        Ok(seq)
    }

    /// Sends an item only if that needs no waiting (the window of unacknowledged puts has
    /// room); otherwise [`RemoteError::Full`]. Like [`feed`](Self::feed), it does not wait
    /// for the server to hold the item.
    pub fn try_put(&self, item: &T) -> Result<u64, RemoteError> {
        let item = Bytes::from(postcard::to_stdvec(item).map_err(RemoteError::Encode)?);
        let Ok(mut sent) = self.client.put_order.try_lock() else {
            return Err(RemoteError::Full);
        };
        let seq = *sent + 1;
        if *self.client.acked.borrow() < seq.saturating_sub(DEFAULT_WINDOW) {
            return Err(RemoteError::Full);
        }
        if self.client.broken.borrow().is_some() {
            return Err(self.client.why_broken());
        }
        self.client
            .requests
            .try_send(Request::Put { item })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => RemoteError::Full,
                mpsc::error::TrySendError::Closed(_) => self.client.why_broken(),
            })?;
        *sent = seq;
        Ok(seq)
    }

    /// Puts an item and waits until the server holds it (for a bounded queue, until there
    /// is room). Cancel-safe in that a cancelled put may or may not have been held; use
    /// [`put_timeout`](Self::put_timeout) for a bound.
    pub async fn put(&self, item: &T) -> Result<(), RemoteError> {
        let seq = self.feed(item).await?;
        self.client.wait_acked(seq).await
    }

    /// [`put`](Self::put), giving up with [`RemoteError::Timeout`] after `timeout` (the
    /// item may still be held later).
    pub async fn put_timeout(&self, item: &T, timeout: Duration) -> Result<(), RemoteError> {
        tokio::time::timeout(timeout, self.put(item))
            .await
            .unwrap_or(Err(RemoteError::Timeout))
    }

    /// Waits until the server holds every item fed so far.
    pub async fn flush(&self) -> Result<(), RemoteError> {
        let sent = *self.client.put_order.lock().await;
        self.client.wait_acked(sent).await
    }

    /// Gets an item and acknowledges it.
    pub async fn get(&self) -> Result<T, RemoteError> {
        let (item, delivery) = self.get_unacked().await?;
        delivery.ack().await?;
        Ok(item)
    }

    /// [`get`](Self::get), giving up with [`RemoteError::Timeout`] after `timeout`. A
    /// timeout loses nothing: an item that arrives later waits for the next get.
    pub async fn get_timeout(&self, timeout: Duration) -> Result<T, RemoteError> {
        tokio::time::timeout(timeout, self.get())
            .await
            .unwrap_or(Err(RemoteError::Timeout))
    }

    /// Gets an item without acknowledging it: the server keeps it until
    /// [`Delivery::ack`], and hands it to another consumer if this connection ends first.
    /// Cancel-safe.
    pub async fn get_unacked(&self) -> Result<(T, Delivery), RemoteError> {
        self.client.top_up_credit().await?;
        let mut deliveries = self.client.deliveries.lock().await;
        let (id, bytes) = tokio::select! {
            d = deliveries.recv() => d.ok_or_else(|| self.client.why_broken())?,
            _ = self.client.broken() => return Err(self.client.why_broken()),
        };
        self.client.credit.fetch_sub(1, Ordering::SeqCst);
        let item = postcard::from_bytes(&bytes).map_err(RemoteError::Decode)?;
        Ok((
            item,
            Delivery {
                client: self.client.clone(),
                id,
            },
        ))
    }

    /// Gets an item only if one has already been pushed to this client; otherwise
    /// [`RemoteError::Empty`]. (Items are pushed ahead of `get`s, so after the first get
    /// this sees what the prefetch window brought.)
    pub fn try_get(&self) -> Result<T, RemoteError> {
        let Ok(mut deliveries) = self.client.deliveries.try_lock() else {
            return Err(RemoteError::Empty); // another task is getting
        };
        let (id, bytes) = match deliveries.try_recv() {
            Ok(d) => d,
            Err(mpsc::error::TryRecvError::Empty) => {
                drop(deliveries);
                // Ask for items for the next time.
                if self.client.credit.load(Ordering::SeqCst) == 0 {
                    let n = self.client.prefetch;
                    if self.client.requests.try_send(Request::Credit { n }).is_ok() {
                        self.client.credit.fetch_add(n as u64, Ordering::SeqCst);
                    }
                }
                return Err(RemoteError::Empty);
            }
            Err(_) => return Err(self.client.why_broken()),
        };
        self.client.credit.fetch_sub(1, Ordering::SeqCst);
        let item = postcard::from_bytes(&bytes).map_err(RemoteError::Decode)?;
        self.client
            .requests
            .try_send(Request::Ack { delivery: id })
            .map_err(|_| self.client.why_broken())?;
        Ok(item)
    }

    /// Items waiting in the server's queue (not counting those delivered and not yet
    /// acknowledged).
    pub async fn len(&self) -> Result<u64, RemoteError> {
        match self.client.call(|req| Request::Len { req }).await? {
            Reply::Value { value, .. } => Ok(value),
            other => Err(unexpected(other)),
        }
    }

    /// `len() == 0`.
    pub async fn is_empty(&self) -> Result<bool, RemoteError> {
        Ok(self.len().await? == 0)
    }

    /// Connects again, to the same server and queue with the same key: what to do after a
    /// [`RemoteError::Disconnected`]. Items this connection had got and not acknowledged
    /// have gone back to the queue; puts it had not seen acknowledged may or may not be
    /// held.
    pub async fn reconnect(&self) -> Result<Self, RemoteError> {
        let (addr, name, key) = &self.client.target;
        Self::connect(addr, name, key).await
    }

    /// Marks one task done (the server counts every put as a task).
    pub async fn task_done(&self) -> Result<(), RemoteError> {
        match self.client.call(|req| Request::TaskDone { req }).await? {
            Reply::Done { .. } => Ok(()),
            Reply::Error { message, .. } => Err(RemoteError::Server(message)),
            other => Err(unexpected(other)),
        }
    }

    /// Waits until every task put by anyone is marked done.
    pub async fn join(&self) -> Result<(), RemoteError> {
        match self.client.call(|req| Request::Join { req }).await? {
            Reply::Done { .. } => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// [`join`](Self::join), giving up with [`RemoteError::Timeout`] after `timeout`.
    pub async fn join_timeout(&self, timeout: Duration) -> Result<(), RemoteError> {
        tokio::time::timeout(timeout, self.join())
            .await
            .unwrap_or(Err(RemoteError::Timeout))
    }

    /// Every queue's statistics on the server.
    pub async fn stats(&self) -> Result<Vec<QueueStats>, RemoteError> {
        match self.client.call(|req| Request::Stat { req }).await? {
            Reply::Stats { queues, .. } => Ok(queues),
            other => Err(unexpected(other)),
        }
    }
}

/// Every queue's statistics from the server at `addr` (`host:port` or `unix:/path`),
/// without opening a queue: what `procq stat` shows.
pub async fn server_stats(addr: &str, key: &[u8]) -> Result<Vec<QueueStats>, RemoteError> {
    let asking = async {
        if let Some(path) = addr.strip_prefix("unix:") {
            ask_stats(tokio::net::UnixStream::connect(path).await?, key).await
        } else {
            ask_stats(tokio::net::TcpStream::connect(addr).await?, key).await
        }
    };
    tokio::time::timeout(Duration::from_secs(10), asking)
        .await
        .unwrap_or(Err(RemoteError::Timeout))
}

async fn ask_stats<S>(mut stream: S, key: &[u8]) -> Result<Vec<QueueStats>, RemoteError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    auth::client(&mut stream, key).await?;
    let mut out = BytesMut::new();
    frame::encode(
        protocol::MESSAGE,
        &protocol::encode(&Request::Stat { req: 1 }),
        &mut out,
    );
    stream.write_all(&out).await?;
    let decoder = Decoder::new(MAX_FRAME);
    let mut buf = BytesMut::new();
    loop {
        if let Some(frame) = decoder
            .decode(&mut buf)
            .map_err(|e| RemoteError::Protocol(e.to_string()))?
        {
            return match protocol::decode::<Reply>(&frame.body) {
                Some(Reply::Stats { queues, .. }) => Ok(queues),
                Some(other) => Err(unexpected(other)),
                None => Err(RemoteError::Protocol("undecodable reply".into())),
            };
        }
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(RemoteError::Disconnected(
                "server closed the connection".into(),
            ));
        }
    }
}

fn unexpected(reply: Reply) -> RemoteError {
    RemoteError::Protocol(format!("unexpected reply {reply:?}"))
}

impl Client {
    async fn request(&self, request: Request) -> Result<(), RemoteError> {
        if self.broken.borrow().is_some() {
            return Err(self.why_broken());
        }
        self.requests
            .send(request)
            .await
            .map_err(|_| self.why_broken())
    }

    /// Sends a request with an id and waits for its reply.
    async fn call(&self, make: impl FnOnce(u64) -> Request) -> Result<Reply, RemoteError> {
        let req = self.next_req.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(req, tx);
        self.request(make(req)).await?;
        tokio::select! {
            reply = rx => reply.map_err(|_| self.why_broken()),
            _ = self.broken() => Err(self.why_broken()),
        }
    }

    async fn wait_acked(&self, seq: u64) -> Result<(), RemoteError> {
        let mut acked = self.acked.clone();
        tokio::select! {
            result = acked.wait_for(|&count| count >= seq) => result.map(drop).map_err(|_| self.why_broken()),
            _ = self.broken() => Err(self.why_broken()),
        }
    }

    /// Keeps the server's credit for this consumer at the prefetch window.
    async fn top_up_credit(&self) -> Result<(), RemoteError> {
        let have = self.credit.load(Ordering::SeqCst);
        let want = self.prefetch as u64;
        if have <= want / 2 {
            let n = (want - have) as u32;
            self.credit.fetch_add(n as u64, Ordering::SeqCst);
            self.request(Request::Credit { n }).await?;
        }
        Ok(())
    }

    async fn broken(&self) {
        let mut broken = self.broken.clone();
        let _ = broken.wait_for(|b| b.is_some()).await;
    }

    fn why_broken(&self) -> RemoteError {
        let reason = self
            .broken
            .borrow()
            .clone()
            .unwrap_or_else(|| "connection closed".into());
        RemoteError::Disconnected(reason)
    }
}

async fn write_requests<W: AsyncWrite + Unpin>(
    mut writer: W,
    mut outgoing: mpsc::Receiver<Request>,
) {
    let mut buf = BytesMut::new();
    while let Some(request) = outgoing.recv().await {
        frame::encode(protocol::MESSAGE, &protocol::encode(&request), &mut buf);
        while buf.len() < 256 * 1024 {
            match outgoing.try_recv() {
                Ok(request) => {
                    frame::encode(protocol::MESSAGE, &protocol::encode(&request), &mut buf)
                }
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

/// Dispatches the server's replies until the connection ends; returns why it ended.
async fn read_replies<R: AsyncRead + Unpin>(
    mut reader: R,
    mut buf: BytesMut,
    decoder: Decoder,
    acked: watch::Sender<u64>,
    deliveries: mpsc::UnboundedSender<(u64, Bytes)>,
    pending: Arc<Mutex<HashMap<u64, oneshot::Sender<Reply>>>>,
) -> String {
    loop {
        loop {
            let frame = match decoder.decode(&mut buf) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => return format!("bad frame from server: {e}"),
            };
            let Some(reply) = protocol::decode::<Reply>(&frame.body) else {
                return "undecodable reply from server".into();
            };
            match reply {
                Reply::PutAck { count } => {
                    acked.send_replace(count);
                }
                Reply::Deliver { delivery, item } => {
                    let _ = deliveries.send((delivery, item));
                }
                Reply::Error { req: 0, message } => return format!("server error: {message}"),
                Reply::Value { req, .. }
                | Reply::Done { req }
                | Reply::Stats { req, .. }
                | Reply::Error { req, .. } => {
                    if let Some(tx) = pending
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&req)
                    {
                        let _ = tx.send(reply);
                    }
                }
                Reply::Opened { .. } => return "unexpected reply".into(),
            }
        }
        match reader.read_buf(&mut buf).await {
            Ok(0) => return "server closed the connection".into(),
            Ok(_) => {}
            Err(e) => return format!("connection failed: {e}"),
        }
    }
}
