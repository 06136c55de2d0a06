//! Channels between real processes: this test binary re-runs itself as children
//! (`child_main` dispatches on the role), and the halves travel by `procq::pass`.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{child_command, report, Kid, PATIENCE};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

#[test]
fn child_main() {
    common::run_child(|role| async move { play(&role).await });
}

fn env_num(name: &str) -> u64 {
    std::env::var(name).unwrap().parse().unwrap()
}

/// An item that proves its own integrity: a checksum over its payload.
#[derive(Serialize, Deserialize, Debug, Clone)]
struct Checked {
    sender: u32,
    seq: u64,
    #[serde(with = "serde_bytes")]
    payload: Vec<u8>,
    sum: u64,
}

impl Checked {
    fn new(sender: u32, seq: u64, len: usize) -> Self {
        let payload: Vec<u8> = (0..len).map(|i| (i as u64 * 31 + seq) as u8).collect();
        let sum = checksum(&payload);
        Checked {
            sender,
            seq,
            payload,
            sum,
        }
    }
    fn is_intact(&self) -> bool {
        checksum(&self.payload) == self.sum
    }
}

fn checksum(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf29ce484222325u64, |h, &x| {
        (h ^ x as u64).wrapping_mul(0x100000001b3)
    })
}

fn vm_hwm_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

async fn play(role: &str) {
    match role {
        // Sends ITEMS numbered (sender, seq) items, then exits.
        "numbered-sender" => {
            let tx = procq::Sender::<(u32, u64)>::from_env("CH").unwrap();
            let me = env_num("ME") as u32;
            for seq in 0..env_num("ITEMS") {
                tx.send((me, seq)).await.unwrap();
            }
            let left = tx.drain(PATIENCE).await;
            assert!(left.is_complete());
        }
        // Receives until the channel closes; reports "sender seq" lines in bulk as a count
        // and a digest (sum of (sender << 32 | seq)) and checks per-sender order itself.
        "numbered-receiver" => {
            let rx = procq::Receiver::<(u32, u64)>::from_env("CH").unwrap();
            let mut last: HashMap<u32, u64> = HashMap::new();
            let (mut count, mut digest) = (0u64, 0u128);
            while let Ok((s, seq)) = rx.recv().await {
                if let Some(prev) = last.insert(s, seq) {
                    assert!(seq > prev, "sender {s}: {seq} after {prev}");
                }
                count += 1;
                digest += ((s as u128) << 64) | seq as u128;
            }
            report(format!("{count} {digest}"));
        }
        // Works 5 ms per item; reports how many it got.
        "slow-worker" => {
            let rx = procq::Receiver::<u32>::from_env("CH").unwrap();
            report("ready");
            let mut got = 0;
            while rx.recv().await.is_ok() {
                got += 1;
                std::thread::sleep(Duration::from_millis(5)); // the work itself
            }
            report(got);
        }
        // Receives items of any size, reports each one's length and checksum verdict.
        "checksum-receiver" => {
            let rx = procq::Receiver::<Checked>::from_env("CH").unwrap();
            while let Ok(item) = rx.recv().await {
                report(format!("{} {}", item.payload.len(), item.is_intact()));
            }
            report("end");
        }
        // Lists the descriptors it inherited (every descriptor this process opened itself
        // is close-on-exec), then rebuilds the passed half.
        "list-fds" => {
            let fds = inheritable_fds();
            report(
                fds.iter()
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
            );
            let rx = procq::Receiver::<u32>::from_env("CH").unwrap();
            report(rx.recv().await.unwrap());
        }
        // Tries names that are not there or not right; reports each error.
        "bad-names" => {
            for name in ["NOT_SET", "GARBAGE", "WRONG_KIND"] {
                let err = procq::Receiver::<u32>::from_env(name).unwrap_err();
                report(format!("{name}: {err}"));
            }
            let ok = procq::Sender::<u32>::from_env("WRONG_KIND");
            report(format!("sender: {}", ok.is_ok()));
            let twice = procq::Sender::<u32>::from_env("WRONG_KIND").unwrap_err();
            report(format!("twice: {twice}"));
        }
        // Receives ITEMS items then stops reading (and waits to be killed).
        "stalled-receiver" => {
            let rx = procq::Receiver::<Checked>::from_env("CH").unwrap();
            for _ in 0..env_num("ITEMS") {
                let item = rx.recv().await.unwrap();
                report(format!("got {}", item.seq));
            }
            report("stalled");
            std::future::pending::<()>().await;
        }
        // Queues 1,000 items behind a reader that stopped, drains when told, reports.
        "drain-writer" => {
            let tx = procq::Sender::<Checked>::from_env_with_buffer("CH", 64 << 20).unwrap();
            let go = procq::Receiver::<String>::from_env("GO").unwrap();
            for seq in 0..1000 {
                tx.send(Checked::new(0, seq, 8 * 1024)).await.unwrap();
            }
            report("queued");
            assert_eq!(go.recv().await.unwrap(), "drain");
            let start = Instant::now();
            let left = tx.drain(Duration::from_secs(1)).await;
            let took = start.elapsed();
            let seqs: Vec<u64> = left.items().iter().map(|c| c.seq).collect();
            report(format!(
                "{} {:?} {}",
                took.as_millis(),
                left.outcome(),
                seqs.iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            ));
        }
        // Fills the channel (nobody reads), then returns from "main" without draining.
        "fill-and-exit" => {
            let tx = procq::Sender::<Checked>::from_env_with_buffer("CH", 1 << 20).unwrap();
            let mut seq = 0;
            loop {
                match tx.try_send(Checked::new(0, seq, 1000)) {
                    Ok(()) => seq += 1,
                    Err(e) if e.is_full() => break,
                    Err(e) => panic!("{e}"),
                }
                tokio::task::yield_now().await;
            }
            report("full");
            // Returning drops the sender and then the runtime (see run_child) with items
            // still buffered: exit must not wait for them.
        }
        // Streams large batches forever, until killed.
        "endless-sender" => {
            let tx = procq::Sender::<Checked>::from_env("CH").unwrap();
            let me = env_num("ME") as u32;
            let mut seq = 0;
            loop {
                let len = 1000 + (seq as usize * 7919) % 60_000;
                tx.send(Checked::new(me, seq, len)).await.unwrap();
                seq += 1;
                if seq == 10 {
                    report("streaming");
                }
            }
        }
        // Sends 1,000,000 items as fast as it can into a slow reader; reports peak RSS.
        "bulk-sender" => {
            let tx = procq::Sender::<Checked>::from_env("CH").unwrap();
            let item = Checked::new(0, 0, 480);
            for _ in 0..1_000_000u32 {
                tx.send(item.clone()).await.unwrap();
            }
            tx.flush().await.unwrap();
            report(vm_hwm_kib());
        }
        // Answers each question with its length until the other end goes away.
        "length-server" => {
            let end = procq::Duplex::<usize, String>::from_env("CH").unwrap();
            while let Ok(question) = end.recv().await {
                end.send(question.len()).await.unwrap();
            }
            report("bye");
        }
        other => panic!("unknown role {other}"),
    }
}

/// This process's open descriptors (including the one listing them).
fn open_fds() -> Vec<i32> {
    let mut fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().parse().unwrap())
        .collect();
    fds.sort();
    fds
}

/// Descriptors of this process that any child inherits: those without close-on-exec.
/// Normally just 0, 1 and 2; a test runner started from a shell that leaks descriptors
/// has more, and they reach every child whatever procq does.
fn inheritable_fds() -> Vec<i32> {
    open_fds()
        .into_iter()
        .filter(|fd| {
            let Ok(info) = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")) else {
                return false;
            };
            let flags = info
                .lines()
                .find_map(|l| l.strip_prefix("flags:"))
                .map(|v| u32::from_str_radix(v.trim(), 8).unwrap())
                .unwrap();
            flags & 0o2000000 == 0 // O_CLOEXEC
        })
        .collect()
}

/// Checks a child's inherited descriptors: what every child inherits from outside, and the
/// passed socket; nothing else of ours.
fn assert_only_passed(child_fds: &str) {
    let outside = inheritable_fds();
    let extra: Vec<i32> = child_fds
        .split(',')
        .map(|n| n.parse().unwrap())
        .filter(|n| !outside.contains(n))
        .collect();
    assert_eq!(
        extra.len(),
        1,
        "child has {child_fds}; inherited from outside: {outside:?}"
    );
}

fn spawn_with<P: procq::Passable>(role: &str, half: P, env: &[(&str, String)]) -> Kid {
    let mut cmd = child_command(role);
    for (k, v) in env {
        cmd.env(k, v);
    }
    procq::pass(&mut cmd, "CH", half).unwrap();
    Kid::spawn(cmd)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_senders_three_receivers_deliver_each_item_exactly_once() {
    const PER_SENDER: u64 = 100_000;
    let (tx, rx) = procq::channel::<(u32, u64)>().unwrap();
    let receivers: Vec<Kid> = (0..3)
        .map(|_| spawn_with("numbered-receiver", rx.clone(), &[]))
        .collect();
    drop(rx);
    let senders: Vec<Kid> = (0..3)
        .map(|me| {
            spawn_with(
                "numbered-sender",
                tx.clone(),
                &[("ME", me.to_string()), ("ITEMS", PER_SENDER.to_string())],
            )
        })
        .collect();
    drop(tx);
    let (mut count, mut digest) = (0u64, 0u128);
    for mut kid in receivers {
        let line = kid.report().await;
        let mut parts = line.split(' ');
        let c: u64 = parts.next().unwrap().parse().unwrap();
        let d: u128 = parts.next().unwrap().parse().unwrap();
        count += c;
        digest += d;
        assert!(kid.exit_within(PATIENCE).await.success());
    }
    for mut kid in senders {
        assert!(kid.exit_within(PATIENCE).await.success());
    }
    // Each receiver checked per-sender order; count and digest prove exactly once.
    let expected: u128 = (0..3u128)
        .map(|s| (s << 64) * PER_SENDER as u128 + (0..PER_SENDER as u128).sum::<u128>())
        .sum();
    assert_eq!(count, 3 * PER_SENDER);
    assert_eq!(digest, expected);
}

#[tokio::test]
async fn batch_items_one_shares_work_fairly_between_workers() {
    let (tx, rx) = procq::Options::new()
        .batch_items(1)
        .channel::<u32>()
        .unwrap();
    let mut workers: Vec<Kid> = (0..4)
        .map(|_| spawn_with("slow-worker", rx.clone(), &[]))
        .collect();
    drop(rx);
    for w in &mut workers {
        assert_eq!(w.report().await, "ready");
    }
    for i in 0..400 {
        tx.send(i).await.unwrap();
    }
    drop(tx);
    let mut shares = Vec::new();
    for mut w in workers {
        let got: u32 = w.report().await.parse().unwrap();
        shares.push(got);
        assert!(w.exit_within(PATIENCE).await.success());
    }
    assert_eq!(shares.iter().sum::<u32>(), 400);
    for got in &shares {
        // 25% ± 5 points of 400 items.
        assert!((80..=120).contains(got), "unfair split: {shares:?}");
    }
}

async fn send_sizes(sizes: &[usize]) {
    let (tx, rx) = procq::channel::<Checked>().unwrap();
    let mut kid = spawn_with("checksum-receiver", rx, &[]);
    for (i, &len) in sizes.iter().enumerate() {
        tx.send(Checked::new(0, i as u64, len)).await.unwrap();
    }
    drop(tx);
    for &len in sizes {
        assert_eq!(kid.report().await, format!("{len} true"));
    }
    assert_eq!(kid.report().await, "end");
    assert!(kid.exit_within(PATIENCE).await.success());
}

#[tokio::test]
async fn items_up_to_64_mib_arrive_intact_in_another_process() {
    send_sizes(&[1024, 60 * 1024, 1024 * 1024, 64 * 1024 * 1024, 10]).await;
}

/// Runs in the ordinary suite (about 8 s, 2–3 GiB of memory at its peak): the 4 GiB default
/// item limit is only a promise if items this large are seen to arrive.
#[tokio::test]
async fn a_one_gib_item_arrives_intact_in_another_process() {
    send_sizes(&[1024 * 1024 * 1024]).await;
}

#[tokio::test]
async fn only_the_passed_descriptor_reaches_a_tokio_child() {
    let (tx, rx) = procq::channel::<u32>().unwrap();
    let (_other_tx, _other_rx) = procq::channel::<u32>().unwrap(); // must not leak
    let mut kid = spawn_with("list-fds", rx, &[]);
    assert_only_passed(&kid.report().await);
    tx.send(7).await.unwrap();
    assert_eq!(kid.report().await, "7");
    assert!(kid.exit_within(PATIENCE).await.success());
}

#[tokio::test]
async fn only_the_passed_descriptor_reaches_a_std_child() {
    use std::io::BufRead;
    let (tx, rx) = procq::channel::<u32>().unwrap();
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args(common::CHILD_ARGS)
        .env(common::ROLE, "list-fds")
        .stdout(std::process::Stdio::piped());
    procq::pass(&mut cmd, "CH", rx).unwrap();
    let mut child = procq::spawn(cmd).unwrap();
    tx.send(9).await.unwrap();
    let out = child.stdout.take().unwrap();
    let lines = tokio::task::spawn_blocking(move || {
        std::io::BufReader::new(out)
            .lines()
            .map(|l| l.unwrap())
            .filter_map(|l| l.strip_prefix("@@ ").map(str::to_string))
            .collect::<Vec<_>>()
    });
    let lines = tokio::time::timeout(PATIENCE, lines)
        .await
        .unwrap()
        .unwrap();
    assert_only_passed(&lines[0]);
    assert_eq!(lines[1], "9");
    assert!(child.wait().unwrap().success());
}

#[tokio::test]
async fn a_missing_or_wrong_name_is_a_clear_error() {
    let (tx, _rx) = procq::channel::<u32>().unwrap();
    let mut cmd = child_command("bad-names");
    cmd.env("GARBAGE", "procq1:receiver:7");
    procq::pass(&mut cmd, "WRONG_KIND", tx).unwrap();
    let mut kid = Kid::spawn(cmd);
    assert_eq!(
        kid.report().await,
        "NOT_SET: no procq handle was passed as `NOT_SET` (environment variable not set)"
    );
    assert_eq!(
        kid.report().await,
        "GARBAGE: `GARBAGE` does not describe a procq handle: written by another version of \
         procq (format procq1, this one reads procq2)"
    );
    assert_eq!(
        kid.report().await,
        "WRONG_KIND: `WRONG_KIND` holds a procq sender, not a receiver"
    );
    assert_eq!(kid.report().await, "sender: true");
    assert!(kid
        .report()
        .await
        .starts_with("twice: `WRONG_KIND`: descriptor"));
    assert!(kid.exit_within(PATIENCE).await.success());
    let mut cmd = child_command("x");
    assert!(procq::pass(&mut cmd, "A=B", procq::channel::<u8>().unwrap().1).is_err());
}

#[tokio::test]
async fn receivers_see_the_end_once_every_sender_in_every_process_is_gone() {
    let (tx, mut rx) = procq::channel::<(u32, u64)>().unwrap();
    let senders: Vec<Kid> = (0..2)
        .map(|me| {
            spawn_with(
                "numbered-sender",
                tx.clone(),
                &[("ME", me.to_string()), ("ITEMS", "1000".into())],
            )
        })
        .collect();
    drop(tx);
    let mut got = 0;
    let stream_end = tokio::time::timeout(PATIENCE, async {
        while let Some(item) = rx.next().await {
            item.unwrap();
            got += 1;
        }
    });
    stream_end.await.expect("stream did not end");
    assert_eq!(got, 2000);
    assert!(matches!(rx.recv().await, Err(procq::RecvError::Closed)));
    for mut kid in senders {
        assert!(kid.exit_within(PATIENCE).await.success());
    }
}

#[tokio::test]
async fn a_killed_receiver_gives_senders_an_error_carrying_the_item() {
    let (tx, rx) = procq::channel::<Checked>().unwrap();
    let mut kid = spawn_with("stalled-receiver", rx, &[("ITEMS", "1".into())]);
    tx.send(Checked::new(0, 0, 10)).await.unwrap();
    assert_eq!(kid.report().await, "got 0");
    assert_eq!(kid.report().await, "stalled");
    kid.kill().await;
    let deadline = Instant::now() + PATIENCE;
    let mut seq = 1;
    let err = loop {
        assert!(
            Instant::now() < deadline,
            "sender never noticed the dead receiver"
        );
        match tx.send(Checked::new(0, seq, 100)).await {
            Ok(()) => seq += 1,
            Err(e) => break e,
        }
        if seq % 100 == 0 {
            // Let the flush task run into the closed socket.
            let _ = tx.flush().await;
        }
    };
    assert!(
        matches!(err.kind(), procq::SendErrorKind::Disconnected),
        "{err}"
    );
    assert_eq!(err.item().seq, seq, "the error carries the unsent item");
    assert!(matches!(
        tx.flush().await,
        Err(procq::FlushError::Disconnected { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_killed_mid_batch_never_tears_an_item() {
    let (tx, rx) = procq::channel::<Checked>().unwrap();
    let mut victim = spawn_with("endless-sender", tx.clone(), &[("ME", "1".into())]);
    let mut survivor = spawn_with("endless-sender", tx.clone(), &[("ME", "2".into())]);
    drop(tx);
    assert_eq!(victim.report().await, "streaming");
    assert_eq!(survivor.report().await, "streaming");
    // Read while both stream, then kill the victim mid-flow.
    let mut per_sender: HashMap<u32, u64> = HashMap::new();
    let mut check = |item: Checked| {
        assert!(item.is_intact(), "torn item from sender {}", item.sender);
        let next = per_sender.entry(item.sender).or_insert(0);
        assert_eq!(
            item.seq, *next,
            "gap or reorder from sender {}",
            item.sender
        );
        *next += 1;
        (item.sender, *next)
    };
    loop {
        let (sender, count) = check(rx.recv_timeout(PATIENCE).await.unwrap());
        if sender == 1 && count > 2000 {
            break;
        }
    }
    victim.kill().await;
    victim.exit_within(PATIENCE).await;
    // Everything after the kill: still intact, still in order, and the survivor's items
    // keep coming.
    let mut from_survivor = 0;
    while from_survivor < 3000 {
        let (sender, _) = check(rx.recv_timeout(PATIENCE).await.unwrap());
        if sender == 2 {
            from_survivor += 1;
        }
    }
    survivor.kill().await;
}

#[tokio::test]
async fn drain_returns_exactly_the_undelivered_items_when_the_reader_dies() {
    let (tx, rx) = procq::channel::<Checked>().unwrap();
    let (go_tx, go_rx) = procq::channel::<String>().unwrap();
    let mut reader = spawn_with("stalled-receiver", rx, &[("ITEMS", "10".into())]);
    let mut cmd = child_command("drain-writer");
    procq::pass(&mut cmd, "CH", tx).unwrap();
    procq::pass(&mut cmd, "GO", go_rx).unwrap();
    let mut writer = Kid::spawn(cmd);
    let mut read = Vec::new();
    loop {
        let line = reader.report().await;
        if line == "stalled" {
            break;
        }
        read.push(line.strip_prefix("got ").unwrap().parse::<u64>().unwrap());
    }
    assert_eq!(writer.report().await, "queued");
    reader.kill().await;
    reader.exit_within(PATIENCE).await;
    go_tx.send("drain".into()).await.unwrap();
    let line = writer.report().await;
    let mut parts = line.splitn(3, ' ');
    let millis: u64 = parts.next().unwrap().parse().unwrap();
    let outcome = parts.next().unwrap();
    let left: Vec<u64> = parts
        .next()
        .unwrap()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    assert!(millis < 1500, "drain took {millis} ms");
    assert_eq!(outcome, "Disconnected");
    // The undelivered items are a contiguous run ending at the last one sent, none of
    // which the reader saw: exactly what never reached the kernel.
    assert!(
        !left.is_empty(),
        "most of 1,000 8 KiB items cannot fit in the kernel"
    );
    let first = left[0];
    assert_eq!(left, (first..1000).collect::<Vec<_>>());
    assert!(read.iter().all(|&r| r < first));
    assert!(writer.exit_within(Duration::from_secs(5)).await.success());
}

#[tokio::test]
async fn dropping_a_sender_with_a_full_buffer_never_blocks_exit() {
    let (tx, rx) = procq::channel::<Checked>().unwrap();
    let mut kid = spawn_with("fill-and-exit", tx, &[]);
    assert_eq!(kid.report().await, "full");
    let start = Instant::now();
    assert!(kid.exit_within(Duration::from_secs(5)).await.success());
    let took = start.elapsed();
    assert!(took < Duration::from_secs(1), "exit took {took:?}");
    drop(rx);
}

#[tokio::test]
async fn a_slow_reader_keeps_the_producer_under_64_mib() {
    let (tx, rx) = procq::channel::<Checked>().unwrap();
    let mut kid = spawn_with("bulk-sender", tx, &[]);
    let mut got = 0u32;
    while got < 1_000_000 {
        rx.recv_timeout(PATIENCE).await.unwrap();
        got += 1;
        if got.is_multiple_of(20_000) {
            // Read slower than the producer writes.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let hwm_kib: u64 = kid.report().await.parse().unwrap();
    assert!(hwm_kib < 64 * 1024, "producer peak RSS {hwm_kib} KiB");
    assert!(kid.exit_within(PATIENCE).await.success());
}

#[tokio::test]
async fn recv_raced_against_a_timer_for_100_000_rounds_loses_nothing() {
    const ITEMS: u64 = 150_000;
    let (tx, rx) = procq::channel::<(u32, u64)>().unwrap();
    let mut kid = spawn_with(
        "numbered-sender",
        tx,
        &[("ME", "0".into()), ("ITEMS", ITEMS.to_string())],
    );
    let mut next = 0u64;
    let (mut won, mut lost) = (0u32, 0u32);
    for _ in 0..100_000 {
        tokio::select! {
            item = rx.recv() => {
                assert_eq!(item.unwrap(), (0, next));
                next += 1;
                won += 1;
            }
            _ = tokio::time::sleep(Duration::ZERO) => lost += 1,
        }
    }
    while let Ok(item) = rx.recv_timeout(PATIENCE).await {
        assert_eq!(item, (0, next));
        next += 1;
    }
    assert_eq!(next, ITEMS, "every item arrived once, in order");
    assert!(
        won > 0 && lost > 0,
        "both branches must win sometimes ({won} / {lost})"
    );
    assert!(kid.exit_within(PATIENCE).await.success());
}

#[tokio::test]
async fn duplex_request_response_with_a_child_process() {
    let (client, server) = procq::duplex::<String, usize>().unwrap();
    let mut kid = spawn_with("length-server", server, &[]);
    for n in [0usize, 1, 10, 100_000, 3] {
        client.send("x".repeat(n)).await.unwrap();
        assert_eq!(client.recv_timeout(PATIENCE).await.unwrap(), n);
    }
    let (tx, rx) = client.split();
    tx.send("four".into()).await.unwrap();
    assert_eq!(rx.recv_timeout(PATIENCE).await.unwrap(), 4);
    drop((tx, rx));
    assert_eq!(kid.report().await, "bye");
    assert!(kid.exit_within(PATIENCE).await.success());
}
