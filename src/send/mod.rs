//! The two ways of sending, behind one method set (as crossbeam-channel's flavors are):
//! [`buffered`] (an outbox per process and a flush task: the default) and [`direct`] (each
//! send writes its own datagram: pipes, `SimpleQueue`, [`Options::direct`]). The public
//! handles hold a [`SendHandle`] and only dispatch to it.

pub(crate) mod buffered;
pub(crate) mod direct;
pub(crate) mod item;
pub(crate) mod outbox;

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use self::buffered::{End, Outbox};
use self::direct::Direct;
use self::item::{Encoded, Limits};
use self::outbox::Pending;
use crate::error::{FlushError, SendErrorKind};
use crate::options::Options;
use crate::sys::Waitable;
use crate::wire::encode::{self, EntryFail};

/// A deadline for blocking calls (`None`: wait as long as it takes).
pub(crate) type Deadline = Option<Instant>;

/// Why an engine did not take an item.
#[derive(Debug)]
pub(crate) enum Fail {
    /// No room now.
    Full,
    /// No room before the deadline.
    Timeout,
    /// Never: the reason.
    Failed(SendErrorKind),
}

/// Something a sender can encode: a typed item, or a raw message's bytes.
pub(crate) trait Payload {
    /// Appends one entry to `out` if the encoding fits `limit` bytes; leaves `out` as it
    /// was otherwise.
    fn append_entry(&self, out: &mut Vec<u8>, limit: usize) -> Result<Vec<OwnedFd>, EntryFail>;
    /// Encodes into an item of its own (out of line if it is large).
    fn encode(&self, limits: &Limits) -> Result<Encoded, SendErrorKind>;
}

/// A typed item, encoded with postcard.
pub(crate) struct Item<'a, T: ?Sized>(pub(crate) &'a T);

impl<T: Serialize + ?Sized> Payload for Item<'_, T> {
    fn append_entry(&self, out: &mut Vec<u8>, limit: usize) -> Result<Vec<OwnedFd>, EntryFail> {
        encode::append_entry(self.0, out, limit)
    }
    fn encode(&self, limits: &Limits) -> Result<Encoded, SendErrorKind> {
        Encoded::item(self.0, limits)
    }
}

/// A raw message: its bytes exactly as given.
pub(crate) struct Raw<'a>(pub(crate) &'a [u8]);

impl Payload for Raw<'_> {
    fn append_entry(&self, out: &mut Vec<u8>, limit: usize) -> Result<Vec<OwnedFd>, EntryFail> {
        if self.0.len() > limit {
            return Err(EntryFail::TooLong);
        }
        encode::append_raw_entry(self.0, out);
        Ok(Vec::new())
    }
    fn encode(&self, limits: &Limits) -> Result<Encoded, SendErrorKind> {
        Encoded::raw(self.0, limits)
    }
}

#[derive(Clone)]
pub(crate) enum Engine {
    Buffered(Arc<Outbox>),
    Direct(Arc<Direct>),
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DrainEnd {
    Flushed,
    TimedOut,
    Disconnected,
    Failed,
}

/// One handle's share of a process's sending side. Clones count as handles: the last one
/// dropped (or retired) writes what the socket takes and releases the socket when nothing
/// is left.
pub(crate) struct SendHandle {
    engine: Engine,
    /// The settings the channel was made with, for passing it on.
    opts: Options,
    /// No longer counted as a handle (a `Sink` closed it): its sends fail with `Closed`.
    retired: bool,
}

impl SendHandle {
    /// A new sending side on `socket`, as `opts` say.
    pub(crate) fn new(socket: Arc<Waitable>, opts: &Options) -> SendHandle {
        let limits = Limits::new(opts, socket.fd().as_fd());
        let engine = if opts.direct {
            Engine::Direct(Arc::new(Direct::new(socket, limits)))
        } else {
            Engine::Buffered(Outbox::new(socket, limits))
        };
        SendHandle {
            engine,
            opts: opts.clone(),
            retired: false,
        }
    }

    /// Stops counting this handle as a sender, as dropping it would (the last handle of
    /// the process gone, the side closes once what it accepted is written), and refuses
    /// its later sends with `Closed`. Other clones go on.
    pub(crate) fn retire(&mut self) {
        if !self.retired {
            self.retired = true;
            self.release();
        }
    }

    pub(crate) fn is_retired(&self) -> bool {
        self.retired
    }

    fn release(&self) {
        match &self.engine {
            Engine::Buffered(outbox) => outbox.drop_handle(),
            Engine::Direct(direct) => direct.drop_handle(),
        }
    }

    /// Why a send through this handle would fail at once whatever the room, if it would:
    /// asks nothing of the kernel and sends nothing.
    pub(crate) fn refused(&self) -> Option<SendErrorKind> {
        if self.retired {
            return Some(SendErrorKind::Closed);
        }
        match &self.engine {
            Engine::Buffered(outbox) => outbox.refused(),
            Engine::Direct(direct) => direct.socket().err(),
        }
    }

    /// A descriptor that turns readable, for good, once this side closes (here, in this
    /// process): a thread blocked in `poll(2)` on something else watches it too, so a
    /// `close` from another thread wakes it.
    pub(crate) fn closing_fd(&self) -> io::Result<std::os::fd::BorrowedFd<'_>> {
        match &self.engine {
            Engine::Buffered(outbox) => outbox.closing_signal().fd(),
            Engine::Direct(direct) => direct.closing_signal().fd(),
        }
    }

    pub(crate) fn options(&self) -> &Options {
        &self.opts
    }

    pub(crate) fn is_direct(&self) -> bool {
        matches!(self.engine, Engine::Direct(_))
    }

    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }

    pub(crate) fn limits(&self) -> &Limits {
        match &self.engine {
            Engine::Buffered(outbox) => outbox.limits(),
            Engine::Direct(direct) => direct.limits(),
        }
    }

    /// Sends if that needs no waiting.
    pub(crate) fn try_send<P: Payload>(&self, payload: &P) -> Result<(), Fail> {
        if self.retired {
            return Err(Fail::Failed(SendErrorKind::Closed));
        }
        match &self.engine {
            Engine::Buffered(outbox) => outbox.try_push(payload, true).map(drop),
            Engine::Direct(direct) => {
                let item = payload.encode(direct.limits()).map_err(Fail::Failed)?;
                direct.try_write(&item)
            }
        }
    }

    /// Sends, waiting for room until `deadline`.
    pub(crate) async fn send<P: Payload>(
        &self,
        payload: &P,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<(), Fail> {
        if self.retired {
            return Err(Fail::Failed(SendErrorKind::Closed));
        }
        match &self.engine {
            Engine::Buffered(outbox) => {
                match outbox.try_push(payload, true) {
                    Err(Fail::Full) => {}
                    other => return other.map(drop),
                }
                // Slow path: keep the encoding (and any memfd) while waiting for room.
                let mut item = payload.encode(outbox.limits()).map_err(Fail::Failed)?;
                loop {
                    let room = outbox.room();
                    let waited = match deadline {
                        None => room.await,
                        Some(at) => match tokio::time::timeout_at(at, room).await {
                            Ok(r) => r,
                            Err(_) => return Err(Fail::Timeout),
                        },
                    };
                    waited.map_err(|e| Fail::Failed(SendErrorKind::Io(e)))?;
                    match outbox.push_encoded(item, true) {
                        Ok(_) => return Ok(()),
                        Err((back, Fail::Full)) => item = back,
                        Err((_, fail)) => return Err(fail),
                    }
                }
            }
            Engine::Direct(direct) => {
                let item = payload.encode(direct.limits()).map_err(Fail::Failed)?;
                direct.write(&item, deadline).await
            }
        }
    }

    /// Sends from the calling thread: writes what this process buffered before, then this
    /// item as a datagram of its own, blocking while the kernel has no room, until
    /// `deadline`. The item is in the kernel when this returns `Ok`; on `Timeout` nothing
    /// of it was sent. (It never enters the buffer, so nothing is left for a flush task to
    /// do: this works the same with and without a runtime.)
    pub(crate) fn blocking_send<P: Payload>(
        &self,
        payload: &P,
        deadline: Deadline,
    ) -> Result<(), Fail> {
        if self.retired {
            return Err(Fail::Failed(SendErrorKind::Closed));
        }
        match &self.engine {
            Engine::Buffered(outbox) => {
                let item = payload.encode(outbox.limits()).map_err(Fail::Failed)?;
                outbox.blocking_send(&item, deadline)
            }
            Engine::Direct(direct) => {
                let item = payload.encode(direct.limits()).map_err(Fail::Failed)?;
                direct.blocking_write(&item, deadline)
            }
        }
    }

    /// Resolves when everything this process sent before the call is in the kernel.
    pub(crate) async fn flush(&self) -> Result<(), FlushError> {
        match &self.engine {
            Engine::Buffered(outbox) => outbox.flush().await,
            Engine::Direct(direct) => direct_flushed(direct),
        }
    }

    /// `flush`, blocking, until `deadline`; `Ok(false)` at the deadline.
    pub(crate) fn blocking_flush(&self, deadline: Deadline) -> Result<bool, FlushError> {
        match &self.engine {
            Engine::Buffered(outbox) => outbox.blocking_flush(deadline),
            Engine::Direct(direct) => direct_flushed(direct).map(|()| true),
        }
    }

    /// Items accepted and not yet in the kernel.
    pub(crate) fn unwritten(&self) -> usize {
        match &self.engine {
            Engine::Buffered(outbox) => outbox.unwritten(),
            Engine::Direct(_) => 0,
        }
    }

    pub(crate) fn close(&self) {
        match &self.engine {
            Engine::Buffered(outbox) => outbox.close(),
            Engine::Direct(direct) => direct.close(),
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        if self.retired {
            return true;
        }
        match &self.engine {
            Engine::Buffered(outbox) => outbox.is_closed(),
            Engine::Direct(direct) => direct.is_closed(),
        }
    }

    pub(crate) async fn closed(&self) -> io::Result<()> {
        if self.retired {
            return Ok(());
        }
        match &self.engine {
            Engine::Buffered(outbox) => outbox.closed().await,
            Engine::Direct(direct) => direct.closed().await,
        }
    }

    /// Closes, flushes until `timeout`, and hands back what did not reach the kernel.
    pub(crate) async fn drain(&self, timeout: Duration) -> (Pending, DrainEnd) {
        match &self.engine {
            Engine::Buffered(outbox) => {
                let (left, end) = outbox.drain(timeout).await;
                (left, drain_end(&end))
            }
            Engine::Direct(direct) => (Pending::default(), direct_drain(direct)),
        }
    }

    /// `drain` from the calling thread, blocking while it writes.
    pub(crate) fn blocking_drain(&self, timeout: Duration) -> (Pending, DrainEnd) {
        match &self.engine {
            Engine::Buffered(outbox) => {
                let (left, end) = outbox.blocking_drain(timeout);
                (left, drain_end(&end))
            }
            Engine::Direct(direct) => (Pending::default(), direct_drain(direct)),
        }
    }

    /// The socket, for passing to a child, or why there is none.
    pub(crate) fn socket(&self) -> Option<Arc<Waitable>> {
        if self.retired {
            return None;
        }
        match &self.engine {
            Engine::Buffered(outbox) => outbox.socket(),
            Engine::Direct(direct) => direct.socket().ok(),
        }
    }
}

fn drain_end(end: &End) -> DrainEnd {
    match end {
        End::Finished => DrainEnd::Flushed,
        End::Drained | End::Stopped => DrainEnd::TimedOut,
        End::Disconnected => DrainEnd::Disconnected,
        End::Failed(..) => DrainEnd::Failed,
    }
}

/// A direct sender has nothing buffered: every send completed in the kernel or failed.
fn direct_flushed(direct: &Direct) -> Result<(), FlushError> {
    match direct.socket() {
        Err(SendErrorKind::Disconnected) => Err(FlushError::Disconnected { undelivered: 0 }),
        _ => Ok(()),
    }
}

fn direct_drain(direct: &Direct) -> DrainEnd {
    let end = match direct.socket() {
        Err(SendErrorKind::Disconnected) => DrainEnd::Disconnected,
        _ => DrainEnd::Flushed,
    };
    direct.close();
    end
}

/// A flush failure met while making room for a send.
pub(crate) fn flush_to_send(e: FlushError) -> SendErrorKind {
    match e {
        FlushError::Disconnected { .. } => SendErrorKind::Disconnected,
        FlushError::Drained => SendErrorKind::Closed,
        FlushError::Io(e) => SendErrorKind::Io(e),
    }
}

impl Clone for SendHandle {
    /// Another handle; a retired handle's clone is retired too.
    fn clone(&self) -> Self {
        if !self.retired {
            match &self.engine {
                Engine::Buffered(outbox) => outbox.add_handle(),
                Engine::Direct(direct) => direct.add_handle(),
            }
        }
        SendHandle {
            engine: self.engine.clone(),
            opts: self.opts.clone(),
            retired: self.retired,
        }
    }
}

impl Drop for SendHandle {
    fn drop(&mut self) {
        if !self.retired {
            self.release();
        }
    }
}

/// A process-local eventfd that turns readable, for good, when a sending side closes; made
/// on first use (most processes never block a thread on a send).
#[derive(Default)]
pub(crate) struct ClosingSignal {
    fd: std::sync::OnceLock<OwnedFd>,
    /// Raised already; the descriptor is made and raised under this lock.
    raised: std::sync::Mutex<bool>,
}

impl ClosingSignal {
    /// The descriptor (made now if needed; readable at once if the side closed already).
    pub(crate) fn fd(&self) -> io::Result<std::os::fd::BorrowedFd<'_>> {
        if self.fd.get().is_none() {
            let raised = self.raised.lock().unwrap_or_else(|e| e.into_inner());
            if self.fd.get().is_none() {
                let fd = crate::sys::eventfd::create(u32::from(*raised), false)?;
                let _ = self.fd.set(fd);
            }
        }
        Ok(self.fd.get().expect("made above").as_fd())
    }

    /// The side closed: wakes every thread watching the descriptor.
    pub(crate) fn raise(&self) {
        let mut raised = self.raised.lock().unwrap_or_else(|e| e.into_inner());
        if !*raised {
            *raised = true;
            if let Some(fd) = self.fd.get() {
                let _ = crate::sys::eventfd::add(fd.as_fd(), 1);
            }
        }
    }
}
