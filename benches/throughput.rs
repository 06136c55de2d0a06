//! `cargo bench --bench throughput`: procq against multiprocessing and hand-rolled tokio
//! framing, in one run, on the same workload. Prints a markdown table with ratios.
//!
//! Every row moves 512-byte encoded items between separate processes: this binary re-runs
//! itself with `PROCQ_BENCH_ROLE` naming the part a child plays.
//!
//! Environment: `PROCQ_BENCH_ITEMS` (default 1,000,000), `PROCQ_BENCH_RUNS` (best of, default
//! 3), `PROCQ_BENCH_PYTHON=0` to skip the Python rows. For the measurements quoted in the
//! code and README: `PROCQ_BENCH_ONLY` (`1`, `tokio`, `queue` or `ping`: one part
//! only) and, for the channel row, `PROCQ_BENCH_DATAGRAM`, `PROCQ_BENCH_BUFFER`,
//! `PROCQ_BENCH_BATCH` (its `Options`).

use std::os::fd::{AsFd, OwnedFd};
use std::process::Stdio;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};

mod common;
use common::{best, child_cmd, runs, say, Kid};

/// Payload bytes so that the postcard encoding (2-byte length varint + bytes) is 512 B.
const PAYLOAD: usize = 510;
const PING_ROUNDS: usize = 20_000;
const PING_WARMUP: usize = 1_000;

#[derive(Serialize, Deserialize, Clone)]
struct Item(#[serde(with = "serde_bytes")] Vec<u8>);

fn item() -> Item {
    let it = Item(vec![7u8; PAYLOAD]);
    assert_eq!(postcard::to_stdvec(&it).unwrap().len(), 512);
    it
}

fn items() -> usize {
    std::env::var("PROCQ_BENCH_ITEMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

fn main() {
    common::run(|role| async move { child(&role).await }, parent);
}

async fn child(role: &str) {
    let n = items();
    match role {
        "procq-consumer" => {
            let rx = procq::Receiver::<Item>::from_env("BENCH").unwrap();
            say("ready");
            let mut got = 0usize;
            while let Ok(it) = rx.recv().await {
                debug_assert_eq!(it.0.len(), PAYLOAD);
                got += 1;
            }
            say(got);
        }
        // One datagram per message on a raw SOCK_SEQPACKET socket (stdin), blocking calls:
        // the kernel's own cost of the fair mode.
        "raw-sender" => {
            let count: usize = std::env::var("COUNT").unwrap().parse().unwrap();
            let fd = std::io::stdin().as_fd().try_clone_to_owned().unwrap();
            let buf = [7u8; 512];
            for _ in 0..count {
                rustix::net::send(&fd, &buf, rustix::net::SendFlags::empty()).unwrap();
            }
        }
        "raw-receiver" => {
            let fd = std::io::stdin().as_fd().try_clone_to_owned().unwrap();
            let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 1024];
            say("ready");
            let mut got = 0usize;
            loop {
                let (_, n) =
                    rustix::net::recv(&fd, &mut buf, rustix::net::RecvFlags::empty()).unwrap();
                if n == 0 {
                    break;
                }
                got += 1;
            }
            say(got);
        }
        // The same with `recvmsg` and room for descriptors, as any receiver that accepts
        // descriptors in messages must read (`recv` would close them).
        "raw-receiver-msg" => {
            use rustix::net::{RecvAncillaryBuffer, RecvFlags};
            let fd = std::io::stdin().as_fd().try_clone_to_owned().unwrap();
            let mut buf = [0u8; 1024];
            let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(253))];
            say("ready");
            let mut got = 0usize;
            loop {
                let mut control = RecvAncillaryBuffer::new(&mut space);
                let mut iov = [std::io::IoSliceMut::new(&mut buf)];
                let msg =
                    rustix::net::recvmsg(&fd, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC)
                        .unwrap();
                if msg.bytes == 0 {
                    break;
                }
                got += 1;
            }
            say(got);
        }
        "procq-echo" => {
            let end = procq::Duplex::<Item, Item>::from_env("BENCH").unwrap();
            while let Ok(it) = end.recv().await {
                end.send(it).await.unwrap();
            }
        }
        "tokio-consumer" => {
            let stream = stdin_stream();
            let mut framed = tokio_util::codec::FramedRead::new(
                stream,
                tokio_util::codec::LengthDelimitedCodec::new(),
            );
            say("ready");
            let mut got = 0usize;
            while let Some(frame) = framed.next().await {
                let it: Item = postcard::from_bytes(&frame.unwrap()).unwrap();
                debug_assert_eq!(it.0.len(), PAYLOAD);
                got += 1;
            }
            say(got);
        }
        "raw-echo" => {
            use std::io::{Read, Write};
            let mut s = std::os::unix::net::UnixStream::from(
                std::io::stdin().as_fd().try_clone_to_owned().unwrap(),
            );
            let mut buf = vec![0u8; 512];
            while s.read_exact(&mut buf).is_ok() {
                s.write_all(&buf).unwrap();
            }
        }
        "queue-producer" | "joinable-producer" => {
            let go = procq::Receiver::<()>::from_env("GO").unwrap();
            let count: usize = std::env::var("COUNT").unwrap().parse().unwrap();
            let it = item();
            let q = BenchQueue::from_env(role);
            say("ready");
            go.recv().await.unwrap();
            for _ in 0..count {
                q.put(it.clone()).await;
            }
            q.flush().await;
            q.close();
        }
        "queue-consumer" | "joinable-consumer" => {
            // Gets until the queue ends (every process closed its putting side).
            let q = BenchQueue::from_env(role);
            q.close();
            say("ready");
            let mut got = 0usize;
            while q.get_and_finish().await {
                got += 1;
            }
            say(format!("done {got}"));
        }
        other => panic!("unknown role {other}"),
    }
    let _ = n;
}

/// The queue a queue-bench child was passed: a `JoinableQueue` for the `joinable-*` roles,
/// else a plain `Queue`.
enum BenchQueue {
    Plain(procq::Queue<Item>),
    Joinable(procq::JoinableQueue<Item>),
}

impl BenchQueue {
    fn from_env(role: &str) -> BenchQueue {
        if role.starts_with("joinable") {
            BenchQueue::Joinable(procq::JoinableQueue::from_env("Q").unwrap())
        } else {
            BenchQueue::Plain(procq::Queue::from_env("Q").unwrap())
        }
    }

    async fn put(&self, it: Item) {
        match self {
            BenchQueue::Plain(q) => q.put(it).await.unwrap(),
            BenchQueue::Joinable(q) => q.put(it).await.unwrap(),
        }
    }

    async fn flush(&self) {
        match self {
            BenchQueue::Plain(q) => q.flush().await.unwrap(),
            BenchQueue::Joinable(q) => q.flush().await.unwrap(),
        }
    }

    /// Gets an item and, from a joinable queue, marks it done; `false` at the end.
    async fn get_and_finish(&self) -> bool {
        let got = match self {
            BenchQueue::Plain(q) => q.get().await.map(drop),
            BenchQueue::Joinable(q) => q.get().await.map(|_| q.task_done().unwrap()),
        };
        match got {
            Ok(()) => true,
            Err(e) if e.is_closed() => false,
            Err(e) => panic!("{e}"),
        }
    }

    fn close(&self) {
        match self {
            BenchQueue::Plain(q) => q.close(),
            BenchQueue::Joinable(q) => q.close(),
        }
    }
}

fn stdin_stream() -> tokio::net::UnixStream {
    let fd: OwnedFd = std::io::stdin().as_fd().try_clone_to_owned().unwrap();
    let std = std::os::unix::net::UnixStream::from(fd);
    std.set_nonblocking(true).unwrap();
    tokio::net::UnixStream::from_std(std).unwrap()
}

/// One table row: a name and the measurement in its unit.
struct Row {
    name: String,
    value: f64,
}

async fn parent() {
    let n = items();
    let runs = runs();
    let python = std::env::var("PROCQ_BENCH_PYTHON")
        .map(|v| v != "0")
        .unwrap_or(true);
    eprintln!("procq throughput benchmark: {n} items of 512 B, best of {runs}");

    if std::env::var("PROCQ_BENCH_ONLY").as_deref() == Ok("ping") {
        print_latency(runs).await;
        return;
    }
    if std::env::var("PROCQ_BENCH_ONLY").as_deref() == Ok("queue") {
        println!("queue {}", procq_queue("queue", n, 1, 1, false).await);
        return;
    }
    if std::env::var("PROCQ_BENCH_ONLY").as_deref() == Ok("fair") {
        for (p, c) in [(1, 1), (2, 2)] {
            let raw = raw_seqpacket(n, p, c).await;
            let msg = raw_seqpacket_msg(n, p, c).await;
            let ours = procq_queue("queue", n, p, c, true).await;
            println!(
                "fair {p}->{c}: raw {raw:.0}, raw recvmsg {msg:.0} ({:.0}%), queue {ours:.0} ({:.0}%)",
                100.0 * msg / raw,
                100.0 * ours / raw
            );
        }
        return;
    }
    if std::env::var("PROCQ_BENCH_ONLY").as_deref() == Ok("tokio") {
        println!("tokio {}", best(runs, || tokio_throughput(n)).await);
        return;
    }
    let procq = best(runs, || procq_throughput(n)).await;
    let tokio_rolled = if std::env::var("PROCQ_BENCH_ONLY").is_ok() {
        1.0
    } else {
        best(runs, || tokio_throughput(n)).await
    };
    let mp_queue = if python {
        Some(python_rate("queue", n, 1, 1).await)
    } else {
        None
    };

    let mut rows = vec![
        Row {
            name: "procq channel (1 → 1 process)".into(),
            value: procq,
        },
        Row {
            name: "tokio UnixStream + LengthDelimitedCodec + postcard".into(),
            value: tokio_rolled,
        },
    ];
    if let Some(mp) = mp_queue {
        rows.push(Row {
            name: "Python multiprocessing.Queue".into(),
            value: mp,
        });
    }
    println!();
    println!("| throughput, 512 B items | items/s | procq is × faster |");
    println!("|---|---:|---:|");
    for row in &rows {
        println!(
            "| {} | {:.0} | {} |",
            row.name,
            row.value,
            if row.name.starts_with("procq") {
                "—".to_string()
            } else {
                format!("{:.1}×", procq / row.value)
            }
        );
    }

    if std::env::var("PROCQ_BENCH_ONLY").is_ok() {
        return;
    }
    // Queue rows: procq against multiprocessing on the same topology.
    println!();
    println!("| queue, 512 B items, producers → consumers | procq items/s | Python items/s | procq is × faster |");
    println!("|---|---:|---:|---:|");
    for (kind, p, c) in [
        ("queue", 1, 1),
        ("queue", 2, 2),
        ("joinable", 1, 1),
        ("joinable", 2, 2),
    ] {
        let theirs = if python {
            python_rate(kind, n, p, c).await
        } else {
            f64::NAN
        };
        let label = if kind == "queue" {
            "Queue"
        } else {
            "JoinableQueue (task_done per item)"
        };
        for fair in [false, true] {
            let ours = best(runs, || procq_queue(kind, n, p, c, fair)).await;
            let mode = if fair { ", `queue_options()`" } else { "" };
            println!(
                "| {label}{mode}, {p} → {c} | {ours:.0} | {theirs:.0} | {:.1}× |",
                ours / theirs
            );
        }
    }

    // Fair mode against the kernel's own one-datagram-per-message cost. The four rows of
    // a shape are measured in turn within each run (raw, raw with recvmsg, Queue,
    // JoinableQueue, then again), so a drift of the machine between runs moves them
    // together instead of skewing their ratios; each row is its best run.
    println!();
    println!("| fair mode (`queue_options()`: one item per datagram), 512 B items | items/s | of raw seqpacket |");
    println!("|---|---:|---:|");
    for (p, c) in [(1, 1), (2, 2)] {
        let (mut raw, mut msg, mut queue, mut joinable) = (0f64, 0f64, 0f64, 0f64);
        for _ in 0..runs {
            raw = raw.max(raw_seqpacket(n, p, c).await);
            msg = msg.max(raw_seqpacket_msg(n, p, c).await);
            queue = queue.max(procq_queue("queue", n, p, c, true).await);
            joinable = joinable.max(procq_queue("joinable", n, p, c, true).await);
        }
        println!("| raw SOCK_SEQPACKET, one send/recv per message, {p} → {c} | {raw:.0} | 100% |");
        println!(
            "| raw, receivers call `recvmsg` with room for descriptors, {p} → {c} | {msg:.0} | {:.0}% |",
            100.0 * msg / raw
        );
        for (label, ours) in [("Queue", queue), ("JoinableQueue", joinable)] {
            println!(
                "| {label}, `queue_options()`, {p} → {c} | {ours:.0} | {:.0}% |",
                100.0 * ours / raw
            );
        }
    }

    print_latency(runs).await;
}

/// Items per second through a raw `SOCK_SEQPACKET` pair, one datagram per message with
/// blocking `send`/`recv`, from `p` sender processes to `c` receiver processes.
async fn raw_seqpacket(n: usize, p: usize, c: usize) -> f64 {
    raw_seqpacket_with(n, p, c, "raw-receiver").await
}

/// [`raw_seqpacket`] with receivers that call `recvmsg` with room for descriptors.
async fn raw_seqpacket_msg(n: usize, p: usize, c: usize) -> f64 {
    raw_seqpacket_with(n, p, c, "raw-receiver-msg").await
}

async fn raw_seqpacket_with(n: usize, p: usize, c: usize, receiver: &str) -> f64 {
    let (send_end, recv_end) = rustix::net::socketpair(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::SEQPACKET,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    for fd in [&send_end, &recv_end] {
        let _ = rustix::net::sockopt::set_socket_send_buffer_size_force(fd, 2 << 20);
    }
    let mut receivers = Vec::new();
    for _ in 0..c {
        let mut cmd = child_cmd(receiver);
        cmd.stdin(Stdio::from(recv_end.try_clone().unwrap()));
        receivers.push(Kid::spawn(cmd));
    }
    drop(recv_end);
    for r in &mut receivers {
        assert_eq!(r.line().await, "ready");
    }
    let start = Instant::now();
    let mut senders = Vec::new();
    for _ in 0..p {
        let mut cmd = child_cmd("raw-sender");
        cmd.env("COUNT", (n / p).to_string())
            .stdin(Stdio::from(send_end.try_clone().unwrap()));
        senders.push(Kid::spawn(cmd));
    }
    drop(send_end);
    let mut got = 0;
    for r in &mut receivers {
        got += r.line().await.parse::<usize>().unwrap();
    }
    let elapsed = start.elapsed();
    assert_eq!(got, n / p * p);
    for k in senders.into_iter().chain(receivers) {
        k.finish().await;
    }
    got as f64 / elapsed.as_secs_f64()
}

/// Round trips: procq against a raw blocking socketpair, measured back to back.
async fn print_latency(runs: usize) {
    // Interleaved, so drift on a shared machine hits every row alike; best of `runs`.
    let (mut raw_rtt, mut procq_rtt, mut procq_mt_rtt) = (f64::MAX, f64::MAX, f64::MAX);
    for _ in 0..runs {
        raw_rtt = raw_rtt.min(raw_ping().await);
        procq_rtt = procq_rtt.min(procq_ping().await);
        // The same ping-pong in a task on a multi-threaded runtime (a task, not
        // `block_on`: `block_on` runs on a thread that is not a worker, which costs tokio
        // itself one cross-thread wake-up per readiness event, ~10 µs here).
        let mt = std::thread::spawn(|| {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async { tokio::spawn(procq_ping()).await.unwrap() })
        })
        .join()
        .unwrap();
        procq_mt_rtt = procq_mt_rtt.min(mt);
    }
    println!();
    println!("| round trip, 512 B ping-pong | µs | × raw |");
    println!("|---|---:|---:|");
    println!("| raw blocking socketpair | {:.1} | 1.00 |", raw_rtt);
    println!(
        "| procq duplex, current-thread runtime | {:.1} | {:.2} |",
        procq_rtt,
        procq_rtt / raw_rtt
    );
    println!(
        "| procq duplex, multi-thread runtime (spawned task) | {:.1} | {:.2} |",
        procq_mt_rtt,
        procq_mt_rtt / raw_rtt
    );
}

/// Items per second from this process into a consumer child.
async fn procq_throughput(n: usize) -> f64 {
    let mut opts = procq::Options::new();
    if let Some(b) = std::env::var("PROCQ_BENCH_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        opts = opts.batch_items(b);
    }
    if let Some(d) = std::env::var("PROCQ_BENCH_DATAGRAM")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        opts = opts.datagram_bytes(d);
    }
    let (tx, rx) = opts.channel::<Item>().unwrap();
    let mut cmd = child_cmd("procq-consumer");
    procq::pass(&mut cmd, "BENCH", rx).unwrap();
    let mut kid = Kid::spawn(cmd);
    assert_eq!(kid.line().await, "ready");
    let it = item();
    let start = Instant::now();
    for _ in 0..n {
        tx.send(it.clone()).await.unwrap();
    }
    drop(tx);
    let got: usize = kid.line().await.parse().unwrap();
    let elapsed = start.elapsed();
    assert_eq!(got, n);
    kid.finish().await;
    n as f64 / elapsed.as_secs_f64()
}

async fn tokio_throughput(n: usize) -> f64 {
    let (mine, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let mut cmd = child_cmd("tokio-consumer");
    cmd.stdin(Stdio::from(OwnedFd::from(theirs)));
    let mut kid = Kid::spawn(cmd);
    assert_eq!(kid.line().await, "ready");
    mine.set_nonblocking(true).unwrap();
    let stream = tokio::net::UnixStream::from_std(mine).unwrap();
    let mut framed =
        tokio_util::codec::FramedWrite::new(stream, tokio_util::codec::LengthDelimitedCodec::new());
    let it = item();
    let start = Instant::now();
    for _ in 0..n {
        let bytes = postcard::to_stdvec(&it).unwrap();
        framed.feed(bytes::Bytes::from(bytes)).await.unwrap();
    }
    SinkExt::<bytes::Bytes>::close(&mut framed).await.unwrap();
    drop(framed);
    let got: usize = kid.line().await.parse().unwrap();
    let elapsed = start.elapsed();
    assert_eq!(got, n);
    kid.finish().await;
    n as f64 / elapsed.as_secs_f64()
}

/// Items per second through a procq queue from `p` producer processes to `c` consumer
/// processes (all children of this one), timed from the start signal to the last item got
/// (and, for a joinable queue, `join` returning).
async fn procq_queue(kind: &str, n: usize, p: usize, c: usize, fair: bool) -> f64 {
    let joinable = kind == "joinable";
    let opts = if fair {
        procq::queue_options()
    } else {
        procq::Options::new()
    };
    let jq = procq::JoinableQueue::<Item>::with_options(0, &opts).unwrap();
    let q = procq::Queue::<Item>::with_options(0, &opts).unwrap();
    let (go_tx, go_rx) = procq::Options::new()
        .batch_items(1)
        .channel::<()>()
        .unwrap();
    let mut kids = Vec::new();
    for (role, count, number) in [("producer", n / p, p), ("consumer", n / c, c)] {
        for _ in 0..number {
            let mut cmd = child_cmd(&format!("{kind}-{role}"));
            cmd.env("COUNT", count.to_string());
            if joinable {
                procq::pass(&mut cmd, "Q", jq.clone()).unwrap();
            } else {
                procq::pass(&mut cmd, "Q", q.clone()).unwrap();
            }
            if role == "producer" {
                procq::pass(&mut cmd, "GO", go_rx.clone()).unwrap();
            }
            kids.push((role, Kid::spawn(cmd)));
        }
    }
    drop(go_rx);
    // The children hold the queue now; this process only joins, and puts nothing.
    drop(q);
    let joined = if joinable {
        jq.close();
        Some(jq)
    } else {
        drop(jq);
        None
    };
    for (_, kid) in &mut kids {
        assert_eq!(kid.line().await, "ready");
    }
    let start = Instant::now();
    for _ in 0..p {
        go_tx.send(()).await.unwrap();
    }
    go_tx.flush().await.unwrap();
    let mut got = 0;
    for (role, kid) in &mut kids {
        if *role == "consumer" {
            let line = kid.line().await;
            got += line
                .strip_prefix("done ")
                .unwrap()
                .parse::<usize>()
                .unwrap();
        }
    }
    assert_eq!(got, n / p * p, "every item got once");
    if let Some(jq) = &joined {
        jq.join().await.unwrap();
    }
    let elapsed = start.elapsed();
    for (_, kid) in kids {
        kid.finish().await;
    }
    n as f64 / elapsed.as_secs_f64()
}

async fn python_rate(kind: &str, n: usize, producers: usize, consumers: usize) -> f64 {
    let args = [
        kind.to_string(),
        n.to_string(),
        producers.to_string(),
        consumers.to_string(),
    ];
    common::python("mp_bench.py", &args).await
}

/// Median round trip in µs through a procq duplex.
async fn procq_ping() -> f64 {
    let (mine, theirs) = procq::duplex::<Item, Item>().unwrap();
    let mut cmd = child_cmd("procq-echo");
    procq::pass(&mut cmd, "BENCH", theirs).unwrap();
    let kid = Kid::spawn(cmd);
    let it = item();
    let mut samples = Vec::with_capacity(PING_ROUNDS);
    for i in 0..PING_WARMUP + PING_ROUNDS {
        let t = Instant::now();
        mine.send(it.clone()).await.unwrap();
        let back = mine.recv().await.unwrap();
        if i >= PING_WARMUP {
            samples.push(t.elapsed());
        }
        assert_eq!(back.0.len(), PAYLOAD);
    }
    drop(mine);
    kid.finish().await;
    median_us(samples)
}

async fn raw_ping() -> f64 {
    use std::io::{Read, Write};
    let (mut mine, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let mut cmd = child_cmd("raw-echo");
    cmd.stdin(Stdio::from(OwnedFd::from(theirs)));
    let kid = Kid::spawn(cmd);
    let samples = tokio::task::spawn_blocking(move || {
        let buf = vec![7u8; 512];
        let mut back = vec![0u8; 512];
        let mut samples = Vec::with_capacity(PING_ROUNDS);
        for i in 0..PING_WARMUP + PING_ROUNDS {
            let t = Instant::now();
            mine.write_all(&buf).unwrap();
            mine.read_exact(&mut back).unwrap();
            if i >= PING_WARMUP {
                samples.push(t.elapsed());
            }
        }
        samples
    })
    .await
    .unwrap();
    kid.finish().await;
    median_us(samples)
}

fn median_us(mut samples: Vec<Duration>) -> f64 {
    samples.sort();
    samples[samples.len() / 2].as_secs_f64() * 1e6
}
