//! Python's `multiprocessing.SimpleQueue`: a queue with no buffer in the process.

use std::fmt;
use std::os::fd::AsFd;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::Interest;

use crate::error::{Error, RecvError, SendError};
use crate::options::Options;
use crate::pass::{self, Kind, Passable, Passed};
use crate::{Receiver, Sender};

/// A queue shared between processes with no in-process buffer: Python's
/// `multiprocessing.SimpleQueue`, plus the timeouts Python's lacks.
///
/// [`put`](Self::put) completes once the item is in the kernel, so a process may exit
/// right after it without losing the item, and there is never anything to drain. The price
/// is one system call per item; for streams of small items a [`Queue`](crate::Queue) is
/// many times faster.
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

impl<T> SimpleQueue<T>
where
    T: Serialize + DeserializeOwned + Send + 'static,
{
    /// A new queue. Must be called inside a tokio runtime.
    pub fn new() -> Result<Self, Error> {
        let (tx, rx) = Options::new().direct().channel()?;
        Ok(SimpleQueue { tx, rx })
    }

    /// Rebuilds a queue a parent passed under `name` with [`pass`](crate::pass).
    pub fn from_env(name: &str) -> Result<Self, Error> {
        crate::options::runtime()?;
        let mut taken = pass::take(name, Kind::SimpleQueue, 2)?;
        let opts = Options::new().direct();
        let tx = Sender::from_socket(taken.socket(Interest::WRITABLE)?, &opts)?;
        let rx = Receiver::from_socket(taken.socket(Interest::READABLE)?, &opts);
        Ok(SimpleQueue { tx, rx })
    }

    /// Puts an item; completes once it is in the kernel, waiting while the kernel's buffer
    /// is full. Cancel-safe: a put dropped before it completes wrote nothing.
    pub async fn put(&self, item: T) -> Result<(), SendError<T>> {
        self.tx.send(item).await
    }

    /// Like [`put`](Self::put), but gives up at `timeout` with the item.
    pub async fn put_timeout(&self, item: T, timeout: Duration) -> Result<(), SendError<T>> {
        self.tx.send_timeout(item, timeout).await
    }

    /// Puts an item if the kernel takes it now; `Full` gives it back.
    pub fn try_put(&self, item: T) -> Result<(), SendError<T>> {
        self.tx.try_send(item)
    }

    /// Gets an item, waiting for one. Cancel-safe.
    pub async fn get(&self) -> Result<T, RecvError> {
        self.rx.recv().await
    }

    /// Like [`get`](Self::get), but gives up with [`RecvError::Timeout`] after `timeout`.
    pub async fn get_timeout(&self, timeout: Duration) -> Result<T, RecvError> {
        self.rx.recv_timeout(timeout).await
    }

    /// Gets an item if one is ready now; `Empty` if not.
    pub fn try_get(&self) -> Result<T, RecvError> {
        self.rx.try_recv()
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
        f.debug_struct("SimpleQueue").finish_non_exhaustive()
    }
}

impl<T> pass::sealed::Sealed for SimpleQueue<T> {}
impl<T> Passable for SimpleQueue<T> {
    fn into_passed(self) -> Result<Passed, Error> {
        let tx = self.tx.socket()?;
        pass::passed(
            Kind::SimpleQueue,
            &[
                Some(tx.get_ref().as_fd()),
                Some(self.rx.socket().get_ref().as_fd()),
            ],
        )
    }
}
