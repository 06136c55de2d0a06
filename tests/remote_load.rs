//! Load: 1,000 connections to one server process, half producers and half consumers,
//! for a bounded time. Every confirmed put is got exactly once; the server's peak memory
//! and the put latencies are reported.

mod remote_common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use procq::remote::{ClientOptions, RemoteQueue, Server, ServerConfig};
use remote_common::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const PRODUCERS: usize = 500;
const CONSUMERS: usize = 500;
const RUN_FOR: Duration = Duration::from_secs(3);

#[test]
fn child_main() {
    // The server runs on a multi-thread runtime, as `procq serve` does.
    if std::env::var(ROLE).as_deref() == Ok("server") {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(serve());
        std::process::exit(0);
    }
}

/// Serves "jobs"; answers each line on stdin with its peak and current RSS in KiB.
async fn serve() {
    room_for_descriptors(8192);
    let config = ServerConfig::new(KEY).max_connections(2000);
    let server = Server::new(config).unwrap();
    server.declare("jobs", 0).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    report(listener.local_addr().unwrap());
    tokio::spawn(async move { server.serve_tcp(listener).await });
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(_)) = lines.next_line().await {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let kib = |field: &str| -> u64 {
            let line = status.lines().find(|l| l.starts_with(field)).unwrap();
            line.split_whitespace().nth(1).unwrap().parse().unwrap()
        };
        report(format!("{} {}", kib("VmHWM:"), kib("VmRSS:")));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_connections_of_producers_and_consumers() {
    room_for_descriptors(8192);
    let mut cmd = child_command("server");
    cmd.stdin(std::process::Stdio::piped());
    let mut server = Kid::spawn(cmd);
    let mut ask = server.child.stdin.take().unwrap();
    let addr = server.report().await;
    ask.write_all(b"rss\n").await.unwrap();
    let idle_rss = server.report().await;

    // Connect everyone, a hundred handshakes at a time.
    let gate = Arc::new(tokio::sync::Semaphore::new(100));
    let connect = |prefetch: u32| {
        let (gate, addr) = (gate.clone(), addr.clone());
        tokio::spawn(async move {
            let _turn = gate.acquire().await.unwrap();
            ClientOptions::new(KEY)
                .prefetch(prefetch)
                .connect::<(u32, u32)>(&addr, "jobs")
                .await
                .unwrap()
        })
    };
    let producers: Vec<_> = (0..PRODUCERS).map(|_| connect(16)).collect();
    let consumers: Vec<_> = (0..CONSUMERS).map(|_| connect(16)).collect();
    let mut queues = Vec::new();
    for task in producers.into_iter().chain(consumers) {
        queues.push(tokio::time::timeout(PATIENCE, task).await.unwrap().unwrap());
    }
    let consumers = queues.split_off(PRODUCERS);
    let producers = queues;

    let got = Arc::new(Mutex::new(HashSet::new()));
    let duplicates = Arc::new(Mutex::new(0u64));
    let consuming: Vec<_> = consumers
        .into_iter()
        .map(|q: RemoteQueue<(u32, u32)>| {
            let (got, duplicates) = (got.clone(), duplicates.clone());
            tokio::spawn(async move {
                while let Ok((item, delivery)) = q.get_unacked().await {
                    delivery.ack().await.unwrap();
                    if !got.lock().unwrap().insert(item) {
                        *duplicates.lock().unwrap() += 1;
                    }
                }
            })
        })
        .collect();
    let start = Instant::now();
    let producing: Vec<_> = producers
        .into_iter()
        .enumerate()
        .map(|(p, q)| {
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut i = 0u32;
                while start.elapsed() < RUN_FOR {
                    let t = Instant::now();
                    q.put((p as u32, i)).await.unwrap();
                    latencies.push(t.elapsed());
                    i += 1;
                }
                q.close().await.unwrap();
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in producing {
        latencies.extend(tokio::time::timeout(PATIENCE, task).await.unwrap().unwrap());
    }
    let puts = latencies.len();
    let elapsed = start.elapsed();
    eventually("every confirmed put got", || {
        got.lock().unwrap().len() == puts
    })
    .await;
    ask.write_all(b"rss\n").await.unwrap();
    let loaded_rss = server.report().await;
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    let (peak, now): (u64, u64) = {
        let mut it = loaded_rss.split(' ').map(|n| n.parse().unwrap());
        (it.next().unwrap(), it.next().unwrap())
    };
    println!(
        "load: {PRODUCERS} producers + {CONSUMERS} consumers, {puts} confirmed puts in {elapsed:.2?} \
         ({:.0}/s); put latency p50 {:?}, p99 {:?}, max {:?}; server RSS idle {} KiB, \
         peak {peak} KiB, after {now} KiB",
        puts as f64 / elapsed.as_secs_f64(),
        pct(0.50),
        pct(0.99),
        latencies[latencies.len() - 1],
        idle_rss.split(' ').nth(1).unwrap(),
    );
    assert_eq!(*duplicates.lock().unwrap(), 0, "an item was got twice");
    assert!(puts >= PRODUCERS, "every producer put something");
    assert!(peak < 512 * 1024, "server peak RSS {peak} KiB");
    for task in &consuming {
        task.abort();
    }
    server.kill().await;
}
