//! A process's sending side of one channel: the byte-bounded buffer every [`Sender`] handle
//! in the process appends to, and the flush task that packs it into datagrams.
//!
//! This replaces Python's feeder thread. The differences that matter:
//! * items are encoded by the caller of `send` (errors reach the caller), then only bytes
//!   are buffered;
//! * the buffer is bounded in bytes, and `send` waits for room;
//! * the flush task never keeps the process alive: it runs on the caller's tokio runtime
//!   and is dropped with it, reporting what it could not deliver;
//! * whatever did not reach the kernel can be taken back, decoded, by `drain`.
//!
//! The buffer holds *outbox frames*: exactly the wire frames of an inline batch (`u32`
//! length, bytes), so a run of them is written with no copy behind an 8-byte header; an
//! out-of-line item is a marker frame whose memfd waits in a side queue.
//!
//! [`Sender`]: crate::Sender

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::error::{FlushError, SendErrorKind};
use crate::frame::{Frame, Limits};
use crate::options::{Options, Socket};
use crate::{sys, wire};

/// Why the flush task stopped writing.
#[derive(Debug, Clone)]
pub(crate) enum End {
    /// Everything was written and no handle can add more.
    Finished,
    /// `drain` reached its deadline and took the rest back.
    Stopped,
    /// No process holds the receiving side.
    Disconnected,
    /// A write failed otherwise.
    Failed(io::ErrorKind, String),
}

/// Encoded items that have not reached the kernel.
#[derive(Default)]
pub(crate) struct Frames {
    pub(crate) bytes: Vec<u8>,
    pub(crate) fds: VecDeque<OwnedFd>,
    pub(crate) items: usize,
}

impl Frames {
    fn append(&mut self, other: &mut Frames) {
        self.bytes.extend_from_slice(&other.bytes);
        self.fds.append(&mut other.fds);
        self.items += other.items;
        other.clear();
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.fds.clear();
        self.items = 0;
    }
}

struct State {
    /// Frames accepted and not yet taken by the flush task.
    pending: Frames,
    /// Frames that will never be written (after a failure or a stop), oldest first.
    undelivered: Frames,
    /// Bytes accepted and not yet in the kernel (pending and the task's batch).
    buffered: usize,
    /// Items ever accepted / ever written; `flush` compares the two.
    enqueued: u64,
    written: u64,
    /// Live `Sender` handles in this process.
    handles: usize,
    /// No more sends: `close` or `drain` was called.
    closed: bool,
    /// `drain`'s deadline passed: the task hands back what it holds and exits.
    stop: bool,
    /// The task found nothing to do and waits on `wake`.
    flusher_idle: bool,
    /// Set once the flush task has exited.
    end: Option<End>,
    /// The socket, for passing to children and direct sends; `None` once the task exited.
    socket: Option<Arc<Socket>>,
    /// When a send last found the channel quiet enough to consider a direct write.
    last_quiet_check: Option<Instant>,
}

pub(crate) struct Outbox {
    state: Mutex<State>,
    /// Wakes the flush task: work after idleness, last handle dropped, close, stop.
    wake: Notify,
    /// Wakes waiters on progress: room freed, items written, the task's end.
    progress: Notify,
    limits: Limits,
}

impl Outbox {
    /// Creates the sending side and spawns its flush task on the current runtime.
    pub(crate) fn spawn(socket: Arc<Socket>, opts: &Options) -> Arc<Outbox> {
        let outbox = Arc::new(Outbox {
            limits: Limits::new(opts, &socket),
            state: Mutex::new(State {
                pending: Frames::default(),
                undelivered: Frames::default(),
                buffered: 0,
                enqueued: 0,
                written: 0,
                handles: 1,
                closed: false,
                stop: false,
                flusher_idle: false,
                end: None,
                socket: Some(socket.clone()),
                last_quiet_check: None,
            }),
            wake: Notify::new(),
            progress: Notify::new(),
        });
        tokio::spawn(Flusher::new(outbox.clone(), socket).run());
        outbox
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn limits(&self) -> &Limits {
        &self.limits
    }

    pub(crate) fn add_handle(&self) {
        self.lock().handles += 1;
    }

    pub(crate) fn drop_handle(&self) {
        let last = {
            let mut st = self.lock();
            st.handles -= 1;
            st.handles == 0
        };
        if last {
            self.wake.notify_one();
        }
    }

    /// A duplicate of the socket, for passing to a child.
    pub(crate) fn socket(&self) -> Option<Arc<Socket>> {
        self.lock().socket.clone()
    }

    /// Encodes `item` and appends it if there is room, without waiting. On `Full`, nothing
    /// was kept. With `respect_limit` false the item is taken even over the buffer limit (a
    /// `Sink` whose `poll_ready` already said yes).
    ///
    /// Inline items are encoded straight into the buffer (one copy fewer than encoding
    /// elsewhere first); an encoding that outgrows a datagram is abandoned and redone out
    /// of line, in a sealed memfd written here, by the caller, outside the lock.
    pub(crate) fn try_push<T: serde::Serialize>(
        &self,
        item: &T,
        respect_limit: bool,
    ) -> Result<(), SendErrorKind> {
        let wake = {
            let mut st = self.lock();
            if let Some(err) = st.refusal() {
                return Err(err);
            }
            if respect_limit && st.buffered >= self.limits.buffer_bytes {
                return Err(SendErrorKind::Full);
            }
            let was_empty = st.pending.bytes.is_empty();
            match wire::encode_frame(item, &mut st.pending.bytes, self.limits.inline_item) {
                Ok(len) => {
                    st.buffered += wire::FRAME_PREFIX + len;
                    st.enqueued += 1;
                    st.pending.items += 1;
                    if was_empty && st.flusher_idle && st.send_directly() {
                        drop(st);
                        self.progress.notify_waiters();
                        return Ok(());
                    }
                    std::mem::take(&mut st.flusher_idle)
                }
                Err(wire::EncodeFail::Encode(e)) => return Err(SendErrorKind::Encode(e)),
                Err(wire::EncodeFail::TooLong) => {
                    drop(st);
                    let frame = Frame::encode(item, &self.limits)?;
                    return self.push_owned(frame, respect_limit).map_err(|(_, e)| e);
                }
            }
        };
        if wake {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Appends raw message bytes (a frame holding exactly `bytes`) if there is room.
    pub(crate) fn try_push_raw(
        &self,
        bytes: &[u8],
        respect_limit: bool,
    ) -> Result<(), SendErrorKind> {
        let frame = Frame::raw(bytes, &self.limits)?;
        self.push_owned(frame, respect_limit).map_err(|(_, e)| e)
    }

    /// Appends an encoded frame if there is room; gives it back otherwise.
    pub(crate) fn push_owned(
        &self,
        frame: Frame,
        respect_limit: bool,
    ) -> Result<(), (Frame, SendErrorKind)> {
        let wake = {
            let mut st = self.lock();
            if let Some(err) = st.refusal() {
                return Err((frame, err));
            }
            if respect_limit && st.buffered >= self.limits.buffer_bytes {
                return Err((frame, SendErrorKind::Full));
            }
            st.buffered += frame.cost();
            st.enqueued += 1;
            st.pending.items += 1;
            match frame {
                Frame::Inline(bytes) => st.pending.bytes.extend_from_slice(&bytes),
                Frame::OutOfLine { fd, size } => {
                    st.pending
                        .bytes
                        .extend_from_slice(&wire::OUTBOX_OUT_OF_LINE.to_le_bytes());
                    st.pending.bytes.extend_from_slice(&size.to_le_bytes());
                    st.pending.fds.push_back(fd);
                }
            }
            std::mem::take(&mut st.flusher_idle)
        };
        if wake {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Could an append succeed now, or fail for good (closed)? False only while full.
    pub(crate) fn has_room(&self) -> bool {
        let st = self.lock();
        st.buffered < self.limits.buffer_bytes || st.refusal().is_some()
    }

    /// Waits until an append could succeed or could never succeed.
    pub(crate) async fn room(&self) {
        loop {
            let notified = self.progress.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let st = self.lock();
                if st.buffered < self.limits.buffer_bytes || st.refusal().is_some() {
                    return;
                }
            }
            notified.await;
        }
    }

    /// Stops new sends from every handle in this process; what was accepted still flows.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_one();
        self.progress.notify_waiters();
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.lock().refusal().is_some()
    }

    /// Resolves when every item accepted before the call is in the kernel.
    pub(crate) async fn flush(&self) -> Result<(), FlushError> {
        let target = self.lock().enqueued;
        self.wait_for(|st| {
            if st.written >= target {
                return Some(Ok(()));
            }
            match &st.end {
                None => None,
                Some(End::Disconnected) => Some(Err(FlushError::Disconnected {
                    undelivered: st.undelivered.items + st.pending.items,
                })),
                Some(End::Failed(kind, msg)) => {
                    Some(Err(FlushError::Io(io::Error::new(*kind, msg.clone()))))
                }
                Some(End::Stopped | End::Finished) => Some(Err(FlushError::Drained)),
            }
        })
        .await
    }

    /// Closes, flushes until `timeout`, then takes back everything not in the kernel.
    pub(crate) async fn drain(&self, timeout: Duration) -> (Frames, End) {
        let deadline = tokio::time::Instant::now() + timeout;
        self.close();
        let finished = tokio::time::timeout_at(deadline, self.wait_for(|st| st.end.clone())).await;
        let end = match finished {
            Ok(end) => end,
            Err(_) => {
                self.lock().stop = true;
                self.wake.notify_one();
                // The task answers at once: it only ever waits for writability or a wake.
                self.wait_for(|st| st.end.clone()).await
            }
        };
        let mut st = self.lock();
        let mut left = std::mem::take(&mut st.undelivered);
        left.append(&mut st.pending);
        st.buffered = 0;
        (left, end)
    }

    async fn wait_for<R>(&self, mut ready: impl FnMut(&State) -> Option<R>) -> R {
        loop {
            let notified = self.progress.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(r) = ready(&self.lock()) {
                return r;
            }
            notified.await;
        }
    }
}

/// A send that finds the channel quiet for this long writes its datagram itself instead
/// of waking the flush task: a lone item reaches the kernel one task hand-off sooner
/// (on a multi-threaded runtime, one cross-thread wake-up sooner). Sends closer together
/// than this are batched, so a burst costs one direct write, not one per item.
const DIRECT_SEND_GAP: Duration = Duration::from_micros(20);

impl State {
    /// Writes the one pending item now, if the channel has been quiet (see
    /// [`DIRECT_SEND_GAP`]) and the socket takes it without waiting. Called with the flush
    /// task idle, so no write can overtake this one.
    fn send_directly(&mut self) -> bool {
        let now = Instant::now();
        let quiet = self
            .last_quiet_check
            .is_none_or(|at| now.duration_since(at) >= DIRECT_SEND_GAP);
        self.last_quiet_check = Some(now);
        if !quiet {
            return false;
        }
        let Some(socket) = &self.socket else {
            return false;
        };
        let header = wire::header(wire::KIND_INLINE, 1);
        let parts = [IoSlice::new(&header), IoSlice::new(&self.pending.bytes)];
        if sys::send_datagram(socket.get_ref().as_fd(), &parts, None).is_err() {
            // Full or failing: the flush task waits for room or records the failure.
            return false;
        }
        self.buffered -= self.pending.bytes.len().min(self.buffered);
        self.written += 1;
        self.pending.clear();
        true
    }

    /// Why a new item cannot be accepted at all, if it cannot.
    fn refusal(&self) -> Option<SendErrorKind> {
        match &self.end {
            Some(End::Disconnected) => return Some(SendErrorKind::Disconnected),
            Some(End::Failed(kind, msg)) => {
                return Some(SendErrorKind::Io(io::Error::new(*kind, msg.clone())))
            }
            Some(End::Stopped | End::Finished) => return Some(SendErrorKind::Closed),
            None => {}
        }
        (self.closed || self.stop).then_some(SendErrorKind::Closed)
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        let st = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        let lost = st.undelivered.items + st.pending.items;
        if lost > 0 {
            tracing::warn!(
                items = lost,
                "procq: sender dropped with {lost} items that never reached a receiver"
            );
        }
    }
}

/// What one datagram will carry: `batch[start..end]`.
struct Plan {
    end: usize,
    items: usize,
    cost: usize,
    out_of_line: Option<u64>,
}

/// Chooses the next datagram's frames from `batch` starting at `start`.
fn plan(batch: &[u8], start: usize, limits: &Limits) -> Plan {
    let prefix = |at: usize| u32::from_le_bytes(batch[at..at + 4].try_into().expect("prefix"));
    if prefix(start) == wire::OUTBOX_OUT_OF_LINE {
        let size = u64::from_le_bytes(batch[start + 4..start + 12].try_into().expect("size"));
        return Plan {
            end: start + 12,
            items: 1,
            cost: usize::try_from(size).unwrap_or(usize::MAX),
            out_of_line: Some(size),
        };
    }
    let mut end = start;
    let mut items = 0;
    while end < batch.len() && items < limits.batch_items {
        let len = prefix(end);
        if len == wire::OUTBOX_OUT_OF_LINE {
            break;
        }
        let frame = wire::FRAME_PREFIX + len as usize;
        if end > start && end - start + frame > limits.body_bytes {
            break;
        }
        end += frame;
        items += 1;
    }
    Plan {
        end,
        items,
        cost: end - start,
        out_of_line: None,
    }
}

/// Why writing a datagram did not complete.
enum Interrupted {
    Stopped,
    Ended(End),
}

/// The flush task. Owns the batch it is writing, so that if the runtime drops it mid-write
/// its `Drop` can still account for every item.
struct Flusher {
    outbox: Arc<Outbox>,
    socket: Option<Arc<Socket>>,
    batch: Frames,
    /// Bytes of `batch` already written.
    pos: usize,
    done: bool,
}

impl Flusher {
    fn new(outbox: Arc<Outbox>, socket: Arc<Socket>) -> Self {
        Flusher {
            outbox,
            socket: Some(socket),
            batch: Frames::default(),
            pos: 0,
            done: false,
        }
    }

    async fn run(mut self) {
        let end = self.write_until_end().await;
        self.finish(end);
    }

    async fn write_until_end(&mut self) -> End {
        loop {
            {
                let mut st = self.outbox.lock();
                if st.stop {
                    return End::Stopped;
                }
                if st.pending.bytes.is_empty() {
                    if st.handles == 0 || st.closed {
                        return End::Finished;
                    }
                    st.flusher_idle = true;
                } else {
                    std::mem::swap(&mut st.pending, &mut self.batch);
                    self.pos = 0;
                }
            }
            if self.batch.bytes.is_empty() {
                self.outbox.wake.notified().await;
                continue;
            }
            while self.pos < self.batch.bytes.len() {
                let plan = plan(&self.batch.bytes, self.pos, &self.outbox.limits);
                match self.write(&plan).await {
                    Ok(()) => {}
                    Err(Interrupted::Stopped) => return End::Stopped,
                    Err(Interrupted::Ended(end)) => return end,
                }
                if plan.out_of_line.is_some() {
                    self.batch.fds.pop_front();
                }
                self.pos = plan.end;
                self.batch.items -= plan.items;
                {
                    let mut st = self.outbox.lock();
                    st.buffered -= plan.cost.min(st.buffered);
                    st.written += plan.items as u64;
                }
                self.outbox.progress.notify_waiters();
            }
            self.batch.clear();
        }
    }

    /// Writes one datagram, waiting for the socket to take it.
    async fn write(&self, plan: &Plan) -> Result<(), Interrupted> {
        let socket = self.socket.as_ref().expect("socket held until finish");
        let header;
        let size_bytes;
        let (parts, pass): ([IoSlice<'_>; 2], _) = match plan.out_of_line {
            None => {
                header = wire::header(wire::KIND_INLINE, plan.items as u32);
                let frames = &self.batch.bytes[self.pos..plan.end];
                ([IoSlice::new(&header), IoSlice::new(frames)], None)
            }
            Some(size) => {
                header = wire::header(wire::KIND_OUT_OF_LINE, 1);
                size_bytes = size.to_le_bytes();
                let fd = self
                    .batch
                    .fds
                    .front()
                    .expect("memfd queued with its marker");
                (
                    [IoSlice::new(&header), IoSlice::new(&size_bytes)],
                    Some(fd.as_fd()),
                )
            }
        };
        // Fast path: the socket usually has room, and trying costs one system call.
        match sys::send_datagram(socket.get_ref().as_fd(), &parts, pass) {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(Interrupted::Ended(failure(e))),
        }
        let reactor = socket
            .reactor()
            .map_err(|e| Interrupted::Ended(failure(e)))?;
        loop {
            let mut guard = tokio::select! {
                biased;
                _ = self.outbox.wake.notified() => {
                    if self.outbox.lock().stop {
                        return Err(Interrupted::Stopped);
                    }
                    continue;
                }
                ready = reactor.writable() => match ready {
                    Ok(guard) => guard,
                    Err(e) => return Err(Interrupted::Ended(failure(e))),
                },
            };
            match guard.try_io(|_| sys::send_datagram(socket.get_ref().as_fd(), &parts, pass)) {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) => return Err(Interrupted::Ended(failure(e))),
                Err(_would_block) => continue,
            }
        }
    }

    /// Records why the task ended and moves what was not written to `undelivered`.
    fn finish(&mut self, end: End) {
        self.done = true;
        let mut rest = self.take_unwritten();
        {
            let mut st = self.outbox.lock();
            if !matches!(end, End::Finished) {
                // Nothing more will be written: what is pending is undelivered too.
                rest.append(&mut st.pending);
            }
            let mut undelivered = std::mem::take(&mut st.undelivered);
            undelivered.append(&mut rest);
            st.undelivered = undelivered;
            st.end = Some(end.clone());
            st.socket = None;
        }
        self.socket = None;
        self.outbox.progress.notify_waiters();
        if let End::Disconnected | End::Failed(..) = end {
            tracing::debug!(?end, "procq: flush task stopped");
        }
    }

    fn take_unwritten(&mut self) -> Frames {
        let mut rest = Frames::default();
        if self.pos < self.batch.bytes.len() {
            rest.bytes.extend_from_slice(&self.batch.bytes[self.pos..]);
            rest.fds = std::mem::take(&mut self.batch.fds);
            rest.items = self.batch.items;
        }
        self.batch.clear();
        self.pos = 0;
        rest
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // The runtime is shutting down with the task unfinished. Never block here: record
        // what was left so a later drain (or the Outbox's drop) reports it.
        // (The Outbox warns about them when its last handle goes.)
        self.finish(End::Stopped);
    }
}

/// Classifies a write error.
fn failure(e: io::Error) -> End {
    if sys::is_disconnect(&e) {
        End::Disconnected
    } else {
        End::Failed(e.kind(), e.to_string())
    }
}
