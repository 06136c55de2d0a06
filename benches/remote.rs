//! `cargo bench --bench remote`: procq's remote queue, plain and over TLS, against Python's
//! `BaseManager`-served `queue.Queue`, in one run, on the same workload. Prints a markdown
//! table with the ratio of each procq row to Python's.
//!
//! Each row runs a server, a producer and a consumer as three processes over TCP on
//! loopback: this binary re-runs itself with `PROCQ_BENCH_ROLE` naming the part a child
//! plays. The producer feeds 512-byte encoded items (pipelined, confirmed by `close`), the
//! consumer `get`s them (acks pipelined, confirmed by `close`); the time runs from the
//! start signal to the consumer's last get. Each process runs a current-thread runtime
//! (the server embedded as in the earlier remote row), except in the row whose server runs
//! on a multi-thread runtime as `procq serve` does. TLS certificates are made at start
//! with `rcgen`.
//!
//! Environment: `PROCQ_BENCH_REMOTE_ITEMS` (default 300,000, enough for every row to reach
//! its steady state; Python's manager takes about ten seconds a run), `PROCQ_BENCH_RUNS`
//! (best of, default 3),
//! `PROCQ_BENCH_PYTHON=0` to skip the Python row. Every row, Python's too, is the best of
//! the runs.

use std::process::Stdio;
use std::time::{Duration, Instant};

use procq::remote::{ClientOptions, Server, ServerConfig};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

mod common;
use common::{best, env_number, runs, say, ROLE};

const KEY: &[u8] = b"procq-bench";
/// Payload bytes so that the postcard encoding (2-byte length varint + bytes) is 512 B.
const PAYLOAD: usize = 510;

#[derive(Serialize, Deserialize, Clone)]
struct Item(#[serde(with = "serde_bytes")] Vec<u8>);

fn main() {
    // Every process on a current-thread runtime, except the server of the row that runs
    // it as `procq serve` does, on a multi-thread runtime.
    let multi = std::env::var("SERVER_RT").as_deref() == Ok("multi");
    let rt = match std::env::var(ROLE).as_deref() {
        Ok("server") if multi => tokio::runtime::Builder::new_multi_thread(),
        _ => tokio::runtime::Builder::new_current_thread(),
    }
    .enable_all()
    .build()
    .unwrap();
    match std::env::var(ROLE) {
        Ok(role) => rt.block_on(child(&role)),
        Err(_) => rt.block_on(parent()),
    }
}

/// Client options, with TLS if the parent passed a CA.
fn options() -> ClientOptions {
    let options = ClientOptions::new(KEY);
    match std::env::var("TLS_CA") {
        Ok(ca) => {
            let tls = procq::remote::tls::client_config(&std::fs::read(ca).unwrap()).unwrap();
            options.tls(tls, "localhost")
        }
        Err(_) => options,
    }
}

async fn child(role: &str) {
    match role {
        "server" => {
            let mut config = ServerConfig::new(KEY);
            if let (Ok(cert), Ok(key)) = (std::env::var("TLS_CERT"), std::env::var("TLS_KEY")) {
                let tls = procq::remote::tls::server_config(
                    &std::fs::read(cert).unwrap(),
                    &std::fs::read(key).unwrap(),
                )
                .unwrap();
                config = config.tls(tls);
            }
            let server = Server::new(config).unwrap();
            server.declare("bench", 0).unwrap();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            say(listener.local_addr().unwrap().port());
            server.serve_tcp(listener).await.unwrap();
        }
        "producer" => {
            let addr = std::env::var("ADDR").unwrap();
            let count: usize = std::env::var("COUNT").unwrap().parse().unwrap();
            let q = options().connect::<Item>(&addr, "bench").await.unwrap();
            let it = Item(vec![7u8; PAYLOAD]);
            assert_eq!(postcard::to_stdvec(&it).unwrap().len(), 512);
            say("ready");
            let mut go = String::new();
            std::io::stdin().read_line(&mut go).unwrap();
            for _ in 0..count {
                q.feed(it.clone()).await.unwrap();
            }
            q.close().await.unwrap();
        }
        "consumer" => {
            let addr = std::env::var("ADDR").unwrap();
            let count: usize = std::env::var("COUNT").unwrap().parse().unwrap();
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

fn child_cmd(role: &str, tls: Option<&Tls>, multi: bool) -> Command {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    if multi {
        cmd.env("SERVER_RT", "multi");
    }
    cmd.env(ROLE, role)
        .stdout(Stdio::piped())
        .kill_on_drop(true);
    if let Some(tls) = tls {
        cmd.env("TLS_CERT", &tls.cert)
            .env("TLS_KEY", &tls.key)
            .env("TLS_CA", &tls.cert);
    }
    cmd
}

/// A self-signed certificate for `localhost`, in files.
struct Tls {
    dir: std::path::PathBuf,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
}

impl Tls {
    fn make() -> Tls {
        let dir = std::env::temp_dir().join(format!("procq-bench-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        Tls {
            dir,
            cert: cert_path,
            key: key_path,
        }
    }
}

impl Drop for Tls {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn line(lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>) -> String {
    tokio::time::timeout(Duration::from_secs(300), lines.next_line())
        .await
        .expect("child report timed out")
        .unwrap()
        .expect("child exited early")
}

/// Items per second from a producer client through a procq server (its own process) to
/// a consumer client, over TCP on loopback.
async fn procq_remote(n: usize, tls: Option<&Tls>, multi: bool) -> f64 {
    let mut server = child_cmd("server", tls, multi).spawn().unwrap();
    let mut server_out = BufReader::new(server.stdout.take().unwrap()).lines();
    let port = line(&mut server_out).await;
    let addr = format!("localhost:{port}");
    let mut consumer = child_cmd("consumer", tls, false)
        .env("ADDR", &addr)
        .env("COUNT", n.to_string())
        .spawn()
        .unwrap();
    let mut consumer_out = BufReader::new(consumer.stdout.take().unwrap()).lines();
    let mut producer = child_cmd("producer", tls, false)
        .env("ADDR", &addr)
        .env("COUNT", n.to_string())
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
    assert!(producer.wait().await.unwrap().success());
    assert!(consumer.wait().await.unwrap().success());
    let _ = server.kill().await;
    n as f64 / elapsed.as_secs_f64()
}

async fn python_manager_rate(n: usize) -> f64 {
    common::python("mp_manager.py", &[n.to_string()]).await
}

async fn parent() {
    let n = env_number("PROCQ_BENCH_REMOTE_ITEMS").unwrap_or(300_000);
    let runs = runs();
    let python = std::env::var("PROCQ_BENCH_PYTHON").map_or(true, |v| v != "0");
    eprintln!("procq remote benchmark: {n} items of 512 B, best of {runs}");
    let tls = Tls::make();
    let plain = best(runs, || procq_remote(n, None, false)).await;
    let over_tls = best(runs, || procq_remote(n, Some(&tls), false)).await;
    let multi = best(runs, || procq_remote(n, None, true)).await;
    let theirs = if python {
        best(runs, || python_manager_rate(n)).await
    } else {
        f64::NAN
    };
    println!();
    println!(
        "| remote, 512 B items, producer → server → consumer (TCP loopback, {n} items) | items/s | × Python |"
    );
    println!("|---|---:|---:|");
    println!(
        "| procq remote queue (pipelined puts, pushed gets, ack per item) | {plain:.0} | {:.0}× |",
        plain / theirs
    );
    println!(
        "| procq remote queue over TLS (the same, TLS 1.3) | {over_tls:.0} | {:.0}× |",
        over_tls / theirs
    );
    println!(
        "| procq remote queue, server on a multi-thread runtime (as `procq serve`) | {multi:.0} | {:.0}× |",
        multi / theirs
    );
    println!("| Python BaseManager-served queue.Queue | {theirs:.0} | 1× |");
}
