//! Direct sending: each send writes its own datagram and completes once the kernel has it.
//! No buffer, no flush task. Used by [`Options::direct`](crate::Options::direct), and so
//! by `SimpleQueue` and the pipes.

use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::SendErrorKind;
use crate::frame::{Frame, Limits};
use crate::options::Socket;
use crate::sys;

pub(crate) struct Direct {
    /// `None` once closed: the descriptor is released so receivers can see the end.
    socket: Mutex<Option<Arc<Socket>>>,
    limits: Limits,
    disconnected: AtomicBool,
}

impl Direct {
    pub(crate) fn new(socket: Arc<Socket>, limits: Limits) -> Self {
        Direct {
            socket: Mutex::new(Some(socket)),
            limits,
            disconnected: AtomicBool::new(false),
        }
    }

    pub(crate) fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The socket, or why nothing can be sent any more.
    pub(crate) fn socket(&self) -> Result<Arc<Socket>, SendErrorKind> {
        if self.disconnected.load(Ordering::Relaxed) {
            return Err(SendErrorKind::Disconnected);
        }
        let socket = self.socket.lock().unwrap_or_else(|e| e.into_inner());
        socket.clone().ok_or(SendErrorKind::Closed)
    }

    /// Writes `frame` if the socket takes it now; `Full` if it would have to wait.
    pub(crate) fn try_write(&self, frame: &Frame) -> Result<(), SendErrorKind> {
        let socket = self.socket()?;
        match frame.write_alone(socket.get_ref().as_fd()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Err(SendErrorKind::Full),
            Err(e) => Err(self.failed(e)),
        }
    }

    /// Writes `frame`, waiting for the socket to have room. Dropping the future before it
    /// completes means nothing was written.
    pub(crate) async fn write(&self, frame: &Frame) -> Result<(), SendErrorKind> {
        let socket = self.socket()?;
        loop {
            let reactor = socket.reactor().map_err(SendErrorKind::Io)?;
            let mut guard = reactor.writable().await.map_err(SendErrorKind::Io)?;
            match guard.try_io(|_| frame.write_alone(socket.get_ref().as_fd())) {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => return Err(self.failed(e)),
                Err(_would_block) => continue,
            }
        }
    }

    fn failed(&self, e: std::io::Error) -> SendErrorKind {
        if sys::is_disconnect(&e) {
            self.disconnected.store(true, Ordering::Relaxed);
            SendErrorKind::Disconnected
        } else {
            SendErrorKind::Io(e)
        }
    }

    /// Stops sending from every handle in this process and releases the descriptor.
    pub(crate) fn close(&self) {
        self.socket.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.socket().is_err()
    }
}
