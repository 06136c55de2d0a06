//! One authenticated client connection in the server: what it put, what it was given,
//! what it waits for.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

use super::queue::ServedQueue;
use super::{Phase, Shared};
use crate::remote::error::Disconnect;
use crate::remote::link::Inbox;
use crate::remote::protocol::{Refusal, Reply, Request};
use crate::remote::transport::Probe;

/// Joins one connection may have pending.
const MAX_JOINS: usize = 64;
/// Credit one connection may hold.
const MAX_CREDIT: u64 = 1 << 20;
/// Messages handled per wake-up before the connection pushes, admits and reports.
const READ_BATCH: usize = 512;

/// Hashes delivery numbers (sequential `u64`s, chosen by the server, never by a peer)
/// with one multiplication instead of SipHash.
#[derive(Default)]
struct DeliveryHasher(u64);

impl Hasher for DeliveryHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ b as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// A delivery not yet acknowledged.
struct Held {
    item: Bytes,
    deadline: Instant,
}

pub(super) struct Conn {
    shared: Arc<Shared>,
    out: mpsc::Sender<Reply>,
    queue: Option<Arc<ServedQueue>>,
    lease: Duration,
    peer: String,
    /// Bytes of items one message to the client may carry.
    merge_limit: usize,
    credits: u64,
    unacked: HashMap<u64, Held, BuildHasherDefault<DeliveryHasher>>,
    /// Lease deadlines in the order they were set; stale entries (acknowledged, or
    /// extended since) are skipped.
    leases: VecDeque<(Instant, u64)>,
    next_delivery: u64,
    /// Puts read so far (the last put's number).
    puts_seen: u64,
    puts_reported: u64,
    /// Puts read and waiting for room, by number.
    waiting: VecDeque<(u64, Bytes)>,
    waiting_bytes: usize,
    settles_seen: u64,
    settles_reported: u64,
    joins: Vec<u64>,
    /// Acknowledged deliveries not yet matched by a `task_done`.
    task_done_allowance: u64,
    counted_consumer: bool,
    refused_waiting_for_shutdown: bool,
}

impl Conn {
    pub(super) fn new(
        shared: Arc<Shared>,
        out: mpsc::Sender<Reply>,
        queue: Option<Arc<ServedQueue>>,
        lease: Duration,
        peer: String,
        merge_limit: usize,
    ) -> Self {
        Conn {
            shared,
            out,
            queue,
            lease,
            peer,
            merge_limit,
            credits: 0,
            unacked: HashMap::default(),
            leases: VecDeque::new(),
            next_delivery: 1,
            puts_seen: 0,
            puts_reported: 0,
            waiting: VecDeque::new(),
            waiting_bytes: 0,
            settles_seen: 0,
            settles_reported: 0,
            joins: Vec::new(),
            task_done_allowance: 0,
            counted_consumer: false,
            refused_waiting_for_shutdown: false,
        }
    }

    /// Serves the connection until it ends; returns why.
    pub(super) async fn run(
        &mut self,
        inbox: &mut Inbox<Request>,
        probe: Option<&Probe>,
    ) -> Disconnect {
        match self.serve(inbox, probe).await {
            Ok(()) => Disconnect::Closed,
            Err(reason) => reason,
        }
    }

    async fn serve(
        &mut self,
        inbox: &mut Inbox<Request>,
        probe: Option<&Probe>,
    ) -> Result<(), Disconnect> {
        let mut phase = self.shared.phase.subscribe();
        let lease_timer = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(lease_timer);
        let mut lease_timer_at = None;
        let mut was_reading = true;
        let never = Notify::new();
        loop {
            let now = *phase.borrow_and_update();
            match now {
                Phase::Closing => {
                    // Resolve what was read, then say why the connection ends.
                    self.report().await?;
                    let code = Refusal::ShuttingDown;
                    self.send(Reply::Refused { code }).await?;
                    return Err(Disconnect::Refused(code));
                }
                Phase::Draining if !self.refused_waiting_for_shutdown => {
                    self.refused_waiting_for_shutdown = true;
                    self.refuse_waiting(Refusal::ShuttingDown).await?;
                }
                _ => {}
            }
            self.admit_waiting();
            self.expire_leases().await?;
            self.deliver().await?;
            self.answer_joins().await?;
            self.report().await?;

            let queue = self.queue.clone();
            let q = queue.as_deref();
            let consuming = self.credits > 0;
            let blocked = !self.waiting.is_empty();
            let joining = !self.joins.is_empty();
            let items_added = q.map_or(&never, |q| &q.items_added).notified();
            let room_made = q.map_or(&never, |q| &q.room_made).notified();
            let all_done = q.map_or(&never, |q| &q.all_done).notified();
            let shared = self.shared.clone();
            let memory_freed = shared.memory.freed.notified();
            tokio::pin!(items_added, room_made, all_done, memory_freed);
            if consuming {
                items_added.as_mut().enable();
            }
            if joining {
                all_done.as_mut().enable();
            }
            if blocked {
                room_made.as_mut().enable();
                memory_freed.as_mut().enable();
                self.shared.memory.blocked.fetch_add(1, Ordering::Relaxed);
            }
            let _unblock = blocked.then(|| Unblock(self.shared.clone()));
            // Look again after registering, so no wake-up is missed.
            if self.can_progress() {
                continue;
            }
            let reading = self.waiting_bytes < self.shared.config.connection_memory;
            if reading && !was_reading {
                inbox.refresh(); // the silence limit counts only while reading
            }
            was_reading = reading;
            let next_lease = self.leases.front().map(|&(deadline, _)| deadline);
            if let Some(deadline) = next_lease.filter(|_| next_lease != lease_timer_at) {
                lease_timer.as_mut().reset(deadline);
                lease_timer_at = next_lease;
            }
            tokio::select! {
                biased;
                _ = phase.changed() => {}
                message = inbox.next(), if reading => {
                    match message {
                        Ok(message) => self.handle(message).await?,
                        Err(Disconnect::Closed) => return self.peer_closed().await,
                        Err(e) => return Err(e),
                    }
                    for _ in 0..READ_BATCH {
                        if self.waiting_bytes >= self.shared.config.connection_memory {
                            break;
                        }
                        match inbox.next_now() {
                            None => break,
                            Some(Ok(message)) => self.handle(message).await?,
                            Some(Err(Disconnect::Closed)) => return self.peer_closed().await,
                            Some(Err(e)) => return Err(e),
                        }
                    }
                }
                _ = &mut items_added, if consuming => {}
                _ = &mut room_made, if blocked => {}
                _ = &mut memory_freed, if blocked => {}
                _ = &mut all_done, if joining => {}
                _ = &mut lease_timer, if next_lease.is_some() => {}
                gone = hung_up(probe), if !reading => {
                    if gone {
                        return Err(Disconnect::Closed);
                    }
                }
                _ = self.out.closed() => return Err(Disconnect::Stalled),
            }
        }
    }

    /// Whether anything can be done without waiting.
    fn can_progress(&self) -> bool {
        let Some(q) = &self.queue else { return false };
        (self.credits > 0 && q.len() > 0)
            || self
                .waiting
                .front()
                .is_some_and(|(_, item)| q.has_room(item.len(), &self.shared.memory))
            || (!self.joins.is_empty() && q.unfinished() == 0)
    }

    async fn send(&self, reply: Reply) -> Result<(), Disconnect> {
        self.out.send(reply).await.map_err(|_| Disconnect::Stalled)
    }

    fn queue(&self) -> Result<&Arc<ServedQueue>, Disconnect> {
        self.queue
            .as_ref()
            .ok_or(Disconnect::Protocol("request needs an open queue"))
    }

    async fn handle(&mut self, request: Request) -> Result<(), Disconnect> {
        if !matches!(request, Request::Put { .. } | Request::Puts { .. })
            && !self.waiting.is_empty()
        {
            self.admit_waiting(); // requests see every put read before them
        }
        match request {
            Request::Ping => {}
            Request::Hello { .. } => return Err(Disconnect::Protocol("hello twice")),
            Request::Put { item, wait } => self.put(item, wait).await?,
            Request::Puts { items } => {
                for item in items {
                    self.put(item, true).await?;
                }
            }
            Request::Withdraw { seq } => {
                if let Some(at) = self.waiting.iter().position(|(s, _)| *s == seq) {
                    let (_, item) = self.waiting.remove(at).expect("found");
                    self.unwait(item.len());
                    self.refuse_put(seq, Refusal::Withdrawn).await?;
                }
            }
            Request::Credit { n } => {
                let q = self.queue()?.clone();
                self.credits = (self.credits + n as u64).min(MAX_CREDIT);
                if !self.counted_consumer {
                    self.counted_consumer = true;
                    q.consumers.fetch_add(1, Ordering::Relaxed);
                }
            }
            Request::Ack { delivery } => self.ack(delivery).await?,
            Request::Acks { deliveries } => {
                for delivery in deliveries {
                    self.ack(delivery).await?;
                }
            }
            Request::Touch { delivery } => {
                self.queue()?;
                self.settles_seen += 1;
                match self.unacked.get_mut(&delivery) {
                    Some(held) => {
                        held.deadline = Instant::now() + self.lease;
                        self.leases.push_back((held.deadline, delivery));
                    }
                    None => self.refuse_settle(Refusal::LeaseExpired).await?,
                }
            }
            Request::Release { delivery } => {
                let q = self.queue()?.clone();
                self.settles_seen += 1;
                match self.unacked.remove(&delivery) {
                    Some(held) => {
                        q.requeue(vec![held.item]);
                        self.shared.note_activity();
                    }
                    None => self.refuse_settle(Refusal::LeaseExpired).await?,
                }
            }
            Request::Len { req } => {
                let value = self.queue()?.len() as u64;
                self.send(Reply::Value { req, value }).await?;
            }
            Request::TaskDone { req } => {
                let q = self.queue()?.clone();
                if self.task_done_allowance > 0 && q.task_done() {
                    self.task_done_allowance -= 1;
                    self.send(Reply::Done { req }).await?;
                } else {
                    let code = Refusal::TaskDoneMisuse;
                    self.send(Reply::Error { req, code }).await?;
                }
            }
            Request::Join { req } => {
                self.queue()?;
                if self.joins.len() >= MAX_JOINS {
                    let code = Refusal::TooManyRequests;
                    self.send(Reply::Error { req, code }).await?;
                } else {
                    self.joins.push(req); // answered by `answer_joins`
                }
            }
            Request::CancelJoin { req } => self.joins.retain(|&r| r != req),
            Request::Stat { req } => {
                let stats = self.shared.stats();
                self.send(Reply::Stats { req, stats }).await?;
            }
        }
        Ok(())
    }

    async fn put(&mut self, item: Bytes, wait: bool) -> Result<(), Disconnect> {
        self.queue()?;
        self.puts_seen += 1;
        let seq = self.puts_seen;
        if self.shared.draining.load(Ordering::Relaxed) {
            return self.refuse_put(seq, Refusal::ShuttingDown).await;
        }
        if item.len() > self.shared.max_item {
            return self.refuse_put(seq, Refusal::TooLarge).await;
        }
        if !wait {
            // Decided now: behind the puts already read, or not at all.
            self.admit_waiting();
            let q = self.queue()?.clone();
            if !self.waiting.is_empty() {
                return self.refuse_put(seq, Refusal::Full).await;
            }
            return match q.try_admit(item, &self.shared.memory) {
                Ok(()) => Ok(()),
                Err(_) => self.refuse_put(seq, Refusal::Full).await,
            };
        }
        // Admitted in a batch after this read, or before the next request that
        // depends on it.
        self.waiting_bytes += item.len();
        self.shared
            .memory
            .waiting
            .fetch_add(item.len(), Ordering::Relaxed);
        self.waiting.push_back((seq, item));
        Ok(())
    }

    async fn ack(&mut self, delivery: u64) -> Result<(), Disconnect> {
        let q = self.queue()?.clone();
        self.settles_seen += 1;
        match self.unacked.remove(&delivery) {
            Some(held) => {
                q.acks.fetch_add(1, Ordering::Relaxed);
                q.in_flight.fetch_sub(1, Ordering::Relaxed);
                self.shared.memory.release(held.item.len());
                self.task_done_allowance += 1;
                self.shared.note_activity();
                Ok(())
            }
            None => self.refuse_settle(Refusal::LeaseExpired).await,
        }
    }

    async fn refuse_put(&mut self, seq: u64, code: Refusal) -> Result<(), Disconnect> {
        self.send(Reply::PutRefused { seq, code }).await
    }

    async fn refuse_settle(&mut self, code: Refusal) -> Result<(), Disconnect> {
        let seq = self.settles_seen;
        self.send(Reply::SettleRefused { seq, code }).await
    }

    fn unwait(&mut self, len: usize) {
        self.waiting_bytes -= len;
        self.shared.memory.waiting.fetch_sub(len, Ordering::Relaxed);
    }

    async fn refuse_waiting(&mut self, code: Refusal) -> Result<(), Disconnect> {
        while let Some((seq, item)) = self.waiting.pop_front() {
            self.unwait(item.len());
            self.refuse_put(seq, code).await?;
        }
        Ok(())
    }

    /// Pushes items while there is credit, as many in one message as the client's frame
    /// limit allows.
    async fn deliver(&mut self) -> Result<(), Disconnect> {
        let Some(q) = self.queue.clone() else {
            return Ok(());
        };
        let mut batch = Vec::new();
        while self.credits > 0 {
            q.pop_into(self.credits.min(64) as usize, &mut batch);
            if batch.is_empty() {
                break;
            }
            let deadline = Instant::now() + self.lease;
            self.credits -= batch.len() as u64;
            q.in_flight.fetch_add(batch.len() as u64, Ordering::Relaxed);
            let mut items = batch.drain(..).peekable();
            while items.peek().is_some() {
                let first = self.next_delivery;
                let mut message = Vec::new();
                let mut weight = 16;
                while let Some(item) = items.next_if(|item| {
                    message.is_empty() || weight + item.len() + 5 <= self.merge_limit
                }) {
                    weight += item.len() + 5;
                    let delivery = self.next_delivery;
                    self.next_delivery += 1;
                    self.unacked.insert(
                        delivery,
                        Held {
                            item: item.clone(),
                            deadline,
                        },
                    );
                    self.leases.push_back((deadline, delivery));
                    message.push(item);
                }
                let reply = match message.len() {
                    1 => Reply::Deliver {
                        delivery: first,
                        item: message.pop().expect("one"),
                    },
                    _ => Reply::Deliveries {
                        first,
                        items: message,
                    },
                };
                self.send(reply).await?;
            }
        }
        Ok(())
    }

    /// Admits waiting puts, in order, while there is room.
    fn admit_waiting(&mut self) {
        let Some(q) = self.queue.clone() else { return };
        if self.waiting.is_empty() {
            return;
        }
        let bytes = q.admit_from(&mut self.waiting, &self.shared.memory);
        if bytes > 0 {
            self.unwait(bytes);
        }
    }

    /// Sends back to the queue every delivery whose lease ran out, and tells the client.
    async fn expire_leases(&mut self) -> Result<(), Disconnect> {
        let now = Instant::now();
        let mut expired = Vec::new();
        while let Some(&(deadline, delivery)) = self.leases.front() {
            let current = self.unacked.get(&delivery).map(|h| h.deadline);
            if current != Some(deadline) {
                self.leases.pop_front(); // acknowledged or extended since
                continue;
            }
            if deadline > now {
                break;
            }
            self.leases.pop_front();
            expired.push(delivery);
        }
        if expired.is_empty() {
            return Ok(());
        }
        expired.sort_unstable();
        let items = expired
            .iter()
            .map(|d| self.unacked.remove(d).expect("present").item)
            .collect();
        self.queue()?.requeue(items);
        self.shared.note_activity();
        tracing::debug!(peer = %self.peer, n = expired.len(), "procq server: leases ran out");
        self.send(Reply::Expired {
            deliveries: expired,
        })
        .await
    }

    async fn answer_joins(&mut self) -> Result<(), Disconnect> {
        if self.joins.is_empty() || self.queue()?.unfinished() > 0 {
            return Ok(());
        }
        for req in std::mem::take(&mut self.joins) {
            self.send(Reply::Done { req }).await?;
        }
        Ok(())
    }

    /// Tells the client how far its puts and settles are resolved.
    async fn report(&mut self) -> Result<(), Disconnect> {
        let upto = match self.waiting.front() {
            Some(&(seq, _)) => seq - 1,
            None => self.puts_seen,
        };
        if upto > self.puts_reported {
            self.puts_reported = upto;
            self.send(Reply::PutsDone { upto }).await?;
        }
        if self.settles_seen > self.settles_reported {
            self.settles_reported = self.settles_seen;
            let upto = self.settles_seen;
            self.send(Reply::SettlesDone { upto }).await?;
        }
        Ok(())
    }

    /// The client closed its side: puts still waiting are refused, everything is
    /// reported, and the connection ends.
    async fn peer_closed(&mut self) -> Result<(), Disconnect> {
        self.refuse_waiting(Refusal::Withdrawn).await?;
        self.report().await
    }

    /// The connection ended: unacknowledged deliveries go back to the queue, puts still
    /// waiting are dropped (the client was never told they were held).
    pub(super) fn finish(&mut self, _why: Disconnect) {
        while let Some((_, item)) = self.waiting.pop_front() {
            self.unwait(item.len());
        }
        if let Some(q) = &self.queue {
            let mut unacked: Vec<(u64, Held)> = self.unacked.drain().collect();
            unacked.sort_unstable_by_key(|(d, _)| *d);
            q.requeue(unacked.into_iter().map(|(_, h)| h.item).collect());
            if self.counted_consumer {
                q.consumers.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

/// Waits until the peer hangs up; false at once if there is no probe.
async fn hung_up(probe: Option<&Probe>) -> bool {
    match probe {
        Some(probe) => match probe.hung_up().await {
            Ok(()) => true,
            Err(_) => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// Counts this connection out of those waiting for memory when dropped.
struct Unblock(Arc<Shared>);

impl Drop for Unblock {
    fn drop(&mut self) {
        self.0.memory.blocked.fetch_sub(1, Ordering::Relaxed);
    }
}
