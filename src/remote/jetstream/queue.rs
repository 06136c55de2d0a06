//! One handle's connection to a JetStream queue, at the level of encoded items: the
//! feeding side (packs, publish acks, retries), the consuming side (pulls, leases, acks),
//! and the counts behind `len` and `join`. `RemoteQueue<T>` adds the types.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::context::{PublishAckFuture, PublishError};
use async_nats::jetstream::message::{Acker, PublishMessage};
use async_nats::jetstream::{self, AckKind, Context};
use async_nats::HeaderMap;
use bytes::{Bytes, BytesMut};
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::super::client::{ClientOptions, Failures};
use super::super::error::{Disconnect, RemoteError};
use super::super::protocol::Refusal;
use super::{errors, pack, CONSUMER};

/// How long one pull request waits on the server for messages.
const PULL_EXPIRES: Duration = Duration::from_millis(500);
/// How long a publish waits for its ack before it is sent again (same message id).
const PUBLISH_ACK_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause before publishing again after no server answered for the stream (an election).
const NO_LEADER_PAUSE: Duration = Duration::from_millis(100);
/// Bytes kept free in a message for headers (message id, item count).
const HEADER_ROOM: usize = 256;
/// How often the client pings the server; a server silent for a few pings is left for
/// another node of the cluster.
pub(crate) const PING_INTERVAL: Duration = Duration::from_secs(2);

/// A pack of fed items being published as one message (its items are in the state's
/// `unresolved`, so `close` can hand them back whatever the sender is doing).
struct SentPack {
    /// The number of its first item among this handle's fed items.
    first: u64,
    payload: Bytes,
    headers: HeaderMap,
    sent_at: Instant,
    /// Pause before the next attempt on a full queue.
    full_pause: Duration,
}

/// The items of a pack not yet resolved, and what its attempts so far mean.
struct Unresolved {
    items: Vec<Bytes>,
    bytes: usize,
    /// An attempt may have been stored (its ack was lost); later attempts carry the same
    /// message id, so the stream holds it at most once.
    maybe_stored: bool,
    /// The last attempt found the queue full.
    full: bool,
}

impl Unresolved {
    /// Hands the items to the failures: refused with `code` if no attempt may have been
    /// stored, in doubt otherwise.
    fn fail(self, st: &mut State, code: Refusal) {
        if self.maybe_stored {
            st.in_doubt.extend(self.items);
        } else {
            st.refused.extend(self.items.into_iter().map(|i| (i, code)));
        }
    }
}

/// The state every clone of a handle and its tasks share.
#[derive(Default)]
struct State {
    // ---- Feeding.
    /// Fed items not yet taken into a pack.
    pending: VecDeque<Bytes>,
    pending_bytes: usize,
    /// Items fed so far (numbers 1..=fed).
    fed: u64,
    /// Fed items and bytes not yet resolved (the put window).
    out_items: u64,
    out_bytes: usize,
    /// Packs sent and not yet resolved, by first item number.
    unresolved: BTreeMap<u64, Unresolved>,
    refused: Vec<(Bytes, Refusal)>,
    in_doubt: Vec<Bytes>,
    cause: Option<RemoteError>,
    // ---- Consuming.
    buffer: VecDeque<Entry>,
    pulling: bool,
    /// A get asked for an item since the last pull request.
    asked: bool,
    /// Gets waiting for an item now.
    waiting: usize,
    acks_failed: u64,
    acked: u64,
    tasks_done: u64,
    // ---- Both.
    closed: bool,
    stop: bool,
    sender_done: bool,
    puller_done: bool,
}

/// An item pushed to this handle and not yet taken.
struct Entry {
    bytes: Bytes,
    held: Arc<Held>,
    malformed: Option<postcard::Error>,
}

pub(crate) struct Inner {
    pub(crate) name: String,
    pub(crate) addr: String,
    subject: String,
    publisher: Context,
    client: async_nats::Client,
    stream: jetstream::stream::Stream,
    consumer: PullConsumer,
    /// What the server said it refuses this connection to publish.
    denials: Arc<super::Denials>,
    pub(crate) options: ClientOptions,
    pub(crate) maxsize: u64,
    pub(crate) max_item: u64,
    pub(crate) lease: Duration,
    margin: Duration,
    pack_items: usize,
    pack_bytes: usize,
    id: String,
    next_msg: AtomicU64,
    next_delivery: AtomicU64,
    state: Mutex<State>,
    /// Fed packs resolved, or the handle closed.
    changed: Notify,
    /// Items arrived (one waiter per item), or the handle closed (all).
    arrived: Notify,
    /// Work for the sender: items fed, or stop.
    work: Notify,
    /// Work for the puller: items taken, gets waiting, or stop.
    want: Notify,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn message_id(&self) -> String {
        format!(
            "{}-{}",
            self.id,
            self.next_msg.fetch_add(1, Ordering::Relaxed)
        )
    }

    fn deadline_from(&self, start: Instant) -> Instant {
        start + self.lease.saturating_sub(self.margin)
    }
}

/// The handle side: what `RemoteQueue<T>` holds. Dropping the last one stops the tasks
/// after they sent what was fed.
pub(crate) struct Queue {
    pub(crate) inner: Arc<Inner>,
    pub(crate) closing: tokio::sync::Semaphore,
    pub(crate) arena: Mutex<BytesMut>,
}

impl fmt::Debug for Queue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.inner.lock();
        f.debug_struct("JetStreamQueue")
            .field("stream", &self.inner.name)
            .field("unconfirmed_items", &st.out_items)
            .field("buffered", &st.buffer.len())
            .field("closed", &st.closed)
            .finish_non_exhaustive()
    }
}

pub(crate) type PutResult = Result<(), RemoteError>;

impl Queue {
    /// Connects to the NATS server(s) at `addr` and opens the queue `name`: its stream
    /// and durable consumer must exist ([`declare`](super::declare)).
    pub(crate) async fn connect(
        options: &ClientOptions,
        addr: &str,
        name: &str,
    ) -> Result<Queue, RemoteError> {
        super::check_name(name)?;
        let deadline = Instant::now() + options.connect_timeout;
        let denials = Arc::new(super::Denials::default());
        let client = super::nats_connect_watching(options, addr, deadline, denials.clone()).await?;
        let api = jetstream::ContextBuilder::new()
            .timeout(options.request_timeout.min(deadline - Instant::now()))
            .build(client.clone());
        let (stream, consumer) = loop {
            let found = async {
                let stream = api.get_stream(name).await.map_err(|e| errors::lookup(&e))?;
                let consumer: PullConsumer = stream
                    .get_consumer(CONSUMER)
                    .await
                    .map_err(|e| errors::lookup(&*e))?;
                Ok::<_, RemoteError>((stream, consumer))
            };
            match tokio::time::timeout_at(deadline, found).await {
                Ok(Ok(found)) => break found,
                Ok(Err(RemoteError::Timeout)) if Instant::now() < deadline => {
                    // No server answered for the stream: the cluster is electing.
                    tokio::time::sleep(NO_LEADER_PAUSE).await;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(RemoteError::Timeout),
            }
        };
        let info = stream.cached_info().config.clone();
        let consumer_info = consumer.cached_info().config.clone();
        let lease = consumer_info.ack_wait;
        if let Some(asked) = options.lease {
            if asked.as_millis() != lease.as_millis() {
                return Err(RemoteError::InvalidOptions(
                    "over JetStream the lease is the queue's ack wait, set by jetstream::declare",
                ));
            }
        }
        let maxsize = u64::try_from(info.max_messages).unwrap_or(0);
        let mut max_item =
            (client.server_info().max_payload as u64).saturating_sub(HEADER_ROOM as u64);
        if info.max_message_size > 0 {
            max_item =
                max_item.min((info.max_message_size as u64).saturating_sub(HEADER_ROOM as u64));
        }
        // A bounded stream counts messages: one item each, so the bound counts items.
        let (pack_items, pack_bytes) = if maxsize > 0 {
            (1, 0)
        } else {
            (
                options.pack_items.max(1),
                options.pack_bytes.min(max_item as usize),
            )
        };
        let publisher = jetstream::ContextBuilder::new()
            .timeout(PUBLISH_ACK_TIMEOUT.min(options.request_timeout))
            .max_ack_inflight(options.window.min(1 << 20) as usize + 4096)
            .backpressure_on_inflight(false)
            .build(client.clone());
        let mut id = [0u8; 8];
        rustix::rand::getrandom(&mut id, rustix::rand::GetRandomFlags::empty())
            .map_err(|e| RemoteError::Io(e.into()))?;
        let inner = Arc::new(Inner {
            name: name.to_string(),
            addr: addr.to_string(),
            subject: super::subject(name),
            publisher,
            client,
            stream,
            consumer,
            denials,
            options: options.clone(),
            maxsize,
            max_item,
            lease,
            margin: (lease / 10).min(Duration::from_secs(1)),
            pack_items,
            pack_bytes,
            id: id.iter().map(|b| format!("{b:02x}")).collect(),
            next_msg: AtomicU64::new(1),
            next_delivery: AtomicU64::new(1),
            state: Mutex::new(State::default()),
            changed: Notify::new(),
            arrived: Notify::new(),
            work: Notify::new(),
            want: Notify::new(),
        });
        tokio::spawn(sender(inner.clone()));
        Ok(Queue {
            inner,
            closing: tokio::sync::Semaphore::new(1),
            arena: Mutex::new(BytesMut::new()),
        })
    }

    fn gone(st: &State) -> Option<RemoteError> {
        st.closed
            .then_some(RemoteError::Disconnected(Disconnect::ClosedHere))
    }

    // ---------------------------------------------------------------- putting

    /// One confirmed put of one item: published (again, with the same message id, after a
    /// lost ack or an election) until the stream holds it, it is refused, or `deadline`
    /// passes (then [`RemoteError::Timeout`]). A full bounded queue is waited on while
    /// `wait` (until the deadline), refused with [`Refusal::Full`] otherwise. Without a
    /// deadline, a put waits for room without bound, and for the stream to answer for at
    /// most the request timeout.
    pub(crate) async fn put(
        &self,
        item: Bytes,
        wait: bool,
        deadline: Option<Instant>,
    ) -> PutResult {
        let inner = &self.inner;
        if let Some(e) = Self::gone(&inner.lock()) {
            return Err(e);
        }
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", inner.message_id().as_str());
        let started = Instant::now();
        let answer_by = started + inner.options.request_timeout;
        let mut full_pause = Duration::from_millis(2);
        let mut maybe_stored = false;
        loop {
            let publish = PublishMessage::build()
                .payload(item.clone())
                .headers(headers.clone());
            let attempt = async {
                inner
                    .publisher
                    .send_publish(inner.subject.clone(), publish)
                    .await?
                    .await
            };
            // A server that refuses the publish drops it and says so on the connection,
            // not in an answer: stop waiting for the answer then.
            let attempt = async {
                tokio::select! {
                    outcome = attempt => Some(outcome),
                    () = inner.denials.wait_publish_denied(&inner.subject, started) => None,
                }
            };
            let outcome = match deadline {
                Some(d) => match tokio::time::timeout_at(d, attempt).await {
                    Ok(outcome) => outcome,
                    Err(_) => return Err(RemoteError::Timeout),
                },
                None => attempt.await,
            };
            let Some(outcome) = outcome else {
                return Err(RemoteError::Refused(Refusal::NotAllowed));
            };
            let error = match outcome {
                Ok(_) => return Ok(()),
                Err(e) => e,
            };
            let pause = match errors::classify(&error) {
                errors::Publish::Full if !wait => {
                    return Err(if maybe_stored {
                        RemoteError::Timeout
                    } else {
                        RemoteError::Refused(Refusal::Full)
                    })
                }
                errors::Publish::Full => {
                    full_pause = (full_pause * 2).min(Duration::from_millis(100));
                    full_pause
                }
                errors::Publish::Retry { maybe_stored: m } => {
                    maybe_stored |= m;
                    if deadline.is_none() && Instant::now() >= answer_by {
                        return Err(RemoteError::Timeout);
                    }
                    if m {
                        Duration::ZERO
                    } else {
                        NO_LEADER_PAUSE
                    }
                }
                errors::Publish::TooLarge => {
                    return Err(RemoteError::TooLarge {
                        size: item.len() as u64,
                        max: inner.max_item,
                    })
                }
                errors::Publish::Fatal(e) => return Err(e),
            };
            if Self::gone(&inner.lock()).is_some() {
                return Err(RemoteError::Disconnected(Disconnect::ClosedHere));
            }
            let wake = Instant::now() + pause;
            match deadline {
                Some(d) if wake >= d => return Err(RemoteError::Timeout),
                _ => tokio::time::sleep_until(wake).await,
            }
        }
    }

    /// Adds a fed item to the pack being filled; waits while the put window is full.
    pub(crate) async fn feed(&self, item: Bytes) -> PutResult {
        let inner = &self.inner;
        loop {
            let changed = inner.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let mut st = inner.lock();
                if let Some(e) = Self::gone(&st) {
                    return Err(e);
                }
                if st.out_items < inner.options.window && st.out_bytes < inner.options.window_bytes
                {
                    st.fed += 1;
                    st.out_items += 1;
                    st.out_bytes += item.len();
                    st.pending_bytes += item.len();
                    st.pending.push_back(item);
                    drop(st);
                    inner.work.notify_one();
                    return Ok(());
                }
            }
            changed.await;
        }
    }

    /// Waits until every item fed so far is resolved, then takes what failed (and the
    /// failed acks of `get`).
    pub(crate) async fn settle_all(
        &self,
        deadline: Option<Instant>,
    ) -> Result<Failures, RemoteError> {
        let inner = &self.inner;
        let upto = inner.lock().fed;
        inner.work.notify_one();
        let waiting = async {
            loop {
                let changed = inner.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if resolved_upto(&inner.lock(), upto) {
                    return;
                }
                changed.await;
            }
        };
        match deadline {
            Some(d) => tokio::time::timeout_at(d, waiting)
                .await
                .map_err(|_| RemoteError::Timeout)?,
            None => waiting.await,
        }
        // Acks sent without confirmation (by `get`) are written to the server, as far as
        // the connection allows within the request timeout.
        let bound = Instant::now() + inner.options.request_timeout;
        let bound = deadline.map_or(bound, |d| d.min(bound));
        let _ = tokio::time::timeout_at(bound, inner.client.flush()).await;
        Ok(take_failures(&mut inner.lock()))
    }

    // ---------------------------------------------------------------- getting

    fn start_pulling(&self, st: &mut State) {
        if !st.pulling && !st.stop {
            st.pulling = true;
            tokio::spawn(puller(self.inner.clone()));
        }
    }

    /// Takes the next item that is still leased to this handle; items whose lease ran out
    /// while they waited here are skipped (the stream delivers them again).
    fn pop(&self, st: &mut State) -> Option<Entry> {
        st.asked = true;
        let now = Instant::now();
        while let Some(entry) = st.buffer.pop_front() {
            if entry.held.deadline() > now {
                self.inner.want.notify_one();
                return Some(entry);
            }
            let _ = entry.held.settle(Settle::Lapsed);
        }
        None
    }

    fn hand_out(&self, entry: Entry) -> Result<(Bytes, Delivery), RemoteError> {
        let delivery = Delivery {
            held: entry.held,
            id: self.inner.next_delivery.fetch_add(1, Ordering::Relaxed),
            settled: false,
        };
        match entry.malformed {
            None => Ok((entry.bytes, delivery)),
            Some(error) => {
                // Malformed for every consumer: take it off the stream.
                delivery.ack_nowait_sync();
                Err(RemoteError::Decode {
                    error,
                    item: entry.bytes,
                })
            }
        }
    }

    /// Waits for an item; it stays leased to this handle until its delivery is settled.
    pub(crate) async fn get_unacked(&self) -> Result<(Bytes, Delivery), RemoteError> {
        let inner = &self.inner;
        let mut waiting = None;
        loop {
            let arrived = inner.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            {
                let mut st = inner.lock();
                if let Some(e) = Self::gone(&st) {
                    return Err(e);
                }
                if let Some(entry) = self.pop(&mut st) {
                    drop(st);
                    return self.hand_out(entry);
                }
                self.start_pulling(&mut st);
                if waiting.is_none() {
                    st.waiting += 1;
                    waiting = Some(Waiting(inner));
                }
            }
            inner.want.notify_one();
            arrived.await;
        }
    }

    /// An item already pushed to this handle, or [`RemoteError::Empty`] (and pulling
    /// starts, for next time).
    pub(crate) fn try_get(&self) -> Result<(Bytes, Delivery), RemoteError> {
        let mut st = self.inner.lock();
        if let Some(e) = Self::gone(&st) {
            return Err(e);
        }
        match self.pop(&mut st) {
            Some(entry) => {
                drop(st);
                self.hand_out(entry)
            }
            None => {
                self.start_pulling(&mut st);
                drop(st);
                self.inner.want.notify_one();
                Err(RemoteError::Empty)
            }
        }
    }

    // ---------------------------------------------------------------- counts

    /// Messages stored and not yet delivered to any consumer: the durable consumer's
    /// `num_pending`.
    pub(crate) async fn len(&self) -> Result<u64, RemoteError> {
        if let Some(e) = Self::gone(&self.inner.lock()) {
            return Err(e);
        }
        let info = tokio::time::timeout(
            self.inner.options.request_timeout,
            self.inner.consumer.get_info(),
        )
        .await
        .map_err(|_| RemoteError::Timeout)?
        .map_err(|e| errors::lookup(&e))?;
        Ok(info.num_pending)
    }

    pub(crate) fn task_done(&self) -> Result<(), RemoteError> {
        let mut st = self.inner.lock();
        if let Some(e) = Self::gone(&st) {
            return Err(e);
        }
        if st.tasks_done >= st.acked {
            return Err(RemoteError::Refused(Refusal::TaskDoneMisuse));
        }
        st.tasks_done += 1;
        Ok(())
    }

    /// Waits until the stream holds no message, after this handle's fed items are
    /// resolved (so they count).
    pub(crate) async fn join(&self, deadline: Option<Instant>) -> Result<(), RemoteError> {
        let inner = &self.inner;
        if let Some(e) = Self::gone(&inner.lock()) {
            return Err(e);
        }
        let upto = inner.lock().fed;
        let joining = async {
            loop {
                let changed = inner.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if resolved_upto(&inner.lock(), upto) {
                    break;
                }
                changed.await;
            }
            let _ = tokio::time::timeout(inner.options.request_timeout, inner.client.flush()).await;
            let mut pause = Duration::from_millis(2);
            loop {
                if let Some(e) = Self::gone(&inner.lock()) {
                    return Err(e);
                }
                let info =
                    tokio::time::timeout(inner.options.request_timeout, inner.stream.get_info());
                if let Ok(Ok(info)) = info.await {
                    if info.state.messages == 0 {
                        return Ok(());
                    }
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(100));
            }
        };
        match deadline {
            Some(d) => tokio::time::timeout_at(d, joining)
                .await
                .unwrap_or(Err(RemoteError::Timeout)),
            None => joining.await,
        }
    }

    // ---------------------------------------------------------------- closing

    /// Resolves what was fed (until `deadline`), gives back every item pushed here and
    /// not taken, stops the tasks and closes the connection.
    pub(crate) async fn close(&self, deadline: Instant) -> Result<Failures, RemoteError> {
        let inner = &self.inner;
        let _one = self.closing.acquire().await;
        if inner.lock().closed {
            return Ok(take_failures(&mut inner.lock()));
        }
        let settled = self.settle_all(Some(deadline)).await;
        let untaken = {
            let mut st = inner.lock();
            st.closed = true;
            st.stop = true;
            std::mem::take(&mut st.buffer)
        };
        inner.work.notify_one();
        inner.want.notify_one();
        inner.arrived.notify_waiters();
        inner.changed.notify_waiters();
        for entry in untaken {
            entry.held.settle(Settle::Release).send().await;
        }
        // The tasks end: the puller gives back what its last pull brings, the sender
        // resolves or gives up what it holds.
        let ended = async {
            loop {
                let changed = inner.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                {
                    let st = inner.lock();
                    if st.sender_done && (st.puller_done || !st.pulling) {
                        return;
                    }
                }
                changed.await;
            }
        };
        let _ = tokio::time::timeout_at(deadline, ended).await;
        let _ = tokio::time::timeout_at(deadline, inner.client.flush()).await;
        let mut failures: Failures = settled.unwrap_or_default();
        {
            // What is still unresolved at the deadline is final now.
            let mut st = inner.lock();
            let more = take_failures(&mut st);
            failures.merge(more);
            let items: Vec<Bytes> = st.pending.drain(..).collect();
            st.pending_bytes = 0;
            failures
                .refused
                .extend(items.into_iter().map(|item| (item, Refusal::Withdrawn)));
            let unresolved = std::mem::take(&mut st.unresolved);
            for (_, pack) in unresolved {
                let code = if pack.full {
                    Refusal::Full
                } else {
                    Refusal::UnknownQueue
                };
                pack.fail(&mut st, code);
            }
            st.out_items = 0;
            st.out_bytes = 0;
            let more = take_failures(&mut st);
            failures.merge(more);
        }
        let _ = tokio::time::timeout_at(deadline, inner.client.drain()).await;
        Ok(failures)
    }
}

impl Drop for Queue {
    fn drop(&mut self) {
        let mut st = self.inner.lock();
        if st.closed {
            return;
        }
        st.stop = true;
        let unconfirmed = st.out_items;
        let untaken = std::mem::take(&mut st.buffer);
        drop(st);
        self.inner.work.notify_one();
        self.inner.want.notify_one();
        for entry in untaken {
            entry.held.settle(Settle::Release).spawn();
        }
        if unconfirmed > 0 {
            super::super::report(&format!(
                "JetStream queue {:?} dropped with {unconfirmed} fed items not yet confirmed; \
                 they are still being sent, but only `close().await` says whether they arrived",
                self.inner.name
            ));
        }
    }
}

/// A get waiting for an item: the puller keeps pulling while there is one.
struct Waiting<'a>(&'a Inner);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.lock().waiting -= 1;
    }
}

fn resolved_upto(st: &State, upto: u64) -> bool {
    let pending_from = st.fed + 1 - st.pending.len() as u64;
    (st.pending.is_empty() || pending_from > upto)
        && st
            .unresolved
            .keys()
            .next()
            .is_none_or(|&first| first > upto)
}

fn take_failures(st: &mut State) -> Failures {
    Failures {
        refused: std::mem::take(&mut st.refused),
        in_doubt: std::mem::take(&mut st.in_doubt),
        acks_failed: std::mem::take(&mut st.acks_failed),
        broken: None,
        cause: st.cause.take(),
    }
}

// -------------------------------------------------------------------- the sender

/// Takes up to a pack of what was fed.
fn take_pack(inner: &Inner, st: &mut State) -> Option<SentPack> {
    if st.pending.is_empty() {
        return None;
    }
    let first = st.fed + 1 - st.pending.len() as u64;
    let mut items = Vec::new();
    let mut bytes = 0;
    while let Some(item) = st.pending.front() {
        let more = item.len() + pack::PREFIX;
        if !items.is_empty() && (items.len() >= inner.pack_items || bytes + more > inner.pack_bytes)
        {
            break;
        }
        bytes += more;
        let item = st.pending.pop_front().expect("front");
        st.pending_bytes -= item.len();
        items.push(item);
    }
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", inner.message_id().as_str());
    let payload = if items.len() == 1 {
        items[0].clone()
    } else {
        headers.insert(pack::HEADER, items.len().to_string().as_str());
        let mut buf = BytesMut::with_capacity(bytes);
        for item in &items {
            pack::push(&mut buf, item);
        }
        buf.freeze()
    };
    let item_bytes = items.iter().map(Bytes::len).sum();
    st.unresolved.insert(
        first,
        Unresolved {
            items,
            bytes: item_bytes,
            maybe_stored: false,
            full: false,
        },
    );
    Some(SentPack {
        first,
        payload,
        headers,
        sent_at: Instant::now(),
        full_pause: Duration::from_millis(1),
    })
}

type Attempt = std::pin::Pin<
    Box<dyn std::future::Future<Output = (SentPack, Result<(), PublishError>)> + Send>,
>;

fn publish(inner: &Arc<Inner>, pack: SentPack, pause: Duration) -> Attempt {
    let inner = inner.clone();
    Box::pin(async move {
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
        let message = PublishMessage::build()
            .payload(pack.payload.clone())
            .headers(pack.headers.clone());
        let outcome = match inner
            .publisher
            .send_publish(inner.subject.clone(), message)
            .await
        {
            Ok(ack) => await_ack(ack).await,
            Err(e) => Err(e),
        };
        (pack, outcome)
    })
}

async fn await_ack(ack: PublishAckFuture) -> Result<(), PublishError> {
    ack.await.map(drop)
}

/// Publishes what is fed, in the order fed, and resolves each pack: confirmed, tried again
/// (lost ack, election, full queue), or given up (refused or in doubt).
async fn sender(inner: Arc<Inner>) {
    let mut inflight: FuturesUnordered<Attempt> = FuturesUnordered::new();
    loop {
        let work = inner.work.notified();
        tokio::pin!(work);
        work.as_mut().enable();
        let (taken, stop) = {
            let mut st = inner.lock();
            (take_pack(&inner, &mut st), st.stop)
        };
        if let Some(pack) = taken {
            // First attempts go out in the order fed.
            let first = publish(&inner, pack, Duration::ZERO);
            inflight.push(first);
            while let Some(Some((pack, outcome))) = inflight.next().now_or_never() {
                resolve(&inner, pack, outcome, &mut inflight, stop);
            }
            continue;
        }
        if stop && inflight.is_empty() {
            break;
        }
        tokio::select! {
            _ = &mut work => {}
            Some((pack, outcome)) = inflight.next(), if !inflight.is_empty() => {
                resolve(&inner, pack, outcome, &mut inflight, stop);
            }
        }
    }
    let mut st = inner.lock();
    st.sender_done = true;
    if !st.closed && (!st.refused.is_empty() || !st.in_doubt.is_empty()) {
        // Dropped without `close`: nobody else will hear of these.
        super::super::report(&format!(
            "JetStream queue {:?}: {} fed items were refused and {} are in doubt after its \
             last handle was dropped",
            inner.name,
            st.refused.len(),
            st.in_doubt.len()
        ));
    }
    drop(st);
    inner.changed.notify_waiters();
}

fn resolve(
    inner: &Arc<Inner>,
    mut pack: SentPack,
    outcome: Result<(), PublishError>,
    inflight: &mut FuturesUnordered<Attempt>,
    stop: bool,
) {
    let mut st = inner.lock();
    // Resolved already (by `close` at its deadline): nothing more to say.
    let Some(entry) = st.unresolved.get_mut(&pack.first) else {
        return;
    };
    let verdict = match outcome {
        Ok(()) => None,
        Err(_)
            if inner
                .denials
                .publish_denied(&inner.subject, pack.sent_at)
                .is_some() =>
        {
            // The server dropped it (and says why): not stored, whatever the error.
            let said = inner.denials.publish_denied(&inner.subject, pack.sent_at);
            Some((
                Refusal::NotAllowed,
                said.map(|said| RemoteError::JetStream(format!("nats-server: {said}"))),
            ))
        }
        Err(e) => {
            let late = pack.sent_at.elapsed() >= inner.options.request_timeout;
            match errors::classify(&e) {
                errors::Publish::Full => {
                    entry.full = true;
                    if stop && late {
                        Some((Refusal::Full, None))
                    } else {
                        pack.full_pause = (pack.full_pause * 2).min(Duration::from_millis(100));
                        drop(st);
                        tracing::debug!("procq: {} is full; publishing again", inner.subject);
                        let pause = pack.full_pause;
                        inflight.push(publish(inner, pack, pause));
                        return;
                    }
                }
                errors::Publish::Retry { maybe_stored } => {
                    entry.maybe_stored |= maybe_stored;
                    entry.full = false;
                    if late {
                        // No answer within the request timeout: in doubt if an attempt
                        // may have been stored; otherwise no server served the stream.
                        Some((Refusal::UnknownQueue, None))
                    } else {
                        drop(st);
                        tracing::debug!("procq: publishing to {} again ({e})", inner.subject);
                        let pause = if maybe_stored {
                            Duration::ZERO
                        } else {
                            NO_LEADER_PAUSE
                        };
                        inflight.push(publish(inner, pack, pause));
                        return;
                    }
                }
                errors::Publish::TooLarge => Some((Refusal::TooLarge, None)),
                errors::Publish::Fatal(e) => Some((Refusal::NotAllowed, Some(e))),
            }
        }
    };
    let entry = st.unresolved.remove(&pack.first).expect("unresolved pack");
    st.out_items -= entry.items.len() as u64;
    st.out_bytes -= entry.bytes;
    if let Some((code, cause)) = verdict {
        if st.cause.is_none() {
            st.cause = cause;
        }
        entry.fail(&mut st, code);
    }
    drop(st);
    inner.changed.notify_waiters();
}

// -------------------------------------------------------------------- the puller

/// Keeps this handle's buffer near the prefetch window while gets wait or items are
/// taken; stops on close.
async fn puller(inner: Arc<Inner>) {
    let prefetch = inner.options.prefetch.max(1) as usize;
    // Until a message says otherwise, expect full packs.
    let mut per_message = inner.pack_items.max(1);
    'pulling: loop {
        // Wait until the buffer is below half the window.
        loop {
            let want = inner.want.notified();
            tokio::pin!(want);
            want.as_mut().enable();
            {
                let st = inner.lock();
                if st.stop {
                    break 'pulling;
                }
                // Like credit on procq's server: pulled for gets, not ahead of none.
                if (st.asked || st.waiting > 0) && st.buffer.len() <= prefetch / 2 {
                    break;
                }
            }
            want.await;
        }
        let have = {
            let mut st = inner.lock();
            st.asked = false;
            st.buffer.len()
        };
        let n = ((prefetch - have.min(prefetch)) / per_message).max(1);
        let requested = Instant::now();
        let batch = tokio::time::timeout(
            inner.options.request_timeout,
            inner
                .consumer
                .batch()
                .max_messages(n)
                .expires(PULL_EXPIRES)
                .messages(),
        )
        .await;
        let mut batch = match batch {
            Ok(Ok(batch)) => batch,
            _ => {
                tokio::time::sleep(NO_LEADER_PAUSE).await;
                continue;
            }
        };
        loop {
            // The server ends the batch after PULL_EXPIRES; the client after 5 s more.
            let next = tokio::time::timeout(PULL_EXPIRES + Duration::from_secs(6), batch.next());
            let message = match next.await {
                Ok(Some(Ok(message))) => message,
                Ok(Some(Err(_))) | Err(_) => {
                    tokio::time::sleep(NO_LEADER_PAUSE).await;
                    break;
                }
                Ok(None) => break,
            };
            let count = accept(&inner, message, requested);
            per_message = count.max(1);
        }
    }
    inner.lock().puller_done = true;
    inner.changed.notify_waiters();
}

/// Buffers the items of one message; on a stopped handle, gives it back at once.
fn accept(inner: &Arc<Inner>, message: jetstream::Message, requested: Instant) -> usize {
    let (message, acker) = message.split();
    let payload = message.payload;
    let parsed = match pack::count(message.headers.as_ref()) {
        Ok(None) => Ok(vec![payload.clone()]),
        Ok(Some(n)) => pack::split(&payload, n),
        Err(()) => Err(postcard::Error::DeserializeBadEncoding),
    };
    let (entries, malformed) = match parsed {
        Ok(items) => (items, None),
        Err(e) => (vec![payload], Some(e)),
    };
    let held = Arc::new(Held {
        acker,
        inner: inner.clone(),
        st: Mutex::new(HeldState {
            left: entries.len(),
            released: false,
            lapsed: false,
            finished: false,
            deadline: inner.deadline_from(requested),
        }),
    });
    let n = entries.len();
    let mut st = inner.lock();
    if st.stop {
        drop(st);
        for _ in 0..n {
            held.settle(Settle::Release).spawn();
        }
        return n;
    }
    for bytes in entries {
        st.buffer.push_back(Entry {
            bytes,
            held: held.clone(),
            malformed: malformed.clone(),
        });
    }
    drop(st);
    for _ in 0..n {
        inner.arrived.notify_one();
    }
    n
}

// -------------------------------------------------------------------- deliveries

/// One JetStream message delivered to this handle, with the items of it not yet settled.
pub(crate) struct Held {
    acker: Acker,
    inner: Arc<Inner>,
    st: Mutex<HeldState>,
}

struct HeldState {
    /// Items not yet settled.
    left: usize,
    /// An item was given back (dropped without an ack): the message is redelivered.
    released: bool,
    /// The lease ran out: the stream delivers the message again by itself.
    lapsed: bool,
    finished: bool,
    deadline: Instant,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Settle {
    Ack,
    Release,
    /// Found past its lease in the buffer.
    Lapsed,
}

/// What settling an item leads to.
#[must_use]
enum Then {
    /// Recorded; the message waits for its other items.
    Recorded,
    /// The last item: acknowledge the message.
    Ack(Arc<Held>),
    /// The last item, and one was given back: redeliver the message now.
    Nak(Arc<Held>),
    /// The lease had run out.
    Lapsed,
}

impl Then {
    /// Sends a give-back, ignoring the outcome (the lease returns the message anyway).
    async fn send(self) {
        if let Then::Nak(held) = self {
            let _ = tokio::time::timeout(
                held.inner.options.request_timeout,
                held.acker.ack_with(AckKind::Nak(None)),
            )
            .await;
        }
    }

    /// Sends an ack or a give-back without confirmation, from a place that cannot wait;
    /// without a runtime nothing is sent and the lease returns the message.
    fn spawn(self) {
        if matches!(self, Then::Ack(_) | Then::Nak(_)) {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    match self {
                        Then::Ack(held) => {
                            let _ = held.acker.ack().await;
                        }
                        other => other.send().await,
                    }
                });
            }
        }
    }
}

/// Gives a message back (a negative ack, from a task of its own) when dropped armed: an
/// `ack` cancelled before its answer came.
struct GiveBackIfDropped(Option<Arc<Held>>);

impl Drop for GiveBackIfDropped {
    fn drop(&mut self) {
        if let Some(held) = self.0.take() {
            Then::Nak(held).spawn();
        }
    }
}

impl Held {
    fn lock(&self) -> MutexGuard<'_, HeldState> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn deadline(&self) -> Instant {
        self.lock().deadline
    }

    fn settle(self: &Arc<Self>, how: Settle) -> Then {
        let mut st = self.lock();
        st.left = st.left.saturating_sub(1);
        if how == Settle::Release {
            st.released = true;
        }
        if how == Settle::Lapsed || Instant::now() >= st.deadline {
            st.lapsed = true;
        }
        let lapsed = st.lapsed;
        if st.left > 0 || st.finished {
            return if lapsed && how == Settle::Ack {
                Then::Lapsed
            } else {
                Then::Recorded
            };
        }
        st.finished = true;
        if lapsed {
            if how == Settle::Ack {
                Then::Lapsed
            } else {
                Then::Recorded
            }
        } else if st.released {
            Then::Nak(self.clone())
        } else {
            Then::Ack(self.clone())
        }
    }
}

/// An item of a JetStream message, leased to this handle until settled.
pub(crate) struct Delivery {
    held: Arc<Held>,
    id: u64,
    settled: bool,
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery").field("id", &self.id).finish()
    }
}

impl Delivery {
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    fn closed(&self) -> bool {
        self.held.inner.lock().closed
    }

    /// Settles this item and, if it is the last of its message, acknowledges the message
    /// and waits (at most the request timeout) for the server to confirm.
    pub(crate) async fn ack(mut self) -> Result<(), RemoteError> {
        self.settled = true;
        if self.closed() {
            return Err(RemoteError::Disconnected(Disconnect::ClosedHere));
        }
        let inner = self.held.inner.clone();
        let outcome = match self.held.settle(Settle::Ack) {
            Then::Recorded => Ok(()),
            Then::Lapsed => Err(RemoteError::Refused(Refusal::LeaseExpired)),
            Then::Ack(held) => {
                // Dropped before the ack is answered, the message is given back at once,
                // as a dropped delivery's is (not at the end of its lease). If the ack
                // was sent, it reaches the server first and the give-back finds the
                // message gone: the ack stands.
                let mut cancelled = GiveBackIfDropped(Some(held.clone()));
                let acked =
                    tokio::time::timeout(inner.options.request_timeout, held.acker.double_ack())
                        .await;
                cancelled.0 = None;
                match acked {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(errors::ack(&*e)),
                    Err(_) => Err(RemoteError::Timeout),
                }
            }
            nak @ Then::Nak(_) => {
                nak.send().await;
                Ok(())
            }
        };
        if outcome.is_ok() {
            inner.lock().acked += 1;
        }
        outcome
    }

    /// Settles this item; the message's ack, if this is its last item, is sent without
    /// waiting for a confirmation, from a task of its own, so nothing is left to cancel
    /// once the item is taken. The item counts as acknowledged (for `task_done`) at once;
    /// an ack that cannot be sent is counted for `flush` and `close`.
    pub(crate) fn ack_nowait_sync(mut self) {
        self.settled = true;
        let inner = self.held.inner.clone();
        if self.closed() {
            inner.lock().acks_failed += 1;
            return;
        }
        match self.held.settle(Settle::Ack) {
            Then::Lapsed => inner.lock().acks_failed += 1,
            Then::Recorded => inner.lock().acked += 1,
            nak @ Then::Nak(_) => {
                inner.lock().acked += 1;
                nak.spawn();
            }
            Then::Ack(held) => {
                inner.lock().acked += 1;
                match tokio::runtime::Handle::try_current() {
                    Ok(rt) => {
                        rt.spawn(async move {
                            if held.acker.ack().await.is_err() {
                                held.inner.lock().acks_failed += 1;
                            }
                        });
                    }
                    // Nothing can send it: the lease brings the message back.
                    Err(_) => inner.lock().acks_failed += 1,
                }
            }
        }
    }

    /// Extends the lease of this item's message by a full ack wait from now, and waits
    /// (at most the request timeout) for the server to confirm.
    pub(crate) async fn keep_alive(&self) -> Result<(), RemoteError> {
        if self.closed() {
            return Err(RemoteError::Disconnected(Disconnect::ClosedHere));
        }
        {
            let mut st = self.held.lock();
            if st.lapsed || st.finished || Instant::now() >= st.deadline {
                st.lapsed = true;
                return Err(RemoteError::Refused(Refusal::LeaseExpired));
            }
        }
        let inner = &self.held.inner;
        let sent = Instant::now();
        match tokio::time::timeout(
            inner.options.request_timeout,
            self.held.acker.double_ack_with(AckKind::Progress),
        )
        .await
        {
            Ok(Ok(())) => {
                let mut st = self.held.lock();
                st.deadline = st.deadline.max(inner.deadline_from(sent));
                Ok(())
            }
            Ok(Err(e)) => Err(errors::ack(&*e)),
            Err(_) => Err(RemoteError::Timeout),
        }
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        if !self.settled {
            self.held.settle(Settle::Release).spawn();
        }
    }
}
