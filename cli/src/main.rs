//! `procq`: serve remote queues, and look at a running server.
//!
//! ```text
//! echo 'a long shared secret' > key.txt
//! procq serve --key-file key.txt --listen 127.0.0.1:7070 --queue jobs:1000 --queue results
//! procq serve --key-file key.txt --listen 0.0.0.0:7070 --tls-cert cert.pem --tls-key key.pem --queue jobs
//! procq stat --key-file key.txt --connect 127.0.0.1:7070 --json
//! ```
//!
//! The shared key comes from `--key-file` or the `PROCQ_KEY` environment variable, never
//! from the command line (where any user could read it in the process list); trailing
//! whitespace is not part of it (`procq::remote::trim_key`). Logs go to stderr through
//! `tracing-subscriber`, filtered by `RUST_LOG` (default `info`).
//!
//! Exit status of `serve`: 0 after a clean shutdown, 1 on a usage or start-up error, 3
//! when the shutdown discarded items (each queue and count is logged at error level).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use procq::remote::{ClientOptions, Server, ServerConfig, ServerStats};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Exit status when a shutdown discarded items.
const EXIT_DISCARDED: i32 = 3;

#[derive(Parser)]
#[command(
    name = "procq",
    version,
    about = "Typed queues between processes: the queue server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve named queues over TCP and/or Unix sockets until SIGTERM or ctrl-c. Queues
    /// are kept in memory: what is still queued when the grace period ends is discarded
    /// (and reported).
    Serve(ServeArgs),
    /// Show each queue's length, consumers and rates.
    Stat(StatArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// Where to listen: `host:port` or `unix:/path` (repeatable). A file already at a
    /// Unix path is replaced only if it is a stale socket.
    #[arg(long, required = true)]
    listen: Vec<String>,
    /// A queue to declare, `name` or `name:maxsize` (repeatable).
    #[arg(long)]
    queue: Vec<String>,
    /// Create unbounded queues on first use instead of refusing unknown names.
    #[arg(long)]
    create_on_use: bool,
    /// Largest frame (one item plus 32 bytes), in bytes; clients that accept less are
    /// refused.
    #[arg(long, default_value_t = 16 * 1024 * 1024)]
    max_frame: usize,
    /// Most authenticated connections open at once.
    #[arg(long, default_value_t = 1024)]
    max_connections: usize,
    /// Most connections in the handshake at once (the oldest is evicted beyond).
    #[arg(long, default_value_t = 64)]
    max_handshakes: usize,
    /// Bytes of puts one connection may have waiting for room.
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    connection_memory: usize,
    /// Bytes of items the server holds in all.
    #[arg(long, default_value_t = 1024 * 1024 * 1024)]
    memory_limit: usize,
    /// Seconds a peer may stay silent (or not read) before it is disconnected.
    #[arg(long, default_value = "30", value_parser = seconds)]
    idle_timeout: Duration,
    /// Seconds a delivery stays with a consumer without an ack.
    #[arg(long, default_value = "30", value_parser = seconds)]
    lease: Duration,
    /// Seconds consumers may drain after SIGTERM before what is left is discarded.
    #[arg(long, default_value = "10", value_parser = seconds)]
    grace: Duration,
    /// PEM certificate chain: serve TLS (with --tls-key).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve Prometheus metrics over HTTP at this address (`host:port`), path /metrics.
    #[arg(long)]
    metrics: Option<String>,
    #[command(flatten)]
    key: KeySource,
}

#[derive(Args)]
struct StatArgs {
    /// The server: `host:port` or `unix:/path`.
    #[arg(long)]
    connect: String,
    /// Seconds between samples (rates are computed over it).
    #[arg(long, default_value = "1", value_parser = seconds)]
    interval: Duration,
    /// Print JSON (one object; one line per sample with --watch).
    #[arg(long)]
    json: bool,
    /// Keep printing a sample every interval until interrupted.
    #[arg(long)]
    watch: bool,
    /// PEM certificate authority: connect with TLS, trusting it.
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// The name the server's certificate must carry (default: the host of --connect).
    #[arg(long, requires = "tls_ca")]
    tls_name: Option<String>,
    #[command(flatten)]
    key: KeySource,
}

#[derive(Args)]
struct KeySource {
    /// Read the shared key from this file (trailing whitespace ignored); else `PROCQ_KEY`.
    #[arg(long)]
    key_file: Option<PathBuf>,
}

impl KeySource {
    fn key(&self) -> Result<Vec<u8>, String> {
        let key = match &self.key_file {
            Some(path) => std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?,
            None => std::env::var("PROCQ_KEY")
                .map_err(|_| "no key: use --key-file or set PROCQ_KEY".to_string())?
                .into_bytes(),
        };
        let key = procq::remote::trim_key(&key).to_vec();
        if key.is_empty() {
            return Err("the key is empty".into());
        }
        Ok(key)
    }
}

/// Seconds as a positive, finite number.
fn seconds(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !v.is_finite() || v <= 0.0 || v > 1e9 {
        return Err(format!("{s:?}: seconds must be above 0 and finite"));
    }
    Ok(Duration::from_secs_f64(v))
}

fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(args).await,
            Command::Stat(args) => stat(args).await.map(|()| 0),
        }
    });
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("procq: {e}");
            std::process::exit(1);
        }
    }
}

/// A Unix socket this process bound, removed at exit only if it is still ours.
struct BoundSocket {
    path: PathBuf,
    inode: u64,
}

impl BoundSocket {
    fn remove_if_ours(&self) {
        use std::os::unix::fs::MetadataExt;
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.ino() == self.inode) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

async fn serve(args: ServeArgs) -> Result<i32, String> {
    let mut config = ServerConfig::new(args.key.key()?)
        .create_on_use(args.create_on_use)
        .max_frame(args.max_frame)
        .max_connections(args.max_connections)
        .max_handshakes(args.max_handshakes)
        .connection_memory(args.connection_memory)
        .memory_limit(args.memory_limit)
        .idle_timeout(args.idle_timeout)
        .lease(args.lease);
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        let read = |p: &Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
        let tls = procq::remote::tls::server_config(&read(cert)?, &read(key)?)
            .map_err(|e| format!("tls: {e}"))?;
        config = config.tls(tls);
    }
    let server = Server::new(config).map_err(|e| e.to_string())?;
    for spec in &args.queue {
        let (name, maxsize) = match spec.rsplit_once(':') {
            Some((name, max)) => (
                name,
                max.parse()
                    .map_err(|_| format!("bad maxsize in {spec:?}"))?,
            ),
            None => (spec.as_str(), 0),
        };
        server
            .declare(name, maxsize)
            .map_err(|e| format!("{spec:?}: {e}"))?;
    }
    // The handlers go in before the first listener: a SIGTERM that arrives once
    // "listening" is printed (or a client is accepted) must shut down, not kill.
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let mut serving = Vec::new();
    let mut sockets = Vec::new();
    for addr in &args.listen {
        let server = server.clone();
        if let Some(path) = addr.strip_prefix("unix:") {
            use std::os::unix::fs::MetadataExt;
            let listener = procq::remote::bind_unix(path).map_err(|e| format!("{addr}: {e}"))?;
            let inode = std::fs::symlink_metadata(path)
                .map_err(|e| format!("{addr}: {e}"))?
                .ino();
            sockets.push(BoundSocket {
                path: path.into(),
                inode,
            });
            tracing::info!(%addr, "procq: listening");
            println!("procq: listening on {addr}");
            serving.push(tokio::spawn(
                async move { server.serve_unix(listener).await },
            ));
        } else {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| format!("{addr}: {e}"))?;
            let local = listener.local_addr().map_err(|e| e.to_string())?;
            tracing::info!(addr = %local, "procq: listening");
            println!("procq: listening on {local}");
            serving.push(tokio::spawn(
                async move { server.serve_tcp(listener).await },
            ));
        }
    }
    if let Some(addr) = &args.metrics {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("--metrics {addr}: {e}"))?;
        let local = listener.local_addr().map_err(|e| e.to_string())?;
        tracing::info!(addr = %local, "procq: metrics at http://{local}/metrics");
        println!("procq: metrics on {local}");
        tokio::spawn(metrics::serve(listener, server.clone()));
    }
    tokio::select! {
        _ = term.recv() => {}
        _ = interrupt.recv() => {}
    }
    server.begin_shutdown();
    tracing::info!(
        grace = ?args.grace,
        "procq: shutting down: no new connections or puts; consumers drain until the grace period ends"
    );
    let report = server.shutdown(args.grace).await;
    for task in serving {
        let _ = task.await;
    }
    for socket in &sockets {
        socket.remove_if_ours();
    }
    if report.is_clean() {
        tracing::info!("procq: shut down, nothing discarded");
        Ok(0)
    } else {
        tracing::error!(items = report.total(), "procq: shut down, {report}");
        Ok(EXIT_DISCARDED)
    }
}

async fn stat(args: StatArgs) -> Result<(), String> {
    let mut options = ClientOptions::new(args.key.key()?);
    if let Some(ca) = &args.tls_ca {
        let pem = std::fs::read(ca).map_err(|e| format!("{}: {e}", ca.display()))?;
        let tls = procq::remote::tls::client_config(&pem).map_err(|e| format!("tls: {e}"))?;
        let name = match &args.tls_name {
            Some(name) => name.clone(),
            None => host_of(&args.connect).to_string(),
        };
        options = options.tls(tls, &name);
    }
    let sample = || async {
        options
            .stats(&args.connect)
            .await
            .map_err(|e| format!("{}: {e}", args.connect))
    };
    let mut before = sample().await?;
    loop {
        tokio::time::sleep(args.interval).await;
        let after = sample().await?;
        if args.json {
            println!("{}", json(&before, &after, args.interval));
        } else {
            print_table(&before, &after, args.interval);
        }
        if !args.watch {
            return Ok(());
        }
        before = after;
    }
}

fn host_of(addr: &str) -> &str {
    match addr.rsplit_once(':') {
        Some((host, _)) => host.trim_start_matches('[').trim_end_matches(']'),
        None => addr,
    }
}

fn rate(now: u64, then: Option<u64>, interval: Duration) -> f64 {
    now.saturating_sub(then.unwrap_or(now)) as f64 / interval.as_secs_f64()
}

fn json(before: &ServerStats, after: &ServerStats, interval: Duration) -> serde_json::Value {
    let queues: Vec<_> = after
        .queues
        .iter()
        .map(|q| {
            let old = before.queues.iter().find(|b| b.name == q.name);
            serde_json::json!({
                "name": q.name,
                "maxsize": q.maxsize,
                "len": q.len,
                "in_flight": q.in_flight,
                "consumers": q.consumers,
                "puts": q.puts,
                "acks": q.acks,
                "redeliveries": q.redeliveries,
                "puts_per_s": rate(q.puts, old.map(|o| o.puts), interval),
                "acks_per_s": rate(q.acks, old.map(|o| o.acks), interval),
            })
        })
        .collect();
    serde_json::json!({
        "connections": after.connections,
        "handshaking": after.handshaking,
        "memory_bytes": after.memory,
        "queues": queues,
    })
}

fn print_table(before: &ServerStats, after: &ServerStats, interval: Duration) {
    println!(
        "{} connections, {} in handshake, {} bytes held",
        after.connections, after.handshaking, after.memory
    );
    println!(
        "{:<20} {:>10} {:>10} {:>10} {:>12} {:>12} {:>13}",
        "queue", "len", "in flight", "consumers", "puts/s", "acks/s", "redeliveries"
    );
    for q in &after.queues {
        let old = before.queues.iter().find(|b| b.name == q.name);
        println!(
            "{:<20} {:>10} {:>10} {:>10} {:>12.0} {:>12.0} {:>13}",
            q.name,
            q.len,
            q.in_flight,
            q.consumers,
            rate(q.puts, old.map(|o| o.puts), interval),
            rate(q.acks, old.map(|o| o.acks), interval),
            q.redeliveries
        );
    }
    println!();
}

mod metrics {
    //! `--metrics ADDR`: the server's statistics in the Prometheus text format, over a
    //! minimal HTTP/1.1 responder (GET /metrics; anything else is 404).

    use super::*;
    use prometheus_client::encoding::EncodeLabelSet;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::gauge::Gauge;
    use prometheus_client::registry::Registry;

    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct QueueLabel {
        queue: String,
    }

    /// The text exposition of `stats`.
    pub(super) fn render(stats: &ServerStats) -> String {
        let mut registry = Registry::with_prefix("procq");
        let gauge = |registry: &mut Registry, name: &str, help: &str, value: u64| {
            let g = Gauge::<i64>::default();
            g.set(value as i64);
            registry.register(name, help, g);
        };
        gauge(
            &mut registry,
            "connections",
            "Authenticated connections open",
            stats.connections,
        );
        gauge(
            &mut registry,
            "handshaking",
            "Connections in the handshake",
            stats.handshaking,
        );
        gauge(
            &mut registry,
            "memory_bytes",
            "Bytes of items held",
            stats.memory,
        );
        let gauges = [
            ("queue_length", "Items waiting in the queue"),
            (
                "queue_in_flight",
                "Items delivered and not yet acknowledged",
            ),
            ("queue_consumers", "Connections that granted credit"),
        ];
        for (i, (name, help)) in gauges.into_iter().enumerate() {
            let family = Family::<QueueLabel, Gauge<i64>>::default();
            for q in &stats.queues {
                let v = [q.len, q.in_flight, q.consumers][i];
                family
                    .get_or_create(&QueueLabel {
                        queue: q.name.clone(),
                    })
                    .set(v as i64);
            }
            registry.register(name, help, family);
        }
        let counters = [
            ("queue_puts", "Items put since the server started"),
            ("queue_acks", "Items acknowledged since the server started"),
            (
                "queue_redeliveries",
                "Deliveries that went back to the queue",
            ),
        ];
        for (i, (name, help)) in counters.into_iter().enumerate() {
            let family = Family::<QueueLabel, Counter>::default();
            for q in &stats.queues {
                let v = [q.puts, q.acks, q.redeliveries][i];
                family
                    .get_or_create(&QueueLabel {
                        queue: q.name.clone(),
                    })
                    .inc_by(v);
            }
            registry.register(name, help, family);
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry)
            .expect("writing to a String");
        out
    }

    pub(super) async fn serve(listener: tokio::net::TcpListener, server: Server) {
        let server = Arc::new(server);
        loop {
            let (mut stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::error!(error = %e, "procq: metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let server = server.clone();
            tokio::spawn(async move {
                let answering = async {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        let n = stream.read(&mut buf).await?;
                        if n == 0 || head.len() > 8192 {
                            return Ok(());
                        }
                        head.extend_from_slice(&buf[..n]);
                    }
                    let ok =
                        head.starts_with(b"GET /metrics ") || head.starts_with(b"GET /metrics?");
                    let (status, body, kind) = if ok {
                        (
                            "200 OK",
                            render(&server.stats()),
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )
                    } else {
                        ("404 Not Found", "not found\n".to_string(), "text/plain")
                    };
                    let response = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    stream.write_all(response.as_bytes()).await?;
                    stream.shutdown().await
                };
                match tokio::time::timeout(Duration::from_secs(10), answering).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "procq: metrics request failed")
                    }
                    Err(_) => tracing::debug!(%peer, "procq: metrics request timed out"),
                }
            });
        }
    }
}
