//! Typed, async message channels between processes, for tokio.
//!
//! procq is Python's `multiprocessing` queues rebuilt for Rust services: a channel whose
//! halves you hand to the child processes you spawn, that any number of processes send into
//! and receive from, with `await`, timeouts and `tokio::select!` — and without
//! `multiprocessing`'s failure modes: no deadlock at exit, no torn or silently lost item, no
//! wait without a timeout form.
//!
//! ```no_run
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize, Debug)]
//! struct Job { id: u64, path: String }
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Parent: make a channel, give the receiving half to a worker process.
//! let (jobs, rx) = procq::channel::<Job>()?;
//! let mut cmd = tokio::process::Command::new(std::env::current_exe()?);
//! cmd.env("ROLE", "worker");
//! procq::pass(&mut cmd, "JOBS", rx)?;
//! let mut worker = cmd.spawn()?;
//! drop(cmd);
//! jobs.send(Job { id: 1, path: "/tmp/a".into() }).await?;
//! let left = jobs.drain(std::time::Duration::from_secs(2)).await; // never hangs
//! assert!(left.is_complete());
//! drop(jobs);
//! worker.wait().await?;
//!
//! // Worker (the same binary with ROLE=worker):
//! use futures::StreamExt;
//! let mut rx = procq::Receiver::<Job>::from_env("JOBS")?;
//! while let Some(job) = rx.next().await {
//!     println!("{:?}", job?);
//! }
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
//!   process holds a sender.
//!
//! Inside a process, [`Sender::send`] encodes the item (postcard) and appends it to a
//! byte-bounded buffer; a flush task packs buffered items into datagrams of up to 64 KiB.
//! Items too large for a datagram go out of line in a sealed memfd (Linux). See the
//! README's guarantees table for delivery, ordering and failure behaviour.
//!
//! Byte payloads should serialize as bytes (`serde_bytes`, or `bytes::Bytes`): a plain
//! `Vec<u8>` is encoded element by element and is several times slower.
//!
//! # Platform
//!
//! Linux is the platform procq is tested on. The socket code is plain Unix; out-of-line
//! items (memfd and file seals) and `SO_SNDBUFFORCE` are Linux-only.

#![cfg(unix)]
#![warn(missing_docs)]

mod direct;
#[doc = include_str!("coming_from_python.md")]
pub mod coming_from_python {}
mod duplex;
mod error;
mod event;
mod frame;
mod options;
mod outbox;
mod pass;
pub mod pipe;
mod queue;
mod receiver;
pub mod remote;
mod sender;
mod simple_queue;
mod sys;
mod wire;

pub use duplex::{Duplex, DuplexPair};
pub use error::{
    DecodeError, Error, FlushError, JoinError, RecvError, SendError, SendErrorKind, TaskDoneError,
};
pub use options::{channel, duplex, Options};
pub use pass::{pass, Passable, SpawnCommand};
pub use pipe::{pipe, pipe_duplex};
pub use queue::{queue_options, JoinableQueue, Queue};
pub use receiver::Receiver;
pub use remote::{AuthError, RemoteError};
pub use sender::{DrainOutcome, Drained, Sender};
pub use simple_queue::SimpleQueue;

/// Runs the remote protocol's frame decoder over `data` as a stream: for fuzzing. Not part
/// of the API.
#[doc(hidden)]
pub fn __fuzz_decode_stream(data: &[u8]) {
    remote::fuzz_decode_stream(data);
}

/// Decodes one datagram as a receiver would: for fuzzing the decoder. Not part of the API.
#[doc(hidden)]
pub fn __fuzz_decode_datagram(datagram: &[u8]) {
    if let Ok(wire::Body::Inline { count }) = wire::parse(datagram, u32::MAX as u64) {
        let mut frames = wire::Frames::new(count);
        while let Some(range) = frames.next_range(datagram) {
            let _ = wire::decode::<(u64, String, Vec<u8>)>(&datagram[range]);
        }
    }
}
