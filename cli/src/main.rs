//! `procq`: serve remote queues, and look at a running server.
//!
//! ```text
//! PROCQ_KEY=secret procq serve --listen 127.0.0.1:7070 --queue jobs:1000 --queue results
//! procq stat --connect 127.0.0.1:7070 --key-file key.txt
//! ```
//!
//! The shared key comes from `--key-file` or the `PROCQ_KEY` environment variable, never
//! from the command line (where any user could read it in the process list).

use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use procq::remote::{Server, ServerConfig};

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
    /// Serve named queues over TCP and/or Unix sockets until SIGTERM or ctrl-c.
    Serve(ServeArgs),
    /// Show each queue's length, consumers and rates.
    Stat {
        /// The server: `host:port` or `unix:/path`.
        #[arg(long)]
        connect: String,
        /// Seconds between the two samples that rates are computed from.
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
        #[command(flatten)]
        key: KeySource,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// Where to listen: `host:port` or `unix:/path` (repeatable).
    #[arg(long, required = true)]
    listen: Vec<String>,
    /// A queue to declare, `name` or `name:maxsize` (repeatable).
    #[arg(long)]
    queue: Vec<String>,
    /// Create unbounded queues on first use instead of refusing unknown names.
    #[arg(long)]
    create_on_use: bool,
    /// Largest frame (one item plus a few bytes) a client may send, in bytes.
    #[arg(long, default_value_t = 16 * 1024 * 1024)]
    max_frame: usize,
    /// Most connections open at once.
    #[arg(long, default_value_t = 1024)]
    max_connections: usize,
    #[command(flatten)]
    key: KeySource,
}

#[derive(Args)]
struct KeySource {
    /// Read the shared key from this file (trailing newline ignored); else `PROCQ_KEY`.
    #[arg(long)]
    key_file: Option<std::path::PathBuf>,
}

impl KeySource {
    fn key(&self) -> Result<Vec<u8>, String> {
        let key = match &self.key_file {
            Some(path) => std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?,
            None => std::env::var("PROCQ_KEY")
                .map_err(|_| "no key: use --key-file or set PROCQ_KEY".to_string())?
                .into_bytes(),
        };
        let key = key.strip_suffix(b"\n").unwrap_or(&key).to_vec();
        if key.is_empty() {
            return Err("the key is empty".into());
        }
        Ok(key)
    }
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Stat {
            connect,
            interval,
            key,
        } => stat(&connect, interval, key).await,
    };
    if let Err(e) = result {
        eprintln!("procq: {e}");
        std::process::exit(1);
    }
}

async fn serve(args: ServeArgs) -> Result<(), String> {
    let ServeArgs {
        listen,
        queue: queues,
        create_on_use,
        max_frame,
        max_connections,
        key,
    } = args;
    let config = ServerConfig::new(key.key()?)
        .create_on_use(create_on_use)
        .max_frame(max_frame)
        .max_connections(max_connections);
    let server = Server::new(config);
    for spec in &queues {
        let (name, maxsize) = match spec.split_once(':') {
            Some((name, max)) => (
                name,
                max.parse()
                    .map_err(|_| format!("bad maxsize in {spec:?}"))?,
            ),
            None => (spec.as_str(), 0),
        };
        server.declare(name, maxsize);
    }
    let mut serving = Vec::new();
    for addr in &listen {
        let server = server.clone();
        if let Some(path) = addr.strip_prefix("unix:") {
            let _ = std::fs::remove_file(path);
            let listener =
                tokio::net::UnixListener::bind(path).map_err(|e| format!("{addr}: {e}"))?;
            serving.push(tokio::spawn(
                async move { server.serve_unix(listener).await },
            ));
        } else {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| format!("{addr}: {e}"))?;
            let local = listener.local_addr().map_err(|e| e.to_string())?;
            println!("procq: listening on {local}");
            serving.push(tokio::spawn(
                async move { server.serve_tcp(listener).await },
            ));
        }
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| e.to_string())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    println!("procq: shutting down: no new connections; finishing in-flight puts");
    server.shutdown();
    for task in serving {
        let _ = task.await;
    }
    if tokio::time::timeout(Duration::from_secs(10), server.closed())
        .await
        .is_err()
    {
        eprintln!("procq: connections still open after 10 s; exiting");
    }
    for addr in &listen {
        if let Some(path) = addr.strip_prefix("unix:") {
            let _ = std::fs::remove_file(path);
        }
    }
    Ok(())
}

async fn stat(addr: &str, interval: f64, key: KeySource) -> Result<(), String> {
    let key = key.key()?;
    let before = procq::remote::server_stats(addr, &key)
        .await
        .map_err(|e| e.to_string())?;
    tokio::time::sleep(Duration::from_secs_f64(interval.max(0.01))).await;
    let after = procq::remote::server_stats(addr, &key)
        .await
        .map_err(|e| e.to_string())?;
    println!(
        "{:<20} {:>10} {:>10} {:>10} {:>12} {:>12} {:>13}",
        "queue", "len", "in flight", "consumers", "puts/s", "acks/s", "redeliveries"
    );
    for q in &after {
        let old = before.iter().find(|b| b.name == q.name);
        let rate = |now: u64, then: Option<u64>| (now - then.unwrap_or(now)) as f64 / interval;
        println!(
            "{:<20} {:>10} {:>10} {:>10} {:>12.0} {:>12.0} {:>13}",
            q.name,
            q.len,
            q.in_flight,
            q.consumers,
            rate(q.puts, old.map(|o| o.puts)),
            rate(q.acks, old.map(|o| o.acks)),
            q.redeliveries
        );
    }
    Ok(())
}
