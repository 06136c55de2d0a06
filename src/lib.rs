//! Typed, async message channels between processes, for tokio.
//!
//! procq is Python's `multiprocessing` queues rebuilt for Rust services: a channel whose
//! halves you hand to the child processes you spawn, that any number of processes (and any
//! number of tasks in each) send into and receive from, with `await`, timeouts and
//! `tokio::select!` — and without `multiprocessing`'s failure modes: no deadlock at exit,
//! no torn or silently lost item, no wait without a timeout form.
//!
//! ```
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize, Debug)]
//! struct Job { id: u64, path: String }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! if std::env::var("ROLE").as_deref() == Ok("worker") {
//!     // The worker (this same program, run again with ROLE=worker).
//!     use futures::StreamExt;
//!     let mut rx = procq::Receiver::<Job>::from_env("JOBS")?;
//!     while let Some(job) = rx.next().await {
//!         println!("{:?}", job?);
//!     }
//!     return Ok(());
//! }
//! // The parent: make a channel, give the receiving half to a worker process.
//! let (jobs, rx) = procq::channel::<Job>()?;
//! let mut cmd = tokio::process::Command::new(std::env::current_exe()?);
//! cmd.env("ROLE", "worker");
//! procq::pass(&mut cmd, "JOBS", rx)?;
//! let mut worker = procq::spawn(cmd)?; // the parent keeps no copy of `rx`
//! jobs.send(Job { id: 1, path: "/tmp/a".into() }).await?;
//! let left = jobs.drain(std::time::Duration::from_secs(2)).await; // never hangs
//! assert!(left.is_complete());
//! drop(jobs); // the worker's stream ends
//! assert!(worker.wait().await?.success());
//! # Ok(()) }
//! ```
//!
//! # How it works
//!
//! A channel is an `AF_UNIX` / `SOCK_SEQPACKET` socket pair registered with the tokio
//! reactor. The kernel delivers each datagram whole to exactly one reader and never
//! interleaves two writers, which gives, with no locks between processes:
//!
//! * **many senders, many receivers** in any processes; each item reaches exactly one;
//! * **atomicity**: a process killed mid-send leaves no torn item behind;
//! * **isolation of bad data**: an invalid datagram costs that datagram only;
//! * **end of channel** from the kernel: receivers see [`RecvError::Closed`] once no
//!   process holds a sender, and senders learn from the socket's hang-up when no receiver
//!   is left ([`Sender::closed`]).
//!
//! Inside a process, [`Sender::send`] encodes the item (postcard) and appends it to a
//! byte-bounded buffer; a flush task packs buffered items into datagrams of up to 256 KiB
//! ([`Options::datagram_bytes`]). An item larger than the configured datagram travels
//! alone in a datagram of up to 256 KiB, and beyond that out of line
//! in a sealed memfd, which the receiver maps (see [`SharedBytes`] for taking its bytes
//! without a copy). See the README's
//! guarantees table for delivery, ordering and failure behaviour.
//!
//! Byte payloads should serialize as bytes (`serde_bytes`, or `bytes::Bytes`): a plain
//! `Vec<u8>` is encoded element by element and is several times slower.
//!
//! # Runtimes and synchronous code
//!
//! Handles are made and passed without a runtime. The async calls need a tokio runtime
//! (current-thread or multi-thread, with IO and time enabled, as `#[tokio::main]` and
//! `Builder::enable_all` do) when they have to wait; outside one they return an `Io` error
//! of kind `Unsupported`, never panic. Synchronous code uses the `blocking_*` methods,
//! which wait with `poll(2)` on the calling thread and need no runtime.
//!
//! A buffered sender's flush task runs on the runtime of the first send that needed it;
//! if that runtime shuts down, the next send starts one on the runtime current then. Keep
//! that runtime running while it has items to write (or `flush` / `drain` first).
//!
//! # Platform
//!
//! Linux only (memfd seals, `SCM_RIGHTS` with close-on-exec, eventfds, `fdinfo`); the crate
//! does not build elsewhere.

#![deny(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

#[cfg(not(target_os = "linux"))]
compile_error!(
    "procq runs on Linux only: it is built on SOCK_SEQPACKET socket pairs, sealed memfds, \
     eventfds and /proc/self/fdinfo, and no other platform is built or tested"
);

mod carried;
mod channel;
#[doc = include_str!("coming_from_python.md")]
pub mod coming_from_python {}
mod error;
mod fd;
mod options;
mod queue;
mod recv;
pub mod remote;
mod report;
mod send;
mod shared_bytes;
mod spawn;
#[allow(unsafe_code)]
mod sys;
mod wire;

pub use channel::pipe::{self, pipe, pipe_duplex};
pub use channel::{channel, duplex, DrainOutcome, Drained, Duplex, DuplexPair, Receiver, Sender};
pub use error::{
    DecodeError, Error, FlushError, FlushTimeoutError, FromEnvError, JoinTimeoutError, RecvError,
    RecvIntoError, RecvTimeoutError, SendError, SendErrorKind, SendTimeoutError, TaskDoneError,
    TryRecvError, TrySendError,
};
pub use fd::Fd;
pub use options::Options;
pub use queue::{queue_options, JoinableQueue, Queue, SimpleQueue};
pub use remote::{AuthError, RemoteError};
pub use shared_bytes::SharedBytes;
pub use spawn::{pass, spawn, Passable, SpawnCommand};

/// The README's examples, run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// Runs the remote protocol's frame decoder over `data` as a stream: for fuzzing. Not part
/// of the API.
#[doc(hidden)]
pub fn __fuzz_decode_stream(data: &[u8]) {
    remote::fuzz_decode_stream(data);
}

/// Decodes one datagram as a receiver would: for fuzzing the decoder. Not part of the API.
#[doc(hidden)]
pub fn __fuzz_decode_datagram(datagram: &[u8]) {
    if let Ok(wire::Body::Inline { count, .. }) = wire::parse(datagram, u32::MAX as u64) {
        let mut entries = wire::Entries::new(count);
        while let Some(entry) = entries.next_entry(datagram) {
            let _ =
                wire::decode::<(u64, String, Vec<u8>)>(&datagram[entry.range], Vec::new(), None);
        }
    }
}
