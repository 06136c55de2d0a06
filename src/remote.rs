//! Remote queues: a queue server reached over TCP or a Unix socket (work in progress).
//!
//! This module holds the pieces the server and its clients share, built and tested first
//! because everything else rests on them:
//!
//! * [`auth`]: the mutual HMAC-SHA256 challenge-response every connection must pass
//!   before anything else (CPython 3.12's `deliver_challenge` / `answer_challenge` are the
//!   model), with constant-time comparison;
//! * [`frame`]: the stream framing, which checks every length against a cap before it
//!   buffers a byte of the frame.
//!
//! The server, the typed client and the `procq` command line come next.

pub mod auth;
mod client;
pub mod frame;
pub mod protocol;
mod server;

pub use client::{server_stats, Delivery, RemoteQueue};
pub use server::{Server, ServerConfig};
