//! Python parity: Queue, JoinableQueue, SimpleQueue and pipes, across real processes.

mod common;

use std::time::{Duration, Instant};

use common::{child_command, report, Kid, PATIENCE};
use procq::{JoinTimeoutError, RecvIntoError, RecvTimeoutError, SendTimeoutError, TryRecvError};

#[test]
fn child_main() {
    common::run_child(|role| async move { play(&role).await });
}

fn env_num(name: &str) -> u64 {
    std::env::var(name).unwrap().parse().unwrap()
}

/// CPU time this process has used, in clock ticks (user + system).
fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_comm.split(' ').collect();
    // Fields 14 and 15 of stat(5), counted from the state field (3rd) here.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// CLOCK_MONOTONIC in nanoseconds: comparable between processes on one machine.
fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

async fn play(role: &str) {
    match role {
        // Puts N items into a bounded queue, reports, then tries one more with a timeout
        // and reports how that went and the CPU it used while waiting.
        "bounded-putter" => {
            let q = procq::Queue::<u64>::from_env("Q").unwrap();
            for i in 0..env_num("N") {
                q.put_timeout(i, PATIENCE).await.unwrap();
            }
            q.flush().await.unwrap();
            report("put");
            if env_num("EXTRA") == 1 {
                let before = cpu_ticks();
                let start = Instant::now();
                let err = q
                    .put_timeout(99, Duration::from_millis(500))
                    .await
                    .unwrap_err();
                report(format!(
                    "{} {} {}",
                    err.is_timeout(),
                    start.elapsed().as_millis(),
                    cpu_ticks() - before
                ));
                // Now wait for room without a deadline: the parent makes some.
                q.put(100).await.unwrap();
                q.flush().await.unwrap();
                report("unblocked");
            }
        }
        // Gets jobs until told to stop (None), sends a result, then marks the task done.
        "joinable-worker" => {
            let q = procq::JoinableQueue::<Option<u64>>::from_env("Q").unwrap();
            let results = procq::Sender::<u64>::from_env("RESULTS").unwrap();
            let mut last_done = 0;
            while let Some(job) = q.get().await.unwrap() {
                results.send(job * 2).await.unwrap();
                results.flush().await.unwrap();
                q.task_done().unwrap();
                last_done = monotonic_ns();
            }
            q.task_done().unwrap();
            report(last_done);
        }
        // Gets one task per line of stdin-less signalling: a task, then `task_done` at once,
        // reporting the moment it did so; ROUNDS times.
        "prompt-worker" => {
            let q = procq::JoinableQueue::<u32>::from_env("Q").unwrap();
            for _ in 0..env_num("ROUNDS") {
                q.get().await.unwrap();
                let at = monotonic_ns();
                q.task_done().unwrap();
                report(at);
            }
        }
        // For each round number the parent sends, joins from a plain thread's blocking
        // call, then reports the round: a blocking joiner beside the parent's async one.
        "blocking-join-rounds" => {
            let q = procq::JoinableQueue::<u32>::from_env("Q").unwrap();
            let rounds = procq::Receiver::<u32>::from_env("ROUNDS").unwrap();
            std::thread::spawn(move || {
                while let Ok(round) = rounds.blocking_recv() {
                    // At its deadline a join returns `Ok` if the tasks are done by then:
                    // a missed wake-up shows only as the time it took.
                    let since = Instant::now();
                    q.blocking_join_timeout(PATIENCE).unwrap();
                    assert!(since.elapsed() < PATIENCE / 2, "round {round}: woken late");
                    report(round);
                }
            })
            .join()
            .unwrap();
        }
        // Gets through the queue passed at spawn and marks the task done through another
        // handle of it that arrives inside an item; reports whether a second task_done (one
        // more than this process got) is refused.
        "task-done-through-another-handle" => {
            let q = procq::JoinableQueue::<u64>::from_env("Q").unwrap();
            let handles =
                procq::Receiver::<procq::JoinableQueue<u64>>::from_env("HANDLES").unwrap();
            let other = handles.recv_timeout(PATIENCE).await.unwrap();
            q.get_timeout(PATIENCE).await.unwrap();
            other.task_done().unwrap();
            report(format!("refused {}", q.task_done().is_err()));
        }
        // Joins the queue from this (child) process and reports when every task is done.
        "joiner" => {
            let q = procq::JoinableQueue::<u32>::from_env("Q").unwrap();
            report("joining");
            q.join_timeout(PATIENCE).await.unwrap();
            report(format!("joined {}", q.unfinished()));
        }
        // Takes tasks and never finishes them (killed by the test).
        "hoarding-worker" => {
            let q = procq::JoinableQueue::<u32>::from_env("Q").unwrap();
            for _ in 0..env_num("N") {
                q.get().await.unwrap();
            }
            report("holding");
            std::future::pending::<()>().await;
        }
        // Gets one item from a (batched) queue and returns, dropping the queue.
        "get-one-and-go" => {
            let q = procq::Queue::<u32>::from_env("Q").unwrap();
            report(q.get().await.unwrap());
        }
        // Puts N items in a tight loop and flushes.
        "queue-putter" => {
            let q = procq::JoinableQueue::<u32>::from_env("Q").unwrap();
            for i in 0..env_num("N") as u32 {
                q.put(i).await.unwrap();
            }
            q.flush().await.unwrap();
            report("put");
        }
        // Puts one item into a SimpleQueue and exits at once: nothing to flush.
        "simple-putter" => {
            let q = procq::SimpleQueue::<String>::from_env("Q").unwrap();
            q.put("from the child".into()).await.unwrap();
        }
        // Echoes typed messages and raw messages on a duplex pipe.
        "pipe-echo" => {
            let end = procq::Duplex::<String, String>::from_env("P").unwrap();
            let q = end.recv().await.unwrap();
            end.send(q.to_uppercase()).await.unwrap();
            let raw = end.recv_bytes().await.unwrap();
            end.send_bytes(&raw).await.unwrap();
            end.send_bytes(&[7u8; 100]).await.unwrap();
            // Wait for the go-ahead before the last message, so the parent can poll first.
            assert_eq!(end.recv().await.unwrap(), "go");
            end.send("late".into()).await.unwrap();
        }
        other => panic!("unknown role {other}"),
    }
}

fn spawn_with<P: procq::Passable>(role: &str, name: &str, half: P, env: &[(&str, String)]) -> Kid {
    let mut cmd = child_command(role);
    for (k, v) in env {
        cmd.env(k, v);
    }
    procq::pass(&mut cmd, name, half).unwrap();
    Kid::spawn(cmd)
}

#[tokio::test]
async fn queue_put_get_len_and_timeouts_in_one_process() {
    let q = procq::Queue::<String>::bounded(3).unwrap();
    assert_eq!(q.maxsize(), Some(3));
    assert!(q.is_empty());
    assert!(matches!(q.try_get(), Err(TryRecvError::Empty)));
    for s in ["a", "b", "c"] {
        q.put(s.to_string()).await.unwrap();
    }
    assert_eq!(q.len(), 3);
    assert!(q.is_full());
    let err = q.try_put("d".into()).unwrap_err();
    assert!(err.is_full());
    assert_eq!(err.into_inner(), "d");
    let err = q
        .put_timeout("e".into(), Duration::from_millis(30))
        .await
        .unwrap_err();
    assert!(err.is_timeout());
    assert_eq!(q.len(), 3, "failed puts leave no trace");
    assert_eq!(q.get().await.unwrap(), "a");
    assert_eq!(q.len(), 2);
    q.try_put("d".into()).unwrap();
    for s in ["b", "c", "d"] {
        assert_eq!(q.get_timeout(PATIENCE).await.unwrap(), s);
    }
    assert!(matches!(
        q.get_timeout(Duration::from_millis(20)).await,
        Err(RecvTimeoutError::Timeout)
    ));
    assert!(q.is_empty());
}

#[tokio::test]
async fn a_cancelled_put_gives_its_slot_back() {
    let q = procq::Queue::<u8>::bounded(1).unwrap();
    q.put(1).await.unwrap();
    // Waits for a slot, then is cancelled.
    assert!(tokio::time::timeout(Duration::from_millis(20), q.put(2))
        .await
        .is_err());
    assert_eq!(q.len(), 1);
    assert_eq!(q.get().await.unwrap(), 1);
    q.try_put(3).unwrap();
    assert_eq!(q.get().await.unwrap(), 3);
}

#[tokio::test]
async fn bounded_queue_counts_items_across_processes() {
    let q = procq::Queue::<u64>::bounded(10).unwrap();
    let mut a = spawn_with(
        "bounded-putter",
        "Q",
        q.clone(),
        &[("N", "5".into()), ("EXTRA", "0".into())],
    );
    assert_eq!(a.report().await, "put");
    let mut b = spawn_with(
        "bounded-putter",
        "Q",
        q.clone(),
        &[("N", "5".into()), ("EXTRA", "1".into())],
    );
    assert_eq!(b.report().await, "put");
    assert_eq!(q.len(), 10);
    assert!(q.is_full());
    // The 11th put, from a process that did not make the first five, times out; and it
    // waited through the reactor, using (almost) no CPU for half a second.
    let line = b.report().await;
    let mut parts = line.split(' ');
    assert_eq!(parts.next(), Some("true"), "11th put: {line}");
    let waited: u64 = parts.next().unwrap().parse().unwrap();
    let ticks: u64 = parts.next().unwrap().parse().unwrap();
    assert!(waited >= 490, "{line}");
    assert!(ticks <= 2, "a waiting put used {ticks} ticks of CPU");
    // A get here makes room there.
    q.get_timeout(PATIENCE).await.unwrap();
    assert_eq!(b.report().await, "unblocked");
    assert_eq!(q.len(), 10);
    assert!(a.exit_within(PATIENCE).await.success());
    assert!(b.exit_within(PATIENCE).await.success());
    let mut got = Vec::new();
    while let Ok(i) = q.try_get() {
        got.push(i);
    }
    assert_eq!(got.len(), 10);
    assert!(got.contains(&100));
}

#[tokio::test]
async fn join_returns_only_after_the_last_task_done_of_three_workers() {
    let q = procq::JoinableQueue::<Option<u64>>::new().unwrap();
    let (results_tx, results) = procq::channel::<u64>().unwrap();
    let mut workers = Vec::new();
    for _ in 0..3 {
        let mut cmd = child_command("joinable-worker");
        procq::pass(&mut cmd, "Q", q.clone()).unwrap();
        procq::pass(&mut cmd, "RESULTS", results_tx.clone()).unwrap();
        workers.push(Kid::spawn(cmd));
    }
    drop(results_tx);
    for job in 0..1000 {
        q.put(Some(job)).await.unwrap();
    }
    for _ in 0..3 {
        q.put(None).await.unwrap();
    }
    tokio::time::timeout(PATIENCE, q.join())
        .await
        .unwrap()
        .unwrap();
    // Every worker sent its result before marking the task done, so all 1,000 results are
    // here already: join did not return early.
    assert_eq!(q.unfinished(), 0);
    let mut sum = 0;
    for _ in 0..1000 {
        sum += results
            .try_recv()
            .expect("a result missing when join returned");
    }
    assert_eq!(sum, 2 * (0..1000).sum::<u64>());
    for mut w in workers {
        w.report().await;
        assert!(w.exit_within(PATIENCE).await.success());
    }
}

#[tokio::test]
async fn join_wakes_within_a_millisecond_and_idles_while_waiting() {
    const ROUNDS: usize = 21;
    let q = procq::JoinableQueue::<u32>::new().unwrap();
    let mut worker = spawn_with(
        "prompt-worker",
        "Q",
        q.clone(),
        &[("ROUNDS", ROUNDS.to_string())],
    );
    // Idle: nothing to do for 300 ms costs no CPU.
    q.put(0).await.unwrap();
    let mut latencies = Vec::new();
    for round in 0..ROUNDS {
        if round > 0 {
            q.put(round as u32).await.unwrap();
        }
        q.flush().await.unwrap();
        q.join_timeout(PATIENCE).await.unwrap();
        let woke = monotonic_ns();
        let done: u64 = worker.report().await.parse().unwrap();
        latencies.push(woke.saturating_sub(done));
    }
    latencies.sort();
    let median = latencies[ROUNDS / 2];
    eprintln!("join wake-up after the last task_done: median {median} ns, all {latencies:?}");
    assert!(
        median < 1_000_000,
        "median wake-up {median} ns after task_done"
    );

    q.put(7).await.unwrap(); // never taken: the worker is done
    let before = cpu_ticks();
    let err = q
        .join_timeout(Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(
        matches!(err, JoinTimeoutError::Timeout { unfinished: 1 }),
        "{err}"
    );
    assert!(cpu_ticks() - before <= 2, "join used CPU while idle");
    assert!(worker.exit_within(PATIENCE).await.success());
}

#[tokio::test]
async fn task_done_more_often_than_get_is_an_error() {
    let q = procq::JoinableQueue::<u8>::new().unwrap();
    assert_eq!(q.task_done(), Err(procq::TaskDoneError));
    q.put(1).await.unwrap();
    q.get().await.unwrap();
    q.task_done().unwrap();
    assert!(q.task_done().is_err());
    q.join_timeout(PATIENCE).await.unwrap();
}

#[tokio::test]
async fn join_with_killed_workers_times_out_and_says_what_is_left() {
    // One item per datagram, so each worker takes exactly what it gets.
    let q = procq::JoinableQueue::<u32>::with_options(0, &procq::queue_options()).unwrap();
    let mut w1 = spawn_with("hoarding-worker", "Q", q.clone(), &[("N", "3".into())]);
    let mut w2 = spawn_with("hoarding-worker", "Q", q.clone(), &[("N", "2".into())]);
    for i in 0..5 {
        q.put(i).await.unwrap();
    }
    assert_eq!(w1.report().await, "holding");
    assert_eq!(w2.report().await, "holding");
    w1.kill().await;
    w2.kill().await;
    let err = q
        .join_timeout(Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(
        matches!(err, JoinTimeoutError::Timeout { unfinished: 5 }),
        "{err}"
    );
}

#[tokio::test]
async fn queue_drain_returns_items_and_uncounts_them() {
    let q = procq::JoinableQueue::<Vec<u8>>::with_options(
        0,
        &procq::Options::new().buffer_bytes(64 * 1024 * 1024),
    )
    .unwrap();
    // Far more than the kernel holds; nobody gets.
    for i in 0..400u32 {
        q.put(vec![i as u8; 50_000]).await.unwrap();
    }
    let left = q.drain(Duration::from_millis(100)).await;
    let n = left.items().len();
    assert!(n > 0);
    assert_eq!(q.len(), 400 - n);
    assert_eq!(q.unfinished() as usize, 400 - n);
    assert!(q.put(vec![]).await.unwrap_err().is_closed());
}

#[tokio::test]
async fn simple_queue_put_is_in_the_kernel_when_it_returns() {
    let q = procq::SimpleQueue::<String>::new().unwrap();
    let mut kid = spawn_with("simple-putter", "Q", q.clone(), &[]);
    // The child exits right after put, without flushing or draining.
    assert!(kid.exit_within(PATIENCE).await.success());
    assert!(!q.is_empty());
    assert_eq!(q.try_get().unwrap(), "from the child");
    assert!(q.is_empty());
    assert!(matches!(
        q.get_timeout(Duration::from_millis(20)).await,
        Err(RecvTimeoutError::Timeout)
    ));
}

#[tokio::test]
async fn simple_queue_put_timeout_when_the_kernel_is_full() {
    let q = procq::SimpleQueue::<Vec<u8>>::new().unwrap();
    let err = loop {
        if let Err(e) = q
            .put_timeout(vec![0; 60_000], Duration::from_millis(50))
            .await
        {
            break e;
        }
    };
    assert!(matches!(err, SendTimeoutError::Timeout(_)), "{err}");
    assert!(q.try_put(vec![1]).unwrap_err().is_full());
}

#[tokio::test]
async fn pipe_typed_raw_into_and_poll_with_a_child() {
    let (mine, theirs) = procq::pipe_duplex::<String, String>().unwrap();
    let mut kid = spawn_with("pipe-echo", "P", theirs, &[]);
    mine.send("hello".into()).await.unwrap();
    assert_eq!(mine.recv_timeout(PATIENCE).await.unwrap(), "HELLO");
    mine.send_bytes(b"\x00\x01raw").await.unwrap();
    assert_eq!(mine.recv_bytes().await.unwrap(), b"\x00\x01raw");
    // Too small: a clear error, and the message waits for a bigger buffer.
    let mut small = [0u8; 10];
    match mine.recv_bytes_into(&mut small).await {
        Err(RecvIntoError::BufferTooSmall { needed: 100 }) => {}
        other => panic!("{other:?}"),
    }
    let mut big = [0u8; 200];
    assert_eq!(mine.recv_bytes_into(&mut big).await.unwrap(), 100);
    assert_eq!(&big[..100], &[7u8; 100][..]);
    assert!(!mine.poll(Duration::from_millis(50)).await);
    mine.send("go".into()).await.unwrap();
    assert!(mine.poll(PATIENCE).await);
    assert!(mine.poll(Duration::ZERO).await, "poll consumes nothing");
    assert_eq!(mine.recv().await.unwrap(), "late");
    assert!(kid.exit_within(PATIENCE).await.success());
    // The child is gone: the end of the connection.
    assert!(mine.recv_timeout(PATIENCE).await.unwrap_err().is_closed());
}

#[tokio::test]
async fn simplex_pipe_and_select_all_over_many() {
    use futures::StreamExt;
    let mut receivers = Vec::new();
    for i in 0..5u32 {
        let (w, r) = procq::pipe::<u32>().unwrap();
        w.send(i).await.unwrap();
        drop(w);
        receivers.push(r);
    }
    let mut all: Vec<u32> = futures::stream::select_all(receivers)
        .map(|r| r.unwrap())
        .collect()
        .await;
    all.sort();
    assert_eq!(all, vec![0, 1, 2, 3, 4]);
}

#[tokio::test]
async fn a_consumer_that_stops_gives_its_unread_batch_back() {
    let q = procq::Queue::<u32>::new().unwrap();
    for i in 0..100 {
        q.put(i).await.unwrap();
    }
    q.flush().await.unwrap(); // one datagram of 100 items
    let mut kid = spawn_with("get-one-and-go", "Q", q.clone(), &[]);
    assert_eq!(kid.report().await, "0");
    assert!(kid.exit_within(PATIENCE).await.success());
    for i in 1..100 {
        assert_eq!(q.get_timeout(PATIENCE).await.unwrap(), i);
    }
    assert!(q.is_empty());
}

#[tokio::test]
async fn fair_queue_options_travel_with_the_queue() {
    let q = procq::JoinableQueue::<u32>::with_options(0, &procq::queue_options()).unwrap();
    let mut w1 = spawn_with("hoarding-worker", "Q", q.clone(), &[("N", "1".into())]);
    let mut w2 = spawn_with("hoarding-worker", "Q", q.clone(), &[("N", "1".into())]);
    // Another process puts both items in a tight loop; with the creator's batch_items(1)
    // they go out one per datagram, so each worker gets one.
    let mut putter = spawn_with("queue-putter", "Q", q.clone(), &[("N", "2".into())]);
    assert_eq!(putter.report().await, "put");
    assert_eq!(w1.report().await, "holding");
    assert_eq!(w2.report().await, "holding");
    assert!(putter.exit_within(PATIENCE).await.success());
    w1.kill().await;
    w2.kill().await;
}

#[tokio::test]
async fn join_works_from_a_child_process() {
    let q = procq::JoinableQueue::<u32>::new().unwrap();
    for i in 0..10 {
        q.put(i).await.unwrap();
    }
    let mut joiner = spawn_with("joiner", "Q", q.clone(), &[]);
    assert_eq!(joiner.report().await, "joining");
    for _ in 0..10 {
        q.get().await.unwrap();
        q.task_done().unwrap();
    }
    assert_eq!(joiner.report().await, "joined 0");
    assert!(joiner.exit_within(PATIENCE).await.success());
}

/// Every kind of joiner waits on the same signal: an async `join` and a `blocking_join` in
/// another process, then in one process two blocking joiners beside an async one. Each
/// round, every joiner must wake when the round's task is done. (A blocking joiner used to
/// read the shared eventfd's counter, which could take the wake-up from the others: the
/// async join missed it within a few rounds.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_and_blocking_joiners_all_wake_every_round() {
    let q = procq::JoinableQueue::<u32>::new().unwrap();
    let (rounds, rounds_rx) = procq::pipe::<u32>().unwrap();
    let mut cmd = child_command("blocking-join-rounds");
    procq::pass(&mut cmd, "Q", q.clone()).unwrap();
    procq::pass(&mut cmd, "ROUNDS", rounds_rx).unwrap();
    let mut kid = Kid::spawn(cmd);
    for round in 0..300u32 {
        q.put(round).await.unwrap();
        q.flush().await.unwrap();
        rounds.send(round).await.unwrap();
        let joiner = {
            let q = q.clone();
            tokio::spawn(async move { q.join_timeout(PATIENCE).await })
        };
        assert_eq!(q.get_timeout(PATIENCE).await.unwrap(), round);
        q.task_done().unwrap();
        if let Err(e) = joiner.await.unwrap() {
            panic!("round {round}: the async join did not wake: {e}");
        }
        assert_eq!(
            kid.report().await,
            round.to_string(),
            "the child's blocking join"
        );
    }
    drop(rounds);
    assert!(kid.exit_within(PATIENCE).await.success());

    let q = procq::JoinableQueue::<u32>::new().unwrap();
    for round in 0..1000u32 {
        q.blocking_put(round).unwrap();
        let joiners: Vec<_> = (0..3)
            .map(|i| {
                let q = q.clone();
                std::thread::spawn(move || {
                    let since = Instant::now();
                    let joined = if i == 0 {
                        let rt = tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                            .unwrap();
                        rt.block_on(q.join_timeout(PATIENCE))
                    } else {
                        q.blocking_join_timeout(PATIENCE)
                    };
                    // A missed wake-up would show as a join that took its whole timeout.
                    assert!(since.elapsed() < PATIENCE / 2, "woken late");
                    joined
                })
            })
            .collect();
        assert_eq!(q.blocking_get_timeout(PATIENCE).unwrap(), round);
        q.task_done().unwrap();
        for (i, joiner) in joiners.into_iter().enumerate() {
            if let Err(e) = joiner.join().unwrap() {
                panic!("round {round}: joiner {i} did not wake: {e}");
            }
        }
    }
}

/// `close` ends this process's puts, including those already waiting for a slot of a full
/// bounded queue (a task and a thread); on a closed full queue `try_put` and `put_timeout`
/// say `Closed`, not `Full` or `Timeout`: waiting would not help.
#[tokio::test]
async fn close_wakes_puts_waiting_for_a_slot_and_a_closed_full_queue_says_closed() {
    let q = procq::Queue::<u32>::bounded(1).unwrap();
    q.put(1).await.unwrap();
    let waiting = {
        let q = q.clone();
        tokio::spawn(async move { q.put(2).await })
    };
    tokio::task::yield_now().await; // one thread: the put runs until it waits
    assert!(!waiting.is_finished());
    let (started, started_rx) = std::sync::mpsc::channel();
    let blocked = {
        let q = q.clone();
        std::thread::spawn(move || {
            started.send(common::thread_id()).unwrap();
            q.blocking_put_timeout(3, PATIENCE)
        })
    };
    common::wait_until_asleep(started_rx.recv().unwrap());
    let since = Instant::now();
    q.close();
    let put = tokio::time::timeout(PATIENCE, waiting)
        .await
        .expect("close woke the waiting put")
        .unwrap();
    assert!(put.unwrap_err().is_closed());
    match blocked.join().unwrap() {
        Err(SendTimeoutError::Failed(e)) if e.is_closed() => {}
        other => panic!("the blocked put: {other:?}"),
    }
    assert!(since.elapsed() < PATIENCE / 2);
    assert!(q.try_put(4).unwrap_err().is_closed());
    let timed = q
        .put_timeout(5, Duration::from_millis(50))
        .await
        .unwrap_err();
    assert!(timed.is_closed(), "{timed:?}");
    assert_eq!(q.get().await.unwrap(), 1, "what was put still flows");
}

/// `task_done` pairs with a get made through any handle of the queue in this process: one
/// made here and one that arrived inside an item count together.
#[tokio::test]
async fn task_done_counts_every_handle_of_the_queue_in_this_process() {
    let jq = procq::JoinableQueue::<u64>::new().unwrap();
    let (tx, rx) = procq::pipe::<procq::JoinableQueue<u64>>().unwrap();
    tx.send(jq.clone()).await.unwrap();
    let received = rx.recv_timeout(PATIENCE).await.unwrap();
    jq.put(5).await.unwrap();
    jq.flush().await.unwrap();
    assert_eq!(received.get_timeout(PATIENCE).await.unwrap(), 5);
    jq.task_done().unwrap(); // through the other handle
    assert!(received.task_done().is_err(), "one get, one task_done");
    assert!(jq.task_done().is_err());
    jq.join_timeout(PATIENCE).await.unwrap();
}

/// The same in a child, which rebuilt one handle from its environment and received the
/// other inside an item.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn task_done_counts_every_handle_of_the_queue_in_a_child() {
    let jq = procq::JoinableQueue::<u64>::new().unwrap();
    let (handles, handles_rx) = procq::pipe::<procq::JoinableQueue<u64>>().unwrap();
    let mut cmd = child_command("task-done-through-another-handle");
    procq::pass(&mut cmd, "Q", jq.clone()).unwrap();
    procq::pass(&mut cmd, "HANDLES", handles_rx).unwrap();
    let mut kid = Kid::spawn(cmd);
    handles.send(jq.clone()).await.unwrap();
    jq.put(9).await.unwrap();
    jq.flush().await.unwrap();
    assert_eq!(kid.report().await, "refused true");
    assert!(kid.exit_within(PATIENCE).await.success());
    jq.join_timeout(PATIENCE).await.unwrap();
}
