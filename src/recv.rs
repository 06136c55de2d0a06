//! The receiving side of one socket in one process: the inbox every receiving handle
//! shares, and how any number of tasks (and threads) wait on it.
//!
//! A datagram read from the socket lands in the inbox, and its items are handed out one
//! by one to whichever handle asks next. All state lives here, none in a future, which is
//! what makes every receive cancel-safe.
//!
//! Waiting: every async receiver waits with the reactor's waiter list (`readable()`), so
//! any number of tasks can wait at once and each readiness event wakes all of them. A
//! socket read and the check that the inbox is empty happen under one lock, so a task
//! only goes back to sleep (clearing readiness) when the socket and the inbox are both
//! empty: items a task leaves in the inbox are always seen by the others, and so is the
//! end of the channel.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use crate::error::{DecodeError, RecvError, RecvTimeoutError, TryRecvError};
use crate::options::Options;
use crate::report;
use crate::send::buffered::LostHook;
use crate::send::Deadline;
use crate::sys::eventfd;
use crate::sys::memfd::{self, MapError, Mapping};
use crate::sys::socket;
use crate::sys::Waitable;
use crate::wire::{self, Body, Entries};

/// What a taker decided about the message it was shown.
pub(crate) enum Take<R> {
    /// Done with it: the next receive sees the next message.
    Consume(R),
    /// Leave it first in line (`recv_bytes_into` with a buffer too small).
    Keep(R),
}

/// The next message, shown to a taker: its bytes, the descriptors its item carries (those
/// the taker leaves are closed when it consumes the message, and kept with the message
/// when it keeps it), and, for an out-of-line item, the mapping its bytes live in (so a
/// [`SharedBytes`](crate::SharedBytes) can point into it instead of copying).
pub(crate) struct Message<'a> {
    pub(crate) bytes: &'a [u8],
    pub(crate) fds: &'a mut Vec<OwnedFd>,
    pub(crate) mapping: Option<&'a Arc<Mapping>>,
}

impl Message<'_> {
    /// Decodes the message as a `T`, with its descriptors and mapping.
    pub(crate) fn decode<T: serde::de::DeserializeOwned>(self) -> Result<T, DecodeError> {
        wire::decode(self.bytes, std::mem::take(self.fds), self.mapping.cloned())
    }
}

/// Something that looks at the next message.
pub(crate) type Taker<'a, R> = &'a mut (dyn FnMut(Message<'_>) -> Take<R> + Send);

/// An out-of-line item received and not yet taken.
struct OutOfLine {
    /// Kept so the item can be handed back.
    memfd: OwnedFd,
    map: Arc<Mapping>,
    /// The descriptors the item carries.
    fds: Vec<OwnedFd>,
}

pub(crate) struct Inbox {
    socket: Arc<Waitable>,
    /// The settings the channel was made with (`max_item_bytes` bounds what is accepted).
    opts: Options,
    state: Mutex<InboxState>,
    /// Readable exactly while the inbox holds a message (or the end): an eventfd that
    /// threads blocked in `blocking_take` poll beside the socket, so that items another
    /// handle left in the inbox wake them. Made by the first blocking wait.
    holding: OnceLock<OwnedFd>,
    /// Told how many items a rejected datagram carried (a queue corrects its counts).
    on_lost: Mutex<Option<LostHook>>,
}

/// The datagram being taken apart.
struct InboxState {
    buf: Box<[u8]>,
    /// Bytes of the current datagram in `buf`.
    len: usize,
    entries: Entries,
    /// An out-of-line item received and not yet taken.
    out_of_line: Option<OutOfLine>,
    /// The current datagram's item descriptors not yet handed out, in order.
    fds: VecDeque<OwnedFd>,
    /// Where `recvmsg` puts a datagram's descriptors.
    received: Vec<OwnedFd>,
    /// The end of the channel was read: every receive from now on says so.
    closed: bool,
    /// Whether `holding` is signalled now.
    signalled: bool,
    /// The last read found a datagram: the next one is worth trying before waiting.
    streaming: bool,
}

impl Inbox {
    pub(crate) fn new(socket: Arc<Waitable>, opts: &Options) -> Inbox {
        Inbox {
            socket,
            opts: opts.clone(),
            state: Mutex::new(InboxState {
                buf: vec![0; wire::MAX_DATAGRAM].into_boxed_slice(),
                len: 0,
                entries: Entries::default(),
                out_of_line: None,
                fds: VecDeque::new(),
                received: Vec::new(),
                closed: false,
                signalled: false,
                streaming: false,
            }),
            holding: OnceLock::new(),
            on_lost: Mutex::new(None),
        }
    }

    /// Has `hook` told how many items each rejected datagram carried.
    pub(crate) fn on_lost(&self, hook: LostHook) {
        *self.on_lost.lock().unwrap_or_else(|e| e.into_inner()) = Some(hook);
    }

    /// Brings `holding` in line with the inbox (under the inbox lock).
    fn sync_holding(&self, st: &mut InboxState) {
        let Some(fd) = self.holding.get() else {
            return;
        };
        let holds = st.out_of_line.is_some() || !st.entries.is_empty() || st.closed;
        if holds && !st.signalled {
            st.signalled = eventfd::add(fd.as_fd(), 1).is_ok();
        } else if !holds && st.signalled {
            st.signalled = eventfd::read(fd.as_fd()).is_err();
        }
    }

    pub(crate) fn socket(&self) -> &Arc<Waitable> {
        &self.socket
    }

    pub(crate) fn options(&self) -> &Options {
        &self.opts
    }

    fn lock(&self) -> MutexGuard<'_, InboxState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Is a message (or the end) waiting in the inbox?
    fn has_buffered(&self) -> bool {
        let st = self.lock();
        st.out_of_line.is_some() || !st.entries.is_empty() || st.closed
    }

    /// Is a message (or the end) ready to receive without waiting? Consumes nothing.
    pub(crate) fn is_ready(&self) -> bool {
        self.has_buffered() || socket::has_input(self.socket.fd().as_fd())
    }

    /// Shows the next message to `take` if one is ready now. One lock for the inbox and the
    /// socket read: the per-item path of a queue in fair mode.
    pub(crate) fn try_take<R>(&self, take: Taker<'_, R>) -> Result<R, TryRecvError> {
        self.try_take_if(take, false)
    }

    /// [`try_take`](Self::try_take); with `only_streaming`, the socket is read only if the
    /// last read found a datagram (else `Empty`, and the caller waits for readiness).
    fn try_take_if<R>(&self, take: Taker<'_, R>, only_streaming: bool) -> Result<R, TryRecvError> {
        let mut st = self.lock();
        loop {
            if let Some(result) = self.take_buffered_in(&mut st, take) {
                return result.map_err(TryRecvError::from);
            }
            if only_streaming && !st.streaming {
                return Err(TryRecvError::Empty);
            }
            match self.read_datagram_in(&mut st) {
                Ok(None) => continue,
                Ok(Some(bad)) => return Err(TryRecvError::Decode(bad)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(TryRecvError::Empty),
                Err(e) => return Err(TryRecvError::Io(e)),
            }
        }
    }

    /// Shows the next message to `take`, waiting for one. Cancel-safe.
    pub(crate) async fn take<R>(&self, take: Taker<'_, R>) -> Result<R, RecvError> {
        // Fast path: a message is in the inbox or the socket already (one system call, no
        // readiness bookkeeping). It counts against the task's cooperative budget, as a
        // readiness wait would, so a task that always finds items still lets others run.
        tokio::task::coop::consume_budget().await;
        match self.try_take_if(take, true) {
            Ok(r) => return Ok(r),
            Err(TryRecvError::Empty) => {}
            Err(e) => return Err(e.into_recv()),
        }
        loop {
            if let Some(result) = self.take_buffered(take) {
                return result;
            }
            self.fill().await?;
        }
    }

    /// Waits until the inbox holds a message (or the end), reading a datagram if needed.
    /// Returns the error of a datagram that was not valid (already dropped). Cancel-safe:
    /// a datagram read is in the inbox, not in the future.
    pub(crate) async fn fill(&self) -> Result<(), RecvError> {
        loop {
            if self.has_buffered() {
                return Ok(());
            }
            let reactor = self.socket.reactor()?;
            let mut guard = match reactor.readable().await {
                Ok(guard) => guard,
                // Registered with a runtime that shut down: register with this one.
                Err(_) if self.socket.renew(&reactor) => continue,
                Err(e) => return Err(RecvError::Io(e)),
            };
            match guard.try_io(|_| self.read_datagram()) {
                Ok(Ok(None)) => return Ok(()),
                Ok(Ok(Some(bad))) => return Err(RecvError::Decode(bad)),
                Ok(Err(e)) => return Err(RecvError::Io(e)),
                // Socket and inbox both empty: readiness is cleared, wait for the next.
                Err(_would_block) => continue,
            }
        }
    }

    /// [`fill`](Self::fill) as an owned future, for handles that keep it between polls.
    pub(crate) async fn fill_owned(self: Arc<Self>) -> Result<(), RecvError> {
        self.fill().await
    }

    /// Shows the next message to `take`, blocking the calling thread until one comes or
    /// `deadline` passes.
    pub(crate) fn blocking_take<R>(
        &self,
        take: Taker<'_, R>,
        deadline: Deadline,
    ) -> Result<R, RecvTimeoutError> {
        loop {
            if let Some(result) = self.take_buffered(take) {
                return result.map_err(RecvTimeoutError::from);
            }
            match self.read_datagram() {
                Ok(None) => continue,
                Ok(Some(bad)) => return Err(RecvTimeoutError::Decode(bad)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(RecvTimeoutError::Io(e)),
            }
            let holding = self.holding_fd().map_err(RecvTimeoutError::Io)?;
            let fds = [self.socket.fd().as_fd(), holding];
            match socket::wait_any_readable(&fds, deadline) {
                Ok(true) => {}
                Ok(false) => return Err(RecvTimeoutError::Timeout),
                Err(e) => return Err(RecvTimeoutError::Io(e)),
            }
        }
    }

    /// The `holding` eventfd, made (and brought in line with the inbox) on first use.
    fn holding_fd(&self) -> io::Result<BorrowedFd<'_>> {
        if self.holding.get().is_none() {
            let fd = eventfd::create(0, false)?;
            let mut st = self.lock();
            if self.holding.set(fd).is_ok() {
                st.signalled = false;
                self.sync_holding(&mut st);
            }
        }
        Ok(self.holding.get().expect("set above").as_fd())
    }

    /// Waits until a message (or the end) is ready to receive, consuming nothing.
    pub(crate) async fn ready(&self) -> io::Result<()> {
        loop {
            if self.has_buffered() {
                return Ok(());
            }
            let reactor = self.socket.reactor()?;
            let mut guard = match reactor.readable().await {
                Ok(guard) => guard,
                Err(_) if self.socket.renew(&reactor) => continue,
                Err(e) => return Err(e),
            };
            // Readiness is cleared only when the inbox and the socket are both empty,
            // checked under the inbox lock (every socket read happens under it).
            let checked = guard.try_io(|_| {
                let st = self.lock();
                let holds = st.out_of_line.is_some() || !st.entries.is_empty() || st.closed;
                if holds || socket::has_input(self.socket.fd().as_fd()) {
                    Ok(())
                } else {
                    Err(io::ErrorKind::WouldBlock.into())
                }
            });
            if let Ok(result) = checked {
                return result;
            }
        }
    }

    /// Shows the next message of the current datagram to `take`, or reports the end of the
    /// channel; `None` when a datagram must be read first.
    fn take_buffered<R>(&self, take: Taker<'_, R>) -> Option<Result<R, RecvError>> {
        self.take_buffered_in(&mut self.lock(), take)
    }

    /// [`take_buffered`](Self::take_buffered) under a lock the caller holds.
    fn take_buffered_in<R>(
        &self,
        st: &mut InboxState,
        take: Taker<'_, R>,
    ) -> Option<Result<R, RecvError>> {
        if let Some(ool) = &mut st.out_of_line {
            let mut fds = std::mem::take(&mut ool.fds);
            let message = Message {
                bytes: &ool.map,
                fds: &mut fds,
                mapping: Some(&ool.map),
            };
            return Some(Ok(match take(message) {
                Take::Consume(r) => {
                    st.out_of_line = None; // closes what the taker left
                    self.sync_holding(st);
                    r
                }
                Take::Keep(r) => {
                    ool.fds = fds;
                    r
                }
            }));
        }
        let mut after = st.entries.clone();
        if let Some(entry) = after.next_entry(&st.buf[..st.len]) {
            let mut fds: Vec<OwnedFd> = match entry.fds.min(st.fds.len()) {
                0 => Vec::new(),
                n => st.fds.drain(..n).collect(),
            };
            let message = Message {
                bytes: &st.buf[entry.range],
                fds: &mut fds,
                mapping: None,
            };
            return Some(Ok(match take(message) {
                Take::Consume(r) => {
                    drop(fds); // closes what the taker left
                    st.entries = after;
                    if st.entries.is_empty() {
                        self.sync_holding(st);
                    }
                    r
                }
                Take::Keep(r) => {
                    for fd in fds.into_iter().rev() {
                        st.fds.push_front(fd);
                    }
                    r
                }
            }));
        }
        st.closed.then_some(Err(RecvError::Closed))
    }

    /// Reads one datagram into the inbox, if the inbox is empty. Returns the error of a
    /// datagram that was not valid (already dropped, descriptors closed), or `None`.
    /// `WouldBlock` passes through, so the reactor can clear readiness.
    fn read_datagram(&self) -> io::Result<Option<DecodeError>> {
        self.read_datagram_in(&mut self.lock())
    }

    /// [`read_datagram`](Self::read_datagram) under a lock the caller holds.
    fn read_datagram_in(&self, st: &mut InboxState) -> io::Result<Option<DecodeError>> {
        if !st.entries.is_empty() || st.out_of_line.is_some() || st.closed {
            return Ok(None); // another handle got here first
        }
        st.received.clear();
        st.fds.clear();
        let got = socket::recv_datagram(self.socket.fd().as_fd(), &mut st.buf, &mut st.received);
        st.streaming = got.is_ok();
        let got = got?;
        let bad = self.accept(st, &got);
        if bad.is_some() {
            // Close whatever came with it.
            st.received.clear();
            st.fds.clear();
            let lost = carried_items(&st.buf[..got.len]);
            if let Some(hook) = &*self.on_lost.lock().unwrap_or_else(|e| e.into_inner()) {
                hook(lost);
            }
        }
        self.sync_holding(st);
        Ok(bad)
    }

    /// Validates a datagram just read into `st.buf`.
    fn accept(&self, st: &mut InboxState, got: &socket::Received) -> Option<DecodeError> {
        if got.truncated {
            return Some(DecodeError::TooLong(wire::MAX_DATAGRAM));
        }
        if got.len == 0 && st.received.is_empty() {
            // End-of-channel and an empty datagram both read as 0 bytes. It is the end only
            // if every peer hung up and nothing is queued behind it (an empty datagram
            // written just before the last sender went is followed by more, or by the end).
            let fd = self.socket.fd().as_fd();
            if socket::peer_hung_up(fd) && !socket::has_queued_datagram(fd) {
                st.closed = true;
                return None;
            }
            return Some(DecodeError::Empty);
        }
        let body = match wire::parse(&st.buf[..got.len], self.opts.max_item_bytes) {
            Ok(body) => body,
            Err(e) => return Some(e),
        };
        if st.received.len() != body.descriptors() || got.control_truncated {
            return Some(DecodeError::Descriptor);
        }
        match body {
            Body::Inline { count, .. } => {
                if !st.received.is_empty() {
                    st.fds.extend(st.received.drain(..));
                }
                st.entries = Entries::new(count);
                st.len = got.len;
                None
            }
            Body::OutOfLine { size, .. } => {
                let mut received = std::mem::take(&mut st.received).into_iter();
                let memfd = received.next().expect("counted above");
                match memfd::map_sealed(&memfd, size) {
                    Ok(map) => {
                        st.out_of_line = Some(OutOfLine {
                            memfd,
                            map: Arc::new(map),
                            fds: received.collect(),
                        });
                        None
                    }
                    Err(MapError::Io(e)) => Some(DecodeError::Map(e.kind())),
                    Err(_) => Some(DecodeError::NotSealed),
                }
            }
        }
    }

    /// Takes out the items this process read from the socket (as part of a batch, or an
    /// out-of-line item) that no handle has received: for a queue's last handle in a
    /// process, which hands them back to the queue instead of losing them.
    pub(crate) fn take_unread(&self) -> Unread {
        let mut st = self.lock();
        let count = st.entries.len();
        let entries = if count > 0 {
            st.buf[st.entries.position()..st.len].to_vec()
        } else {
            Vec::new()
        };
        st.entries = Entries::default();
        let fds = st.fds.drain(..).collect();
        let out_of_line = st
            .out_of_line
            .take()
            .map(|ool| (ool.memfd, ool.map.len() as u64, ool.fds));
        self.sync_holding(&mut st);
        Unread {
            count,
            entries,
            fds,
            out_of_line,
        }
    }
}

/// How many items a rejected datagram carried, as far as its header says (1 when it says
/// nothing believable).
fn carried_items(datagram: &[u8]) -> usize {
    match datagram.get(..wire::HEADER_LEN) {
        Some(h) if h[..2] == wire::MAGIC => {
            let count = u32::from_le_bytes(h[4..8].try_into().expect("4 bytes")) as usize;
            // Never more than the datagram could hold.
            count.clamp(1, datagram.len().max(1))
        }
        _ => 1,
    }
}

/// Items read from the socket that no handle received (see [`Inbox::take_unread`]).
pub(crate) struct Unread {
    /// How many entries `entries` holds.
    pub(crate) count: usize,
    /// Entries exactly as an inline datagram carries them.
    pub(crate) entries: Vec<u8>,
    /// The descriptors the entries' items carry, in order.
    pub(crate) fds: Vec<OwnedFd>,
    /// An out-of-line item: its sealed memfd, size, and the descriptors it carries.
    pub(crate) out_of_line: Option<(OwnedFd, u64, Vec<OwnedFd>)>,
}

impl Unread {
    pub(crate) fn items(&self) -> usize {
        self.count + usize::from(self.out_of_line.is_some())
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        let st = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        let left = st.entries.len() + usize::from(st.out_of_line.is_some());
        if left > 0 {
            // Read from the socket, so no other process can get them now: say so.
            report::warn(
                left,
                &format!(
                    "the last procq receiver in this process was dropped with {left} items it \
                     had read but not returned (with Options::batch_items(1) a receiver reads \
                     one item at a time)"
                ),
            );
        }
    }
}
