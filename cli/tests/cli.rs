//! The `procq` command line: serve, stat, metrics, logs, and shutdown on SIGTERM.

use std::process::Stdio;
use std::time::Duration;

use procq::remote::{ClientOptions, Refusal, RemoteQueue};
use procq::RemoteError;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

const KEY: &str = "cli test key";
const PATIENCE: Duration = Duration::from_secs(60);
const PROCQ: &str = env!("CARGO_BIN_EXE_procq");

/// A running `procq serve`: its address, and its log lines (stderr) as they come.
struct Served {
    child: Child,
    addr: String,
    metrics: Option<String>,
    logs: mpsc::UnboundedReceiver<String>,
}

impl Served {
    /// Waits for a log line containing every one of `words`; returns it.
    async fn log_line(&mut self, words: &[&str]) -> String {
        let waiting = async {
            while let Some(line) = self.logs.recv().await {
                if words.iter().all(|w| line.contains(w)) {
                    return line;
                }
            }
            panic!("server exited without logging {words:?}");
        };
        tokio::time::timeout(PATIENCE, waiting)
            .await
            .unwrap_or_else(|_| panic!("no log line with {words:?}"))
    }

    fn sigterm(&self) {
        let pid = rustix::process::Pid::from_raw(self.child.id().unwrap() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    }

    async fn exit_code(&mut self) -> i32 {
        let status = tokio::time::timeout(PATIENCE, self.child.wait())
            .await
            .expect("server exits")
            .unwrap();
        status.code().expect("exit code")
    }
}

/// Starts `procq serve` with `args` (and `--listen 127.0.0.1:0` unless given).
async fn serve(args: &[&str]) -> Served {
    let mut cmd = Command::new(PROCQ);
    cmd.arg("serve");
    if !args.contains(&"--listen") {
        cmd.args(["--listen", "127.0.0.1:0"]);
    }
    let mut child = cmd
        .args(args)
        .env("PROCQ_KEY", KEY)
        .env(
            "RUST_LOG",
            std::env::var("PROCQ_TEST_LOG").unwrap_or("info".into()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let (tx, logs) = mpsc::unbounded_channel();
    let mut err = BufReader::new(child.stderr.take().unwrap()).lines();
    tokio::spawn(async move {
        while let Ok(Some(line)) = err.next_line().await {
            eprintln!("server: {line}");
            let _ = tx.send(line);
        }
    });
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(PATIENCE, out.next_line())
        .await
        .unwrap()
        .unwrap()
        .expect("the server says where it listens");
    let addr = line
        .strip_prefix("procq: listening on ")
        .expect(&line)
        .to_string();
    let metrics = if args.contains(&"--metrics") {
        let line = out.next_line().await.unwrap().unwrap();
        Some(
            line.strip_prefix("procq: metrics on ")
                .expect(&line)
                .to_string(),
        )
    } else {
        None
    };
    tokio::spawn(async move { while let Ok(Some(_)) = out.next_line().await {} });
    Served {
        child,
        addr,
        metrics,
        logs,
    }
}

async fn run(args: &[&str]) -> std::process::Output {
    let out = Command::new(PROCQ)
        .args(args)
        .env("PROCQ_KEY", KEY)
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(PATIENCE, out).await.unwrap().unwrap()
}

#[tokio::test]
async fn serve_and_stat_as_a_table_and_as_json() {
    let mut server = serve(&["--queue", "jobs:100", "--queue", "other"]).await;
    let q = RemoteQueue::<u32>::connect(&server.addr, "jobs", KEY)
        .await
        .unwrap();
    assert_eq!(q.maxsize(), Some(100));
    for i in 0..10 {
        q.put(i).await.unwrap();
    }
    // A key file written by `echo` (trailing newline) holds the key.
    let key_file = std::env::temp_dir().join(format!("procq-cli-key-{}", std::process::id()));
    std::fs::write(&key_file, format!("{KEY}\n")).unwrap();
    let out = Command::new(PROCQ)
        .args([
            "stat",
            "--connect",
            &server.addr,
            "--interval",
            "0.1",
            "--key-file",
        ])
        .arg(&key_file)
        .env_remove("PROCQ_KEY")
        .output()
        .await
        .unwrap();
    std::fs::remove_file(&key_file).unwrap();
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{table}");
    let jobs: Vec<&str> = table
        .lines()
        .find(|l| l.starts_with("jobs"))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(jobs[1], "10", "{table}");
    assert!(table.lines().any(|l| l.starts_with("other")));

    let out = run(&[
        "stat",
        "--connect",
        &server.addr,
        "--interval",
        "0.1",
        "--json",
    ])
    .await;
    assert!(out.status.success());
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stats["queues"][0]["name"], "jobs");
    assert_eq!(stats["queues"][0]["len"], 10);
    assert_eq!(stats["queues"][0]["maxsize"], 100);
    assert_eq!(stats["connections"], 2, "the queue's and stat's own");

    // --watch keeps printing samples until stopped.
    let mut watch = Command::new(PROCQ)
        .args([
            "stat",
            "--connect",
            &server.addr,
            "--interval",
            "0.05",
            "--json",
            "--watch",
        ])
        .env("PROCQ_KEY", KEY)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    for _ in 0..3 {
        let line = tokio::time::timeout(PATIENCE, lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let sample: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(sample["queues"][0]["len"], 10);
    }
    watch.kill().await.unwrap();
    q.close().await.unwrap();
    server.sigterm();
    assert_eq!(server.exit_code().await, 3, "10 items were discarded");
}

#[tokio::test]
async fn bad_intervals_are_an_error_not_a_panic() {
    for interval in ["inf", "0", "-1", "NaN", "soon"] {
        let arg = format!("--interval={interval}");
        let out = run(&["stat", "--connect", "127.0.0.1:1", &arg]).await;
        assert_eq!(out.status.code(), Some(2), "{interval}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--interval"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

/// SIGTERM: puts are refused at once with a typed error (not acknowledged), and what the
/// queues still hold after the grace period is logged at error level with the queue and
/// count, and the exit status is non-zero.
#[tokio::test]
async fn sigterm_refuses_puts_and_reports_every_discarded_item() {
    let mut server = serve(&["--queue", "jobs", "--grace", "1"]).await;
    let q = RemoteQueue::<u64>::connect(&server.addr, "jobs", KEY)
        .await
        .unwrap();
    for i in 0..100_000 {
        q.feed(i).await.unwrap();
    }
    q.flush().await.unwrap();
    server.sigterm();
    server.log_line(&["shutting down"]).await;
    let refused = q.put(100_000).await.unwrap_err();
    assert!(
        matches!(refused.error(), RemoteError::Refused(Refusal::ShuttingDown)),
        "{refused}"
    );
    let line = server
        .log_line(&["ERROR", "discards", "jobs", "100000"])
        .await;
    eprintln!("shutdown report line: {line}");
    server
        .log_line(&["ERROR", "discarded 100000 items: jobs 100000"])
        .await;
    assert_eq!(server.exit_code().await, 3);
    assert!(RemoteQueue::<u32>::connect(&server.addr, "jobs", KEY)
        .await
        .is_err());
}

/// A SIGTERM that arrives as soon as the server says it listens is a shutdown, never a
/// kill: the handlers are installed before the first listener.
#[tokio::test]
async fn sigterm_right_after_listening_shuts_down_cleanly() {
    for round in 0..30 {
        let mut server = serve(&["--queue", "jobs"]).await;
        server.sigterm();
        let status = tokio::time::timeout(PATIENCE, server.child.wait())
            .await
            .expect("server exits")
            .unwrap();
        assert_eq!(status.code(), Some(0), "round {round}: {status}");
    }
}

/// A consumer that drains everything within the grace period: a clean exit.
#[tokio::test]
async fn sigterm_with_a_draining_consumer_exits_cleanly() {
    let mut server = serve(&["--queue", "jobs", "--grace", "30"]).await;
    let q = RemoteQueue::<u64>::connect(&server.addr, "jobs", KEY)
        .await
        .unwrap();
    for i in 0..1000 {
        q.feed(i).await.unwrap();
    }
    q.flush().await.unwrap();
    server.sigterm();
    server.log_line(&["shutting down"]).await;
    for _ in 0..1000 {
        let (_, delivery) = q.get_unacked().await.unwrap();
        delivery.ack().await.unwrap();
    }
    server.log_line(&["nothing discarded"]).await;
    assert_eq!(server.exit_code().await, 0);
}

#[tokio::test]
async fn failed_handshakes_are_logged_with_the_peer_address() {
    let mut server = serve(&["--queue", "jobs"]).await;
    let err = RemoteQueue::<u8>::connect(&server.addr, "jobs", "wrong key")
        .await
        .unwrap_err();
    assert!(matches!(err, RemoteError::Auth(_)), "{err}");
    let line = server
        .log_line(&["WARN", "handshake failed", "127.0.0.1:"])
        .await;
    assert!(!line.contains(KEY));
}

#[tokio::test]
async fn the_key_never_comes_from_the_command_line() {
    let out = Command::new(PROCQ)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env_remove("PROCQ_KEY")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "procq: no key: use --key-file or set PROCQ_KEY"
    );
    let out = run(&["serve", "--listen", "127.0.0.1:0", "--key", "secret"]).await;
    assert!(!out.status.success(), "there is no --key option");
}

#[tokio::test]
async fn a_unix_socket_path_is_only_replaced_when_stale() {
    let dir = std::env::temp_dir().join(format!("procq-cli-unix-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("q.sock");
    let listen = format!("unix:{}", path.display());
    // A regular file is never deleted.
    std::fs::write(&path, b"precious").unwrap();
    let out = run(&["serve", "--listen", &listen, "--queue", "jobs"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a socket"));
    assert_eq!(std::fs::read(&path).unwrap(), b"precious");
    std::fs::remove_file(&path).unwrap();
    // A live server's socket is not stolen.
    let mut first = serve(&["--listen", &listen, "--queue", "jobs"]).await;
    let out = run(&["serve", "--listen", &listen, "--queue", "jobs"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("listening there"));
    let q = RemoteQueue::<u8>::connect(&listen, "jobs", KEY)
        .await
        .unwrap();
    q.put(1).await.unwrap();
    assert_eq!(q.get().await.unwrap(), 1);
    q.close().await.unwrap();
    first.sigterm();
    assert_eq!(first.exit_code().await, 0);
    assert!(!path.exists(), "its own socket is removed at exit");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn metrics_are_served_for_prometheus() {
    let mut server = serve(&["--queue", "jobs", "--metrics", "127.0.0.1:0"]).await;
    let q = ClientOptions::new(KEY)
        .prefetch(1)
        .connect::<u8>(&server.addr, "jobs")
        .await
        .unwrap();
    for i in 0..10 {
        q.put(i).await.unwrap();
    }
    q.get().await.unwrap();
    q.flush().await.unwrap();
    let mut http = tokio::net::TcpStream::connect(server.metrics.as_ref().unwrap())
        .await
        .unwrap();
    http.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    tokio::time::timeout(PATIENCE, http.read_to_string(&mut response))
        .await
        .unwrap()
        .unwrap();
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    for line in [
        "procq_queue_length{queue=\"jobs\"} 9",
        "procq_queue_puts_total{queue=\"jobs\"} 10",
        "procq_queue_acks_total{queue=\"jobs\"} 1",
        "procq_queue_consumers{queue=\"jobs\"} 1",
        "procq_queue_in_flight{queue=\"jobs\"} 0",
        "procq_queue_redeliveries_total{queue=\"jobs\"} 0",
        "procq_connections 1",
    ] {
        assert!(
            response.lines().any(|l| l == line),
            "no {line:?} in\n{response}"
        );
    }
    q.close().await.unwrap();
    server.sigterm();
    assert_eq!(server.exit_code().await, 3);
}

#[tokio::test]
async fn stat_speaks_tls_to_a_tls_server() {
    let dir = std::env::temp_dir().join(format!("procq-cli-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (cert_file, key_file) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    let (cert_path, key_path) = (cert_file.to_str().unwrap(), key_file.to_str().unwrap());
    let mut server = serve(&[
        "--queue",
        "jobs",
        "--tls-cert",
        cert_path,
        "--tls-key",
        key_path,
    ])
    .await;
    let tls = procq::remote::tls::client_config(cert.pem().as_bytes()).unwrap();
    let q = ClientOptions::new(KEY)
        .tls(tls, "localhost")
        .connect::<u8>(&server.addr, "jobs")
        .await
        .unwrap();
    q.put(1).await.unwrap();
    let port = server.addr.rsplit_once(':').unwrap().1;
    let out = run(&[
        "stat",
        "--connect",
        &format!("localhost:{port}"),
        "--interval",
        "0.05",
        "--json",
        "--tls-ca",
        cert_path,
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stats["queues"][0]["len"], 1);
    let plain = run(&["stat", "--connect", &server.addr, "--interval", "0.05"]).await;
    assert!(!plain.status.success());
    q.close().await.unwrap();
    server.sigterm();
    assert_eq!(server.exit_code().await, 3);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_killed_server_is_an_error_value_for_waiting_clients_never_a_hang() {
    let mut server = serve(&["--queue", "full:1", "--queue", "empty"]).await;
    let producer = RemoteQueue::<u32>::connect(&server.addr, "full", KEY)
        .await
        .unwrap();
    let consumer = RemoteQueue::<u32>::connect(&server.addr, "empty", KEY)
        .await
        .unwrap();
    producer.put(1).await.unwrap();
    let waiting_put = tokio::spawn(async move { producer.put(2).await });
    let waiting_get = tokio::spawn(async move { consumer.get().await });
    server.child.kill().await.unwrap();
    let put = tokio::time::timeout(PATIENCE, waiting_put)
        .await
        .unwrap()
        .unwrap();
    let get = tokio::time::timeout(PATIENCE, waiting_get)
        .await
        .unwrap()
        .unwrap();
    let put = put.unwrap_err();
    assert!(put.error().put_in_doubt(), "{put}");
    assert!(matches!(get, Err(RemoteError::Disconnected(_))), "{get:?}");
}
