//! A queue server, a producer and two consumers, each its own process.
//!
//! ```text
//! cargo run --release --example remote_workers
//! ```
//!
//! The parent starts the server (the `procq` library's `Server`, in a child process, as
//! `procq serve` would run on another machine), then a producer that puts 100,000 jobs and
//! two consumers that take jobs with explicit acknowledgement (`get_unacked` +
//! `Delivery::ack`): a consumer that died mid-job would give its job back. The shared key
//! travels in the environment, never on a command line.

use std::time::{Duration, Instant};

use procq::remote::{RemoteQueue, Server, ServerConfig};
use tokio::io::{AsyncBufReadExt, BufReader};

const JOBS: u64 = 100_000;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let key = std::env::var("PROCQ_KEY").unwrap_or_else(|_| "example key".into());
    match std::env::var("PROCQ_ROLE").as_deref() {
        Ok("server") => {
            let server = Server::new(ServerConfig::new(key.as_bytes()));
            server.declare("jobs", 10_000);
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            println!("{}", listener.local_addr()?);
            server.serve_tcp(listener).await?;
            return Ok(());
        }
        Ok("producer") => {
            let q = RemoteQueue::<u64>::connect(&std::env::var("ADDR")?, "jobs", key.as_bytes())
                .await?;
            for job in 0..JOBS {
                q.feed(&job).await?; // pipelined; waits while the bounded queue is full
            }
            q.flush().await?; // the server holds every job
            println!("producer: {JOBS} jobs held by the server");
            return Ok(());
        }
        Ok("consumer") => {
            let q = RemoteQueue::<u64>::connect(&std::env::var("ADDR")?, "jobs", key.as_bytes())
                .await?;
            let (mut done, mut sum) = (0u64, 0u64);
            // Nothing for half a second: the producer is done.
            while let Ok(job) =
                tokio::time::timeout(Duration::from_millis(500), q.get_unacked()).await
            {
                let (job, delivery) = job?;
                sum += job; // the work
                delivery.ack().await?;
                done += 1;
            }
            println!("consumer {}: {done} jobs (sum {sum})", std::process::id());
            return Ok(());
        }
        _ => {}
    }

    let exe = std::env::current_exe()?;
    let mut server = tokio::process::Command::new(&exe)
        .env("PROCQ_ROLE", "server")
        .env("PROCQ_KEY", &key)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = BufReader::new(server.stdout.take().expect("piped")).lines();
    let addr = lines.next_line().await?.ok_or("server exited")?;
    println!("server listening on {addr}");
    let start = Instant::now();
    let mut children = Vec::new();
    for role in ["producer", "consumer", "consumer"] {
        children.push(
            tokio::process::Command::new(&exe)
                .env("PROCQ_ROLE", role)
                .env("PROCQ_KEY", &key)
                .env("ADDR", &addr)
                .spawn()?,
        );
    }
    for mut child in children {
        child.wait().await?;
    }
    let stats = procq::remote::server_stats(&addr, key.as_bytes()).await?;
    for q in stats {
        println!(
            "queue {}: {} waiting, {} put, {} acknowledged, {} redelivered",
            q.name, q.len, q.puts, q.acks, q.redeliveries
        );
    }
    println!("{JOBS} jobs through the server in {:.2?}", start.elapsed());
    server.kill().await?;
    Ok(())
}
