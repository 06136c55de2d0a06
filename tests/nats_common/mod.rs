//! Real `nats-server` processes for the JetStream tests: one server or a three-node
//! cluster on loopback, each with a fresh store directory and free ports, started from
//! PATH; readiness and cluster events are read from the servers' logs as they are written
//! (no sleeping), and everything is killed and removed on drop. One node of a cluster can
//! live in its own network namespace, so its link can be cut and restored.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long a server may take to say it is ready.
pub const STARTUP: Duration = Duration::from_secs(20);

/// Fails the test with the install hint when `nats-server` is not on PATH.
pub fn require_nats_server() {
    let found = Command::new("nats-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "nats-server is not on PATH: the JetStream tests run real servers; install it with \
         `apt-get install -y nats-server` (Debian/Ubuntu) and run the tests again"
    );
}

/// A port nobody listens on at `host` now.
pub fn free_port(host: &str) -> u16 {
    std::net::TcpListener::bind((host, 0))
        .expect("bind a free port")
        .local_addr()
        .unwrap()
        .port()
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(what: &str) -> TempDir {
        let mut bytes = [0u8; 6];
        rustix::rand::getrandom(&mut bytes, rustix::rand::GetRandomFlags::empty()).unwrap();
        let tag: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let dir = std::env::temp_dir().join(format!("procq-{what}-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Every line a server wrote to stderr, and a condition variable to wait for more.
#[derive(Default)]
struct Log {
    lines: Mutex<Vec<(Instant, String)>>,
    grew: Condvar,
}

/// One `nats-server` process.
pub struct NatsServer {
    pub name: String,
    child: Option<Child>,
    log: Arc<Log>,
    /// How to start it again (same ports, same store).
    command: Vec<String>,
    pub client_port: u16,
    pub host: String,
    pub log_file: PathBuf,
}

impl NatsServer {
    fn spawn(
        name: &str,
        host: &str,
        client_port: u16,
        command: Vec<String>,
        log_file: PathBuf,
    ) -> NatsServer {
        let mut server = NatsServer {
            name: name.to_string(),
            child: None,
            log: Arc::new(Log::default()),
            command,
            client_port,
            host: host.to_string(),
            log_file,
        };
        server.start();
        server
    }

    /// Starts the process (again) and follows its log; does not wait for readiness.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} is running", self.name);
        let mut child = Command::new(&self.command[0])
            .args(&self.command[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                require_nats_server();
                panic!("start {}: {e}", self.command.join(" "))
            });
        let stderr = child.stderr.take().unwrap();
        let log = self.log.clone();
        let file = self.log_file.clone();
        std::thread::spawn(move || {
            use std::io::Write;
            let mut copy = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(file)
                .ok();
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(f) = copy.as_mut() {
                    let _ = writeln!(f, "{line}");
                }
                log.lines.lock().unwrap().push((Instant::now(), line));
                log.grew.notify_all();
            }
        });
        self.child = Some(child);
    }

    /// Waits until a line containing `what` is logged after `since`; returns when it was
    /// logged, or `None` after `within`.
    pub fn wait_for_after(&self, what: &str, since: Instant, within: Duration) -> Option<Instant> {
        let deadline = Instant::now() + within;
        let mut lines = self.log.lines.lock().unwrap();
        loop {
            if let Some((at, _)) = lines
                .iter()
                .find(|(at, line)| *at >= since && line.contains(what))
            {
                return Some(*at);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            lines = self.log.grew.wait_timeout(lines, deadline - now).unwrap().0;
        }
    }

    /// Waits until the server says it is ready (after `since`); fails the test after
    /// [`STARTUP`], with the log.
    pub fn wait_ready(&self, since: Instant) {
        if self
            .wait_for_after("Server is ready", since, STARTUP)
            .is_none()
        {
            panic!("{} did not start:\n{}", self.name, self.log_text());
        }
    }

    pub fn log_text(&self) -> String {
        let lines = self.log.lines.lock().unwrap();
        lines
            .iter()
            .map(|(_, l)| l.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Lines containing `what`.
    pub fn log_lines(&self, what: &str) -> Vec<(Instant, String)> {
        let lines = self.log.lines.lock().unwrap();
        lines
            .iter()
            .filter(|(_, l)| l.contains(what))
            .cloned()
            .collect()
    }

    pub fn url(&self) -> String {
        format!("nats://{}:{}", self.host, self.client_port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// One JetStream server on 127.0.0.1 with its own store.
pub struct Single {
    pub server: NatsServer,
    pub dir: TempDir,
}

impl Single {
    pub fn start() -> Single {
        Single::start_with(&[])
    }

    /// With extra command-line arguments (for example `--auth TOKEN`).
    pub fn start_with(extra: &[&str]) -> Single {
        require_nats_server();
        let dir = TempDir::new("nats");
        let port = free_port("127.0.0.1");
        let store = dir.0.join("store");
        let mut command: Vec<String> = [
            "nats-server",
            "-js",
            "-a",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-sd",
            store.to_str().unwrap(),
            "--server_name",
            "s1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        command.extend(extra.iter().map(|s| s.to_string()));
        let since = Instant::now();
        let server = NatsServer::spawn("s1", "127.0.0.1", port, command, dir.0.join("s1.log"));
        server.wait_ready(since);
        Single { server, dir }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    /// kill -9, then start again on the same port and store; returns when it is ready.
    pub fn restart(&mut self) {
        self.server.kill9();
        let since = Instant::now();
        self.server.start();
        self.server.wait_ready(since);
    }
}

// ---------------------------------------------------------------- cluster

/// A network namespace joined to the host by a veth pair that carries loopback-range
/// addresses, so a server inside it is reached on loopback and can be cut off.
pub struct Netns {
    pub name: String,
    host_if: String,
    ns_if: String,
    pub host_addr: String,
    pub ns_addr: String,
}

fn sh(script: &str) -> std::process::Output {
    Command::new("sh")
        .args(["-c", script])
        .stdin(Stdio::null())
        .output()
        .expect("run sh")
}

fn sh_ok(script: &str) {
    let out = sh(script);
    assert!(
        out.status.success(),
        "`{script}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Netns {
    /// Creates the namespace and its link; fails the test with what is missing if it
    /// cannot (it needs root, `ip` and `iptables`).
    pub fn create() -> Netns {
        let pid = std::process::id();
        let tag = pid % 100_000;
        let third = 1 + (pid % 250);
        let ns = Netns {
            name: format!("procq-{pid}"),
            host_if: format!("pq{tag}h"),
            ns_if: format!("pq{tag}n"),
            host_addr: format!("127.77.{third}.1"),
            ns_addr: format!("127.77.{third}.2"),
        };
        for tool in ["ip", "iptables"] {
            let found = sh(&format!("command -v {tool}")).status.success();
            assert!(
                found,
                "the partition test needs `{tool}` (apt-get install -y iproute2 iptables) and root"
            );
        }
        ns.down_quietly();
        sh_ok(&format!("ip netns add {}", ns.name));
        ns.link_up();
        ns
    }

    /// (Re)creates the link and its addresses and routes.
    pub fn link_up(&self) {
        let Netns {
            name,
            host_if,
            ns_if,
            host_addr,
            ns_addr,
        } = self;
        sh_ok(&format!(
            "set -e
            ip link show {host_if} >/dev/null 2>&1 || {{ ip link add {host_if} type veth peer name {ns_if}; ip link set {ns_if} netns {name}; }}
            ip addr replace {host_addr}/32 dev {host_if}
            ip link set {host_if} up
            sysctl -q -w net.ipv4.conf.{host_if}.route_localnet=1
            ip route replace {ns_addr}/32 dev {host_if} src {host_addr} table local
            ip netns exec {name} sh -c 'set -e; ip link set lo up; ip addr replace {ns_addr}/32 dev {ns_if}; ip link set {ns_if} up;
              sysctl -q -w net.ipv4.conf.{ns_if}.route_localnet=1; ip route replace {host_addr}/32 dev {ns_if} src {ns_addr} table local'"
        ));
    }

    /// Drops every packet on the namespace's side of the link (a blackhole: connections
    /// stay open and go silent).
    pub fn cut(&self) {
        sh_ok(&format!(
            "ip netns exec {0} iptables -I INPUT -i {1} -j DROP && ip netns exec {0} iptables -I OUTPUT -o {1} -j DROP",
            self.name, self.ns_if
        ));
    }

    pub fn restore(&self) {
        sh_ok(&format!(
            "ip netns exec {0} iptables -D INPUT -i {1} -j DROP && ip netns exec {0} iptables -D OUTPUT -o {1} -j DROP",
            self.name, self.ns_if
        ));
    }

    fn down_quietly(&self) {
        let _ = sh(&format!(
            "ip link del {} 2>/dev/null; ip netns del {} 2>/dev/null; true",
            self.host_if, self.name
        ));
    }

    /// True if the namespace still exists (for the test's own clean-up check).
    pub fn exists(name: &str) -> bool {
        sh("ip netns list")
            .stdout
            .split(|&b| b == b'\n')
            .any(|l| l.starts_with(name.as_bytes()))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.down_quietly();
    }
}

/// Three JetStream servers in one cluster. With a namespace, `n3` runs inside it and
/// the others listen on the host end of its link.
pub struct Cluster {
    pub nodes: Vec<NatsServer>,
    pub dir: TempDir,
    pub netns: Option<Netns>,
}

impl Cluster {
    pub fn start(netns: Option<Netns>) -> Cluster {
        require_nats_server();
        let dir = TempDir::new("nats-cluster");
        let hosts: Vec<String> = match &netns {
            Some(ns) => vec![
                ns.host_addr.clone(),
                ns.host_addr.clone(),
                ns.ns_addr.clone(),
            ],
            None => vec!["127.0.0.1".to_string(); 3],
        };
        // Ports are taken on the host's loopback; inside the namespace nothing else runs.
        let mut taken = std::collections::HashSet::new();
        let mut port = || loop {
            let p = free_port("127.0.0.1");
            if taken.insert(p) {
                return p;
            }
        };
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (port(), port())).collect();
        let routes: Vec<String> = (0..3)
            .map(|i| format!("nats-route://{}:{}", hosts[i], ports[i].1))
            .collect();
        let mut nodes = Vec::new();
        let since = Instant::now();
        for i in 0..3 {
            let name = format!("n{}", i + 1);
            let store = dir.0.join(&name);
            let conf = dir.0.join(format!("{name}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "server_name: {name}\nlisten: {}:{}\nwrite_deadline: \"2s\"\n\
                     jetstream {{ store_dir: \"{}\" }}\n\
                     cluster {{\n  name: procq\n  listen: {}:{}\n  routes: [ {} ]\n}}\n",
                    hosts[i],
                    ports[i].0,
                    store.display(),
                    hosts[i],
                    ports[i].1,
                    routes.join(", ")
                ),
            )
            .unwrap();
            let mut command: Vec<String> = Vec::new();
            if let (2, Some(ns)) = (i, &netns) {
                command.extend(["ip", "netns", "exec", &ns.name].map(String::from));
            }
            command.extend([
                "nats-server".to_string(),
                "-c".to_string(),
                conf.display().to_string(),
            ]);
            nodes.push(NatsServer::spawn(
                &name,
                &hosts[i],
                ports[i].0,
                command,
                dir.0.join(format!("{name}.log")),
            ));
        }
        for node in &nodes {
            node.wait_ready(since);
        }
        let cluster = Cluster { nodes, dir, netns };
        // JetStream is usable once a metadata leader is elected.
        let deadline = Instant::now() + STARTUP;
        let elected = loop {
            if cluster.nodes.iter().any(|n| {
                !n.log_lines("JetStream cluster new metadata leader")
                    .is_empty()
                    || !n
                        .log_lines("Self is new JetStream cluster metadata leader")
                        .is_empty()
            }) {
                break true;
            }
            if Instant::now() >= deadline {
                break false;
            }
            cluster.nodes[0].wait_for_after("metadata leader", since, Duration::from_millis(200));
        };
        assert!(elected, "no JetStream metadata leader:\n{}", cluster.logs());
        cluster
    }

    /// Every node's URL, comma-separated (what a client is given).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn node(&self, name: &str) -> &NatsServer {
        self.nodes.iter().find(|n| n.name == name).expect("node")
    }

    pub fn node_mut(&mut self, name: &str) -> &mut NatsServer {
        self.nodes
            .iter_mut()
            .find(|n| n.name == name)
            .expect("node")
    }

    /// Waits until a running node other than `except` logs a new stream leader for
    /// `stream` after `since`; returns when.
    pub fn wait_new_stream_leader(
        &self,
        stream: &str,
        since: Instant,
        within: Duration,
    ) -> Option<Instant> {
        let what = format!("new stream leader for '$G > {stream}'");
        let deadline = Instant::now() + within;
        loop {
            let first = self
                .nodes
                .iter()
                .filter(|n| n.is_running())
                .filter_map(|n| {
                    n.log_lines(&what)
                        .into_iter()
                        .map(|(at, _)| at)
                        .find(|&at| at >= since)
                })
                .min();
            if first.is_some() {
                return first;
            }
            if Instant::now() >= deadline {
                return None;
            }
            let running = self.nodes.iter().find(|n| n.is_running()).unwrap();
            running.wait_for_after(&what, since, Duration::from_millis(100));
        }
    }

    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("--- {}\n{}", n.name, n.log_text()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn dir(&self) -> &Path {
        &self.dir.0
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill9();
        }
    }
}
