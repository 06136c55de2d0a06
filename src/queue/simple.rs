//! Python's `multiprocessing.SimpleQueue`: a queue with no buffer in the process.

use std::fmt;
use std::os::fd::AsFd;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::channel::{receiver_on, sender_on};
use crate::error::{
    Error, FromEnvError, RecvError, RecvTimeoutError, SendError, SendTimeoutError, TryRecvError,
    TrySendError,
};
use crate::options::Options;
use crate::spawn::{self, Kind, Passable, Passed};
use crate::{Receiver, Sender};

/// A queue shared between processes with no in-process buffer: Python's
/// `multiprocessing.SimpleQueue`, plus the timeouts Python's lacks.
///
/// [`put`](Self::put) completes once the item is in the kernel, so a process may exit
/// right after it without losing the item, and there is never anything to drain. The price
/// is one system call per item; for streams of small items a [`Queue`](crate::Queue) is
/// many times faster. Any number of tasks may put and get on clones at once.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// let q = procq::SimpleQueue::<String>::new()?;
/// q.put("in the kernel when this returns".into()).await?;
/// assert!(!q.is_empty());
/// let s = q.get_timeout(Duration::from_secs(5)).await?;
/// # Ok(()) }
/// ```
pub struct SimpleQueue<T> {
    tx: Sender<T>,
    rx: Receiver<T>,
}

impl<T> SimpleQueue<T> {
    /// A new queue. Needs no runtime.
    pub fn new() -> Result<Self, Error> {
        let (tx, rx) = Options::new().direct().channel()?;
        Ok(SimpleQueue { tx, rx })
    }

    /// Rebuilds a queue a parent passed under `name` with [`pass`](crate::pass). Errors as
    /// [`Sender::from_env`].
    pub fn from_env(name: &str) -> Result<Self, FromEnvError> {
        spawn::from_env(name, None)
    }

    /// Is nothing ready to get right now? Python's `empty()`.
    pub fn is_empty(&self) -> bool {
        !self.rx.is_ready()
    }

    /// Stops this process's puts. Python's `close()`.
    pub fn close(&self) {
        self.tx.close();
    }
}

impl<T: Serialize> SimpleQueue<T> {
    /// Puts an item; completes once it is in the kernel, waiting while the kernel's buffer
    /// is full. Cancel-safe: a put dropped before it completes wrote nothing.
    pub async fn put(&self, item: T) -> Result<(), SendError<T>> {
        self.tx.send(item).await
    }

    /// Like [`put`](Self::put), but gives up at `timeout` with the item. Cancel-safe.
    pub async fn put_timeout(&self, item: T, timeout: Duration) -> Result<(), SendTimeoutError<T>> {
        self.tx.send_timeout(item, timeout).await
    }

    /// Puts an item if the kernel takes it now; [`TrySendError::Full`] gives it back.
    pub fn try_put(&self, item: T) -> Result<(), TrySendError<T>> {
        self.tx.try_send(item)
    }

    /// Puts an item from synchronous code, blocking while the kernel is full; in the
    /// kernel when this returns.
    pub fn blocking_put(&self, item: T) -> Result<(), SendError<T>> {
        self.tx.blocking_send(item)
    }

    /// [`blocking_put`](Self::blocking_put), giving up after `timeout`.
    pub fn blocking_put_timeout(
        &self,
        item: T,
        timeout: Duration,
    ) -> Result<(), SendTimeoutError<T>> {
        self.tx.blocking_send_timeout(item, timeout)
    }
}

impl<T: DeserializeOwned> SimpleQueue<T> {
    /// Gets an item, waiting for one. Cancel-safe.
    pub async fn get(&self) -> Result<T, RecvError> {
        self.rx.recv().await
    }

    /// Like [`get`](Self::get), but gives up with [`RecvTimeoutError::Timeout`] after
    /// `timeout`. Cancel-safe.
    pub async fn get_timeout(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        self.rx.recv_timeout(timeout).await
    }

    /// Gets an item if one is ready now; [`TryRecvError::Empty`] if not.
    pub fn try_get(&self) -> Result<T, TryRecvError> {
        self.rx.try_recv()
    }

    /// Gets an item from synchronous code, blocking until one comes.
    pub fn blocking_get(&self) -> Result<T, RecvError> {
        self.rx.blocking_recv()
    }

    /// [`blocking_get`](Self::blocking_get), giving up after `timeout`.
    pub fn blocking_get_timeout(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        self.rx.blocking_recv_timeout(timeout)
    }
}

impl<T> Clone for SimpleQueue<T> {
    fn clone(&self) -> Self {
        SimpleQueue {
            tx: self.tx.clone(),
            rx: self.rx.clone(),
        }
    }
}

impl<T> fmt::Debug for SimpleQueue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimpleQueue")
            .field("item", &crate::channel::TypeName::<T>::new())
            .finish_non_exhaustive()
    }
}

impl<T> spawn::Rebuild for SimpleQueue<T> {
    const KIND: Kind = Kind::SimpleQueue;
    const DESCRIPTORS: usize = 2;
    fn types() -> Vec<&'static str> {
        vec![std::any::type_name::<T>()]
    }
    fn rebuild(mut taken: spawn::Taken, _buffer: Option<usize>) -> Result<Self, FromEnvError> {
        let send_end = taken.socket()?;
        let recv_end = taken.socket()?;
        let opts = taken.opts.clone().direct();
        Ok(SimpleQueue {
            tx: sender_on(send_end, &opts),
            rx: receiver_on(recv_end, &opts),
        })
    }
}

impl<T> spawn::sealed::Sealed for SimpleQueue<T> {}
impl<T> Passable for SimpleQueue<T> {
    fn describe(&self) -> Result<Passed, Error> {
        let tx = self.tx.handle.socket().ok_or(Error::Closed)?;
        Passed::new(
            Kind::SimpleQueue,
            &[
                Some(tx.fd().as_fd()),
                Some(self.rx.inbox.socket().fd().as_fd()),
            ],
            self.tx.handle.options(),
            &[std::any::type_name::<T>()],
        )
    }
}
