//! Direct sending: each send writes its own datagram and completes once the kernel has it.
//! No buffer, no flush task. Used by [`Options::direct`](crate::Options::direct), and so
//! by `SimpleQueue` and the pipes.

use std::io;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::Interest;

use super::item::{Encoded, Limits};
use super::{Deadline, Fail};
use crate::error::SendErrorKind;
use crate::recv::Unread;
use crate::sys::socket;
use crate::sys::Waitable;
use crate::wire::datagram::{self, Outgoing};

pub(crate) struct Direct {
    /// `None` once closed: the descriptor is released so receivers can see the end.
    socket: Mutex<Option<Arc<Waitable>>>,
    limits: Limits,
    hung_up: AtomicBool,
    /// Woken by `close`, so waits let go of the socket and it closes.
    closing: tokio::sync::Notify,
    /// Raised by `close`, for threads blocked in `poll(2)`.
    closing_signal: super::ClosingSignal,
    /// Live handles in this process; the last one gone closes.
    handles: std::sync::atomic::AtomicUsize,
}

impl Direct {
    pub(crate) fn new(socket: Arc<Waitable>, limits: Limits) -> Self {
        Direct {
            socket: Mutex::new(Some(socket)),
            limits,
            hung_up: AtomicBool::new(false),
            closing: tokio::sync::Notify::new(),
            closing_signal: super::ClosingSignal::default(),
            handles: std::sync::atomic::AtomicUsize::new(1),
        }
    }

    pub(crate) fn add_handle(&self) {
        self.handles.fetch_add(1, Ordering::Relaxed);
    }

    /// A handle is gone; the last one releases the descriptor (nothing is buffered here).
    pub(crate) fn drop_handle(&self) {
        if self.handles.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.close();
        }
    }

    /// Raised when this side closes here; see [`SendHandle::closing_fd`](super::SendHandle::closing_fd).
    pub(crate) fn closing_signal(&self) -> &super::ClosingSignal {
        &self.closing_signal
    }

    pub(crate) fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The socket, or why nothing can be sent any more.
    pub(crate) fn socket(&self) -> Result<Arc<Waitable>, SendErrorKind> {
        if self.hung_up.load(Ordering::Relaxed) {
            return Err(SendErrorKind::Disconnected);
        }
        let socket = self.socket.lock().unwrap_or_else(|e| e.into_inner());
        socket.clone().ok_or(SendErrorKind::Closed)
    }

    /// Writes `item` if the socket takes it now; `Full` if it would have to wait.
    pub(crate) fn try_write(&self, item: &Encoded) -> Result<(), Fail> {
        let socket = self.socket().map_err(Fail::Failed)?;
        match datagram::send(socket.fd().as_fd(), item.datagram()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(Fail::Full),
            Err(e) => Err(Fail::Failed(self.failed(e))),
        }
    }

    /// Writes `item`, waiting for room in the kernel until `deadline`. Dropping the future
    /// before it completes means nothing was written.
    pub(crate) async fn write(
        &self,
        item: &Encoded,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<(), Fail> {
        match self.try_write(item) {
            Err(Fail::Full) => {}
            other => return other,
        }
        let closing = self.closing.notified();
        tokio::pin!(closing);
        closing.as_mut().enable();
        let socket = self.socket().map_err(Fail::Failed)?;
        let writing = async {
            loop {
                let reactor = socket
                    .reactor()
                    .map_err(|e| Fail::Failed(SendErrorKind::Io(e)))?;
                let mut guard = match reactor.writable().await {
                    Ok(guard) => guard,
                    Err(_) if socket.renew(&reactor) => continue,
                    Err(e) => return Err(Fail::Failed(SendErrorKind::Io(e))),
                };
                match guard.try_io(|_| datagram::send(socket.fd().as_fd(), item.datagram())) {
                    Ok(Ok(())) => return Ok(()),
                    Ok(Err(e)) => return Err(Fail::Failed(self.failed(e))),
                    Err(_would_block) => continue,
                }
            }
        };
        // A `close` meanwhile ends the wait (and lets go of the socket, so it closes).
        let writing = async {
            tokio::select! {
                written = writing => written,
                _ = &mut closing => Err(Fail::Failed(SendErrorKind::Closed)),
            }
        };
        match deadline {
            None => writing.await,
            Some(at) => tokio::time::timeout_at(at, writing)
                .await
                .unwrap_or(Err(Fail::Timeout)),
        }
    }

    /// Writes `item` from the calling thread, blocking while the kernel is full, until
    /// `deadline`.
    pub(crate) fn blocking_write(&self, item: &Encoded, deadline: Deadline) -> Result<(), Fail> {
        loop {
            match self.try_write(item) {
                Err(Fail::Full) => {}
                other => return other,
            }
            let socket = self.socket().map_err(Fail::Failed)?;
            // A `close` from another thread wakes the wait (and `try_write` then says so).
            let stop = self.closing_signal.fd().ok();
            match socket::wait_writable(socket.fd().as_fd(), stop, deadline) {
                Ok(true) => continue,
                Ok(false) => return Err(Fail::Timeout),
                Err(e) => return Err(Fail::Failed(SendErrorKind::Io(e))),
            }
        }
    }

    /// Writes items a receiver of this process read and did not return back into the
    /// channel, without waiting; returns how many could not be written.
    pub(crate) fn give_back(&self, unread: Unread) -> usize {
        let Ok(socket) = self.socket() else {
            return unread.items();
        };
        let mut lost = 0;
        if unread.count > 0 {
            let out = Outgoing::Inline {
                count: unread.count as u32,
                entries: &unread.entries,
                fds: &unread.fds,
            };
            if datagram::send(socket.fd().as_fd(), out).is_err() {
                lost += unread.count;
            }
        }
        if let Some((memfd, size, fds)) = &unread.out_of_line {
            let out = Outgoing::OutOfLine {
                size: *size,
                memfd: memfd.as_fd(),
                fds,
            };
            if datagram::send(socket.fd().as_fd(), out).is_err() {
                lost += 1;
            }
        }
        lost
    }

    fn failed(&self, e: io::Error) -> SendErrorKind {
        if socket::is_disconnect(&e) {
            self.hung_up.store(true, Ordering::Relaxed);
            SendErrorKind::Disconnected
        } else {
            SendErrorKind::Io(e)
        }
    }

    /// Stops sending from every handle in this process and releases the descriptor.
    pub(crate) fn close(&self) {
        self.socket.lock().unwrap_or_else(|e| e.into_inner()).take();
        self.closing.notify_waiters();
        self.closing_signal.raise();
    }

    /// Closed here, or every receiver gone (asking the kernel).
    pub(crate) fn is_closed(&self) -> bool {
        match self.socket() {
            Err(_) => true,
            Ok(socket) => {
                let gone = socket::peer_hung_up(socket.fd().as_fd());
                if gone {
                    self.hung_up.store(true, Ordering::Relaxed);
                }
                gone
            }
        }
    }

    /// Resolves once no receiver is left (or this side is closed).
    pub(crate) async fn closed(&self) -> io::Result<()> {
        let closing = self.closing.notified();
        tokio::pin!(closing);
        closing.as_mut().enable();
        let Ok(socket) = self.socket() else {
            return Ok(());
        };
        loop {
            let reactor = socket.reactor()?;
            tokio::select! {
                ready = reactor.ready(Interest::PRIORITY) => match ready {
                    Ok(_hung_up) => {
                        self.hung_up.store(true, Ordering::Relaxed);
                        return Ok(());
                    }
                    Err(_) if socket.renew(&reactor) => continue,
                    Err(e) => return Err(e),
                },
                _ = &mut closing => return Ok(()),
            }
        }
    }
}
