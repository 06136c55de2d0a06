//! The `procq` command line: serve, stat, graceful shutdown.

use std::process::Stdio;
use std::time::Duration;

use procq::remote::RemoteQueue;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const KEY: &str = "cli test key";
const PATIENCE: Duration = Duration::from_secs(30);

/// Starts `procq serve` on an ephemeral port; returns the child and its address.
async fn serve(args: &[&str]) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_procq"))
        .arg("serve")
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .env("PROCQ_KEY", KEY)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(PATIENCE, lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let addr = line
        .strip_prefix("procq: listening on ")
        .expect(&line)
        .to_string();
    // Keep reading stdout so the server never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, addr)
}

fn sigterm(child: &Child) {
    let pid = rustix::process::Pid::from_raw(child.id().unwrap() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
}

#[tokio::test]
async fn serve_stat_and_a_graceful_sigterm() {
    let (mut server, addr) = serve(&["--queue", "jobs:100", "--queue", "other"]).await;
    let q = RemoteQueue::<u32>::connect(&addr, "jobs", KEY.as_bytes())
        .await
        .unwrap();
    assert_eq!(q.maxsize(), 100);
    for i in 0..10 {
        q.put(&i).await.unwrap();
    }
    let key_file = std::env::temp_dir().join(format!("procq-cli-key-{}", std::process::id()));
    std::fs::write(&key_file, format!("{KEY}\n")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_procq"))
        .args([
            "stat",
            "--connect",
            &addr,
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

    // In-flight puts at the moment of SIGTERM are still read and acknowledged (into the
    // unbounded queue: "jobs" is full beyond 100, and a put waiting for room when the
    // server stops is not held).
    let other = RemoteQueue::<u32>::connect(&addr, "other", KEY.as_bytes())
        .await
        .unwrap();
    for i in 0..1000 {
        other.feed(&i).await.unwrap();
    }
    sigterm(&server);
    tokio::time::timeout(PATIENCE, other.flush())
        .await
        .unwrap()
        .unwrap();
    let status = tokio::time::timeout(PATIENCE, server.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
    // And it no longer accepts anyone.
    assert!(RemoteQueue::<u32>::connect(&addr, "jobs", KEY.as_bytes())
        .await
        .is_err());
}

#[tokio::test]
async fn the_key_never_comes_from_the_command_line() {
    let out = Command::new(env!("CARGO_BIN_EXE_procq"))
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
    let out = Command::new(env!("CARGO_BIN_EXE_procq"))
        .args(["serve", "--listen", "127.0.0.1:0", "--key", "secret"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success(), "there is no --key option");
}

#[tokio::test]
async fn a_killed_server_is_an_error_value_for_waiting_clients_never_a_hang() {
    let (mut server, addr) = serve(&["--queue", "full:1", "--queue", "empty"]).await;
    let producer = RemoteQueue::<u32>::connect(&addr, "full", KEY.as_bytes())
        .await
        .unwrap();
    let consumer = RemoteQueue::<u32>::connect(&addr, "empty", KEY.as_bytes())
        .await
        .unwrap();
    producer.put(&1).await.unwrap();
    // "full" holds its one item, so this put waits for room; "empty" has nothing, so this
    // get waits for an item. Then the server dies.
    let waiting_put = tokio::spawn(async move { producer.put(&2).await });
    let waiting_get = tokio::spawn(async move { consumer.get().await });
    server.kill().await.unwrap();
    let put = tokio::time::timeout(PATIENCE, waiting_put)
        .await
        .unwrap()
        .unwrap();
    let get = tokio::time::timeout(PATIENCE, waiting_get)
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(put, Err(procq::RemoteError::Disconnected(_))),
        "{put:?}"
    );
    assert!(
        matches!(get, Err(procq::RemoteError::Disconnected(_))),
        "{get:?}"
    );
}
