//! Python's `multiprocessing.Queue`: one handle that any process holding it can put into
//! and get from.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::core::{Core, PutGuard};
use super::event::Acquired;
use crate::channel::deadline_in_runtime;
use crate::channel::sender::timeout_error;
use crate::error::{
    Error, FlushError, FlushTimeoutError, FromEnvError, RecvError, RecvTimeoutError, SendError,
    SendErrorKind, SendTimeoutError, TryRecvError, TrySendError,
};
use crate::options::Options;
use crate::recv::{Message, Take};
use crate::send::{Fail, Item};
use crate::spawn::{self, Kind, Passable, Passed};
use crate::Drained;

/// A multi-producer, multi-consumer queue shared between processes: Python's
/// `multiprocessing.Queue`. Every process that holds it (passed with [`pass`](crate::pass))
/// can [`put`](Self::put) and [`get`](Self::get); any number of tasks in a process may
/// put and get on clones at once.
///
/// A `Queue` holds both ends of one channel plus a header every holder maps:
/// [`len`](Self::len) counts across processes and, for [`Queue::bounded`], the bound
/// counts items across processes.
///
/// `get` waits for an item; it returns [`RecvError::Closed`] only once every process has
/// closed its putting side ([`close`](Self::close)) or exited. Use
/// [`get_timeout`](Self::get_timeout) when the producers might be gone.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// let q = procq::Queue::<String>::bounded(10)?;
/// q.put("job".to_string()).await?;
/// assert_eq!(q.len(), 1);
/// assert_eq!(q.get_timeout(Duration::from_secs(5)).await?, "job");
/// # Ok(()) }
/// ```
///
/// | Python | procq |
/// |---|---|
/// | `Queue(maxsize)` | [`Queue::bounded`] (0 means unbounded, as in Python) |
/// | `put(obj)` / `put(obj, timeout=t)` / `put_nowait(obj)` | [`put`](Self::put) / [`put_timeout`](Self::put_timeout) / [`try_put`](Self::try_put) |
/// | `get()` / `get(timeout=t)` / `get_nowait()` | [`get`](Self::get) / [`get_timeout`](Self::get_timeout) / [`try_get`](Self::try_get) |
/// | `qsize()`, `empty()`, `full()` | [`len`](Self::len), [`is_empty`](Self::is_empty), [`is_full`](Self::is_full) |
/// | `close()` | [`close`](Self::close) |
/// | `join_thread()` | [`drain`](Self::drain) with a timeout: returns what did not get out, never hangs |
/// | `cancel_join_thread()` | nothing to do: exit never waits for the buffer (what is left is reported) |
pub struct Queue<T> {
    pub(crate) core: Arc<Core>,
    _item: PhantomData<fn(T) -> T>,
}

fn decode<T: DeserializeOwned>(message: Message<'_>) -> Take<Result<T, crate::error::DecodeError>> {
    Take::Consume(message.decode())
}

impl<T> Queue<T> {
    pub(crate) fn from_core(core: Core) -> Self {
        Queue {
            core: Arc::new(core),
            _item: PhantomData,
        }
    }

    /// An unbounded queue. Needs no runtime.
    pub fn new() -> Result<Self, Error> {
        Self::with_options(0, &Options::default())
    }

    /// A queue holding at most `maxsize` items across all processes: a `put` beyond that
    /// waits for a `get` anywhere. `maxsize` 0 means unbounded, as in Python.
    pub fn bounded(maxsize: usize) -> Result<Self, Error> {
        Self::with_options(maxsize, &Options::default())
    }

    /// A queue with a bound (0 for none) and channel [`Options`]: for instance
    /// [`queue_options`](crate::queue_options) to share work evenly between consumer
    /// processes. The options travel with the queue to every process.
    pub fn with_options(maxsize: usize, opts: &Options) -> Result<Self, Error> {
        Ok(Self::from_core(Core::create(maxsize, false, opts)?))
    }

    /// Rebuilds a queue a parent passed under `name` with [`pass`](crate::pass): the same
    /// queue, with the settings it was made with. Errors as
    /// [`Sender::from_env`](crate::Sender::from_env).
    pub fn from_env(name: &str) -> Result<Self, FromEnvError> {
        spawn::from_env(name, None)
    }

    /// [`from_env`](Self::from_env) with this process's own buffer size for its puts.
    pub fn from_env_with_buffer(name: &str, buffer_bytes: usize) -> Result<Self, FromEnvError> {
        spawn::from_env(name, Some(buffer_bytes))
    }
}

impl<T> spawn::Rebuild for Queue<T> {
    const KIND: Kind = Kind::Queue;
    const DESCRIPTORS: usize = 4;
    fn types() -> Vec<&'static str> {
        vec![std::any::type_name::<T>()]
    }
    fn rebuild(taken: spawn::Taken, buffer: Option<usize>) -> Result<Self, FromEnvError> {
        Ok(Self::from_core(Core::adopt(taken, Kind::Queue, buffer)?))
    }
}

impl<T: Serialize> Queue<T> {
    /// Puts an item, waiting while the queue is full (bounded) or this process's buffer is.
    /// Resolves when the item is buffered; see [`flush`](Self::flush).
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: a put dropped before it completes has not put its item, and gives back
    /// the slot it may have taken.
    pub async fn put(&self, item: T) -> Result<(), SendError<T>> {
        match self.put_until(item, None).await {
            Ok(()) => Ok(()),
            Err(SendTimeoutError::Failed(e)) => Err(e),
            Err(SendTimeoutError::Timeout(_)) => unreachable!("no deadline"),
        }
    }

    /// Like [`put`](Self::put), but gives up once `timeout` has passed without room:
    /// [`SendTimeoutError::Timeout`] with the item, nothing put. Cancel-safe.
    pub async fn put_timeout(&self, item: T, timeout: Duration) -> Result<(), SendTimeoutError<T>> {
        let deadline = match deadline_in_runtime(timeout) {
            Ok(at) => at,
            Err(e) => return Err(SendError::new(item, SendErrorKind::Io(e)).into()),
        };
        self.put_until(item, Some(deadline)).await
    }

    async fn put_until(
        &self,
        item: T,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<(), SendTimeoutError<T>> {
        if let Some(slots) = &self.core.slots {
            if let Some(kind) = self.core.send.refused() {
                return Err(SendError::new(item, kind).into());
            }
            // A close of this process's putting side ends the wait for a slot too.
            let send = &self.core.send;
            let slot = async {
                tokio::select! {
                    acquired = slots.acquire() => acquired.map_err(SendErrorKind::Io),
                    _ = send.closed() => Err(send.refused().unwrap_or(SendErrorKind::Disconnected)),
                }
            };
            let acquired = match deadline {
                None => slot.await,
                Some(at) => match tokio::time::timeout_at(at, slot).await {
                    Ok(r) => r,
                    Err(_) => return Err(SendTimeoutError::Timeout(item)),
                },
            };
            if let Err(kind) = acquired {
                return Err(SendError::new(item, kind).into());
            }
        }
        let mut guard = self.begin_put();
        match self.core.send.send(&Item(&item), deadline).await {
            Ok(()) => {
                guard.armed = false;
                Ok(())
            }
            Err(fail) => Err(timeout_error(item, fail)),
        }
    }

    fn begin_put(&self) -> PutGuard<'_> {
        self.core.count_in();
        PutGuard {
            core: &self.core,
            armed: true,
        }
    }

    /// Puts an item if there is room now (Python's `put_nowait`);
    /// [`TrySendError::Full`] gives it back.
    pub fn try_put(&self, item: T) -> Result<(), TrySendError<T>> {
        if let Some(slots) = &self.core.slots {
            if let Some(kind) = self.core.send.refused() {
                return Err(SendError::new(item, kind).into());
            }
            match slots.try_acquire() {
                Ok(true) => {}
                Ok(false) => return Err(TrySendError::Full(item)),
                Err(e) => return Err(SendError::new(item, SendErrorKind::Io(e)).into()),
            }
        }
        let mut guard = self.begin_put();
        match self.core.send.try_send(&Item(&item)) {
            Ok(()) => {
                guard.armed = false;
                Ok(())
            }
            Err(Fail::Full | Fail::Timeout) => Err(TrySendError::Full(item)),
            Err(Fail::Failed(kind)) => Err(SendError::new(item, kind).into()),
        }
    }

    /// Puts an item from synchronous code, blocking the calling thread while the queue is
    /// full (bounded) or the kernel has no room. Works with or without a runtime; the item
    /// is in the kernel when this returns `Ok` (see
    /// [`Sender::blocking_send`](crate::Sender::blocking_send)).
    pub fn blocking_put(&self, item: T) -> Result<(), SendError<T>> {
        match self.blocking_put_until(item, None) {
            Ok(()) => Ok(()),
            Err(SendTimeoutError::Failed(e)) => Err(e),
            Err(SendTimeoutError::Timeout(_)) => unreachable!("no deadline"),
        }
    }

    /// [`blocking_put`](Self::blocking_put), giving up after `timeout` with the item.
    pub fn blocking_put_timeout(
        &self,
        item: T,
        timeout: Duration,
    ) -> Result<(), SendTimeoutError<T>> {
        self.blocking_put_until(item, Instant::now().checked_add(timeout))
    }

    fn blocking_put_until(
        &self,
        item: T,
        deadline: Option<Instant>,
    ) -> Result<(), SendTimeoutError<T>> {
        if let Some(slots) = &self.core.slots {
            // Waits for a slot or for this process's putting side to close (another
            // thread's `close`), whichever comes first.
            let acquired = self.core.send.closing_fd().and_then(|closing| {
                slots.blocking_acquire_unless(closing, || self.core.send.refused(), deadline)
            });
            match acquired {
                Ok(Acquired::Yes) => {}
                Ok(Acquired::TimedOut) => return Err(SendTimeoutError::Timeout(item)),
                Ok(Acquired::Refused(kind)) => return Err(SendError::new(item, kind).into()),
                Err(e) => return Err(SendError::new(item, SendErrorKind::Io(e)).into()),
            }
        }
        let mut guard = self.begin_put();
        match self.core.send.blocking_send(&Item(&item), deadline) {
            Ok(()) => {
                guard.armed = false;
                Ok(())
            }
            Err(fail) => Err(timeout_error(item, fail)),
        }
    }
}

impl<T: DeserializeOwned> Queue<T> {
    /// Gets an item, waiting for one.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: an item is taken only when the future completes; one read from the
    /// socket stays in the queue's inbox for the next get, by this task or any other.
    pub async fn get(&self) -> Result<T, RecvError> {
        let item = self.core.inbox.take(&mut decode::<T>).await?;
        self.core.got_one();
        item.map_err(RecvError::Decode)
    }

    /// Like [`get`](Self::get), but gives up with [`RecvTimeoutError::Timeout`] after
    /// `timeout`; nothing is lost. Cancel-safe.
    pub async fn get_timeout(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        match self.try_get() {
            Err(TryRecvError::Empty) => {}
            Ok(item) => return Ok(item),
            Err(e) => return Err(RecvTimeoutError::from(e.into_recv())),
        }
        let deadline = deadline_in_runtime(timeout).map_err(RecvTimeoutError::Io)?;
        match tokio::time::timeout_at(deadline, self.get()).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(RecvTimeoutError::Timeout),
        }
    }

    /// Gets an item if one is ready now (Python's `get_nowait`); [`TryRecvError::Empty`]
    /// if not.
    pub fn try_get(&self) -> Result<T, TryRecvError> {
        let item = self.core.inbox.try_take(&mut decode::<T>)?;
        self.core.got_one();
        item.map_err(TryRecvError::Decode)
    }

    /// Gets an item from synchronous code, blocking the calling thread until one comes.
    pub fn blocking_get(&self) -> Result<T, RecvError> {
        match self.blocking_get_until(None) {
            Ok(item) => Ok(item),
            Err(RecvTimeoutError::Closed) => Err(RecvError::Closed),
            Err(RecvTimeoutError::Decode(d)) => Err(RecvError::Decode(d)),
            Err(RecvTimeoutError::Io(e)) => Err(RecvError::Io(e)),
            Err(RecvTimeoutError::Timeout) => unreachable!("no deadline"),
        }
    }

    /// [`blocking_get`](Self::blocking_get), giving up after `timeout`.
    pub fn blocking_get_timeout(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        self.blocking_get_until(Instant::now().checked_add(timeout))
    }

    fn blocking_get_until(&self, deadline: Option<Instant>) -> Result<T, RecvTimeoutError> {
        let item = self.core.inbox.blocking_take(&mut decode::<T>, deadline)?;
        self.core.got_one();
        item.map_err(RecvTimeoutError::Decode)
    }

    /// Closes this process's putting side, flushes for at most `timeout`, and returns the
    /// items that did not reach the kernel (they no longer count in [`len`](Self::len)).
    /// Python's `join_thread()`, minus the hang. Not cancel-safe; see
    /// [`Sender::drain`](crate::Sender::drain).
    pub async fn drain(&self, timeout: Duration) -> Drained<T> {
        let (left, end) = self.core.send.drain(timeout).await;
        let drained = Drained::decode(left, end, self.core.send.limits().max_item);
        self.forget_drained(&drained);
        drained
    }

    /// [`drain`](Self::drain) from synchronous code.
    pub fn blocking_drain(&self, timeout: Duration) -> Drained<T> {
        let (left, end) = self.core.send.blocking_drain(timeout);
        let drained = Drained::decode(left, end, self.core.send.limits().max_item);
        self.forget_drained(&drained);
        drained
    }

    fn forget_drained(&self, drained: &Drained<T>) {
        let left = drained.items().len() + drained.undecodable();
        if left > 0 {
            self.core.forget(left as u64);
        }
    }
}

impl<T> Queue<T> {
    /// Items put and not yet got, counted across every process. Approximate in the way
    /// Python's `qsize()` is: other processes put and get while you look, and an item
    /// counts from the moment its `put` starts.
    pub fn len(&self) -> usize {
        self.core.queued().max(0) as usize
    }

    /// `len() == 0`; approximate as [`len`](Self::len) is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A bounded queue holding `maxsize` items; approximate as [`len`](Self::len) is.
    pub fn is_full(&self) -> bool {
        self.maxsize().is_some_and(|max| self.len() >= max)
    }

    /// The bound, if the queue has one.
    pub fn maxsize(&self) -> Option<usize> {
        let max = self.core.maxsize();
        (max > 0).then_some(max as usize)
    }

    /// Resolves when every item this process put before the call is in the kernel.
    /// Cancel-safe.
    pub async fn flush(&self) -> Result<(), FlushError> {
        self.core.send.flush().await
    }

    /// [`flush`](Self::flush), giving up after `timeout` with
    /// [`FlushTimeoutError::Timeout`] (the items keep flowing). Cancel-safe.
    pub async fn flush_timeout(&self, timeout: Duration) -> Result<(), FlushTimeoutError> {
        let deadline = deadline_in_runtime(timeout).map_err(FlushError::Io)?;
        match tokio::time::timeout_at(deadline, self.core.send.flush()).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(FlushTimeoutError::Timeout {
                unwritten: self.core.send.unwritten(),
            }),
        }
    }

    /// [`flush`](Self::flush) from synchronous code: the calling thread writes.
    pub fn blocking_flush(&self) -> Result<(), FlushError> {
        self.core.send.blocking_flush(None).map(drop)
    }

    /// [`blocking_flush`](Self::blocking_flush), giving up after `timeout`.
    pub fn blocking_flush_timeout(&self, timeout: Duration) -> Result<(), FlushTimeoutError> {
        match self
            .core
            .send
            .blocking_flush(Instant::now().checked_add(timeout))?
        {
            true => Ok(()),
            false => Err(FlushTimeoutError::Timeout {
                unwritten: self.core.send.unwritten(),
            }),
        }
    }

    /// Stops this process's puts; what was put still flows. Python's `close()`. Once every
    /// process has closed its putting side (or exited), `get` returns
    /// [`RecvError::Closed`] after the last item.
    pub fn close(&self) {
        self.core.send.close();
    }
}

impl<T> Clone for Queue<T> {
    fn clone(&self) -> Self {
        Queue {
            core: self.core.clone(),
            _item: PhantomData,
        }
    }
}

impl<T> fmt::Debug for Queue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue")
            .field("item", &crate::channel::TypeName::<T>::new())
            .field("len", &self.core.queued())
            .field("maxsize", &self.core.maxsize())
            .finish_non_exhaustive()
    }
}

impl<T> spawn::sealed::Sealed for Queue<T> {}
impl<T> Passable for Queue<T> {
    fn describe(&self) -> Result<Passed, Error> {
        self.core.passed(Kind::Queue, &[std::any::type_name::<T>()])
    }
}
