//! Buffered sending: the outbox every `Sender` handle in a process appends to, and the
//! flush task that packs it into datagrams.
//!
//! This replaces Python's feeder thread. The differences that matter:
//! * items are encoded by the caller of `send` (errors reach the caller), then only bytes
//!   are buffered, bounded in bytes: `send` waits for room;
//! * all writing is one synchronous step, [`Outbox::write_now`], that writes what the
//!   socket takes without waiting. The flush task runs it whenever there is work and the
//!   socket has room; so do the blocking calls (for code without a runtime), the last
//!   handle's drop and the flush task's drop at runtime shutdown — so exit writes what it
//!   can and never waits;
//! * the outbox, not the task, holds the socket: the last handle dropped with nothing
//!   buffered closes it at once, whether or not the runtime runs again;
//! * what did not reach the kernel can be taken back, decoded, by `drain`; what is lost is
//!   reported ([`crate::report`]).

use std::future::poll_fn;
use std::io;
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::Interest;
use tokio::sync::Notify;

use super::item::{Encoded, Limits};
use super::outbox::{plan, Pending, Plan};
use super::{Deadline, Fail, Payload};
use crate::error::{FlushError, SendErrorKind};
use crate::recv::Unread;
use crate::report;
use crate::sys::socket;
use crate::sys::waitable::no_runtime;
use crate::sys::Waitable;
use crate::wire::datagram::{self, Outgoing};
use crate::wire::encode::EntryFail;

/// Why the writing side of an outbox finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum End {
    /// Everything accepted was written; no handle can add more (closed, or all dropped).
    Finished,
    /// `drain` took back what was not written.
    Drained,
    /// No process holds the receiving side.
    Disconnected,
    /// A write failed otherwise.
    Failed(io::ErrorKind, String),
    /// The runtime shut down with no handle left and items the socket had no room for.
    Stopped,
}

/// Whether a flush task runs for this outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Task {
    /// None runs (never started, or its runtime shut down): pushes write through.
    Absent,
    /// Waiting for work on `wake`.
    Idle,
    /// Writing, or waiting for room in the socket.
    Busy,
}

/// What a push asks of the caller once the state lock is released.
enum Then {
    Nothing,
    Wake,
    Spawn,
    WriteThrough,
}

struct State {
    /// Items accepted and not yet taken by the writer.
    pending: Pending,
    /// Bytes accepted and not yet in the kernel (pending and the writer's batch).
    buffered: usize,
    /// Items ever accepted / ever written; `flush` compares the two.
    accepted: u64,
    written: u64,
    /// Live handles in this process.
    handles: usize,
    /// No more sends: `close` or `drain` was called.
    closed: bool,
    /// Every receiver is gone (seen by a write, `closed()` or `is_closed()`).
    hung_up: bool,
    /// Set once the writing side finished; the socket is released then.
    end: Option<End>,
    task: Task,
    /// Items that will never be written (after a failure, or at shutdown), oldest first.
    undelivered: Pending,
    /// When a send last found the channel quiet enough to consider writing directly.
    last_quiet_check: Option<Instant>,
}

/// The batch being written, and the socket. Locked only for synchronous writes, never
/// across an await; taken before `State` when both are needed.
struct Writer {
    socket: Option<Arc<Waitable>>,
    batch: Pending,
    /// Bytes of `batch` already written. (Its descriptors are closed as they are written:
    /// the batch holds only those still to go.)
    pos: usize,
}

pub(crate) struct Outbox {
    state: Mutex<State>,
    writer: Mutex<Writer>,
    /// Wakes the flush task: work after idleness, close, drain, the last handle's drop, the
    /// end.
    wake: Notify,
    /// Wakes waiters on progress: room freed, items written, closed, ended.
    progress: Notify,
    limits: Limits,
    /// Told how many items were lost for good (a queue corrects its counts).
    on_lost: Mutex<Option<LostHook>>,
    /// Raised by `close`, for threads blocked in `poll(2)`.
    closing: super::ClosingSignal,
}

/// Called with the number of items lost for good.
pub(crate) type LostHook = Arc<dyn Fn(usize) + Send + Sync>;

thread_local! {
    /// Where `try_push` encodes an item before taking the outbox's lock.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// What one synchronous writing step achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Progress {
    /// Everything taken was written; nothing is pending.
    Idle,
    /// The socket is full.
    Blocked,
    /// The writing side has finished.
    Ended,
}

impl Outbox {
    pub(crate) fn new(socket: Arc<Waitable>, limits: Limits) -> Arc<Outbox> {
        Arc::new(Outbox {
            state: Mutex::new(State {
                pending: Pending::default(),
                buffered: 0,
                accepted: 0,
                written: 0,
                handles: 1,
                closed: false,
                hung_up: false,
                end: None,
                task: Task::Absent,
                undelivered: Pending::default(),
                last_quiet_check: None,
            }),
            writer: Mutex::new(Writer {
                socket: Some(socket),
                batch: Pending::default(),
                pos: 0,
            }),
            wake: Notify::new(),
            progress: Notify::new(),
            limits,
            on_lost: Mutex::new(None),
            closing: super::ClosingSignal::default(),
        })
    }

    /// Raised when this side closes here; see [`SendHandle::closing_fd`](super::SendHandle::closing_fd).
    pub(crate) fn closing_signal(&self) -> &super::ClosingSignal {
        &self.closing
    }

    /// Why no new item can be accepted, if none can.
    pub(crate) fn refused(&self) -> Option<SendErrorKind> {
        self.lock().refusal()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_writer(&self) -> MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Has `hook` told of every item this outbox loses for good.
    pub(crate) fn on_lost(&self, hook: LostHook) {
        *self.on_lost.lock().unwrap_or_else(|e| e.into_inner()) = Some(hook);
    }

    pub(crate) fn add_handle(&self) {
        self.lock().handles += 1;
    }

    /// The last handle in this process is gone: write what the socket takes now, and
    /// release the socket if nothing is left. What is left is written by the flush task
    /// while its runtime runs, and reported if that never happens.
    pub(crate) fn drop_handle(&self) {
        let last = {
            let mut st = self.lock();
            st.handles -= 1;
            st.handles == 0
        };
        if last {
            if let Some(mut w) = self.writer_for_drop() {
                let _ = self.write_locked(&mut w);
            }
            self.wake.notify_one();
        }
    }

    /// The writer, for a drop: while this thread unwinds from a panic, only if no one holds
    /// it (the panic may have struck while this very thread held it, and waiting would
    /// deadlock); otherwise as always. So a panicking `main` still writes what the socket
    /// takes, as a returning one does.
    fn writer_for_drop(&self) -> Option<MutexGuard<'_, Writer>> {
        if !std::thread::panicking() {
            return Some(self.lock_writer());
        }
        match self.writer.try_lock() {
            Ok(w) => Some(w),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }

    /// The socket, for passing to a child; `None` once this side finished.
    pub(crate) fn socket(&self) -> Option<Arc<Waitable>> {
        self.lock_writer().socket.clone()
    }

    // ----- accepting items ---------------------------------------------------------------

    /// Accepts `payload` if there is room (or if `respect_limit` is false), without
    /// waiting. The item is encoded outside the lock (so a `Serialize` that is slow, or
    /// that sends on this very channel, stalls nobody), into a per-thread scratch buffer,
    /// then copied in; one that outgrows a datagram is encoded into a sealed memfd. Returns
    /// the item's number (for `blocking_send` to wait for).
    pub(crate) fn try_push<P: Payload>(
        self: &Arc<Self>,
        payload: &P,
        respect_limit: bool,
    ) -> Result<u64, Fail> {
        // No check before encoding an inline item: the one under the lock below decides (a
        // small item that finds no room was encoded for nothing, which costs less than a
        // second lock on every send). A large item is checked before it is written into a
        // memfd. A failed encoding reports a closed side first, as that check would.
        let mut scratch = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
        scratch.clear();
        let encoded = payload.append_entry(&mut scratch, self.limits.inline_item);
        let result = match encoded {
            Ok(fds) => {
                let (seq, then) = {
                    let mut st = self.lock();
                    match st.admit(respect_limit, self.limits.buffer_bytes) {
                        Ok(()) => {
                            let was_empty = st.pending.is_empty();
                            st.buffered += st.pending.push_entries(1, &scratch, fds);
                            st.accepted += 1;
                            let then = self.after_push(&mut st, was_empty, true);
                            Ok((st.accepted, then))
                        }
                        Err(fail) => Err(fail),
                    }
                }?;
                self.then(then);
                Ok(seq)
            }
            Err(EntryFail::Encode(e)) => {
                let admitted = self.lock().admit(respect_limit, self.limits.buffer_bytes);
                admitted.and(Err(Fail::Failed(SendErrorKind::Encode(e))))
            }
            Err(EntryFail::TooManyFds(count)) => {
                Err(Fail::Failed(SendErrorKind::TooManyDescriptors {
                    count,
                    max: crate::wire::MAX_FDS,
                }))
            }
            Err(EntryFail::TooLong) => {
                // (The guard is dropped before `push_encoded` locks again.)
                let admitted = self.lock().admit(respect_limit, self.limits.buffer_bytes);
                admitted.and_then(|()| match payload.encode(&self.limits) {
                    Ok(item) => self.push_encoded(item, respect_limit).map_err(|(_, f)| f),
                    Err(kind) => Err(Fail::Failed(kind)),
                })
            }
        };
        // Keep the buffer's allocation for this thread's next send (unless it grew large).
        if scratch.capacity() <= 1 << 20 {
            SCRATCH.with(|s| *s.borrow_mut() = scratch);
        }
        result
    }

    /// Accepts an encoded item if there is room; gives it back otherwise.
    pub(crate) fn push_encoded(
        self: &Arc<Self>,
        item: Encoded,
        respect_limit: bool,
    ) -> Result<u64, (Encoded, Fail)> {
        let (seq, then) = {
            let mut st = self.lock();
            if let Err(fail) = st.admit(respect_limit, self.limits.buffer_bytes) {
                return Err((item, fail));
            }
            let was_empty = st.pending.is_empty();
            let inline = matches!(item, Encoded::Inline { .. });
            st.buffered += st.pending.push(item);
            st.accepted += 1;
            (st.accepted, self.after_push(&mut st, was_empty, inline))
        };
        self.then(then);
        Ok(seq)
    }

    /// Takes back items a receiver of this process read and did not return (a queue's last
    /// handle), to be written like any buffered item: now if the socket has room, by the
    /// flush task while the runtime runs, and reported if neither happens. Ignores the
    /// buffer limit and a `close` (they were accepted once already); fails only once the
    /// side has ended, giving them back.
    pub(crate) fn take_back_unread(self: &Arc<Self>, unread: Unread) -> Result<(), Unread> {
        let then = {
            let mut st = self.lock();
            if st.end.is_some() || st.hung_up {
                return Err(unread);
            }
            let Unread {
                count,
                entries,
                fds,
                out_of_line,
            } = unread;
            st.buffered += st.pending.push_entries(count, &entries, fds);
            st.accepted += count as u64;
            if let Some((memfd, size, fds)) = out_of_line {
                st.buffered += st.pending.push_handed_back(memfd, size, fds);
                st.accepted += 1;
            }
            self.after_push(&mut st, false, false)
        };
        self.then(then);
        Ok(())
    }

    /// Decides who writes a freshly accepted item.
    fn after_push(&self, st: &mut State, was_empty: bool, inline: bool) -> Then {
        match st.task {
            Task::Busy => Then::Nothing,
            Task::Idle => {
                if was_empty && inline && self.write_directly(st) {
                    return Then::Nothing;
                }
                st.task = Task::Busy;
                Then::Wake
            }
            Task::Absent if tokio::runtime::Handle::try_current().is_ok() => {
                st.task = Task::Busy;
                Then::Spawn
            }
            Task::Absent => Then::WriteThrough,
        }
    }

    fn then(self: &Arc<Self>, then: Then) {
        match then {
            Then::Nothing => {}
            Then::Wake => self.wake.notify_one(),
            Then::Spawn => spawn_task(self),
            Then::WriteThrough => {
                self.write_now();
            }
        }
    }

    /// Writes the one pending item now, if the channel has been quiet (see
    /// [`DIRECT_SEND_GAP`]) and the socket takes it without waiting. Called with the flush
    /// task idle and the state locked, so no write can overtake this one.
    fn write_directly(&self, st: &mut State) -> bool {
        let now = Instant::now();
        let quiet = st
            .last_quiet_check
            .is_none_or(|at| now.duration_since(at) >= DIRECT_SEND_GAP);
        st.last_quiet_check = Some(now);
        if !quiet || st.pending.items() != 1 || st.pending.bytes().len() > self.limits.body_bytes {
            return false;
        }
        // Lock order is writer, then state: only try, never wait, while holding state.
        let Ok(w) = self.writer.try_lock() else {
            return false;
        };
        let Some(socket) = &w.socket else {
            return false;
        };
        if w.pos < w.batch.bytes().len() {
            return false;
        }
        let out = Outgoing::Inline {
            count: 1,
            entries: st.pending.bytes(),
            fds: st.pending.fds(),
        };
        if datagram::send(socket.fd().as_fd(), out).is_err() {
            // Full or failing: the flush task waits for room or records the failure.
            return false;
        }
        st.buffered -= st.pending.bytes().len().min(st.buffered);
        st.written += 1;
        st.pending.clear();
        true
    }

    /// Could an append succeed now, or fail for good? False only while full.
    pub(crate) fn has_room(&self) -> bool {
        let st = self.lock();
        st.buffered < self.limits.buffer_bytes || st.refusal().is_some()
    }

    /// Waits until an append could succeed or could never succeed. Needs a flush task to
    /// make room, so it starts one if none runs.
    pub(crate) async fn room(self: &Arc<Self>) -> Result<(), io::Error> {
        loop {
            self.ensure_task()?;
            let notified = self.progress.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let st = self.lock();
                if st.buffered < self.limits.buffer_bytes || st.refusal().is_some() {
                    return Ok(());
                }
            }
            notified.await;
        }
    }

    /// Starts a flush task on the current runtime if none runs and there may be work.
    fn ensure_task(self: &Arc<Self>) -> io::Result<()> {
        let spawn = {
            let mut st = self.lock();
            if st.task != Task::Absent || st.end.is_some() {
                false
            } else if tokio::runtime::Handle::try_current().is_err() {
                return Err(no_runtime());
            } else {
                st.task = Task::Busy;
                true
            }
        };
        if spawn {
            spawn_task(self);
        }
        Ok(())
    }

    // ----- writing -----------------------------------------------------------------------

    /// Writes what the socket takes now, without waiting.
    pub(crate) fn write_now(&self) -> Progress {
        let mut w = self.lock_writer();
        match self.write_locked(&mut w) {
            Ok(progress) => progress,
            Err(_would_block) => Progress::Blocked,
        }
    }

    /// The one writing step: takes pending items as a batch and writes datagrams until the
    /// socket is full (`Err(WouldBlock)`), everything is written, or the side has ended.
    fn write_locked(&self, w: &mut Writer) -> io::Result<Progress> {
        loop {
            if w.pos >= w.batch.bytes().len() {
                w.batch.clear();
                w.pos = 0;
                let mut st = self.lock();
                if st.end.is_some() {
                    return Ok(Progress::Ended);
                }
                if st.pending.is_empty() {
                    if st.handles == 0 || st.closed {
                        self.finish(&mut st, w, End::Finished);
                        return Ok(Progress::Ended);
                    }
                    return Ok(Progress::Idle);
                }
                std::mem::swap(&mut st.pending, &mut w.batch);
            }
            let Some(socket) = w.socket.clone() else {
                return Ok(Progress::Ended);
            };
            let plan = plan(
                w.batch.bytes(),
                w.pos,
                self.limits.body_bytes,
                self.limits.batch_items,
            );
            if plan.out_of_line.is_none() && plan.fds == 0 && plan.end < w.batch.bytes().len() {
                // More datagrams are ready: write as many as one system call takes.
                match self.write_several(w, &socket, plan) {
                    Ok(()) => continue,
                    Err(e) => return self.write_failed(w, e),
                }
            }
            let fds = &w.batch.fds()[..plan.fds];
            let out = match plan.out_of_line {
                None => Outgoing::Inline {
                    count: plan.items as u32,
                    entries: &w.batch.bytes()[w.pos..plan.end],
                    fds,
                },
                Some(size) => Outgoing::OutOfLine {
                    size,
                    memfd: fds[0].as_fd(),
                    fds: &fds[1..],
                },
            };
            if let Err(e) = datagram::send(socket.fd().as_fd(), out) {
                return self.write_failed(w, e);
            }
            w.pos = plan.end;
            // Our duplicates are closed at once: the kernel holds the descriptors now, and
            // a socket handed to another process must not stay open here.
            w.batch.close_front_fds(plan.fds);
            {
                let mut st = self.lock();
                st.buffered -= plan.cost.min(st.buffered);
                st.written += plan.items as u64;
            }
            self.progress.notify_waiters();
        }
    }

    /// What a failed write means: `WouldBlock` passes through (the writer waits for room);
    /// anything else ends this side.
    fn write_failed(&self, w: &mut Writer, e: io::Error) -> io::Result<Progress> {
        if e.kind() == io::ErrorKind::WouldBlock {
            return Err(e);
        }
        let end = if socket::is_disconnect(&e) {
            End::Disconnected
        } else {
            End::Failed(e.kind(), e.to_string())
        };
        let mut st = self.lock();
        self.finish(&mut st, w, end);
        Ok(Progress::Ended)
    }

    /// Writes the datagrams planned from `first` on (inline, without descriptors: up to
    /// [`socket::MAX_DATAGRAMS_PER_CALL`]) with one `sendmmsg`, and accounts for those the
    /// kernel took. With one item per datagram (fair mode) this is what keeps the sending
    /// side near one system call per many items.
    fn write_several(&self, w: &mut Writer, socket: &Waitable, first: Plan) -> io::Result<()> {
        let bytes = w.batch.bytes();
        let mut plans = vec![first];
        loop {
            let last = plans.last().expect("one at least");
            if plans.len() >= socket::MAX_DATAGRAMS_PER_CALL || last.end >= bytes.len() {
                break;
            }
            let next = plan(
                bytes,
                last.end,
                self.limits.body_bytes,
                self.limits.batch_items,
            );
            if next.out_of_line.is_some() || next.fds > 0 {
                break;
            }
            plans.push(next);
        }
        let mut start = w.pos;
        let datagrams: Vec<(u32, &[u8])> = plans
            .iter()
            .map(|p| {
                let d = (p.items as u32, &bytes[start..p.end]);
                start = p.end;
                d
            })
            .collect();
        let sent = datagram::send_many(socket.fd().as_fd(), &datagrams)?;
        let (mut items, mut cost) = (0, 0);
        for p in &plans[..sent] {
            items += p.items;
            cost += p.cost;
            w.pos = p.end;
        }
        {
            let mut st = self.lock();
            st.buffered -= cost.min(st.buffered);
            st.written += items as u64;
        }
        self.progress.notify_waiters();
        Ok(())
    }

    /// Ends the writing side: what was not written becomes undelivered (unless it was
    /// all written), the socket is released (closing it, unless a child is being handed a
    /// duplicate or a duplex receiver shares it), and everyone waiting is woken.
    fn finish(&self, st: &mut State, w: &mut Writer, end: End) {
        let mut rest = w.batch.split_from(w.pos);
        w.pos = 0;
        rest.append(&mut st.pending);
        st.undelivered.append(&mut rest);
        st.buffered = 0;
        if end == End::Disconnected {
            st.hung_up = true;
        }
        if end == End::Finished && st.undelivered.items() == 0 {
            // Nothing can be lost any more: let go of what the hook holds (a queue's shared
            // header and slot counter), so their descriptors close with the last handle
            // instead of when the flush task next runs.
            let hook = self
                .on_lost
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            drop(hook);
        }
        st.end = Some(end);
        w.socket = None;
        self.progress.notify_waiters();
        self.wake.notify_one();
    }

    /// Polls one writing step, waiting for room when the socket is full. The socket is
    /// borrowed from the writer for the duration of one poll only.
    fn poll_write(&self, cx: &mut Context<'_>) -> Poll<Progress> {
        let mut w = self.lock_writer();
        loop {
            match self.write_locked(&mut w) {
                Ok(progress) => return Poll::Ready(progress),
                Err(_would_block) => {}
            }
            let Some(socket) = w.socket.clone() else {
                return Poll::Ready(Progress::Ended);
            };
            let reactor = match socket.reactor() {
                Ok(reactor) => reactor,
                Err(e) => {
                    let mut st = self.lock();
                    self.finish(&mut st, &mut w, End::Failed(e.kind(), e.to_string()));
                    return Poll::Ready(Progress::Ended);
                }
            };
            let mut guard = match reactor.poll_write_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(guard)) => guard,
                // Registered with a runtime that shut down: register with this one.
                Poll::Ready(Err(_)) if socket.renew(&reactor) => continue,
                Poll::Ready(Err(e)) => {
                    let mut st = self.lock();
                    self.finish(&mut st, &mut w, End::Failed(e.kind(), e.to_string()));
                    return Poll::Ready(Progress::Ended);
                }
            };
            match guard.try_io(|_| self.write_locked(&mut w)) {
                Ok(Ok(progress)) => return Poll::Ready(progress),
                Ok(Err(_)) => unreachable!("write_locked only fails with WouldBlock"),
                // The socket filled again: readiness is cleared, poll once more to wait.
                Err(_would_block) => continue,
            }
        }
    }

    /// Ready once every receiver is gone, for a simplex sending end (whose socket never
    /// becomes readable otherwise: the hang-up is its only read readiness). Pending for a
    /// duplex end, whose read readiness belongs to its receivers. Borrows the socket for one
    /// poll at a time.
    fn poll_hang_up(&self, cx: &mut Context<'_>) -> Poll<()> {
        let socket = match &self.lock_writer().socket {
            Some(socket) if !socket.is_readable() => socket.clone(),
            _ => return Poll::Pending,
        };
        let Ok(reactor) = socket.reactor() else {
            return Poll::Pending;
        };
        loop {
            match reactor.poll_read_ready(cx) {
                Poll::Ready(Ok(guard)) if guard.ready().is_read_closed() => return Poll::Ready(()),
                // Not a hang-up: clear it and poll again, which registers for the next.
                Poll::Ready(Ok(mut guard)) => guard.clear_ready(),
                Poll::Ready(Err(_)) | Poll::Pending => return Poll::Pending,
            }
        }
    }

    // ----- flushing, closing, draining -------------------------------------------------

    /// Resolves when every item accepted before the call is in the kernel.
    pub(crate) async fn flush(self: &Arc<Self>) -> Result<(), FlushError> {
        let target = self.lock().accepted;
        loop {
            let notified = self.progress.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(done) = self.lock().flushed(target) {
                return done;
            }
            // (Again on every wake-up: the task may have gone with its runtime.)
            self.ensure_task().map_err(FlushError::Io)?;
            notified.await;
        }
    }

    /// `flush` by the calling thread: writes itself, waiting (blocking) while the socket is
    /// full, until `deadline`. `Ok(false)` at the deadline.
    pub(crate) fn blocking_flush(&self, deadline: Deadline) -> Result<bool, FlushError> {
        let target = self.lock().accepted;
        loop {
            if let Some(done) = self.lock().flushed(target) {
                return done.map(|()| true);
            }
            if self.write_now() == Progress::Blocked && !self.wait_writable(deadline, false) {
                return Ok(false);
            }
        }
    }

    /// Items accepted and not yet written.
    pub(crate) fn unwritten(&self) -> usize {
        let st = self.lock();
        (st.accepted - st.written) as usize
    }

    /// Blocks until the socket may take more, or `deadline`; false at the deadline. A
    /// released socket counts as ready (the caller finds out why). With `until_closed`, a
    /// `close` from another thread ends the wait too (for a send, which it refuses; not for
    /// a flush or drain, which go on writing after a close).
    fn wait_writable(&self, deadline: Deadline, until_closed: bool) -> bool {
        let Some(socket) = self.socket() else {
            return true;
        };
        let stop = if until_closed {
            self.closing.fd().ok()
        } else {
            None
        };
        socket::wait_writable(socket.fd().as_fd(), stop, deadline).unwrap_or(true)
    }

    /// Writes `item` as a datagram of its own from the calling thread, after everything
    /// this process buffered before it (so one thread's sends stay in order), blocking while
    /// the kernel has no room, until `deadline`. Nothing of the item is sent unless this
    /// returns `Ok`.
    pub(crate) fn blocking_send(&self, item: &Encoded, deadline: Deadline) -> Result<(), Fail> {
        loop {
            if let Some(kind) = self.lock().refusal() {
                return Err(Fail::Failed(kind));
            }
            {
                let mut w = self.lock_writer();
                match self.write_locked(&mut w) {
                    // Everything before it is written: now the item, under the same lock,
                    // so no other write comes between.
                    Ok(Progress::Idle) => {
                        let Some(socket) = w.socket.clone() else {
                            continue; // released meanwhile: the refusal says why
                        };
                        match datagram::send(socket.fd().as_fd(), item.datagram()) {
                            Ok(()) => return Ok(()),
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                            Err(e) => {
                                let end = if socket::is_disconnect(&e) {
                                    End::Disconnected
                                } else {
                                    End::Failed(e.kind(), e.to_string())
                                };
                                let mut st = self.lock();
                                self.finish(&mut st, &mut w, end);
                                continue;
                            }
                        }
                    }
                    Ok(Progress::Ended) => continue,
                    Ok(Progress::Blocked) | Err(_) => {}
                }
            }
            if !self.wait_writable(deadline, true) {
                return Err(Fail::Timeout);
            }
        }
    }

    /// Stops new sends from every handle in this process; what was accepted still flows,
    /// and the socket is released once it has.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.closing.raise();
        // Write what the socket takes now, and release the descriptor if nothing is left,
        // whether or not a flush task's runtime runs again.
        self.write_now();
        self.progress.notify_waiters();
        self.wake.notify_one();
    }

    /// Has this side been closed, drained or cut off from every receiver? Asks the kernel
    /// whether every receiver is gone if nothing said so yet.
    pub(crate) fn is_closed(&self) -> bool {
        if self.lock().refusal().is_some() {
            return true;
        }
        let hung_up = match self.socket() {
            Some(socket) => socket::peer_hung_up(socket.fd().as_fd()),
            None => true,
        };
        if hung_up {
            self.lock().hung_up = true;
            self.progress.notify_waiters();
        }
        hung_up
    }

    /// Resolves once no receiver is left (or this side is closed): from the socket's
    /// hang-up, without sending anything.
    pub(crate) async fn closed(&self) -> io::Result<()> {
        loop {
            let notified = self.progress.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.lock().refusal().is_some() {
                return Ok(());
            }
            let Some(socket) = self.socket() else {
                return Ok(());
            };
            let reactor = socket.reactor()?;
            tokio::select! {
                ready = reactor.ready(Interest::PRIORITY) => match ready {
                    Ok(_hung_up) => {
                        self.lock().hung_up = true;
                        self.progress.notify_waiters();
                        return Ok(());
                    }
                    Err(_) if socket.renew(&reactor) => {}
                    Err(e) => return Err(e),
                },
                _ = notified => {}
            }
        }
    }

    /// Closes, flushes until `timeout`, then takes back everything not in the kernel.
    pub(crate) async fn drain(self: &Arc<Self>, timeout: Duration) -> (Pending, End) {
        self.close();
        if let Ok(deadline) = crate::channel::deadline_in_runtime(timeout) {
            if self.ensure_task().is_ok() {
                let ended = self.wait_for(|st| st.end.clone());
                let _ = tokio::time::timeout_at(deadline, ended).await;
            }
        }
        self.take_back()
    }

    /// `drain` by the calling thread, blocking while it writes.
    pub(crate) fn blocking_drain(&self, timeout: Duration) -> (Pending, End) {
        let deadline = Instant::now().checked_add(timeout);
        self.close();
        loop {
            if self.lock().end.is_some() {
                break;
            }
            if self.write_now() == Progress::Blocked && !self.wait_writable(deadline, false) {
                break;
            }
        }
        self.take_back()
    }

    /// Ends the writing side now (if it has not ended) and hands back what was not
    /// written, oldest first, with how the side ended.
    fn take_back(&self) -> (Pending, End) {
        let mut w = self.lock_writer();
        let mut st = self.lock();
        if st.end.is_none() {
            let end = if st.pending.is_empty() && w.pos >= w.batch.bytes().len() {
                End::Finished
            } else {
                End::Drained
            };
            self.finish(&mut st, &mut w, end);
        }
        let left = std::mem::take(&mut st.undelivered);
        let end = st.end.clone().expect("ended above");
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
    /// Checks that a new item may be accepted now.
    fn admit(&self, respect_limit: bool, limit: usize) -> Result<(), Fail> {
        if let Some(kind) = self.refusal() {
            return Err(Fail::Failed(kind));
        }
        if respect_limit && self.buffered >= limit {
            return Err(Fail::Full);
        }
        Ok(())
    }

    /// Why a new item cannot be accepted at all, if it cannot.
    fn refusal(&self) -> Option<SendErrorKind> {
        if self.hung_up {
            return Some(SendErrorKind::Disconnected);
        }
        match &self.end {
            Some(End::Disconnected) => Some(SendErrorKind::Disconnected),
            Some(End::Failed(kind, msg)) => {
                Some(SendErrorKind::Io(io::Error::new(*kind, msg.clone())))
            }
            Some(End::Finished | End::Drained | End::Stopped) => Some(SendErrorKind::Closed),
            None => self.closed.then_some(SendErrorKind::Closed),
        }
    }

    /// Whether a flush up to item `target` is over, and how.
    fn flushed(&self, target: u64) -> Option<Result<(), FlushError>> {
        // Once no receiver is left, say so even if every item got into the kernel: items a
        // receiver had not read went with it.
        if self.written >= target && !self.hung_up {
            return Some(Ok(()));
        }
        if self.hung_up {
            return Some(Err(FlushError::Disconnected {
                undelivered: (self.accepted - self.written) as usize,
            }));
        }
        match &self.end {
            None => None,
            Some(End::Disconnected) => Some(Err(FlushError::Disconnected {
                undelivered: (self.accepted - self.written) as usize,
            })),
            Some(End::Failed(kind, msg)) => {
                Some(Err(FlushError::Io(io::Error::new(*kind, msg.clone()))))
            }
            Some(End::Drained | End::Finished | End::Stopped) => Some(Err(FlushError::Drained)),
        }
    }
}

/// Spawns the flush task on the current runtime. Its guard is made first and moved into
/// the task, so that a task dropped without ever being polled (spawned while the runtime
/// shuts down) still hands the work back.
fn spawn_task(outbox: &Arc<Outbox>) {
    let guard = TaskGuard {
        outbox: outbox.clone(),
        done: false,
    };
    tokio::spawn(flush_task(guard));
}

/// The flush task: writes whenever there is work and room, until the side ends.
async fn flush_task(mut guard: TaskGuard) {
    let outbox = guard.outbox.clone();
    loop {
        let progress = tokio::select! {
            biased;
            progress = poll_fn(|cx| outbox.poll_write(cx)) => progress,
            // Close, drain or the last handle's drop: look again.
            _ = outbox.wake.notified() => continue,
        };
        if progress == Progress::Ended {
            break;
        }
        // Idle: sleep until there is work, watching for every receiver going away so that
        // the next send fails at once. (Nothing here holds the socket across the await: the
        // last handle's drop must be able to close it while this task sleeps.)
        {
            let mut st = outbox.lock();
            if st.end.is_some() {
                break;
            }
            if !st.pending.is_empty() {
                continue;
            }
            st.task = Task::Idle;
        }
        tokio::select! {
            _ = outbox.wake.notified() => {}
            () = poll_fn(|cx| outbox.poll_hang_up(cx)) => {
                let mut w = outbox.lock_writer();
                let mut st = outbox.lock();
                if st.end.is_none() {
                    outbox.finish(&mut st, &mut w, End::Disconnected);
                }
                break;
            }
        }
        let mut st = outbox.lock();
        if st.task == Task::Idle {
            st.task = Task::Busy;
        }
    }
    guard.done = true;
    outbox.lock().task = Task::Absent;
}

/// Runs when the flush task ends; if it did not finish (its runtime is shutting down),
/// writes what the socket takes without waiting and reports what is left.
struct TaskGuard {
    outbox: Arc<Outbox>,
    done: bool,
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let outbox = &self.outbox;
        outbox.lock().task = Task::Absent;
        // Waiters in another runtime start a new task; waiters here see the end.
        outbox.progress.notify_waiters();
        let Some(mut w) = outbox.writer_for_drop() else {
            return; // unwinding, and the writer is held: the outbox's drop reports the rest
        };
        let _ = outbox.write_locked(&mut w);
        let mut st = outbox.lock();
        if st.end.is_some() {
            return; // what was not written is reported when the outbox goes
        }
        let left = (st.accepted - st.written) as usize;
        if left == 0 {
            return;
        }
        if st.handles == 0 {
            // Nobody can write them any more: they are reported with the outbox's drop.
            outbox.finish(&mut st, &mut w, End::Stopped);
        } else {
            drop((st, w));
            report::warn(
                left,
                &format!(
                    "the tokio runtime shut down with {left} items buffered by a procq \
                     sender; they reach a receiver only if this process sends, flushes or \
                     drains again"
                ),
            );
        }
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        let w = self.writer.get_mut().unwrap_or_else(|e| e.into_inner());
        let pos = w.pos;
        let rest = w.batch.split_from(pos).items();
        let st = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        let lost = st.undelivered.items() + st.pending.items() + rest;
        if lost > 0 {
            let why = match &st.end {
                Some(End::Disconnected) => "no receiver was left".to_string(),
                Some(End::Failed(_, msg)) => format!("writing failed: {msg}"),
                Some(End::Stopped) => {
                    "the tokio runtime shut down before the socket had room".to_string()
                }
                _ => "the last handle was dropped before the socket had room".to_string(),
            };
            report::warn(
                lost,
                &format!("{lost} items sent on a procq channel never reached a receiver: {why}"),
            );
            if let Some(hook) = self.on_lost.get_mut().unwrap_or_else(|e| e.into_inner()) {
                hook(lost);
            }
        }
    }
}
