//! Python's `multiprocessing.Queue` and `JoinableQueue`: one handle that any process
//! holding it can put into and get from.

use std::fmt;
use std::ops::Deref;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{
    Error, FlushError, JoinError, RecvError, SendError, SendErrorKind, TaskDoneError,
};
use tokio::io::Interest;

use crate::event::Event;
use crate::options::Options;
use crate::pass::{self, Kind, Passable, Passed};
use crate::sys::SharedCounters;
use crate::{Drained, Receiver, Sender};

/// Items put and not yet got, in every process (Python's `qsize`).
const QUEUED: usize = 0;
/// Items put and not yet marked done (`JoinableQueue`).
const UNFINISHED: usize = 1;
/// The bound; 0 for none.
const MAXSIZE: usize = 2;
/// Items per datagram chosen by the creator ([`Options::batch_items`]); 0 for no limit.
/// Kept here so every process's puts batch the same way.
const BATCH: usize = 3;

/// Options for a queue whose consumers share work evenly: `Options::new().batch_items(1)`.
///
/// By default a queue, like a channel, packs many items into each datagram, and a
/// datagram goes to exactly one consumer process: that consumer takes the whole batch, gets
/// the items from it one by one, and the others wait for the next datagram. That is what
/// makes the default fast (measured here, 512-byte items, 1 → 1: about 3.6M items/s
/// batched against 0.3–0.5M with one system call per item). It also means:
///
/// * with several consumers doing slow work per item, one may sit on a batch while others
///   idle;
/// * a consumer killed with SIGKILL loses the rest of its batch. (A consumer that stops
///   normally loses nothing: when its last handle to the queue is dropped, the unread
///   items go back into the queue.)
///
/// With `Queue::with_options(maxsize, &procq::queue_options())` each `get` takes exactly one
/// item out of the kernel, as Python's `get` does: use it for worker pools whose items are
/// work (anything slower than a few microseconds per item), or whose workers may be killed.
pub fn queue_options() -> Options {
    Options::new().batch_items(1)
}

/// What every process holding a queue shares.
struct Shared {
    counters: SharedCounters,
    /// Free slots of a bounded queue: `put` takes one, `get` gives one back.
    slots: Option<Event>,
    /// A `JoinableQueue`'s "a task finished" signal, which `join` waits on.
    done: Option<Event>,
    /// Items this process got and has not yet called `task_done` for.
    got: AtomicU64,
}

impl Shared {
    fn counter(&self, i: usize) -> i64 {
        self.counters.get(i).load(Ordering::SeqCst)
    }

    fn add(&self, i: usize, n: i64) -> i64 {
        self.counters.get(i).fetch_add(n, Ordering::SeqCst) + n
    }

    /// Accounts for `n` items leaving the queue without a `get` (drained, or a put undone).
    fn forget(&self, n: i64) {
        self.add(QUEUED, -n);
        if let Some(slots) = &self.slots {
            let _ = slots.add(n as u64);
        }
        if self.done.is_some() {
            self.finish(n);
        }
    }

    /// Marks `n` tasks finished, waking joiners when none is left.
    fn finish(&self, n: i64) {
        if self.add(UNFINISHED, -n) <= 0 {
            if let Some(done) = &self.done {
                let _ = done.add(1);
            }
        }
    }
}

/// A put in progress: undoes its accounting (slot, counts) unless it completed, so a
/// cancelled or failed put leaves the queue as it was.
struct PutGuard<'a> {
    shared: &'a Shared,
    armed: bool,
}

impl Drop for PutGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.shared.forget(1);
        }
    }
}

/// A multi-producer, multi-consumer queue shared between processes: Python's
/// `multiprocessing.Queue`. Every process that holds it (passed with [`pass`](crate::pass))
/// can [`put`](Self::put) and [`get`](Self::get).
///
/// A `Queue` is a [`Sender`] and a [`Receiver`] of one channel in one handle, plus counters
/// every holder shares: [`len`](Self::len) across processes and, for
/// [`Queue::bounded`], a bound that counts items across processes.
///
/// Unlike a channel, a queue has no end: every holder can put, so `get` waits until an item
/// comes. Use [`get_timeout`](Self::get_timeout) when the producers might be gone.
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
    tx: Sender<T>,
    rx: Receiver<T>,
    shared: Arc<Shared>,
}

impl<T> Queue<T>
where
    T: Serialize + DeserializeOwned + Send + 'static,
{
    /// An unbounded queue. Must be called inside a tokio runtime.
    pub fn new() -> Result<Self, Error> {
        Self::with_options(0, &Options::default())
    }

    /// A queue holding at most `maxsize` items across all processes: a `put` beyond that
    /// waits for a `get` anywhere. `maxsize` 0 means unbounded, as in Python.
    pub fn bounded(maxsize: usize) -> Result<Self, Error> {
        Self::with_options(maxsize, &Options::default())
    }

    /// A queue with a bound (0 for none) and channel [`Options`]: for instance
    /// [`queue_options`] to share work evenly between consumer processes.
    pub fn with_options(maxsize: usize, opts: &Options) -> Result<Self, Error> {
        Self::create(maxsize, false, opts)
    }

    fn create(maxsize: usize, joinable: bool, opts: &Options) -> Result<Self, Error> {
        let (tx, rx) = opts.channel::<T>()?;
        let counters = SharedCounters::create()?;
        counters
            .get(MAXSIZE)
            .store(maxsize as i64, Ordering::SeqCst);
        let batch = i64::try_from(opts.batch_items).unwrap_or(0);
        counters.get(BATCH).store(batch, Ordering::SeqCst);
        let slots = if maxsize > 0 {
            Some(Event::semaphore(maxsize as u64)?)
        } else {
            None
        };
        let done = if joinable {
            Some(Event::signal()?)
        } else {
            None
        };
        let shared = Shared {
            counters,
            slots,
            done,
            got: AtomicU64::new(0),
        };
        Ok(Queue {
            tx,
            rx,
            shared: Arc::new(shared),
        })
    }

    /// Rebuilds a queue a parent passed under `name` with [`pass`](crate::pass).
    pub fn from_env(name: &str) -> Result<Self, Error> {
        Self::from_env_with(name, &Options::default())
    }

    /// [`from_env`](Self::from_env) with this process's own [`Options`]; the queue's
    /// `batch_items` stays what its creator chose.
    pub fn from_env_with(name: &str, opts: &Options) -> Result<Self, Error> {
        Self::adopt(name, Kind::Queue, opts)
    }

    fn adopt(name: &str, kind: Kind, opts: &Options) -> Result<Self, Error> {
        crate::options::runtime()?;
        let joinable = kind == Kind::JoinableQueue;
        let mut taken = pass::take(name, kind, if joinable { 5 } else { 4 })?;
        let send_end = taken.socket(Interest::WRITABLE)?;
        let recv_end = taken.socket(Interest::READABLE)?;
        let counters = SharedCounters::adopt(taken.fd()?)?;
        let batch = counters.get(BATCH).load(Ordering::SeqCst);
        let opts = &match usize::try_from(batch) {
            Ok(b) if b > 0 => opts.clone().batch_items(b),
            _ => opts.clone(),
        };
        let tx = Sender::from_socket(send_end, opts)?;
        let rx = Receiver::from_socket(recv_end, opts);
        let slots = taken.optional()?.map(Event::adopt).transpose()?;
        let done = if joinable {
            Some(Event::adopt(taken.fd()?)?)
        } else {
            None
        };
        let shared = Shared {
            counters,
            slots,
            done,
            got: AtomicU64::new(0),
        };
        Ok(Queue {
            tx,
            rx,
            shared: Arc::new(shared),
        })
    }

    /// Puts an item, waiting while the queue is full (bounded) or this process's buffer is.
    /// Resolves when the item is buffered; see [`flush`](Self::flush).
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: a put dropped before it completes has not put its item, and gives back
    /// the slot it may have taken.
    pub async fn put(&self, item: T) -> Result<(), SendError<T>> {
        self.put_until(item, None).await
    }

    /// Like [`put`](Self::put), but gives up at `timeout` with
    /// [`SendErrorKind::Timeout`] and the item.
    pub async fn put_timeout(&self, item: T, timeout: Duration) -> Result<(), SendError<T>> {
        self.put_until(item, Some(tokio::time::Instant::now() + timeout))
            .await
    }

    async fn put_until(
        &self,
        item: T,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<(), SendError<T>> {
        if let Some(slots) = &self.shared.slots {
            let acquired = match deadline {
                None => slots.acquire().await,
                Some(at) => match tokio::time::timeout_at(at, slots.acquire()).await {
                    Ok(r) => r,
                    Err(_) => return Err(SendError::new(item, SendErrorKind::Timeout)),
                },
            };
            if let Err(e) = acquired {
                return Err(SendError::new(item, SendErrorKind::Io(e)));
            }
        }
        let mut guard = self.begin_put();
        self.tx.send_until(item, deadline).await?;
        guard.armed = false;
        Ok(())
    }

    /// Counts an item in before it is sent (so a fast `get` and `task_done` elsewhere never
    /// see the counts go negative); the guard counts it out again unless disarmed.
    fn begin_put(&self) -> PutGuard<'_> {
        self.shared.add(QUEUED, 1);
        if self.shared.done.is_some() {
            self.shared.add(UNFINISHED, 1);
        }
        PutGuard {
            shared: &self.shared,
            armed: true,
        }
    }

    /// Puts an item if there is room now (Python's `put_nowait`); `Full` gives it back.
    pub fn try_put(&self, item: T) -> Result<(), SendError<T>> {
        if let Some(slots) = &self.shared.slots {
            match slots.try_acquire() {
                Ok(true) => {}
                Ok(false) => return Err(SendError::new(item, SendErrorKind::Full)),
                Err(e) => return Err(SendError::new(item, SendErrorKind::Io(e))),
            }
        }
        let mut guard = self.begin_put();
        self.tx.try_send(item)?;
        guard.armed = false;
        Ok(())
    }

    /// Gets an item, waiting for one. Cancel-safe: an item is taken only when the future
    /// completes.
    pub async fn get(&self) -> Result<T, RecvError> {
        let item = self.rx.recv().await?;
        self.got_one();
        Ok(item)
    }

    /// Like [`get`](Self::get), but gives up with [`RecvError::Timeout`] after `timeout`.
    pub async fn get_timeout(&self, timeout: Duration) -> Result<T, RecvError> {
        let item = self.rx.recv_timeout(timeout).await?;
        self.got_one();
        Ok(item)
    }

    /// Gets an item if one is ready now (Python's `get_nowait`); `Empty` if not.
    pub fn try_get(&self) -> Result<T, RecvError> {
        let item = self.rx.try_recv()?;
        self.got_one();
        Ok(item)
    }

    fn got_one(&self) {
        self.shared.add(QUEUED, -1);
        if let Some(slots) = &self.shared.slots {
            let _ = slots.add(1);
        }
        if self.shared.done.is_some() {
            self.shared.got.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Items put and not yet got, counted across every process. Approximate in the way
    /// Python's `qsize()` is: other processes put and get while you look, and an item
    /// counts from the moment its `put` starts. Works on every platform procq builds on
    /// (Python's raises `NotImplementedError` on macOS).
    pub fn len(&self) -> usize {
        self.shared.counter(QUEUED).max(0) as usize
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
        let max = self.shared.counter(MAXSIZE);
        (max > 0).then_some(max as usize)
    }

    /// Resolves when every item this process put before the call is in the kernel.
    /// Cancel-safe.
    pub async fn flush(&self) -> Result<(), FlushError> {
        self.tx.flush().await
    }

    /// Stops this process's puts; what was put still flows. Python's `close()`.
    pub fn close(&self) {
        self.tx.close();
    }

    /// Closes this process's putting side, flushes for at most `timeout`, and returns the
    /// items that did not reach the kernel (they no longer count in [`len`](Self::len)).
    /// Python's `join_thread()`, minus the hang. Not cancel-safe; see [`Sender::drain`].
    pub async fn drain(&self, timeout: Duration) -> Drained<T> {
        let drained = self.tx.drain(timeout).await;
        let left = drained.items().len() + drained.undecodable();
        if left > 0 {
            self.shared.forget(left as i64);
        }
        drained
    }
}

impl<T> Drop for Queue<T> {
    fn drop(&mut self) {
        // The last handle in this process: items it read in a batch but never got go back
        // into the queue for other processes, instead of being lost with this process.
        if Arc::strong_count(&self.shared) == 1 {
            let lost = match self.tx.socket() {
                Ok(socket) => self.rx.give_back(&socket),
                Err(_) => 0, // closed: the receiver's own drop reports what is left
            };
            if lost > 0 {
                tracing::warn!(
                    items = lost,
                    "procq: could not give {lost} unread items back to the queue"
                );
            }
        }
    }
}

impl<T> Clone for Queue<T> {
    fn clone(&self) -> Self {
        Queue {
            tx: self.tx.clone(),
            rx: self.rx.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<T> fmt::Debug for Queue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue")
            .field("len", &self.shared.counter(QUEUED))
            .field("maxsize", &self.shared.counter(MAXSIZE))
            .finish_non_exhaustive()
    }
}

impl<T> Queue<T> {
    fn passed(&self, kind: Kind) -> Result<Passed, Error> {
        let tx = self.tx.socket()?;
        let s = &self.shared;
        pass::passed(
            kind,
            &[
                Some(tx.get_ref().as_fd()),
                Some(self.rx.socket().get_ref().as_fd()),
                Some(s.counters.fd()),
                s.slots.as_ref().map(Event::fd),
                s.done.as_ref().map(Event::fd),
            ][..if kind == Kind::JoinableQueue { 5 } else { 4 }],
        )
    }
}

impl<T> pass::sealed::Sealed for Queue<T> {}
impl<T> Passable for Queue<T> {
    fn into_passed(self) -> Result<Passed, Error> {
        self.passed(Kind::Queue)
    }
}

/// A [`Queue`] that also counts unfinished tasks: Python's
/// `multiprocessing.JoinableQueue`. Every `put` adds a task; a consumer calls
/// [`task_done`](Self::task_done) when it has finished with an item it got; [`join`](Self::join)
/// (in any process) waits until every task is done.
///
/// It dereferences to [`Queue`], so `put`, `get`, `len` and the rest are there.
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

impl<T> JoinableQueue<T>
where
    T: Serialize + DeserializeOwned + Send + 'static,
{
    /// An unbounded joinable queue. Must be called inside a tokio runtime.
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
            queue: Queue::create(maxsize, true, opts)?,
        })
    }

    /// Rebuilds a joinable queue a parent passed under `name` with [`pass`](crate::pass).
    pub fn from_env(name: &str) -> Result<Self, Error> {
        Self::from_env_with(name, &Options::default())
    }

    /// [`from_env`](Self::from_env) with this process's own [`Options`].
    pub fn from_env_with(name: &str, opts: &Options) -> Result<Self, Error> {
        Ok(JoinableQueue {
            queue: Queue::adopt(name, Kind::JoinableQueue, opts)?,
        })
    }
}

impl<T> JoinableQueue<T> {
    fn shared(&self) -> &Shared {
        &self.queue.shared
    }

    /// Marks one item this process got as finished. Fails, changing nothing, if this
    /// process has called it as many times as it got items (Python raises `ValueError`
    /// when the queue-wide count would go below zero; procq checks per process, which also
    /// catches a consumer marking another's work).
    pub fn task_done(&self) -> Result<(), TaskDoneError> {
        let s = self.shared();
        s.got
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |g| g.checked_sub(1))
            .map_err(|_| TaskDoneError)?;
        s.finish(1);
        Ok(())
    }

    /// Tasks put (in any process) and not yet marked done.
    pub fn unfinished(&self) -> u64 {
        self.shared().counter(UNFINISHED).max(0) as u64
    }

    /// Waits until every task put in any process has been marked done. The wait is on an
    /// eventfd through the reactor: no CPU is used while waiting, and the waiter wakes as
    /// soon as the last `task_done` (in whatever process) signals it.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: it only waits.
    pub async fn join(&self) -> Result<(), JoinError> {
        let s = self.shared();
        let done = s.done.as_ref().expect("a JoinableQueue has a done signal");
        done.wait_until(|| s.counter(UNFINISHED) <= 0)
            .await
            .map_err(JoinError::Io)
    }

    /// Like [`join`](Self::join), but gives up after `timeout` with
    /// [`JoinError::Timeout`], which says how many tasks were still unfinished (for
    /// instance because the workers holding them were killed).
    pub async fn join_timeout(&self, timeout: Duration) -> Result<(), JoinError> {
        match tokio::time::timeout(timeout, self.join()).await {
            Ok(result) => result,
            Err(_) => Err(JoinError::Timeout {
                unfinished: self.unfinished(),
            }),
        }
    }
}

impl<T> Deref for JoinableQueue<T> {
    type Target = Queue<T>;
    fn deref(&self) -> &Queue<T> {
        &self.queue
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

impl<T> pass::sealed::Sealed for JoinableQueue<T> {}
impl<T> Passable for JoinableQueue<T> {
    fn into_passed(self) -> Result<Passed, Error> {
        self.queue.passed(Kind::JoinableQueue)
    }
}
