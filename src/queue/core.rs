//! What every queue handle in one process shares: both ends of the channel, the mapped
//! header, the eventfds, and the accounting every put and get does.

use std::io;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use super::event::Event;
use crate::error::{Error, FromEnvError};
use crate::options::Options;
use crate::recv::Inbox;
use crate::report;
use crate::send::buffered::LostHook;
use crate::send::{Engine, SendHandle};
use crate::spawn::{Kind, Passed, Taken};
use crate::sys::shared::SharedHeader;
use crate::sys::Waitable;

/// One process's share of a queue. Dropped once, when the last handle in the process goes
/// (an `Arc`, so there is no race between handles dropped at the same time).
pub(crate) struct Core {
    pub(crate) send: SendHandle,
    pub(crate) inbox: Arc<Inbox>,
    pub(crate) header: Arc<SharedHeader>,
    /// Free slots of a bounded queue: `put` takes one, `get` gives one back.
    pub(crate) slots: Option<Arc<Event>>,
    /// A `JoinableQueue`'s "a task finished" signal, which `join` waits on.
    pub(crate) done: Option<Event>,
    /// Items this process got and has not yet called `task_done` for, shared by every
    /// handle of this queue in this process (see [`process_count`]).
    pub(crate) got: Arc<AtomicU64>,
}

/// The count of items this process got from a queue and has not marked done, shared by
/// every handle of that queue in this process however it arrived (made here, passed at
/// spawn, received inside an item), so `task_done` through any of them pairs with a get
/// through any other. Keyed by the shared header's inode, unique while a handle holds it.
fn process_count(header: &SharedHeader) -> Arc<AtomicU64> {
    use std::collections::HashMap;
    use std::sync::{LazyLock, Mutex, Weak};
    /// A header's (device, inode), to the count of the process's handles of it.
    type Counts = HashMap<(u64, u64), Weak<AtomicU64>>;
    static COUNTS: LazyLock<Mutex<Counts>> = LazyLock::new(Default::default);
    let Ok(stat) = rustix::fs::fstat(header.fd()) else {
        return Arc::default(); // cannot happen for a mapped memfd; counts per handle then
    };
    #[allow(clippy::unnecessary_cast)] // their widths differ between targets
    let key = (stat.st_dev as u64, stat.st_ino as u64);
    let mut counts = COUNTS.lock().unwrap_or_else(|e| e.into_inner());
    counts.retain(|_, count| count.strong_count() > 0);
    if let Some(count) = counts.get(&key).and_then(Weak::upgrade) {
        return count;
    }
    let count = Arc::new(AtomicU64::new(0));
    counts.insert(key, Arc::downgrade(&count));
    count
}

impl Core {
    /// A new queue: a channel made with `opts`, a header, and its eventfds.
    pub(crate) fn create(maxsize: usize, joinable: bool, opts: &Options) -> Result<Core, Error> {
        let (send_end, recv_end) = crate::channel::socket_pair(opts)?;
        let header = SharedHeader::create(joinable, maxsize as u64)?;
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
        Ok(Core::assemble(
            send_end, recv_end, header, slots, done, opts,
        ))
    }

    fn assemble(
        send_end: std::os::fd::OwnedFd,
        recv_end: std::os::fd::OwnedFd,
        header: SharedHeader,
        slots: Option<Event>,
        done: Option<Event>,
        opts: &Options,
    ) -> Core {
        let send_socket = Arc::new(Waitable::new(send_end, crate::channel::SEND_INTEREST));
        let recv_socket = Arc::new(Waitable::new(recv_end, crate::channel::RECV_INTEREST));
        let got = process_count(&header);
        let header = Arc::new(header);
        let slots = slots.map(Arc::new);
        let core = Core {
            send: SendHandle::new(send_socket, opts),
            inbox: Arc::new(Inbox::new(recv_socket, opts)),
            header: header.clone(),
            slots: slots.clone(),
            done,
            got,
        };
        // Items lost for good (reported by the outbox or the inbox) leave the queue: they
        // no longer count in its length nor take a slot. They stay unfinished, as the tasks
        // of a killed worker do, so `join_timeout` says how many.
        let lost: LostHook = Arc::new(move |n| {
            header.header().got.0.fetch_add(n as i64, Ordering::SeqCst);
            if let Some(slots) = &slots {
                let _ = slots.add(n as u64);
            }
        });
        if let Engine::Buffered(outbox) = core.send.engine() {
            outbox.on_lost(lost.clone());
        }
        core.inbox.on_lost(lost);
        core
    }

    /// Rebuilds a queue passed under `taken`'s name (`kind` says which descriptors).
    pub(crate) fn adopt(
        mut taken: Taken,
        kind: Kind,
        buffer: Option<usize>,
    ) -> Result<Core, FromEnvError> {
        let send_end = taken.socket()?;
        let recv_end = taken.socket()?;
        let header = SharedHeader::adopt(taken.fd()?).map_err(|e| FromEnvError::Descriptor {
            name: taken.name.clone(),
            reason: e.to_string(),
        })?;
        let joinable = kind == Kind::JoinableQueue;
        if (header.header().joinable.load(Ordering::Relaxed) == 1) != joinable {
            return Err(FromEnvError::Descriptor {
                name: taken.name.clone(),
                reason: "the queue header disagrees with the handle's kind".into(),
            });
        }
        let slots = taken.optional()?.map(Event::adopt);
        let done = if joinable {
            Some(Event::adopt(taken.fd()?))
        } else {
            None
        };
        let mut opts = taken.opts.clone();
        if let Some(bytes) = buffer {
            opts.buffer_bytes = bytes.max(1);
        }
        Ok(Core::assemble(
            send_end, recv_end, header, slots, done, &opts,
        ))
    }

    /// What passing this queue hands over.
    pub(crate) fn passed(&self, kind: Kind, types: &[&'static str]) -> Result<Passed, Error> {
        let send = self.send.socket().ok_or(Error::Closed)?;
        let fds = [
            Some(send.fd().as_fd()),
            Some(self.inbox.socket().fd().as_fd()),
            Some(self.header.fd()),
            self.slots.as_deref().map(Event::fd),
            self.done.as_ref().map(Event::fd),
        ];
        let count = if kind == Kind::JoinableQueue { 5 } else { 4 };
        Passed::new(kind, &fds[..count], self.send.options(), types)
    }

    /// Items put and not yet got (read `got` first, so a get racing with this look never
    /// makes it negative by more than the puts in between).
    pub(crate) fn queued(&self) -> i64 {
        let h = self.header.header();
        let got = h.got.0.load(Ordering::SeqCst);
        h.put.0.load(Ordering::SeqCst) - got
    }

    /// Tasks put and not yet marked done.
    pub(crate) fn unfinished(&self) -> i64 {
        let h = self.header.header();
        let done = h.done.0.load(Ordering::SeqCst);
        h.put.0.load(Ordering::SeqCst) - done
    }

    pub(crate) fn maxsize(&self) -> u64 {
        self.header.header().maxsize.load(Ordering::SeqCst)
    }

    /// Counts an item in before it is sent (so a fast `get` and `task_done` elsewhere never
    /// see the counts go negative).
    pub(crate) fn count_in(&self) {
        self.header.header().put.0.fetch_add(1, Ordering::SeqCst);
    }

    /// Accounts for `n` items leaving the queue without a `get` (drained, or a put undone):
    /// they free their slots and are no longer tasks.
    pub(crate) fn forget(&self, n: u64) {
        self.header
            .header()
            .got
            .0
            .fetch_add(n as i64, Ordering::SeqCst);
        if let Some(slots) = &self.slots {
            let _ = slots.add(n);
        }
        if self.done.is_some() {
            self.finish(n);
        }
    }

    /// Accounts for one item got.
    pub(crate) fn got_one(&self) {
        self.header.header().got.0.fetch_add(1, Ordering::Relaxed);
        if let Some(slots) = &self.slots {
            let _ = slots.add(1);
        }
        if self.done.is_some() {
            self.got.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Marks `n` tasks finished, waking joiners when none is left.
    pub(crate) fn finish(&self, n: u64) {
        let h = self.header.header();
        let done = h.done.0.fetch_add(n as i64, Ordering::SeqCst) + n as i64;
        // A join counts itself in (`joining`) before it reads the counts; with every access
        // here and there sequentially consistent, either this load sees that joiner, or
        // the joiner's read of `done` sees this task done and it does not wait.
        if h.joiners.0.load(Ordering::SeqCst) > 0 && h.put.0.load(Ordering::SeqCst) - done <= 0 {
            if let Some(done) = &self.done {
                // Tasks wait on the eventfd (the reactor), threads on the futex word.
                let _ = done.add(1);
                self.header.raise_done_signal();
            }
        }
    }

    /// Counts a join in for as long as the guard lives (see [`finish`](Self::finish)). A
    /// joiner killed while it waits stays counted: `task_done` then signals whenever the
    /// last task is done, as if someone waited.
    pub(crate) fn joining(&self) -> Joining<'_> {
        self.header
            .header()
            .joiners
            .0
            .fetch_add(1, Ordering::SeqCst);
        Joining(self)
    }

    /// Blocks the calling thread until no task is unfinished (`true`) or `deadline`
    /// passes (`false`, unless the last task was done by then).
    pub(crate) fn blocking_wait_finished(&self, deadline: Option<Instant>) -> io::Result<bool> {
        let _counted = self.joining();
        loop {
            let seen = self.header.done_signals();
            if self.unfinished() <= 0 {
                return Ok(true);
            }
            if !self.header.wait_done_signal(seen, deadline)? {
                return Ok(self.unfinished() <= 0);
            }
        }
    }
}

/// A join counted in; counted out when dropped (a cancelled join too).
pub(crate) struct Joining<'a>(&'a Core);

impl Drop for Joining<'_> {
    fn drop(&mut self) {
        self.0
            .header
            .header()
            .joiners
            .0
            .fetch_sub(1, Ordering::SeqCst);
    }
}

impl Drop for Core {
    fn drop(&mut self) {
        // The last handle in this process: items it read in a batch but never got go back
        // into the queue for other processes, through this process's putting side (written
        // like any buffered item), instead of being lost with this process.
        let unread = self.inbox.take_unread();
        if unread.items() == 0 {
            return;
        }
        let lost = match self.send.engine() {
            Engine::Buffered(outbox) => match outbox.take_back_unread(unread) {
                Ok(()) => 0,
                Err(unread) => unread.items(),
            },
            Engine::Direct(direct) => direct.give_back(unread),
        };
        if lost > 0 {
            self.header
                .header()
                .got
                .0
                .fetch_add(lost as i64, Ordering::SeqCst);
            if let Some(slots) = &self.slots {
                let _ = slots.add(lost as u64);
            }
            report::warn(
                lost,
                &format!(
                    "{lost} items a procq queue consumer had read could not be given back: \
                     this process had closed its putting side, or no receiver was left"
                ),
            );
        }
    }
}

/// A put in progress: undoes its accounting (slot, counts) unless it completed, so a
/// cancelled or failed put leaves the queue as it was.
pub(crate) struct PutGuard<'a> {
    pub(crate) core: &'a Core,
    pub(crate) armed: bool,
}

impl Drop for PutGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.core.forget(1);
        }
    }
}
