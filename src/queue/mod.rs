//! Python's queues: [`Queue`], [`JoinableQueue`] (a `Queue` that counts unfinished tasks)
//! and [`SimpleQueue`] (no in-process buffer). Each handle holds both ends of one channel,
//! so every process holding it can put and get.

mod core;
mod event;
mod joinable;
mod plain;
mod simple;

pub use self::joinable::JoinableQueue;
pub use self::plain::Queue;
pub use self::simple::SimpleQueue;

use crate::options::Options;

/// Options for a queue whose consumers share work evenly: `Options::new().batch_items(1)`.
///
/// By default a queue, like a channel, packs many items into each datagram, and a
/// datagram goes to exactly one consumer process: that consumer takes the whole batch, gets
/// the items from it one by one, and the others wait for the next datagram. That is what
/// makes the default fast (tens of times faster than Python's queue; see the README's
/// benchmarks). It also means:
///
/// * with several consumers doing slow work per item, one may sit on a batch while others
///   idle;
/// * a consumer killed with SIGKILL loses the rest of its batch. (A consumer that stops
///   normally loses nothing: when its last handle to the queue is dropped, the unread
///   items go back into the queue through its own putting side — unless it closed that
///   side, in which case they are reported as lost.)
///
/// With `Queue::with_options(maxsize, &procq::queue_options())` each `get` takes exactly one
/// item out of the kernel, as Python's `get` does: use it for worker pools whose items are
/// work (anything slower than a few microseconds per item), or whose workers may be killed.
/// The setting travels with the queue to every process it is passed to.
pub fn queue_options() -> Options {
    Options::new().batch_items(1)
}
