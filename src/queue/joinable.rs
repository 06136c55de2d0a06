//! Python's `multiprocessing.JoinableQueue`: a queue that also counts unfinished tasks.

use std::fmt;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::core::Core;
use super::Queue;
use crate::channel::deadline_in_runtime;
use crate::error::{
    Error, FlushError, FlushTimeoutError, FromEnvError, JoinTimeoutError, RecvError,
    RecvTimeoutError, SendError, SendTimeoutError, TaskDoneError, TryRecvError, TrySendError,
};
use crate::options::Options;
use crate::spawn::{self, Kind, Passable, Passed};
use crate::Drained;

/// A [`Queue`] that also counts unfinished tasks: Python's
/// `multiprocessing.JoinableQueue`. Every `put` adds a task; a consumer calls
/// [`task_done`](Self::task_done) when it has finished with an item it got;
/// [`join`](Self::join) (in any process, from any number of tasks) waits until every task
/// is done.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// let q = procq::JoinableQueue::<u32>::new()?;
/// q.put(1).await?;
/// let job = q.get().await?;
/// q.task_done()?;
/// q.join_timeout(Duration::from_secs(5)).await?; // returns at once: nothing unfinished
/// # Ok(()) }
/// ```
pub struct JoinableQueue<T> {
    queue: Queue<T>,
}

impl<T> JoinableQueue<T> {
    /// An unbounded joinable queue. Needs no runtime.
    pub fn new() -> Result<Self, Error> {
        Self::with_options(0, &Options::default())
    }

    /// A joinable queue holding at most `maxsize` items across processes (0: unbounded).
    pub fn bounded(maxsize: usize) -> Result<Self, Error> {
        Self::with_options(maxsize, &Options::default())
    }

    /// A joinable queue with a bound (0 for none) and channel [`Options`].
    pub fn with_options(maxsize: usize, opts: &Options) -> Result<Self, Error> {
        Ok(JoinableQueue {
            queue: Queue::from_core(Core::create(maxsize, true, opts)?),
        })
    }

    /// Rebuilds a joinable queue a parent passed under `name` with [`pass`](crate::pass).
    /// Errors as [`Sender::from_env`](crate::Sender::from_env).
    pub fn from_env(name: &str) -> Result<Self, FromEnvError> {
        spawn::from_env(name, None)
    }

    /// [`from_env`](Self::from_env) with this process's own buffer size for its puts.
    pub fn from_env_with_buffer(name: &str, buffer_bytes: usize) -> Result<Self, FromEnvError> {
        spawn::from_env(name, Some(buffer_bytes))
    }

    fn core(&self) -> &Core {
        &self.queue.core
    }

    /// Marks one item this process got as finished. Fails, changing nothing, if this
    /// process has called it as many times as it got items (Python raises `ValueError`
    /// when the queue-wide count would go below zero; procq checks per process, which also
    /// catches a consumer marking another's work). Every handle of the queue in this
    /// process counts together, however it arrived (at spawn or inside an item).
    pub fn task_done(&self) -> Result<(), TaskDoneError> {
        let core = self.core();
        core.got
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |g| g.checked_sub(1))
            .map_err(|_| TaskDoneError)?;
        core.finish(1);
        Ok(())
    }

    /// Tasks put (in any process) and not yet marked done.
    pub fn unfinished(&self) -> u64 {
        self.core().unfinished().max(0) as u64
    }

    /// Waits until every task put in any process has been marked done. The wait is on an
    /// eventfd through the reactor: no CPU is used while waiting, and every waiter wakes as
    /// soon as the last `task_done` (in whatever process) signals it.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: it only waits. Fails only outside a tokio runtime (or if the eventfd
    /// fails).
    pub async fn join(&self) -> std::io::Result<()> {
        let core = self.core();
        let done = core
            .done
            .as_ref()
            .expect("a JoinableQueue has a done signal");
        let _counted = core.joining();
        done.wait_until(|| core.unfinished() <= 0).await
    }

    /// Like [`join`](Self::join), but gives up after `timeout` with
    /// [`JoinTimeoutError::Timeout`], which says how many tasks were still unfinished (for
    /// instance because the workers holding them were killed). Cancel-safe.
    pub async fn join_timeout(&self, timeout: Duration) -> Result<(), JoinTimeoutError> {
        if self.core().unfinished() <= 0 {
            return Ok(());
        }
        let deadline = deadline_in_runtime(timeout)?;
        match tokio::time::timeout_at(deadline, self.join()).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(JoinTimeoutError::Timeout {
                unfinished: self.unfinished(),
            }),
        }
    }

    /// [`join`](Self::join) from synchronous code: blocks the calling thread (with
    /// `poll(2)`, no runtime needed) until every task is done.
    pub fn blocking_join(&self) -> std::io::Result<()> {
        self.blocking_join_until(None).map(drop)
    }

    /// [`blocking_join`](Self::blocking_join), giving up after `timeout` with
    /// [`JoinTimeoutError::Timeout`] and the number of tasks still unfinished.
    pub fn blocking_join_timeout(&self, timeout: Duration) -> Result<(), JoinTimeoutError> {
        match self.blocking_join_until(std::time::Instant::now().checked_add(timeout))? {
            true => Ok(()),
            false => Err(JoinTimeoutError::Timeout {
                unfinished: self.unfinished(),
            }),
        }
    }

    fn blocking_join_until(&self, deadline: Option<std::time::Instant>) -> std::io::Result<bool> {
        self.core().blocking_wait_finished(deadline)
    }

    /// [`Queue::len`].
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// [`Queue::is_empty`].
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// [`Queue::is_full`].
    pub fn is_full(&self) -> bool {
        self.queue.is_full()
    }

    /// [`Queue::maxsize`].
    pub fn maxsize(&self) -> Option<usize> {
        self.queue.maxsize()
    }

    /// [`Queue::flush`]. Cancel-safe.
    pub async fn flush(&self) -> Result<(), FlushError> {
        self.queue.flush().await
    }

    /// [`Queue::flush_timeout`]. Cancel-safe.
    pub async fn flush_timeout(&self, timeout: Duration) -> Result<(), FlushTimeoutError> {
        self.queue.flush_timeout(timeout).await
    }

    /// [`Queue::blocking_flush`].
    pub fn blocking_flush(&self) -> Result<(), FlushError> {
        self.queue.blocking_flush()
    }

    /// [`Queue::blocking_flush_timeout`].
    pub fn blocking_flush_timeout(&self, timeout: Duration) -> Result<(), FlushTimeoutError> {
        self.queue.blocking_flush_timeout(timeout)
    }

    /// [`Queue::close`].
    pub fn close(&self) {
        self.queue.close()
    }
}

impl<T: Serialize> JoinableQueue<T> {
    /// [`Queue::put`]: adds a task. Cancel-safe.
    pub async fn put(&self, item: T) -> Result<(), SendError<T>> {
        self.queue.put(item).await
    }

    /// [`Queue::put_timeout`]. Cancel-safe.
    pub async fn put_timeout(&self, item: T, timeout: Duration) -> Result<(), SendTimeoutError<T>> {
        self.queue.put_timeout(item, timeout).await
    }

    /// [`Queue::try_put`].
    pub fn try_put(&self, item: T) -> Result<(), TrySendError<T>> {
        self.queue.try_put(item)
    }

    /// [`Queue::blocking_put`].
    pub fn blocking_put(&self, item: T) -> Result<(), SendError<T>> {
        self.queue.blocking_put(item)
    }

    /// [`Queue::blocking_put_timeout`]: the item back at the timeout.
    pub fn blocking_put_timeout(
        &self,
        item: T,
        timeout: Duration,
    ) -> Result<(), SendTimeoutError<T>> {
        self.queue.blocking_put_timeout(item, timeout)
    }
}

impl<T: DeserializeOwned> JoinableQueue<T> {
    /// [`Queue::get`]: call [`task_done`](Self::task_done) when finished with the item.
    /// Cancel-safe.
    pub async fn get(&self) -> Result<T, RecvError> {
        self.queue.get().await
    }

    /// [`Queue::get_timeout`]. Cancel-safe.
    pub async fn get_timeout(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        self.queue.get_timeout(timeout).await
    }

    /// [`Queue::try_get`].
    pub fn try_get(&self) -> Result<T, TryRecvError> {
        self.queue.try_get()
    }

    /// [`Queue::blocking_get`].
    pub fn blocking_get(&self) -> Result<T, RecvError> {
        self.queue.blocking_get()
    }

    /// [`Queue::blocking_get_timeout`]: `Timeout` at the deadline, nothing lost.
    pub fn blocking_get_timeout(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        self.queue.blocking_get_timeout(timeout)
    }

    /// [`Queue::drain`]: the items returned no longer count as tasks. Not cancel-safe.
    pub async fn drain(&self, timeout: Duration) -> Drained<T> {
        self.queue.drain(timeout).await
    }

    /// [`Queue::blocking_drain`].
    pub fn blocking_drain(&self, timeout: Duration) -> Drained<T> {
        self.queue.blocking_drain(timeout)
    }
}

impl<T> Clone for JoinableQueue<T> {
    fn clone(&self) -> Self {
        JoinableQueue {
            queue: self.queue.clone(),
        }
    }
}

impl<T> fmt::Debug for JoinableQueue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinableQueue")
            .field("queue", &self.queue)
            .field("unfinished", &self.unfinished())
            .finish()
    }
}

impl<T> spawn::Rebuild for JoinableQueue<T> {
    const KIND: Kind = Kind::JoinableQueue;
    const DESCRIPTORS: usize = 5;
    fn types() -> Vec<&'static str> {
        vec![std::any::type_name::<T>()]
    }
    fn rebuild(taken: spawn::Taken, buffer: Option<usize>) -> Result<Self, FromEnvError> {
        Ok(JoinableQueue {
            queue: Queue::from_core(Core::adopt(taken, Kind::JoinableQueue, buffer)?),
        })
    }
}

impl<T> spawn::sealed::Sealed for JoinableQueue<T> {}
impl<T> Passable for JoinableQueue<T> {
    fn describe(&self) -> Result<Passed, Error> {
        self.core()
            .passed(Kind::JoinableQueue, &[std::any::type_name::<T>()])
    }
}
