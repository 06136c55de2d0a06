//! Regression tests for the boundaries where the first build broke its promises: several
//! tasks sharing a handle, settings of a handle rebuilt in a child, a runtime that stops
//! running, a process that returns from `main`, receivers that vanish, descriptors that are
//! not what the environment says, `Sink` on an unbuffered sender, and a queue's last handle.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{child_command, report, Kid, FLAVOR, PATIENCE};
use futures::SinkExt;
use procq::{FromEnvError, SendErrorKind, TrySendError};
use tokio::io::{AsyncBufReadExt, BufReader};

#[test]
fn child_main() {
    common::run_child(|role| async move { play(&role).await });
}

fn env_num(name: &str) -> u64 {
    std::env::var(name).unwrap().parse().unwrap()
}

async fn play(role: &str) {
    match role {
        // Sends N numbers on a channel in one batch, then returns.
        "batch-sender" => {
            let tx = procq::Sender::<u64>::from_env("CH").unwrap();
            for i in 0..env_num("N") {
                tx.send(i).await.unwrap();
            }
            tx.flush().await.unwrap();
        }
        // Puts N numbers into a queue, flushes, returns.
        "queue-putter" => {
            let kind = std::env::var("KIND").unwrap();
            let n = env_num("N");
            match kind.as_str() {
                "queue" => {
                    let q = procq::Queue::<u64>::from_env("CH").unwrap();
                    for i in 0..n {
                        q.put(i).await.unwrap();
                    }
                    q.flush().await.unwrap();
                }
                "joinable" => {
                    let q = procq::JoinableQueue::<u64>::from_env("CH").unwrap();
                    for i in 0..n {
                        q.put(i).await.unwrap();
                    }
                    q.flush().await.unwrap();
                }
                _ => {
                    let q = procq::SimpleQueue::<u64>::from_env("CH").unwrap();
                    for i in 0..n {
                        q.put(i).await.unwrap();
                    }
                }
            }
            report("put");
        }
        // Sends one item on the passed sender and ends the process at once, skipping every
        // destructor: only an unbuffered sender has the item in the kernel by then.
        "send-and-exit" => {
            if std::env::var("DUPLEX").is_ok() {
                let end = procq::Duplex::<String, String>::from_env("CH").unwrap();
                end.send("before exit".into()).await.unwrap();
            } else {
                let tx = procq::Sender::<String>::from_env("CH").unwrap();
                tx.send("before exit".into()).await.unwrap();
            }
            std::process::exit(0);
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
        // Sends 400 numbers as fast as it can on the sender it was given.
        "fast-producer" => {
            let tx = procq::Sender::<u32>::from_env("CH").unwrap();
            for i in 0..400 {
                tx.send(i).await.unwrap();
            }
        }
        // Sends one item, drops the sender, then blocks this thread (the runtime never
        // runs again) until its stdin closes.
        "drop-then-block" => {
            let tx = procq::Sender::<u64>::from_env("CH").unwrap();
            tx.send(7).await.unwrap();
            if std::env::var("FLUSH").is_ok() {
                tx.flush().await.unwrap();
            }
            if std::env::var("CLOSE").is_ok() {
                // Closed, not dropped: the handle lives on while the runtime is blocked.
                tx.close();
                report("dropped");
                let mut line = String::new();
                let _ = std::io::stdin().read_line(&mut line);
                drop(tx);
                return;
            }
            drop(tx);
            report("dropped");
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line); // blocks: no await
        }
        // Sends N small items and returns from main: no flush, no drain.
        "send-and-return" => {
            let tx = procq::Sender::<(u32, u64)>::from_env("CH").unwrap();
            for i in 0..env_num("N") {
                tx.send((7, i)).await.unwrap();
            }
        }
        // Sends N numbers, then panics in `main` (no flush).
        "send-and-panic" => {
            let tx = procq::Sender::<(u32, u64)>::from_env("CH").unwrap();
            for i in 0..env_num("N") {
                tx.send((7, i)).await.unwrap();
            }
            panic!("deliberate panic after sending");
        }
        // Makes a queue of each kind, uses it, drops its last handle while the runtime is
        // busy here (it does not run again before the count), and reports how many
        // descriptors are still open beyond those before.
        "queue-descriptors-at-drop" => {
            let fds = || std::fs::read_dir("/proc/self/fd").unwrap().count();
            let before = fds();
            let q = procq::JoinableQueue::<u64>::bounded(4).unwrap();
            q.put(1).await.unwrap();
            q.flush().await.unwrap();
            assert_eq!(q.get().await.unwrap(), 1);
            q.task_done().unwrap();
            let p = procq::Queue::<u64>::new().unwrap();
            p.put(2).await.unwrap();
            p.flush().await.unwrap();
            assert_eq!(p.get().await.unwrap(), 2);
            drop((q, p));
            report(fds() - before);
        }
        // CPython's test_fork, ported: put ten items into a queue and return.
        "put-ten-and-return" => {
            let q = procq::Queue::<u32>::from_env("CH").unwrap();
            for i in 0..10 {
                q.put(i).await.unwrap();
            }
        }
        // Sends N items of 8 KiB into a channel nobody reads (a huge buffer), and returns.
        "overfill-and-return" => {
            let tx = procq::Sender::<(u64, Vec<u8>)>::from_env_with_buffer("CH", 1 << 30).unwrap();
            for i in 0..env_num("N") {
                tx.send((i, vec![1; 8192])).await.unwrap();
            }
            report("sent");
        }
        // Holds a duplex end until killed.
        "hold-duplex" => {
            let _end = procq::Duplex::<u64, u64>::from_env("CH").unwrap();
            std::future::pending::<()>().await;
        }
        // Holds the receiver until killed.
        "hold" => {
            let _rx = procq::Receiver::<u64>::from_env("CH").unwrap();
            report("holding");
            std::future::pending::<()>().await;
        }
        // Re-spawns itself as a grandchild that inherits the variable but not the descriptor.
        "spawn-orphan" => {
            // Takes the receiver (which makes its descriptor close-on-exec again), then
            // spawns a grandchild that inherits the variable but not the descriptor.
            let _rx = procq::Receiver::<u64>::from_env("CH").unwrap();
            let mut cmd = child_command("orphan");
            cmd.stdout(std::process::Stdio::inherit());
            let mut kid = cmd.spawn().unwrap();
            assert!(kid.wait().await.unwrap().success());
        }
        // Puts a file of its own at the number the variable names, then asks for the
        // receiver: that must fail, and the file must stay open.
        "orphan" => {
            let value = std::env::var("CH").unwrap();
            let fds = value
                .split(';')
                .find_map(|f| f.strip_prefix("fds="))
                .unwrap();
            let number: i32 = fds.split('@').next().unwrap().parse().unwrap();
            // Whatever file has that number now (put one there if none has) is not ours to
            // take.
            let file = std::fs::File::open("/dev/null").unwrap();
            let _kept = (!is_open(number)).then(|| dup_at(&file, number));
            let before = std::fs::read_link(format!("/proc/self/fd/{number}")).unwrap();
            match procq::Receiver::<u64>::from_env("CH") {
                Err(FromEnvError::Descriptor { reason, .. }) => {
                    report(format!("refused: {reason}"))
                }
                other => report(format!("taken: {other:?}")),
            }
            let after = std::fs::read_link(format!("/proc/self/fd/{number}")).ok();
            report(format!("still open: {}", after.as_ref() == Some(&before)));
        }
        // Asks for the passed handle with the wrong type and the wrong kind, then right.
        "wrong-asks" => {
            let e = procq::Sender::<u64>::from_env("CH").unwrap_err();
            report(e);
            let e = procq::Receiver::<String>::from_env("CH").unwrap_err();
            report(e);
            let tx = procq::Sender::<String>::from_env("CH").unwrap();
            tx.send("right".into()).await.unwrap();
            tx.flush().await.unwrap();
        }
        // Gets one item of a batch, then drops eight clones of the queue at the same moment
        // from eight threads.
        "race-drop" => {
            let q = procq::Queue::<u64>::from_env("CH").unwrap();
            report(q.get().await.unwrap());
            let barrier = Arc::new(std::sync::Barrier::new(8));
            let threads: Vec<_> = (0..8)
                .map(|_| {
                    let q = q.clone();
                    let barrier = barrier.clone();
                    std::thread::spawn(move || {
                        barrier.wait();
                        drop(q);
                    })
                })
                .collect();
            drop(q);
            for t in threads {
                t.join().unwrap();
            }
        }
        // On "go", gets one item of a batch, drops its queue handle (handing the rest of the
        // batch back while the queue's kernel buffer is full), keeps its runtime running.
        "get-one-then-drop" => {
            let q = procq::Queue::<Vec<u8>>::from_env("CH").unwrap();
            let mut lines = BufReader::new(tokio::io::stdin()).lines();
            report("ready");
            assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("go"));
            let item = q.get_timeout(PATIENCE).await.unwrap();
            report(format!("got {}", item[0]));
            drop(q);
            report("dropped");
            while let Ok(Some(_)) = lines.next_line().await {}
        }
        other => panic!("unknown role {other}"),
    }
}

fn is_open(number: i32) -> bool {
    std::fs::read_link(format!("/proc/self/fd/{number}")).is_ok()
}

/// Opens `file` again at descriptor number `number` (which is free), returning its owner.
fn dup_at(file: &std::fs::File, number: i32) -> std::os::fd::OwnedFd {
    use std::os::fd::{AsFd, AsRawFd};
    let mut fds = Vec::new();
    // Open until the number comes up (numbers are handed out lowest first), keeping the
    // others open meanwhile so the same number is not reused.
    loop {
        let dup = rustix::io::fcntl_dupfd_cloexec(file.as_fd(), 0).unwrap();
        let raw = dup.as_raw_fd();
        if raw == number {
            return dup;
        }
        assert!(raw < number, "descriptor {number} is taken already");
        fds.push(dup);
    }
}

fn spawn_with<P: procq::Passable>(role: &str, half: P, env: &[(&str, String)]) -> Kid {
    let mut cmd = child_command(role);
    for (k, v) in env {
        cmd.env(k, v);
    }
    procq::pass(&mut cmd, "CH", half).unwrap();
    Kid::spawn(cmd)
}

// ----- 1. several tasks, one handle ----------------------------------------------------

/// Four tasks each take one item and then wait for the other three to have one too: this
/// finishes only if every waiting task is woken for the items another task left in the
/// shared inbox. Items come from another process, in one datagram where the handle batches.
macro_rules! pool {
    ($handle:expr, $get:ident) => {{
        let h = $handle;
        let barrier = Arc::new(tokio::sync::Barrier::new(TASKS));
        let tasks: Vec<_> = (0..TASKS)
            .map(|_| {
                let h = h.clone();
                let barrier = barrier.clone();
                tokio::spawn(async move {
                    let got = h.$get().await.unwrap();
                    tokio::time::timeout(PATIENCE, barrier.wait())
                        .await
                        .expect("a waiting task never got its item");
                    (got, h)
                })
            })
            .collect();
        (h, tasks)
    }};
}

const TASKS: usize = 4;

async fn every_waiting_task_gets_work(kind: &str) {
    let env = [("N", TASKS.to_string()), ("KIND", kind.to_string())];
    let mut source = match kind {
        "receiver" => {
            let (tx, rx) = procq::channel::<u64>().unwrap();
            let (rx, tasks) = pool!(rx, recv);
            drop(rx);
            let mut source = spawn_with("batch-sender", tx, &env);
            // Once the sender process is gone, every task sees the end too, waiting at once.
            let ends: Vec<_> = collect(tasks)
                .await
                .into_iter()
                .map(|rx| tokio::spawn(async move { rx.recv_timeout(PATIENCE).await }))
                .collect();
            for e in ends {
                assert!(e.await.unwrap().unwrap_err().is_closed());
            }
            assert!(source.exit_within(PATIENCE).await.success());
            return;
        }
        "queue" => {
            let (q, tasks) = pool!(procq::Queue::<u64>::new().unwrap(), get);
            let source = spawn_with("queue-putter", q, &env);
            collect(tasks).await;
            source
        }
        "joinable" => {
            let (q, tasks) = pool!(procq::JoinableQueue::<u64>::new().unwrap(), get);
            let source = spawn_with("queue-putter", q, &env);
            collect(tasks).await;
            source
        }
        _ => {
            let (q, tasks) = pool!(procq::SimpleQueue::<u64>::new().unwrap(), get);
            let source = spawn_with("queue-putter", q, &env);
            collect(tasks).await;
            source
        }
    };
    assert_eq!(source.report().await, "put");
    assert!(source.exit_within(PATIENCE).await.success());
}

async fn collect<H>(tasks: Vec<tokio::task::JoinHandle<(u64, H)>>) -> Vec<H> {
    let mut got: Vec<u64> = Vec::new();
    let mut handles = Vec::new();
    for t in tasks {
        let (item, handle) = t.await.unwrap();
        got.push(item);
        handles.push(handle);
    }
    got.sort();
    assert_eq!(
        got,
        (0..got.len() as u64).collect::<Vec<_>>(),
        "each item once"
    );
    handles
}

#[tokio::test(flavor = "current_thread")]
async fn a_task_pool_on_one_receiver_wakes_every_waiter_current_thread() {
    every_waiting_task_gets_work("receiver").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_pool_on_one_receiver_wakes_every_waiter_multi_thread() {
    every_waiting_task_gets_work("receiver").await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_task_pool_on_one_queue_wakes_every_waiter_current_thread() {
    every_waiting_task_gets_work("queue").await;
    every_waiting_task_gets_work("joinable").await;
    every_waiting_task_gets_work("simple").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_pool_on_one_queue_wakes_every_waiter_multi_thread() {
    every_waiting_task_gets_work("queue").await;
    every_waiting_task_gets_work("joinable").await;
    every_waiting_task_gets_work("simple").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_waiting_for_room_all_get_it() {
    // A bounded queue of one: four puts wait for room; four gets make it, one at a time.
    let q = procq::Queue::<u32>::bounded(1).unwrap();
    q.put(0).await.unwrap();
    let puts: Vec<_> = (1..=4)
        .map(|i| {
            let q = q.clone();
            tokio::spawn(async move { q.put_timeout(i, PATIENCE).await })
        })
        .collect();
    let mut got = Vec::new();
    for _ in 0..5 {
        got.push(q.get_timeout(PATIENCE).await.unwrap());
    }
    for p in puts {
        p.await.unwrap().unwrap();
    }
    got.sort();
    assert_eq!(got, vec![0, 1, 2, 3, 4]);
    // A pipe whose kernel buffer is full: four sends wait; a reader drains.
    let (tx, rx) = procq::pipe::<Vec<u8>>().unwrap();
    let mut filled = 0;
    while tx.try_send(vec![0; 60_000]).is_ok() {
        filled += 1;
    }
    let sends: Vec<_> = (0..4)
        .map(|_| {
            let tx = tx.clone();
            tokio::spawn(async move { tx.send_timeout(vec![1; 60_000], PATIENCE).await })
        })
        .collect();
    for _ in 0..filled + 4 {
        rx.recv_timeout(PATIENCE).await.unwrap();
    }
    for s in sends {
        s.await.unwrap().unwrap();
    }
}

// ----- 2. settings travel ---------------------------------------------------------------

#[tokio::test]
async fn a_pipe_end_rebuilt_in_a_child_stays_unbuffered() {
    // The child sends and ends at once without running a destructor: the item is in the
    // kernel only if its rebuilt sender is unbuffered, as the parent's pipe is.
    let (tx, rx) = procq::pipe::<String>().unwrap();
    let mut kid = spawn_with("send-and-exit", tx, &[]);
    assert!(kid.exit_within(PATIENCE).await.success());
    assert_eq!(rx.recv_timeout(PATIENCE).await.unwrap(), "before exit");

    let (mine, theirs) = procq::pipe_duplex::<String, String>().unwrap();
    let mut kid = spawn_with("send-and-exit", theirs, &[("DUPLEX", "1".into())]);
    assert!(kid.exit_within(PATIENCE).await.success());
    assert_eq!(mine.recv_timeout(PATIENCE).await.unwrap(), "before exit");
}

#[tokio::test]
async fn batch_items_travels_so_slow_workers_share_the_work() {
    // The channel is made with batch_items(1) here; a *child* sends on it. Its sender must
    // send one item per datagram too, or one slow worker takes everything.
    let (tx, rx) = procq::Options::new()
        .batch_items(1)
        .channel::<u32>()
        .unwrap();
    let mut workers: Vec<Kid> = (0..2)
        .map(|_| spawn_with("slow-worker", rx.clone(), &[]))
        .collect();
    drop(rx);
    for w in &mut workers {
        assert_eq!(w.report().await, "ready");
    }
    let mut producer = spawn_with("fast-producer", tx, &[]);
    let mut shares = Vec::new();
    for mut w in workers {
        shares.push(w.report().await.parse::<u32>().unwrap());
        assert!(w.exit_within(PATIENCE).await.success());
    }
    assert!(producer.exit_within(PATIENCE).await.success());
    assert_eq!(shares.iter().sum::<u32>(), 400);
    for got in &shares {
        assert!((100..=300).contains(got), "unfair split: {shares:?}");
    }
}

// ----- 3. descriptor lifetime follows handles -----------------------------------------

async fn dropped_sender_ends_the_channel_while_its_runtime_is_blocked(
    multi: bool,
    flush: bool,
    close: bool,
) {
    let (tx, rx) = procq::channel::<u64>().unwrap();
    let mut cmd = child_command("drop-then-block");
    cmd.env(FLAVOR, if multi { "multi" } else { "current" })
        .stdin(std::process::Stdio::piped());
    if flush {
        cmd.env("FLUSH", "1");
    }
    if close {
        cmd.env("CLOSE", "1");
    }
    procq::pass(&mut cmd, "CH", tx).unwrap();
    let mut kid = Kid::spawn(cmd);
    let stdin = kid.child.stdin.take().unwrap();
    assert_eq!(kid.report().await, "dropped");
    assert_eq!(rx.recv_timeout(PATIENCE).await.unwrap(), 7);
    // The child is alive and blocked; its sender is gone, so is the channel's last sender.
    assert!(
        rx.recv_timeout(PATIENCE).await.unwrap_err().is_closed(),
        "the end was not seen while the sender's runtime was blocked"
    );
    assert!(
        kid.child.try_wait().unwrap().is_none(),
        "the child is still running"
    );
    drop(stdin);
    assert!(kid.exit_within(PATIENCE).await.success());
}

#[tokio::test]
async fn a_dropped_sender_closes_its_descriptor_while_the_runtime_is_blocked() {
    for multi in [false, true] {
        for flush in [false, true] {
            for close in [false, true] {
                dropped_sender_ends_the_channel_while_its_runtime_is_blocked(multi, flush, close)
                    .await;
            }
        }
    }
}

// ----- 4. exit ----------------------------------------------------------------------

/// Receives `(7, 0)`, `(7, 1)`, … until the channel ends; how many.
async fn receive_in_order_until_the_end(rx: &procq::Receiver<(u32, u64)>) -> u64 {
    let mut got = 0;
    loop {
        match rx.recv_timeout(PATIENCE).await {
            Ok((7, i)) => {
                assert_eq!(i, got);
                got += 1;
            }
            Ok(other) => panic!("{other:?}"),
            Err(e) if e.is_closed() => return got,
            Err(e) => panic!("{e}"),
        }
    }
}

#[tokio::test]
async fn returning_from_main_without_flush_delivers_everything_the_kernel_holds() {
    for flavor in ["current", "multi"] {
        let (tx, rx) = procq::channel::<(u32, u64)>().unwrap();
        let n = 5000u64;
        let mut kid = spawn_with(
            "send-and-return",
            tx,
            &[("N", n.to_string()), (FLAVOR, flavor.into())],
        );
        let got = receive_in_order_until_the_end(&rx).await;
        assert_eq!(got, n, "{flavor}: items lost at exit");
        assert!(kid.exit_within(PATIENCE).await.success());
    }
}

/// A panic that unwinds out of `main` delivers what the kernel takes, as returning does
/// (it used to skip the write while unwinding, and report every buffered item lost).
#[tokio::test]
async fn panicking_in_main_delivers_everything_the_kernel_holds() {
    for flavor in ["current", "multi"] {
        let (tx, rx) = procq::channel::<(u32, u64)>().unwrap();
        let n = 2000u64;
        let mut cmd = child_command("send-and-panic");
        cmd.env("N", n.to_string())
            .env(FLAVOR, flavor)
            .stderr(std::process::Stdio::piped());
        procq::pass(&mut cmd, "CH", tx).unwrap();
        let mut kid = Kid::spawn(cmd);
        let stderr = kid.child.stderr.take().unwrap();
        let got = receive_in_order_until_the_end(&rx).await;
        assert!(!kid.exit_within(PATIENCE).await.success(), "it panicked");
        let mut lines = BufReader::new(stderr).lines();
        while let Some(line) = lines.next_line().await.unwrap() {
            assert!(!line.starts_with("procq:"), "{flavor}: {line}");
        }
        assert_eq!(got, n, "{flavor}: items lost in the panic");
    }
}

/// A queue's last handle, dropped with nothing buffered, closes every descriptor at once
/// (sockets, eventfds and the shared header), whether or not the runtime runs again.
#[tokio::test]
async fn a_queues_last_handle_closes_every_descriptor_at_once() {
    for flavor in ["current", "multi"] {
        let mut cmd = child_command("queue-descriptors-at-drop");
        cmd.env(FLAVOR, flavor);
        let mut kid = Kid::spawn(cmd);
        assert_eq!(kid.report().await, "0", "{flavor}: descriptors left open");
        assert!(kid.exit_within(PATIENCE).await.success());
    }
}

#[tokio::test]
async fn a_queue_filled_by_a_child_that_returns_keeps_every_item() {
    // CPython's test_fork: the child puts ten items and returns.
    let q = procq::Queue::<u32>::new().unwrap();
    let mut kid = spawn_with("put-ten-and-return", q.clone(), &[]);
    assert!(kid.exit_within(PATIENCE).await.success());
    let mut got = Vec::new();
    for _ in 0..10 {
        got.push(q.get_timeout(PATIENCE).await.unwrap());
    }
    assert_eq!(got, (0..10).collect::<Vec<_>>());
}

#[tokio::test]
async fn what_the_kernel_cannot_take_at_exit_is_reported_on_stderr() {
    // Nobody reads until the child is gone; it returns with far more than the kernel holds.
    let (tx, rx) = procq::channel::<(u64, Vec<u8>)>().unwrap();
    let n = 2000u64; // 16 MiB
    let mut cmd = child_command("overfill-and-return");
    cmd.env("N", n.to_string())
        .stderr(std::process::Stdio::piped());
    procq::pass(&mut cmd, "CH", tx).unwrap();
    let mut kid = Kid::spawn(cmd);
    let stderr = kid.child.stderr.take().unwrap();
    assert_eq!(kid.report().await, "sent");
    assert!(kid.exit_within(PATIENCE).await.success());
    let mut lines = BufReader::new(stderr).lines();
    let mut reported = None;
    while let Some(line) = lines.next_line().await.unwrap() {
        if let Some(rest) = line.strip_prefix("procq: warning: ") {
            let n: u64 = rest.split(' ').next().unwrap().parse().unwrap();
            reported = Some(n);
        }
    }
    let reported = reported.expect("no report on stderr");
    let mut delivered = 0;
    while let Ok((i, body)) = rx.recv_timeout(PATIENCE).await {
        assert_eq!(i, delivered, "delivered items are the first ones, in order");
        assert_eq!(body.len(), 8192);
        delivered += 1;
    }
    assert!(delivered > 0 && reported > 0, "{delivered} / {reported}");
    assert_eq!(delivered + reported, n, "every item delivered or reported");
}

// ----- 5. closed is known early ---------------------------------------------------------

#[tokio::test]
async fn closed_resolves_when_the_last_receiver_dies_and_sends_fail_at_once() {
    for direct in [false, true] {
        let opts = if direct {
            procq::Options::new().direct()
        } else {
            procq::Options::new()
        };
        let (tx, rx) = opts.channel::<u64>().unwrap();
        let mut kid = spawn_with("hold", rx, &[]);
        assert_eq!(kid.report().await, "holding");
        assert!(!tx.is_closed());
        tx.send(1).await.unwrap();
        let watcher = {
            let tx = tx.clone();
            tokio::spawn(async move { tx.closed().await })
        };
        kid.kill().await;
        tokio::select! {
            closed = tx.closed() => closed.unwrap(),
            _ = tokio::time::sleep(PATIENCE) => panic!("closed() never resolved"),
        }
        watcher.await.unwrap().unwrap();
        assert!(tx.is_closed());
        match tx.try_send(2) {
            Err(TrySendError::Failed(e)) => {
                assert!(matches!(e.kind(), SendErrorKind::Disconnected), "{e}");
                assert_eq!(e.into_inner(), 2);
            }
            other => panic!("{other:?}"),
        }
        let err = tx.send(3).await.unwrap_err();
        assert!(err.is_disconnected());
        assert_eq!(err.into_inner(), 3);
    }
}

#[tokio::test]
async fn is_closed_asks_the_kernel_without_sending() {
    let (tx, rx) = procq::channel::<u64>().unwrap();
    let mut kid = spawn_with("hold", rx, &[]);
    assert_eq!(kid.report().await, "holding");
    kid.kill().await;
    kid.exit_within(PATIENCE).await;
    // Nothing was ever sent; the kernel knows the receiver is gone.
    assert!(tx.is_closed());
    assert!(tx.try_send(1).unwrap_err().is_closed());
}

#[tokio::test]
async fn a_duplex_end_learns_the_other_end_is_gone() {
    let (mine, theirs) = procq::duplex::<u64, u64>().unwrap();
    let mut kid = spawn_with("hold-duplex", theirs, &[]);
    kid.kill().await;
    kid.exit_within(PATIENCE).await;
    tokio::time::timeout(PATIENCE, mine.closed())
        .await
        .expect("closed() on a duplex")
        .unwrap();
    assert!(mine.recv_timeout(PATIENCE).await.unwrap_err().is_closed());
}

// ----- 6. from_env checks what it takes ------------------------------------------------

#[tokio::test]
async fn from_env_never_takes_a_descriptor_that_is_not_the_one_passed() {
    let (tx, rx) = procq::channel::<u64>().unwrap();
    let mut kid = spawn_with("spawn-orphan", rx, &[]);
    let refused = kid.report().await;
    assert!(
        refused.starts_with("refused: descriptor") && refused.contains("another file"),
        "{refused}"
    );
    assert_eq!(kid.report().await, "still open: true");
    assert!(kid.exit_within(PATIENCE).await.success());
    drop(tx);
}

#[tokio::test]
async fn from_env_refuses_another_kind_or_type_naming_both() {
    let (tx, rx) = procq::channel::<String>().unwrap();
    let mut kid = spawn_with("wrong-asks", tx, &[]);
    assert_eq!(
        kid.report().await,
        "`CH` carries items of type `alloc::string::String`, not `u64`"
    );
    assert_eq!(
        kid.report().await,
        "`CH` holds a procq sender, not a receiver"
    );
    assert_eq!(rx.recv_timeout(PATIENCE).await.unwrap(), "right");
    assert!(kid.exit_within(PATIENCE).await.success());
}

// ----- 7. Sink on an unbuffered sender ------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipe_used_as_a_sink_waits_for_room_instead_of_failing() {
    let (mut tx, rx) = procq::pipe::<Vec<u8>>().unwrap();
    const N: usize = 3000; // about 12 MiB: far more than the kernel holds
    let reader = tokio::spawn(async move {
        let mut n = 0;
        while let Ok(item) = rx.recv_timeout(PATIENCE).await {
            assert_eq!(item.len(), 4096);
            n += 1;
            if n % 500 == 0 {
                tokio::task::yield_now().await;
            }
        }
        n
    });
    let mut items = futures::stream::iter((0..N).map(|_| Ok(vec![5u8; 4096])));
    tx.send_all(&mut items).await.unwrap();
    SinkExt::close(&mut tx).await.unwrap();
    drop(tx);
    assert_eq!(reader.await.unwrap(), N);
}

// ----- 9. a queue's last handle --------------------------------------------------------

#[tokio::test]
async fn concurrent_drops_of_a_queues_last_handles_give_the_batch_back_once() {
    for _ in 0..5 {
        let q = procq::Queue::<u64>::new().unwrap();
        for i in 0..100 {
            q.put(i).await.unwrap();
        }
        q.flush().await.unwrap(); // one datagram of 100 items
        let mut kid = spawn_with("race-drop", q.clone(), &[]);
        assert_eq!(kid.report().await, "0");
        assert!(kid.exit_within(PATIENCE).await.success());
        let mut back = Vec::new();
        while let Ok(i) = q.try_get() {
            back.push(i);
        }
        assert_eq!(
            back,
            (1..100).collect::<Vec<_>>(),
            "given back exactly once"
        );
    }
}

#[tokio::test]
async fn a_batch_handed_back_while_the_queue_is_full_is_not_lost() {
    let q = procq::Queue::<Vec<u8>>::new().unwrap();
    let mut cmd = child_command("get-one-then-drop");
    cmd.stdin(std::process::Stdio::piped());
    procq::pass(&mut cmd, "CH", q.clone()).unwrap();
    let mut kid = Kid::spawn(cmd);
    let mut stdin = kid.child.stdin.take().unwrap();
    assert_eq!(kid.report().await, "ready");
    // Fill the queue's kernel buffer: put until a flush cannot finish (nobody reads yet).
    let mut put = 0u64;
    loop {
        for _ in 0..1000 {
            let mut item = vec![0u8; 500];
            item[0] = (put % 251) as u8;
            q.put(item).await.unwrap();
            put += 1;
        }
        if tokio::time::timeout(Duration::from_millis(50), q.flush())
            .await
            .is_err()
        {
            break;
        }
    }
    use tokio::io::AsyncWriteExt;
    stdin.write_all(b"go\n").await.unwrap();
    assert!(kid.report().await.starts_with("got "));
    assert_eq!(kid.report().await, "dropped");
    // Everything comes out here: the item the child got is the only one missing.
    let mut got = 0;
    while got < put - 1 {
        q.get_timeout(PATIENCE).await.unwrap();
        got += 1;
    }
    assert!(matches!(q.try_get(), Err(procq::TryRecvError::Empty)));
    drop(stdin);
    assert!(kid.exit_within(PATIENCE).await.success());
}

// ----- more edges ------------------------------------------------------------------------

#[test]
fn a_handle_outlives_the_runtime_that_first_used_it() {
    let (tx, rx) = procq::channel::<u64>().unwrap();
    for round in 0..3u64 {
        // A fresh runtime each round: the flush task and the reactor registrations of the
        // last one went with it.
        let rt = common::runtime(round % 2 == 1);
        rt.block_on(async {
            assert!(rx
                .recv_timeout(Duration::from_millis(10))
                .await
                .unwrap_err()
                .is_timeout());
            for i in 0..10_000 {
                tx.send(round * 100_000 + i).await.unwrap();
            }
            for i in 0..10_000 {
                assert_eq!(
                    rx.recv_timeout(PATIENCE).await.unwrap(),
                    round * 100_000 + i
                );
            }
            tx.flush().await.unwrap();
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_a_pipe_releases_it_even_while_a_task_waits_on_closed() {
    let (tx, rx) = procq::pipe::<u64>().unwrap();
    let watcher = {
        let tx = tx.clone();
        tokio::spawn(async move { tx.closed().await })
    };
    tx.send(1).await.unwrap();
    tx.close();
    tokio::time::timeout(PATIENCE, watcher)
        .await
        .expect("closed() did not resolve on close")
        .unwrap()
        .unwrap();
    assert_eq!(rx.recv_timeout(PATIENCE).await.unwrap(), 1);
    assert!(rx.recv_timeout(PATIENCE).await.unwrap_err().is_closed());
}

/// A closed sink is retired as dropping it would retire it: every later send through the
/// handle fails with `Closed` (not only the sink's), and closing the last sender ends the
/// channel for the receiver, buffered or direct (`stream.forward(sink)` ends with it).
#[tokio::test]
async fn a_closed_sink_refuses_every_send_and_the_last_one_ends_the_channel() {
    closed_sink_refuses_every_send_and_the_last_one_ends_the_channel().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_sink_refuses_every_send_and_the_last_one_ends_the_channel_multi_thread() {
    closed_sink_refuses_every_send_and_the_last_one_ends_the_channel().await;
}

async fn closed_sink_refuses_every_send_and_the_last_one_ends_the_channel() {
    for direct in [false, true] {
        let opts = if direct {
            procq::Options::new().direct()
        } else {
            procq::Options::new()
        };
        let (mut tx, rx) = opts.channel::<u32>().unwrap();
        use futures::StreamExt;
        let items = futures::stream::iter((0..100).map(Ok));
        items.forward(&mut tx).await.unwrap(); // sends all, then closes the sink
        assert!(tx.send(100).await.unwrap_err().is_closed());
        assert!(tx.try_send(101).unwrap_err().is_closed());
        assert!(tx.blocking_send(102).unwrap_err().is_closed());
        assert!(tx.is_closed());
        for i in 0..100 {
            assert_eq!(rx.recv_timeout(PATIENCE).await.unwrap(), i);
        }
        let end = rx.recv_timeout(PATIENCE).await.unwrap_err();
        assert!(end.is_closed(), "direct {direct}: {end:?}");
        // A clone of a retired handle is retired too.
        let mut clone = tx.clone();
        assert!(clone.send(103).await.unwrap_err().is_closed());
        assert!(SinkExt::send(&mut clone, 104)
            .await
            .unwrap_err()
            .is_closed());
    }
}

#[tokio::test]
async fn closing_one_sink_leaves_its_clones_sending() {
    let (tx, rx) = procq::channel::<u32>().unwrap();
    let mut sink = tx.clone();
    SinkExt::send(&mut sink, 1).await.unwrap();
    SinkExt::close(&mut sink).await.unwrap();
    let err = SinkExt::send(&mut sink, 2).await.unwrap_err();
    assert!(matches!(err.kind(), SendErrorKind::Closed));
    tx.send(3).await.unwrap();
    drop((sink, tx));
    assert_eq!(rx.recv().await.unwrap(), 1);
    assert_eq!(rx.recv().await.unwrap(), 3);
    assert!(rx.recv().await.unwrap_err().is_closed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_joiners_all_wake_when_the_last_task_is_done() {
    for _ in 0..20 {
        let q = procq::JoinableQueue::<u32>::new().unwrap();
        q.put(1).await.unwrap();
        let joiners: Vec<_> = (0..4)
            .map(|_| {
                let q = q.clone();
                tokio::spawn(async move { q.join_timeout(PATIENCE).await })
            })
            .collect();
        tokio::task::yield_now().await;
        q.get().await.unwrap();
        q.task_done().unwrap();
        for j in joiners {
            j.await.unwrap().unwrap();
        }
    }
}

#[test]
fn blocked_threads_wake_for_items_another_thread_left_in_the_inbox() {
    // Two items arrive in one datagram; one thread reads it and takes one; the other,
    // already blocked in poll(2) on the now empty socket, must still get the second.
    let (tx, rx) = procq::channel::<u64>().unwrap();
    let barrier = Arc::new(std::sync::Barrier::new(2));
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let rx = rx.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let got = rx.blocking_recv_timeout(PATIENCE).unwrap();
                barrier.wait();
                got
            })
        })
        .collect();
    tx.blocking_send_timeout(0, PATIENCE).unwrap();
    tx.blocking_send_timeout(1, PATIENCE).unwrap();
    let mut got: Vec<u64> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    got.sort();
    assert_eq!(got, vec![0, 1]);
}

#[test]
fn timed_blocking_puts_keep_the_queue_count_exact() {
    // No runtime, nobody reading: puts succeed until the kernel and buffer are full, then
    // time out; the queue's length counts exactly the puts that returned Ok.
    let q = procq::Queue::<Vec<u8>>::new().unwrap();
    let mut ok = 0usize;
    loop {
        match q.blocking_put_timeout(vec![7; 4000], Duration::from_millis(20)) {
            Ok(()) => ok += 1,
            Err(e) if e.is_timeout() => break,
            Err(e) => panic!("{e}"),
        }
        assert!(ok < 100_000, "never full");
    }
    assert_eq!(q.len(), ok);
    let mut got = 0;
    while q.blocking_get_timeout(Duration::from_millis(200)).is_ok() {
        got += 1;
    }
    assert_eq!(got, ok);
    assert_eq!(q.len(), 0);
}

#[test]
fn blocking_join_waits_for_the_last_task_in_another_thread() {
    let q = procq::JoinableQueue::<u32>::new().unwrap();
    for i in 0..100 {
        q.blocking_put(i).unwrap();
    }
    assert!(matches!(
        q.blocking_join_timeout(Duration::from_millis(20)),
        Err(procq::JoinTimeoutError::Timeout { unfinished: 100 })
    ));
    let worker = {
        let q = q.clone();
        std::thread::spawn(move || {
            for _ in 0..100 {
                q.blocking_get().unwrap();
                q.task_done().unwrap();
            }
        })
    };
    q.blocking_join().unwrap();
    assert_eq!(q.unfinished(), 0);
    worker.join().unwrap();
}

#[tokio::test]
async fn passing_two_handles_under_one_name_is_refused() {
    let (_tx, rx) = procq::channel::<u8>().unwrap();
    let mut cmd = child_command("none");
    procq::pass(&mut cmd, "CH", rx.clone()).unwrap();
    assert!(matches!(
        procq::pass(&mut cmd, "CH", rx),
        Err(procq::Error::InvalidName { .. })
    ));
}

/// A handle that waits in one runtime after another (each shut down before the next, as
/// in a program that builds a runtime per phase): every wait in every runtime works, the
/// twentieth as the first, for receiving, joining and waiting for a queue's slot.
#[test]
fn a_handle_waits_in_runtime_after_runtime() {
    let (tx, rx) = procq::channel::<u32>().unwrap();
    let jq = procq::JoinableQueue::<u32>::bounded(1).unwrap();
    jq.blocking_put(0).unwrap(); // one unfinished task, and the queue is full
    for round in 0..20 {
        let rt = if round % 2 == 0 {
            tokio::runtime::Builder::new_current_thread()
        } else {
            tokio::runtime::Builder::new_multi_thread()
        }
        .enable_all()
        .build()
        .unwrap();
        rt.block_on(async {
            let short = Duration::from_millis(1);
            let got = rx.recv_timeout(short).await.unwrap_err();
            assert!(got.is_timeout(), "round {round}: recv: {got}");
            let joined = jq.join_timeout(short).await.unwrap_err();
            assert!(
                matches!(joined, procq::JoinTimeoutError::Timeout { unfinished: 1 }),
                "round {round}: join: {joined}"
            );
            let put = jq.put_timeout(1, short).await.unwrap_err();
            assert!(put.is_timeout(), "round {round}: put: {put:?}");
        });
    }
    tx.blocking_send(7).unwrap();
    assert_eq!(rx.blocking_recv_timeout(PATIENCE).unwrap(), 7);
}
