//! A queue server, a producer and two consumers, each its own process.
//!
//! ```text
//! cargo run --release --example remote_workers
//! ```
//!
//! The parent starts the server (the `procq` library's `Server`, in a child process, as
//! `procq serve` would run on another machine), then a producer that puts 100,000 jobs and
//! two stop markers, and two consumers that take jobs with explicit acknowledgement
//! (`get_unacked` + `Delivery::ack`, which resolves once the server has the ack): a
//! consumer that died mid-job would give its job back. At the end the parent closes the
//! server's stdin and the server shuts down, printing what it discarded (nothing). The
//! shared key travels in the environment, never on a command line.

use std::time::{Duration, Instant};

use procq::remote::{RemoteQueue, Server, ServerConfig};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

const JOBS: u64 = 100_000;
const CONSUMERS: usize = 2;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let key = std::env::var("PROCQ_KEY").unwrap_or_else(|_| "example key".into());
    match std::env::var("PROCQ_ROLE").as_deref() {
        Ok("server") => {
            let server = Server::new(ServerConfig::new(&key))?;
            server.declare("jobs", 10_000)?;
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            println!("{}", listener.local_addr()?);
            tokio::spawn({
                let server = server.clone();
                async move { server.serve_tcp(listener).await }
            });
            // Serve until stdin closes, then shut down and say what was lost.
            tokio::io::stdin().read_to_end(&mut Vec::new()).await?;
            let report = server.shutdown(Duration::from_secs(5)).await;
            println!("server: shut down, {report}");
            return Ok(());
        }
        Ok("producer") => {
            let q =
                RemoteQueue::<Option<u64>>::connect(&std::env::var("ADDR")?, "jobs", &key).await?;
            for job in 0..JOBS {
                q.feed(Some(job)).await?; // pipelined; waits while the window is full
            }
            for _ in 0..CONSUMERS {
                q.feed(None).await?; // one stop marker per consumer
            }
            q.close().await?; // the server holds every job, or this says which not
            println!("producer: {JOBS} jobs held by the server");
            return Ok(());
        }
        Ok("consumer") => {
            let q =
                RemoteQueue::<Option<u64>>::connect(&std::env::var("ADDR")?, "jobs", &key).await?;
            let (mut done, mut sum) = (0u64, 0u64);
            loop {
                let (job, delivery) = q.get_unacked().await?;
                delivery.ack().await?; // the server has the ack
                match job {
                    Some(job) => {
                        sum += job; // the work
                        done += 1;
                    }
                    None => break,
                }
            }
            q.close().await?;
            println!("consumer {}: {done} jobs (sum {sum})", std::process::id());
            return Ok(());
        }
        _ => {}
    }

    let exe = std::env::current_exe()?;
    let mut server = tokio::process::Command::new(&exe)
        .env("PROCQ_ROLE", "server")
        .env("PROCQ_KEY", &key)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdin = server.stdin.take().expect("piped");
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
                .kill_on_drop(true)
                .spawn()?,
        );
    }
    for mut child in children {
        assert!(child.wait().await?.success());
    }
    let stats = procq::remote::server_stats(&addr, &key).await?;
    for q in stats.queues {
        println!(
            "queue {}: {} waiting, {} put, {} acknowledged, {} redelivered",
            q.name, q.len, q.puts, q.acks, q.redeliveries
        );
    }
    println!("{JOBS} jobs through the server in {:.2?}", start.elapsed());
    drop(stdin);
    while let Some(line) = lines.next_line().await? {
        println!("{line}");
    }
    server.wait().await?;
    Ok(())
}
