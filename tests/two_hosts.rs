//! A server and a client on two "hosts": network namespaces joined by a veth pair that
//! this test makes (and removes). Needs root and `ip` (CI runs as root); elsewhere it
//! says why it skipped.
//!
//! Cutting the link mid-stream must give the client an error within its timeout, and
//! every item the server acknowledged must still be there.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{report, Kid, PATIENCE};
use procq::remote::RemoteQueue;

const KEY: &str = "two hosts";

#[test]
fn child_main() {
    common::run_child(|role| async move { play(&role).await });
}

async fn play(role: &str) {
    assert_eq!(role, "far-client");
    let addr = std::env::var("ADDR").unwrap();
    let q = RemoteQueue::<u64>::connect(&addr, "jobs", KEY.as_bytes())
        .await
        .unwrap();
    let mut acked = 0u64;
    let started = std::time::Instant::now();
    loop {
        match q.put_timeout(&acked, Duration::from_secs(2)).await {
            Ok(()) => {
                acked += 1;
                if acked.is_multiple_of(1000) {
                    report(format!("acked {acked}"));
                }
            }
            Err(e) => {
                report(format!(
                    "error {acked} {}: {e}",
                    started.elapsed().as_millis()
                ));
                return;
            }
        }
    }
}

/// Runs `ip` with `args`; panics with its output if it fails.
fn ip(args: &[&str]) {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two namespaces joined by a veth pair; removed on drop.
struct Hosts {
    server_ns: String,
    client_ns: String,
    server_if: String,
    server_addr: String,
}

impl Hosts {
    fn make() -> Result<Hosts, String> {
        if !rustix::process::geteuid().is_root() {
            return Err("not root".into());
        }
        if std::process::Command::new("ip").arg("-V").output().is_err() {
            return Err("no `ip` command".into());
        }
        let id = std::process::id();
        let (a, b) = (format!("pqa{id}"), format!("pqb{id}"));
        let (va, vb) = (
            format!("pqva{}", id % 100_000),
            format!("pqvb{}", id % 100_000),
        );
        let net = format!("10.213.{}", id % 250);
        let made = std::process::Command::new("ip")
            .args(["netns", "add", &a])
            .output();
        if !made.map(|o| o.status.success()).unwrap_or(false) {
            return Err("cannot create network namespaces here".into());
        }
        let hosts = Hosts {
            server_ns: a.clone(),
            client_ns: b.clone(),
            server_if: va.clone(),
            server_addr: format!("{net}.1"),
        };
        ip(&["netns", "add", &b]);
        ip(&["link", "add", &va, "type", "veth", "peer", "name", &vb]);
        ip(&["link", "set", &va, "netns", &a]);
        ip(&["link", "set", &vb, "netns", &b]);
        ip(&["-n", &a, "addr", "add", &format!("{net}.1/24"), "dev", &va]);
        ip(&["-n", &b, "addr", "add", &format!("{net}.2/24"), "dev", &vb]);
        for (ns, dev) in [(&a, &va), (&b, &vb)] {
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        Ok(hosts)
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for ns in [&self.server_ns, &self.client_ns] {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", ns])
                .output();
        }
    }
}

#[tokio::test]
async fn cutting_the_link_errors_in_time_and_loses_no_acknowledged_item() {
    let hosts = match Hosts::make() {
        Ok(hosts) => hosts,
        Err(why) => {
            println!("skipped: two-host test needs network namespaces ({why})");
            return;
        }
    };
    let listen = format!("{}:7070", hosts.server_addr);
    let mut server = tokio::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &hosts.server_ns,
            env!("CARGO_BIN_EXE_procq"),
            "serve",
        ])
        .args(["--listen", &listen, "--queue", "jobs"])
        .env("PROCQ_KEY", KEY)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut server_out = tokio::io::BufReader::new(server.stdout.take().unwrap());
    let mut line = String::new();
    tokio::io::AsyncBufReadExt::read_line(&mut server_out, &mut line)
        .await
        .unwrap();
    assert!(line.starts_with("procq: listening"), "{line}");

    let mut client = {
        let mut cmd = tokio::process::Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            &hosts.client_ns,
            std::env::current_exe().unwrap().to_str().unwrap(),
        ])
        .args(common::CHILD_ARGS)
        .env(common::ROLE, "far-client")
        .env("ADDR", &listen)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true);
        Kid::spawn(cmd)
    };
    // Stream for a while, then cut the link.
    for _ in 0..3 {
        assert!(client.report().await.starts_with("acked"));
    }
    ip(&[
        "-n",
        &hosts.server_ns,
        "link",
        "set",
        &hosts.server_if,
        "down",
    ]);
    let cut = std::time::Instant::now();
    let line = loop {
        let line = client.report().await;
        if line.starts_with("error") {
            break line;
        }
    };
    let waited = cut.elapsed();
    assert!(
        waited < Duration::from_secs(5),
        "client noticed after {waited:?}: {line}"
    );
    let acked: u64 = line.split(' ').nth(1).unwrap().parse().unwrap();

    // Every acknowledged item is in the server's queue.
    let stat = tokio::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &hosts.server_ns,
            env!("CARGO_BIN_EXE_procq"),
            "stat",
        ])
        .args(["--connect", &listen, "--interval", "0.01"])
        .env("PROCQ_KEY", KEY)
        .output();
    let out = tokio::time::timeout(PATIENCE, stat).await.unwrap().unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    let held: u64 = table
        .lines()
        .find(|l| l.starts_with("jobs"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no jobs line in {table}"));
    println!("link cut: client error after {waited:?} ({line}); server holds {held}, client saw {acked} acked");
    assert!(
        held >= acked,
        "acknowledged items lost: held {held}, acked {acked}"
    );
    client.kill().await;
    let _ = server.kill().await;
    drop(hosts);
}
