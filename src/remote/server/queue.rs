//! One named queue of the server, and the server-wide memory account.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::Notify;

use crate::remote::protocol::QueueStats;

/// Bytes of items the server holds, against its limit.
pub(crate) struct Memory {
    /// Items queued or delivered and not yet acknowledged.
    pub(crate) stored: AtomicUsize,
    /// Items read from producers and waiting for room.
    pub(crate) waiting: AtomicUsize,
    /// The limit on `stored`.
    pub(crate) limit: usize,
    /// Connections waiting for `stored` to fall.
    pub(crate) blocked: AtomicUsize,
    /// `stored` fell while a connection was waiting for it.
    pub(crate) freed: Notify,
}

impl Memory {
    pub(crate) fn new(limit: usize) -> Self {
        Memory {
            stored: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            limit,
            blocked: AtomicUsize::new(0),
            freed: Notify::new(),
        }
    }

    /// Room for `len` more bytes (always for the first item, so one item larger than
    /// what is left can still get in once the server is empty).
    fn has_room(&self, len: usize) -> bool {
        let stored = self.stored.load(Ordering::Relaxed);
        stored == 0 || stored + len <= self.limit
    }

    pub(crate) fn release(&self, len: usize) {
        self.stored.fetch_sub(len, Ordering::Relaxed);
        if self.blocked.load(Ordering::Relaxed) > 0 {
            self.freed.notify_waiters();
        }
    }
}

/// One named queue.
pub(crate) struct ServedQueue {
    pub(crate) name: String,
    pub(crate) maxsize: usize,
    state: Mutex<QueueState>,
    /// Items were added (or returned): consumers with credit look again.
    pub(crate) items_added: Notify,
    /// Room was made: puts waiting for a bounded queue look again.
    pub(crate) room_made: Notify,
    /// The last unfinished task was done.
    pub(crate) all_done: Notify,
    pub(crate) puts: AtomicU64,
    pub(crate) acks: AtomicU64,
    pub(crate) redeliveries: AtomicU64,
    pub(crate) in_flight: AtomicU64,
    pub(crate) consumers: AtomicU64,
}

struct QueueState {
    items: VecDeque<Bytes>,
    unfinished: u64,
}

impl ServedQueue {
    pub(crate) fn new(name: &str, maxsize: usize) -> Self {
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

    /// Whether an item of `len` bytes would be admitted now.
    pub(crate) fn has_room(&self, len: usize, memory: &Memory) -> bool {
        (self.maxsize == 0 || self.lock().items.len() < self.maxsize) && memory.has_room(len)
    }

    /// Admits `item` if the queue and the server's memory have room; else hands it back.
    pub(crate) fn try_admit(&self, item: Bytes, memory: &Memory) -> Result<(), Bytes> {
        if !memory.has_room(item.len()) {
            return Err(item);
        }
        let mut st = self.lock();
        if self.maxsize > 0 && st.items.len() >= self.maxsize {
            return Err(item);
        }
        memory.stored.fetch_add(item.len(), Ordering::Relaxed);
        st.items.push_back(item);
        st.unfinished += 1;
        drop(st);
        self.puts.fetch_add(1, Ordering::Relaxed);
        self.items_added.notify_waiters();
        Ok(())
    }

    /// Admits items from the front of `waiting` while the queue and the server's memory
    /// have room, under one lock and with one wake-up; returns their bytes.
    pub(crate) fn admit_from(
        &self,
        waiting: &mut VecDeque<(u64, Bytes)>,
        memory: &Memory,
    ) -> usize {
        let mut st = self.lock();
        let (mut n, mut bytes) = (0u64, 0usize);
        while let Some((_, item)) = waiting.front() {
            if self.maxsize > 0 && st.items.len() >= self.maxsize {
                break;
            }
            if !memory.has_room(item.len()) {
                break;
            }
            let (_, item) = waiting.pop_front().expect("front");
            memory.stored.fetch_add(item.len(), Ordering::Relaxed);
            bytes += item.len();
            st.items.push_back(item);
            n += 1;
        }
        st.unfinished += n;
        drop(st);
        if n > 0 {
            self.puts.fetch_add(n, Ordering::Relaxed);
            self.items_added.notify_waiters();
        }
        bytes
    }

    /// Moves up to `n` items from the front into `out`.
    pub(crate) fn pop_into(&self, n: usize, out: &mut Vec<Bytes>) {
        let mut st = self.lock();
        let take = n.min(st.items.len());
        out.extend(st.items.drain(..take));
        drop(st);
        if take > 0 && self.maxsize > 0 {
            self.room_made.notify_waiters();
        }
    }

    /// Puts deliveries back at the front, in their original order.
    pub(crate) fn requeue(&self, items: Vec<Bytes>) {
        let n = items.len() as u64;
        if n == 0 {
            return;
        }
        let mut st = self.lock();
        for item in items.into_iter().rev() {
            st.items.push_front(item);
        }
        drop(st);
        self.redeliveries.fetch_add(n, Ordering::Relaxed);
        self.in_flight.fetch_sub(n, Ordering::Relaxed);
        self.items_added.notify_waiters();
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().items.len()
    }

    pub(crate) fn unfinished(&self) -> u64 {
        self.lock().unfinished
    }

    /// Marks one task done; false if none is unfinished.
    pub(crate) fn task_done(&self) -> bool {
        let mut st = self.lock();
        if st.unfinished == 0 {
            return false;
        }
        st.unfinished -= 1;
        let all_done = st.unfinished == 0;
        drop(st);
        if all_done {
            self.all_done.notify_waiters();
        }
        true
    }

    /// Empties the queue; returns how many items it held.
    pub(crate) fn clear(&self, memory: &Memory) -> u64 {
        let mut st = self.lock();
        let bytes: usize = st.items.iter().map(Bytes::len).sum();
        let n = st.items.len() as u64;
        st.items.clear();
        drop(st);
        memory.release(bytes);
        n
    }

    pub(crate) fn stats(&self) -> QueueStats {
        QueueStats {
            name: self.name.clone(),
            maxsize: self.maxsize as u64,
            len: self.len() as u64,
            in_flight: self.in_flight.load(Ordering::Relaxed),
            consumers: self.consumers.load(Ordering::Relaxed),
            puts: self.puts.load(Ordering::Relaxed),
            acks: self.acks.load(Ordering::Relaxed),
            redeliveries: self.redeliveries.load(Ordering::Relaxed),
        }
    }
}
