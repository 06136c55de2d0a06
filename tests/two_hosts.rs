//! A server and a client on two "hosts": network namespaces joined by a veth pair that
//! this test makes (and removes). Needs root and `ip` (iproute2); CI runs as root. Without
//! them the test fails and says so: run it as root, or skip it by name
//! (`cargo test -- --skip two_hosts`).
//!
//! Cutting the link mid-stream must give the client an error within its timeout, and
//! every item the server acknowledged must still be there.

mod remote_common;

use std::process::Stdio;
use std::time::Duration;

use procq::remote::{ClientOptions, Server, ServerConfig};
use remote_common::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

#[test]
fn child_main() {
    run_child(|role| async move { play(&role).await });
}

async fn play(role: &str) {
    let addr = std::env::var("ADDR").unwrap();
    match role {
        // Serves "jobs"; answers each line on stdin with the queue's length.
        "server" => {
            let config = ServerConfig::new(KEY).idle_timeout(Duration::from_secs(2));
            let server = Server::new(config).unwrap();
            server.declare("jobs", 0).unwrap();
            let listener = tokio::net::TcpListener::bind(&addr).await.unwrap();
            let serving = server.clone();
            tokio::spawn(async move { serving.serve_tcp(listener).await });
            report("listening");
            let mut lines = BufReader::new(tokio::io::stdin()).lines();
            while let Ok(Some(_)) = lines.next_line().await {
                report(server.stats().queues[0].len);
            }
        }
        // Puts as fast as confirmations come, until a put fails.
        "far-client" => {
            let q = ClientOptions::new(KEY)
                .request_timeout(Duration::from_secs(1))
                .connect::<u64>(&addr, "jobs")
                .await
                .unwrap();
            let mut acked = 0u64;
            let started = std::time::Instant::now();
            loop {
                match q.put_timeout(acked, Duration::from_secs(2)).await {
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
        other => panic!("unknown role {other}"),
    }
}

/// Runs `ip` with `args`; panics with its output if it fails.
fn ip(args: &[&str]) {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .expect("run ip (install iproute2)");
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
    fn make() -> Hosts {
        assert!(
            rustix::process::geteuid().is_root(),
            "two_hosts needs root to make network namespaces (CI runs as root): run the \
             tests as root, or skip this one with `cargo test -- --skip two_hosts`"
        );
        let id = std::process::id();
        let (a, b) = (format!("pqa{id}"), format!("pqb{id}"));
        let (va, vb) = (
            format!("pqva{}", id % 100_000),
            format!("pqvb{}", id % 100_000),
        );
        let net = format!("10.213.{}", id % 250);
        ip(&["netns", "add", &a]);
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
        hosts
    }

    /// This test binary as a child playing `role` inside namespace `ns`.
    fn child(&self, ns: &str, role: &str, addr: &str) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new("ip");
        cmd.args(["netns", "exec", ns])
            .arg(std::env::current_exe().unwrap())
            .args(CHILD_ARGS)
            .env(ROLE, role)
            .env("ADDR", addr)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true);
        cmd
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
    let hosts = Hosts::make();
    let listen = format!("{}:7070", hosts.server_addr);
    let mut server_cmd = hosts.child(&hosts.server_ns, "server", &listen);
    server_cmd.stdin(Stdio::piped());
    let mut server = Kid::spawn(server_cmd);
    let mut ask = server.child.stdin.take().unwrap();
    assert_eq!(server.report().await, "listening");
    let mut client = Kid::spawn(hosts.child(&hosts.client_ns, "far-client", &listen));
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
    let acked: u64 = line.split(' ').nth(1).unwrap().parse().unwrap();
    ask.write_all(b"stat\n").await.unwrap();
    let held: u64 = server.report().await.parse().unwrap();
    println!("link cut: client error after {waited:?} ({line}); server holds {held}, client saw {acked} acked");
    assert!(
        waited < Duration::from_secs(10),
        "client noticed after {waited:?}: {line}"
    );
    assert!(
        held >= acked,
        "acknowledged items lost: held {held}, acked {acked}"
    );
    client.kill().await;
    server.kill().await;
    drop(hosts);
}
