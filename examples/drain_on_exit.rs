//! The `multiprocessing` exit deadlock, and how procq avoids it.
//!
//! ```text
//! cargo run --example drain_on_exit
//! ```
//!
//! In Python, a process that `put` more onto a `Queue` than the pipe holds cannot exit once
//! its reader is gone: the queue's feeder thread is joined at exit and waits forever for
//! the pipe to drain (the "joining processes that use queues" warning in the docs).
//!
//! Here a reader process takes a few items and dies. The writer has 1,000 items queued;
//! `drain(1s)` hands back exactly the ones that never reached the kernel, and the writer
//! exits at once. It also says what was lost: the records that were already in the kernel
//! for the reader and that the reader never handled die with the reader.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Debug)]
struct Record {
    seq: u32,
    #[serde(with = "serde_bytes")]
    body: Vec<u8>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var("PROCQ_ROLE").as_deref() == Ok("reader") {
        let rx = procq::Receiver::<Record>::from_env("RECORDS")?;
        for _ in 0..5 {
            let r = rx.recv().await?;
            println!("reader: got record {}", r.seq);
        }
        println!("reader: crashing without reading the rest");
        std::process::abort();
    }

    let (tx, rx) = procq::Options::new()
        .buffer_bytes(32 * 1024 * 1024)
        .channel::<Record>()?;
    let mut cmd = tokio::process::Command::new(std::env::current_exe()?);
    cmd.env("PROCQ_ROLE", "reader");
    procq::pass(&mut cmd, "RECORDS", rx)?;
    let mut reader = procq::spawn(cmd)?; // the parent keeps no copy of what was passed

    for seq in 0..1000 {
        tx.send(Record {
            seq,
            body: vec![0; 16 * 1024],
        })
        .await?;
    }
    println!("writer: 1000 records sent (buffered); waiting for the reader to go");
    reader.wait().await?;

    let start = Instant::now();
    let left = tx.drain(Duration::from_secs(1)).await;
    let back = left.items().len();
    let reached_kernel = 1000 - back;
    println!(
        "writer: drain finished in {:.0?} ({:?}); {back} records never reached the kernel",
        start.elapsed(),
        left.outcome(),
    );
    if let (Some(first), Some(last)) = (left.items().first(), left.items().last()) {
        println!(
            "writer: records {}..={} came back from drain, kept for a retry",
            first.seq, last.seq
        );
    }
    // What the kernel held for the reader died with it: a killed reader takes the
    // datagrams it had not read along. (Acknowledge work at a higher level, e.g. with a
    // JoinableQueue or the remote queue's deliveries, when that matters.)
    println!(
        "writer: {reached_kernel} records reached the kernel; the reader handled 5 before \
         it was killed, so {} were lost with it",
        reached_kernel - 5
    );
    println!("writer: exiting");
    Ok(())
}
