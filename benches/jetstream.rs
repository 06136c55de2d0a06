//! `cargo bench --features nats --bench jetstream`: the same typed queue on procq's own
//! server, on NATS JetStream with 1 and 3 replicas, and Python's `BaseManager`-served
//! `queue.Queue`, in one run, on the same workload; items/s and the ratio to Python.
//!
//! Each row runs a producer and a consumer as two processes (this binary again, with
//! `PROCQ_BENCH_ROLE`), plus the queue's server(s): procq's server as a third process,
//! `nats-server` from PATH (one, or a cluster of three on loopback, each with a fresh
//! file store). The producer feeds 512-byte encoded items (pipelined, `close` confirms
//! them all), the consumer `get`s them; the time runs from the start signal to the
//! consumer's last get. The JetStream rows also say when the producer had every publish
//! acknowledged, and how many items travelled per JetStream message (the pack size)
//! and per pull (prefetch): that is where the time goes.
//!
//! Environment: `PROCQ_BENCH_JS_ITEMS` (default 100,000), `PROCQ_BENCH_RUNS` (best of,
//! default 3), `PROCQ_BENCH_PYTHON=0` to skip Python's row.

#[path = "../tests/nats_common/mod.rs"]
mod nats_common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use procq::remote::jetstream::{self, QueueConfig};
use procq::remote::{ClientOptions, Server, ServerConfig};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

mod common;
use common::{env_number, runs, say, ROLE};

const KEY: &[u8] = b"procq-bench";
/// Payload bytes so that the postcard encoding (2-byte length varint + bytes) is 512 B.
const PAYLOAD: usize = 510;

#[derive(Serialize, Deserialize, Clone)]
struct Item(#[serde(with = "serde_bytes")] Vec<u8>);

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    match std::env::var(ROLE) {
        Ok(role) => rt.block_on(child(&role)),
        Err(_) => rt.block_on(parent()),
    }
}

fn options() -> ClientOptions {
    let pack: usize = std::env::var("PACK").map_or(64, |p| p.parse().unwrap());
    let prefetch: u32 = std::env::var("PREFETCH").map_or(1024, |p| p.parse().unwrap());
    ClientOptions::new(KEY)
        .pack(pack, 64 * 1024)
        .prefetch(prefetch)
}

async fn child(role: &str) {
    let addr = std::env::var("ADDR").unwrap_or_default();
    let count: usize = std::env::var("COUNT").map_or(0, |c| c.parse().unwrap());
    match role {
        "server" => {
            let server = Server::new(ServerConfig::new(KEY)).unwrap();
            server.declare("bench", 0).unwrap();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            say(listener.local_addr().unwrap().port());
            server.serve_tcp(listener).await.unwrap();
        }
        "producer" => {
            let q = options().connect::<Item>(&addr, "bench").await.unwrap();
            let it = Item(vec![7u8; PAYLOAD]);
            assert_eq!(postcard::to_stdvec(&it).unwrap().len(), 512);
            say("ready");
            let mut go = String::new();
            std::io::stdin().read_line(&mut go).unwrap();
            let start = Instant::now();
            for _ in 0..count {
                q.feed(it.clone()).await.unwrap();
            }
            let fed = start.elapsed();
            q.close().await.unwrap();
            say(format!(
                "confirmed {} {}",
                fed.as_secs_f64(),
                start.elapsed().as_secs_f64()
            ));
        }
        "consumer" => {
            let q = options().connect::<Item>(&addr, "bench").await.unwrap();
            say("ready");
            for _ in 0..count {
                let it = q.get().await.unwrap();
                debug_assert_eq!(it.0.len(), PAYLOAD);
            }
            say("done");
            q.close().await.unwrap();
        }
        other => panic!("unknown role {other}"),
    }
}

fn child_cmd(role: &str, addr: &str, count: usize, env: &[(&str, String)]) -> Command {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.env(ROLE, role)
        .env("ADDR", addr)
        .env("COUNT", count.to_string())
        .stdout(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

async fn line(lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>) -> String {
    tokio::time::timeout(Duration::from_secs(600), lines.next_line())
        .await
        .expect("child report timed out")
        .unwrap()
        .expect("child exited early")
}

/// One run: items/s end to end, and when the producer had every item confirmed (s).
struct Rate {
    items_per_s: f64,
    confirmed_s: f64,
}

async fn pipe(addr: &str, n: usize, env: &[(&str, String)]) -> Rate {
    let mut consumer = child_cmd("consumer", addr, n, env).spawn().unwrap();
    let mut consumer_out = BufReader::new(consumer.stdout.take().unwrap()).lines();
    let mut producer = child_cmd("producer", addr, n, env)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let mut go = producer.stdin.take().unwrap();
    let mut producer_out = BufReader::new(producer.stdout.take().unwrap()).lines();
    assert_eq!(line(&mut producer_out).await, "ready");
    assert_eq!(line(&mut consumer_out).await, "ready");
    let start = Instant::now();
    go.write_all(b"go\n").await.unwrap();
    assert_eq!(line(&mut consumer_out).await, "done");
    let elapsed = start.elapsed();
    let confirmed = line(&mut producer_out).await;
    let confirmed_s = confirmed
        .split_whitespace()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(f64::NAN);
    assert!(producer.wait().await.unwrap().success());
    assert!(consumer.wait().await.unwrap().success());
    Rate {
        items_per_s: n as f64 / elapsed.as_secs_f64(),
        confirmed_s,
    }
}

async fn procq_server(n: usize) -> Rate {
    let mut server = child_cmd("server", "", 0, &[]).spawn().unwrap();
    let mut out = BufReader::new(server.stdout.take().unwrap()).lines();
    let port = line(&mut out).await;
    let rate = pipe(&format!("127.0.0.1:{port}"), n, &[]).await;
    let _ = server.kill().await;
    rate
}

/// A fresh queue on `url` (deleted first, so every run starts empty).
async fn fresh(url: &str, replicas: usize) {
    let options = ClientOptions::new(KEY);
    let _ = jetstream::delete(&options, url, "bench").await;
    jetstream::declare(
        &options,
        url,
        "bench",
        &QueueConfig::new().replicas(replicas),
    )
    .await
    .unwrap();
}

async fn on_jetstream(url: &str, replicas: usize, n: usize, pack: usize, prefetch: u32) -> Rate {
    fresh(url, replicas).await;
    let env = [
        ("PACK", pack.to_string()),
        ("PREFETCH", prefetch.to_string()),
    ];
    pipe(url, n, &env).await
}

async fn python_manager_rate(n: usize) -> f64 {
    common::python("mp_manager.py", &[n.to_string()]).await
}

async fn best<F, Fut>(runs: usize, mut f: F) -> Rate
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Rate>,
{
    let mut best = Rate {
        items_per_s: 0.0,
        confirmed_s: f64::NAN,
    };
    for _ in 0..runs {
        let rate = f().await;
        if rate.items_per_s > best.items_per_s {
            best = rate;
        }
    }
    best
}

async fn parent() {
    nats_common::require_nats_server();
    let n = env_number("PROCQ_BENCH_JS_ITEMS").unwrap_or(100_000);
    let runs = runs();
    let python = std::env::var("PROCQ_BENCH_PYTHON").map_or(true, |v| v != "0");
    eprintln!("procq JetStream benchmark: {n} items of 512 B, best of {runs}");

    let single = nats_common::Single::start();
    let r1 = single.url();
    let cluster = nats_common::Cluster::start(None);
    let r3 = cluster.urls();

    let mut rows: Vec<(String, Rate)> = Vec::new();
    rows.push((
        "procq's server (pipelined puts, pushed gets)".into(),
        best(runs, || procq_server(n)).await,
    ));
    for (pack, prefetch) in [(1, 1024), (8, 1024), (64, 1024), (64, 64)] {
        let label = format!(
            "JetStream R1, {pack} item(s) per message, prefetch {prefetch} ({} message(s) per pull)",
            (prefetch as usize / pack).max(1)
        );
        let rate = best(runs, || on_jetstream(&r1, 1, n, pack, prefetch)).await;
        rows.push((label, rate));
    }
    for pack in [8, 64] {
        let label =
            format!("JetStream R3 (3 servers, 2 cores), {pack} items per message, prefetch 1024");
        let rate = best(runs, || on_jetstream(&r3, 3, n, pack, 1024)).await;
        rows.push((label, rate));
    }
    let theirs = if python {
        let mut best_py = 0f64;
        for _ in 0..runs {
            best_py = best_py.max(python_manager_rate(n).await);
        }
        best_py
    } else {
        f64::NAN
    };
    println!();
    println!("| {n} items of 512 B, producer → queue → consumer (loopback) | items/s | × Python | producer confirmed all at |");
    println!("|---|---:|---:|---:|");
    for (label, rate) in &rows {
        println!(
            "| {label} | {:.0} | {:.1}× | {:.2} s |",
            rate.items_per_s,
            rate.items_per_s / theirs,
            rate.confirmed_s
        );
    }
    println!("| Python BaseManager-served queue.Queue | {theirs:.0} | 1× | |");
    drop(cluster);
    drop(single);
}
