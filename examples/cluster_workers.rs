//! A producer and two workers sharing a durable queue on a NATS JetStream cluster, each
//! its own process; point it at your cluster with one URL.
//!
//! ```text
//! NATS_URL=nats://nats-1.example.com:4222 REPLICAS=3 \
//!     cargo run --release --features nats --example cluster_workers
//! ```
//!
//! `NATS_URL` (default `nats://127.0.0.1:4222`) may name one server: the client learns the
//! rest of the cluster from it. `REPLICAS` (default 1) must not exceed the number of
//! JetStream servers. `NATS_TOKEN` is the token, if the servers require one (or give
//! credentials in the URL, `nats://user:password@host:4222`).
//!
//! The parent declares the queue `jobs` (a work-queue stream, file storage, the replicas
//! asked for, a lease of 30 s), starts a producer that feeds 100,000 jobs and two
//! workers that take them with explicit acknowledgement (`get_unacked` +
//! `Delivery::ack`, which resolves once JetStream has the ack; a worker killed mid-job
//! gives its jobs back after the lease). Once `join` says the stream holds no job, the
//! parent sends each worker a stop marker. Kill a worker, or a NATS server of a
//! three-replica cluster, while it runs: every job is still done at least once, and the
//! workers say how many they did.

use std::time::{Duration, Instant};

use procq::remote::jetstream::{self, QueueConfig};
use procq::remote::ClientOptions;

const JOBS: u64 = 100_000;
const WORKERS: usize = 2;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let token = std::env::var("NATS_TOKEN").unwrap_or_else(|_| "no token".into());
    // A minute for an election to end before a put is called in doubt.
    let options = ClientOptions::new(&token).request_timeout(Duration::from_secs(60));
    match std::env::var("PROCQ_ROLE").as_deref() {
        Ok("producer") => {
            let q = options.connect::<Option<u64>>(&url, "jobs").await?;
            for job in 0..JOBS {
                q.feed(Some(job)).await?; // pipelined, packed into JetStream messages
            }
            q.close().await?; // JetStream holds every job, or this says which not
            println!("producer: {JOBS} jobs stored");
            return Ok(());
        }
        Ok("worker") => {
            let q = options.connect::<Option<u64>>(&url, "jobs").await?;
            let mut done = 0u64;
            loop {
                let (job, delivery) = q.get_unacked().await?;
                let Some(_job) = job else {
                    delivery.ack().await?;
                    break;
                };
                // ... the work; a job longer than the lease calls delivery.keep_alive() ...
                match delivery.ack().await {
                    Ok(()) => done += 1,
                    // The job comes back (lease ran out, or no answer): done again later.
                    Err(e) => eprintln!("worker: ack failed ({e}); the job will come back"),
                }
            }
            q.close().await?;
            println!("worker {}: {done} jobs done", std::process::id());
            return Ok(());
        }
        _ => {}
    }

    let replicas: usize = std::env::var("REPLICAS").map_or(Ok(1), |r| r.parse())?;
    jetstream::declare(
        &options,
        &url,
        "jobs",
        &QueueConfig::new().replicas(replicas),
    )
    .await?;
    let started = Instant::now();
    let spawn = |role: &str| {
        let mut cmd = tokio::process::Command::new(std::env::current_exe()?);
        cmd.env("PROCQ_ROLE", role).kill_on_drop(true);
        cmd.spawn()
    };
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        workers.push(spawn("worker")?);
    }
    let producer = spawn("producer")?.wait().await?;
    assert!(producer.success(), "the producer failed");
    // Every job acknowledged: the work-queue stream holds nothing.
    let q = options.connect::<Option<u64>>(&url, "jobs").await?;
    q.join().await?;
    println!(
        "parent: every job done in {:.1?}; stopping the workers",
        started.elapsed()
    );
    for _ in 0..WORKERS {
        q.put(None).await?;
    }
    q.close().await?;
    for mut worker in workers {
        worker.wait().await?;
    }
    Ok(())
}
