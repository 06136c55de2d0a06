//! Fan jobs out to worker processes and collect the results.
//!
//! ```text
//! cargo run --release --example workers -- [WORKERS] [JOBS]
//! ```
//!
//! The parent makes two channels, passes the job receiver and the result sender to each
//! worker (this same binary, re-run with `PROCQ_ROLE=worker`), sends the jobs, and
//! collects one result per job. Prints jobs per second.

use std::time::Instant;

use futures::StreamExt;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Job {
    id: u64,
    #[serde(with = "serde_bytes")]
    data: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct Done {
    id: u64,
    checksum: u64,
    worker: u32,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var("PROCQ_ROLE").as_deref() == Ok("worker") {
        return worker().await;
    }
    let mut args = std::env::args().skip(1);
    let workers: u32 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(2);
    let jobs: u64 = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(1_000_000);

    let (job_tx, job_rx) = procq::channel::<Job>()?;
    let (done_tx, mut done_rx) = procq::channel::<Done>()?;
    let mut children = Vec::new();
    for n in 0..workers {
        let mut cmd = tokio::process::Command::new(std::env::current_exe()?);
        cmd.env("PROCQ_ROLE", "worker").env("WORKER", n.to_string());
        procq::pass(&mut cmd, "JOBS", job_rx.clone())?;
        procq::pass(&mut cmd, "DONE", done_tx.clone())?;
        children.push(procq::spawn(cmd)?);
    }
    // The workers hold the only copies now: when they exit, `done_rx` ends.
    drop((job_rx, done_tx));

    let start = Instant::now();
    let producer = tokio::spawn(async move {
        for id in 0..jobs {
            job_tx
                .send(Job {
                    id,
                    data: vec![(id % 251) as u8; 64],
                })
                .await?;
        }
        // Closing the job channel tells the workers to finish.
        let left = job_tx.drain(std::time::Duration::from_secs(10)).await;
        assert!(left.is_complete(), "workers vanished with jobs undelivered");
        Ok::<_, procq::SendError<Job>>(())
    });

    let mut seen = vec![false; jobs as usize];
    let mut per_worker = vec![0u64; workers as usize];
    while let Some(done) = done_rx.next().await {
        let done = done?;
        assert_eq!(
            done.checksum,
            (done.id % 251) * 64,
            "wrong result for job {}",
            done.id
        );
        assert!(
            !std::mem::replace(&mut seen[done.id as usize], true),
            "job {} twice",
            done.id
        );
        per_worker[done.worker as usize] += 1;
    }
    let elapsed = start.elapsed();
    producer.await??;
    for mut child in children {
        assert!(child.wait().await?.success());
    }
    assert!(seen.iter().all(|&s| s), "a job was lost");
    println!(
        "{jobs} jobs through {workers} worker processes in {:.2?}: {:.0} jobs/s (per worker: {per_worker:?})",
        elapsed,
        jobs as f64 / elapsed.as_secs_f64()
    );
    Ok(())
}

async fn worker() -> Result<(), Box<dyn std::error::Error>> {
    let me: u32 = std::env::var("WORKER")?.parse()?;
    let mut jobs = procq::Receiver::<Job>::from_env("JOBS")?;
    let done = procq::Sender::<Done>::from_env("DONE")?;
    while let Some(job) = jobs.next().await {
        let job = job?;
        let checksum = job.data.iter().map(|&b| b as u64).sum();
        done.send(Done {
            id: job.id,
            checksum,
            worker: me,
        })
        .await?;
    }
    // Deliver every result before exiting; a dead parent would make this return early.
    let left = done.drain(std::time::Duration::from_secs(10)).await;
    if !left.is_complete() {
        eprintln!("worker {me}: {} results undelivered", left.items().len());
    }
    Ok(())
}
