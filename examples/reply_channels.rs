//! Requests that carry their own reply channel, answered by worker processes.
//!
//! ```text
//! cargo run --release --example reply_channels -- [WORKERS] [CLIENTS] [REQUESTS]
//! ```
//!
//! The parent starts WORKERS worker processes on one request queue (fair mode: each request
//! goes to the next worker that asks) and CLIENTS client processes (this same binary, re-run
//! with `PROCQ_ROLE`). Each client makes a channel for its answers and puts REQUESTS
//! requests, each carrying a clone of its reply `Sender`; a worker answers on the sender it
//! found in the request, then drops it.
//!
//! A client counts its answers by reading its reply channel to the end. That end comes
//! exactly when the last reply sender is gone: the client's own, every one still inside a
//! queued request, and every one a worker holds. A sender travelling inside an item keeps
//! the channel open until the item is received and the sender dropped.

use std::time::Instant;

use futures::StreamExt;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Request {
    n: u64,
    /// Where the answer goes: a handle inside the item.
    reply: procq::Sender<Answer>,
}

#[derive(Serialize, Deserialize)]
struct Answer {
    n: u64,
    square: u64,
    worker: u32,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    match std::env::var("PROCQ_ROLE").as_deref() {
        Ok("worker") => return worker().await,
        Ok("client") => return client().await,
        _ => {}
    }
    let mut args = std::env::args().skip(1);
    let mut next = |default: u64| -> Result<u64, std::num::ParseIntError> {
        args.next().map_or(Ok(default), |a| a.parse())
    };
    let (workers, clients, requests) = (next(2)?, next(3)?, next(10_000)?);

    let requests_q = procq::Queue::<Request>::with_options(0, &procq::queue_options())?;
    let start = Instant::now();
    let mut children = Vec::new();
    for (role, count) in [("worker", workers), ("client", clients)] {
        for n in 0..count {
            let mut cmd = tokio::process::Command::new(std::env::current_exe()?);
            cmd.env("PROCQ_ROLE", role)
                .env("ID", n.to_string())
                .env("COUNT", requests.to_string());
            procq::pass(&mut cmd, "REQUESTS", requests_q.clone())?;
            children.push(procq::spawn(cmd)?);
        }
    }
    // This process puts nothing: the queue ends when every client has closed its side.
    requests_q.close();
    drop(requests_q);
    for mut child in children {
        let status = child.wait().await?;
        assert!(status.success(), "a child failed: {status}");
    }
    let total = clients * requests;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{total} requests answered in {secs:.2} s ({:.0} round trips/s), each carrying its reply sender",
        total as f64 / secs
    );
    Ok(())
}

/// Answers requests until the queue ends (every client has closed its putting side).
async fn worker() -> Result<(), Box<dyn std::error::Error>> {
    let id: u32 = std::env::var("ID")?.parse()?;
    let requests = procq::Queue::<Request>::from_env("REQUESTS")?;
    requests.close(); // a worker only gets
    let mut answered = 0u64;
    while let Ok(Request { n, reply }) = requests.get().await {
        reply
            .send(Answer {
                n,
                square: n * n,
                worker: id,
            })
            .await?;
        // Written before the sender is dropped, so nothing waits in this process.
        reply.flush().await?;
        answered += 1;
    }
    let line = format!("worker {id}: answered {answered}");
    println!("{line}");
    Ok(())
}

/// Puts requests carrying a reply sender, then reads every answer.
async fn client() -> Result<(), Box<dyn std::error::Error>> {
    let id: u32 = std::env::var("ID")?.parse()?;
    let count: u64 = std::env::var("COUNT")?.parse()?;
    let requests = procq::Queue::<Request>::from_env("REQUESTS")?;
    let (reply, mut answers) = procq::channel::<Answer>()?;
    let asking = async move {
        for n in 0..count {
            let reply = reply.clone();
            requests.put(Request { n, reply }).await?;
        }
        // Our own reply sender goes here; the clones in the requests keep the channel open.
        requests.flush().await?;
        Ok::<_, Box<dyn std::error::Error>>(())
    };
    let reading = async {
        let mut got = vec![false; count as usize];
        let mut by_worker = std::collections::BTreeMap::<u32, u64>::new();
        // Ends when no reply sender is left anywhere.
        while let Some(answer) = answers.next().await {
            let answer = answer?;
            assert_eq!(answer.square, answer.n * answer.n);
            assert!(
                !std::mem::replace(&mut got[answer.n as usize], true),
                "twice"
            );
            *by_worker.entry(answer.worker).or_default() += 1;
        }
        assert!(got.iter().all(|&g| g), "an answer is missing");
        Ok::<_, Box<dyn std::error::Error>>(by_worker)
    };
    let (asked, by_worker) = tokio::join!(asking, reading);
    asked?;
    let line = format!("client {id}: {count} answers, by worker {:?}", by_worker?);
    println!("{line}");
    Ok(())
}
