//! The header every process holding a queue maps: a `#[repr(C)]` struct of atomics in a
//! memfd sealed against resizing, so no holder can shrink it under the others (which would
//! make every other process fault with SIGBUS), checked on adoption.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

use rustix::fs::SealFlags;

/// `procq-Q1` in ASCII: what a queue header starts with.
const MAGIC: u64 = u64::from_le_bytes(*b"procq-Q1");
/// Bumped whenever the layout or meaning of [`QueueHeader`] changes.
const VERSION: u32 = 3;

/// What every holder of a queue shares. Only atomics, so every bit pattern is a valid
/// value and concurrent access from any number of processes is defined.
///
/// Producers and consumers count on separate cache lines (a queue's length is `put - got`,
/// its unfinished tasks `put - done`), so that a put and a get on two cores do not pass one
/// line back and forth for every item.
#[repr(C)]
pub(crate) struct QueueHeader {
    magic: AtomicU64,
    version: AtomicU32,
    /// 1 for a `JoinableQueue`.
    pub(crate) joinable: AtomicU32,
    /// The bound; 0 for none.
    pub(crate) maxsize: AtomicU64,
    /// Items ever counted in by a put, in every process.
    pub(crate) put: Line,
    /// Items ever counted out: got, or gone without a get (drained, undone, lost).
    pub(crate) got: Line,
    /// Tasks ever marked done, or gone without a get (`JoinableQueue`).
    pub(crate) done: Line,
    /// Bumped each time the last unfinished task is marked done while someone joins
    /// (`JoinableQueue`): the futex word threads blocked in `blocking_join` sleep on, in
    /// any process.
    done_signals: Word,
    /// Joins waiting now, in every process (`JoinableQueue`). The last `task_done` signals
    /// only if someone waits: with no joiner, a consumer that keeps up with its producer
    /// would otherwise make two system calls for nearly every item.
    pub(crate) joiners: Line,
}

/// A 32-bit word alone on its cache line (a futex word).
#[repr(C, align(64))]
struct Word(AtomicU32);

/// A counter alone on its cache line.
#[repr(C, align(64))]
pub(crate) struct Line(pub(crate) AtomicI64);

const HEADER_BYTES: usize = std::mem::size_of::<QueueHeader>();

/// The seals a header's memfd carries: its size can never change, nor its seals.
const HEADER_SEALS: SealFlags = SealFlags::SHRINK
    .union(SealFlags::GROW)
    .union(SealFlags::SEAL);

/// Why a descriptor was not accepted as a queue header.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HeaderError {
    #[error("the queue header is not sealed against resizing")]
    NotSealed,
    #[error("the queue header is {0} bytes, not {HEADER_BYTES}")]
    Size(u64),
    #[error("not a procq queue header (bad magic or version)")]
    Foreign,
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// A mapped queue header; unmapped on drop.
pub(crate) struct SharedHeader {
    ptr: *mut std::ffi::c_void,
    fd: OwnedFd,
}

// SAFETY: the mapping is only accessed through the atomics of `QueueHeader`, which may be
// shared between threads (and processes); the pointer stays valid until drop.
unsafe impl Send for SharedHeader {}
// SAFETY: as above.
unsafe impl Sync for SharedHeader {}

impl SharedHeader {
    /// A new header, sealed, with every counter zero and `joinable` and `maxsize` set.
    pub(crate) fn create(joinable: bool, maxsize: u64) -> io::Result<Self> {
        let fd = super::memfd::create("procq-queue")?;
        rustix::fs::ftruncate(&fd, HEADER_BYTES as u64)?;
        rustix::fs::fcntl_add_seals(&fd, HEADER_SEALS)?;
        let shared = Self::map(fd)?;
        let h = shared.header();
        h.magic.store(MAGIC, Ordering::Relaxed);
        h.version.store(VERSION, Ordering::Relaxed);
        h.joinable.store(u32::from(joinable), Ordering::Relaxed);
        h.maxsize.store(maxsize, Ordering::SeqCst);
        Ok(shared)
    }

    /// Maps a header another process created, after checking its seals, size, magic and
    /// version.
    pub(crate) fn adopt(fd: OwnedFd) -> Result<Self, HeaderError> {
        let seals = rustix::fs::fcntl_get_seals(&fd).map_err(|_| HeaderError::NotSealed)?;
        if !seals.contains(HEADER_SEALS) {
            return Err(HeaderError::NotSealed);
        }
        let size = rustix::fs::fstat(&fd).map_err(io::Error::from)?.st_size as u64;
        if size != HEADER_BYTES as u64 {
            return Err(HeaderError::Size(size));
        }
        let shared = Self::map(fd)?;
        let h = shared.header();
        if h.magic.load(Ordering::Relaxed) != MAGIC || h.version.load(Ordering::Relaxed) != VERSION
        {
            return Err(HeaderError::Foreign);
        }
        Ok(shared)
    }

    fn map(fd: OwnedFd) -> io::Result<Self> {
        // SAFETY: a fresh shared read-write mapping (null hint) of a file we hold open and
        // that is exactly HEADER_BYTES long and sealed against shrinking, so every byte of
        // the header is backed for as long as the mapping lives.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                HEADER_BYTES,
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::SHARED,
                fd.as_fd(),
                0,
            )
        }?;
        Ok(SharedHeader { ptr, fd })
    }

    pub(crate) fn header(&self) -> &QueueHeader {
        // SAFETY: the mapping is page-aligned (so aligned for QueueHeader) and
        // HEADER_BYTES long; QueueHeader is repr(C) and made only of atomics, for which
        // every bit pattern is valid and shared mutation (here and in other processes) is
        // allowed. It lives as long as `self`.
        unsafe { &*self.ptr.cast::<QueueHeader>() }
    }

    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The done signal's count now, to pass to [`wait_done_signal`](Self::wait_done_signal)
    /// after checking the condition it signals.
    pub(crate) fn done_signals(&self) -> u32 {
        self.header().done_signals.0.load(Ordering::SeqCst)
    }

    /// Says that no task is unfinished: wakes every thread sleeping in
    /// [`wait_done_signal`](Self::wait_done_signal), in every process.
    pub(crate) fn raise_done_signal(&self) {
        let word = &self.header().done_signals.0;
        word.fetch_add(1, Ordering::SeqCst);
        // Not FUTEX_PRIVATE: the word is in a shared mapping, waited on by other processes.
        // The count is an `int` to the kernel: `i32::MAX` wakes every waiter (`u32::MAX`, read
        // as -1, would wake one).
        let _ = rustix::thread::futex::wake(
            word,
            rustix::thread::futex::Flags::empty(),
            i32::MAX as u32,
        );
    }

    /// Sleeps until the done signal moves past `seen` (or spuriously), or until
    /// `deadline`: `false` then. A signal raised after `seen` was read is never missed:
    /// the kernel compares the word before sleeping.
    pub(crate) fn wait_done_signal(
        &self,
        seen: u32,
        deadline: Option<Instant>,
    ) -> io::Result<bool> {
        use rustix::thread::futex;
        let Ok(timeout) = super::time_left(deadline) else {
            return Ok(false);
        };
        let word = &self.header().done_signals.0;
        match futex::wait(word, futex::Flags::empty(), seen, timeout.as_ref()) {
            Ok(()) => Ok(true),
            Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => Ok(true),
            Err(rustix::io::Errno::TIMEDOUT) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

impl Drop for SharedHeader {
    fn drop(&mut self) {
        // SAFETY: unmaps the region mapped in `map`; no reference into it outlives `self`.
        let _ = unsafe { rustix::mm::munmap(self.ptr, HEADER_BYTES) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_is_shared_between_mappings() {
        let a = SharedHeader::create(true, 7).unwrap();
        let b = SharedHeader::adopt(super::super::socket::dup(a.fd()).unwrap()).unwrap();
        a.header().put.0.fetch_add(5, Ordering::SeqCst);
        assert_eq!(b.header().put.0.load(Ordering::SeqCst), 5);
        assert_eq!(b.header().maxsize.load(Ordering::SeqCst), 7);
    }

    #[test]
    fn a_header_cannot_be_shrunk_and_foreign_memfds_are_refused() {
        let a = SharedHeader::create(false, 0).unwrap();
        assert!(
            rustix::fs::ftruncate(a.fd(), 0).is_err(),
            "sealed against shrinking"
        );
        let unsealed = super::super::memfd::create("x").unwrap();
        rustix::fs::ftruncate(&unsealed, HEADER_BYTES as u64).unwrap();
        assert!(matches!(
            SharedHeader::adopt(unsealed),
            Err(HeaderError::NotSealed)
        ));
        let zeros = super::super::memfd::create("x").unwrap();
        rustix::fs::ftruncate(&zeros, HEADER_BYTES as u64).unwrap();
        rustix::fs::fcntl_add_seals(&zeros, HEADER_SEALS).unwrap();
        assert!(matches!(
            SharedHeader::adopt(zeros),
            Err(HeaderError::Foreign)
        ));
    }
}
