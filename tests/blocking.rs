//! Synchronous code: the `blocking_*` methods from plain threads and from processes that
//! never start a runtime, and async calls made outside a runtime (errors, never panics).

mod common;

use std::io::ErrorKind;
use std::time::Duration;

use common::{child_command, report, Kid, PATIENCE};
use procq::{RecvError, RecvTimeoutError, SendErrorKind, SendTimeoutError, TrySendError};

/// Child roles here run with no tokio runtime at all.
#[test]
fn child_main() {
    let Some(role) = common::role() else { return };
    match role.as_str() {
        // Sends N numbers with blocking_send and returns from main: no runtime, no flush.
        "sync-sender" => {
            let tx = procq::Sender::<u64>::from_env("CH").unwrap();
            for i in 0..env_num("N") {
                tx.blocking_send(i).unwrap();
            }
        }
        // Receives until the end with blocking_recv; reports the count and the sum.
        "sync-receiver" => {
            let rx = procq::Receiver::<u64>::from_env("CH").unwrap();
            assert!(matches!(
                rx.blocking_recv_timeout(Duration::from_millis(10)),
                Err(RecvTimeoutError::Timeout)
            ));
            report("ready");
            let (mut n, mut sum) = (0u64, 0u64);
            loop {
                match rx.blocking_recv() {
                    Ok(i) => {
                        n += 1;
                        sum += i;
                    }
                    Err(RecvError::Closed) => break,
                    Err(e) => panic!("{e}"),
                }
            }
            report(format!("{n} {sum}"));
        }
        // A joinable queue worked from plain threads: gets, task_done, puts results.
        "sync-worker" => {
            let q = procq::JoinableQueue::<u64>::from_env("Q").unwrap();
            let results = procq::Queue::<u64>::from_env("RESULTS").unwrap();
            q.close();
            let threads: Vec<_> = (0..2)
                .map(|_| {
                    let q = q.clone();
                    let results = results.clone();
                    std::thread::spawn(move || {
                        while let Ok(job) = q.blocking_get_timeout(PATIENCE) {
                            results.blocking_put(job * 2).unwrap();
                            q.task_done().unwrap();
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
        }
        other => panic!("unknown role {other}"),
    }
    std::process::exit(0);
}

fn env_num(name: &str) -> u64 {
    std::env::var(name).unwrap().parse().unwrap()
}

#[tokio::test]
async fn a_process_without_a_runtime_sends_with_blocking_send_and_loses_nothing_at_exit() {
    let (tx, rx) = procq::channel::<u64>().unwrap();
    let n = 20_000u64;
    let mut cmd = child_command("sync-sender");
    cmd.env("N", n.to_string());
    procq::pass(&mut cmd, "CH", tx).unwrap();
    let mut kid = Kid::spawn(cmd);
    let mut next = 0;
    loop {
        match rx.recv_timeout(PATIENCE).await {
            Ok(i) => {
                assert_eq!(i, next);
                next += 1;
            }
            Err(e) if e.is_closed() => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(next, n);
    assert!(kid.exit_within(PATIENCE).await.success());
}

#[tokio::test]
async fn a_process_without_a_runtime_receives_with_blocking_recv_until_the_end() {
    let (tx, rx) = procq::channel::<u64>().unwrap();
    let mut cmd = child_command("sync-receiver");
    procq::pass(&mut cmd, "CH", rx).unwrap();
    let mut kid = Kid::spawn(cmd);
    assert_eq!(kid.report().await, "ready");
    for i in 0..10_000u64 {
        tx.send(i).await.unwrap();
    }
    drop(tx);
    assert_eq!(
        kid.report().await,
        format!("10000 {}", (0..10_000u64).sum::<u64>())
    );
    assert!(kid.exit_within(PATIENCE).await.success());
}

#[tokio::test]
async fn plain_threads_in_another_process_work_a_joinable_queue() {
    let q = procq::JoinableQueue::<u64>::new().unwrap();
    let results = procq::Queue::<u64>::new().unwrap();
    let mut cmd = child_command("sync-worker");
    procq::pass(&mut cmd, "Q", q.clone()).unwrap();
    procq::pass(&mut cmd, "RESULTS", results.clone()).unwrap();
    let mut kid = Kid::spawn(cmd);
    for i in 0..1000 {
        q.put(i).await.unwrap();
    }
    q.join_timeout(PATIENCE).await.unwrap();
    let mut sum = 0;
    for _ in 0..1000 {
        sum += results.get_timeout(PATIENCE).await.unwrap();
    }
    assert_eq!(sum, 2 * (0..1000u64).sum::<u64>());
    q.close();
    assert!(kid.exit_within(PATIENCE * 2).await.success());
}

#[test]
fn blocking_calls_from_plain_threads_with_no_runtime_anywhere() {
    let (tx, rx) = procq::channel::<String>().unwrap();
    let receiver = std::thread::spawn(move || {
        let mut got = Vec::new();
        while let Ok(s) = rx.blocking_recv() {
            got.push(s);
        }
        got
    });
    for i in 0..1000 {
        tx.blocking_send(format!("item {i}")).unwrap();
    }
    tx.blocking_flush().unwrap();
    let left = tx.blocking_drain(PATIENCE);
    assert!(left.is_complete());
    drop(tx);
    let got = receiver.join().unwrap();
    assert_eq!(got.len(), 1000);
    assert_eq!(got[999], "item 999");

    // Timeouts: nothing to receive; no room to send.
    let (tx, rx) = procq::pipe::<Vec<u8>>().unwrap();
    assert!(matches!(
        rx.blocking_recv_timeout(Duration::from_millis(20)),
        Err(RecvTimeoutError::Timeout)
    ));
    let err = loop {
        if let Err(e) = tx.blocking_send_timeout(vec![0; 100_000], Duration::from_millis(20)) {
            break e;
        }
    };
    assert!(matches!(err, SendTimeoutError::Timeout(ref v) if v.len() == 100_000));

    // Queues, bounded: a blocking put waits for a get in another thread.
    let q = procq::Queue::<u32>::bounded(1).unwrap();
    q.blocking_put(1).unwrap();
    assert!(matches!(
        q.blocking_put_timeout(2, Duration::from_millis(20)),
        Err(SendTimeoutError::Timeout(2))
    ));
    let getter = {
        let q = q.clone();
        std::thread::spawn(move || q.blocking_get_timeout(PATIENCE).unwrap())
    };
    q.blocking_put_timeout(3, PATIENCE).unwrap();
    assert_eq!(getter.join().unwrap(), 1);
    assert_eq!(q.blocking_get().unwrap(), 3);
    let simple = procq::SimpleQueue::<u8>::new().unwrap();
    simple.blocking_put(9).unwrap();
    assert_eq!(simple.blocking_get_timeout(PATIENCE).unwrap(), 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_and_async_handles_share_one_channel() {
    let (tx, rx) = procq::channel::<u64>().unwrap();
    let sync_rx = rx.clone();
    let blocking = tokio::task::spawn_blocking(move || {
        let mut n = 0;
        while sync_rx.blocking_recv().is_ok() {
            n += 1;
        }
        n
    });
    let asynchronous = tokio::spawn(async move {
        let mut n = 0;
        while rx.recv().await.is_ok() {
            n += 1;
        }
        n
    });
    let sync_tx = tx.clone();
    let sender = tokio::task::spawn_blocking(move || {
        for i in 0..50_000 {
            sync_tx.blocking_send(i).unwrap();
        }
    });
    for i in 0..50_000 {
        tx.send(i).await.unwrap();
    }
    sender.await.unwrap();
    drop(tx);
    let total = blocking.await.unwrap() + asynchronous.await.unwrap();
    assert_eq!(total, 100_000);
}

fn unsupported<E: std::fmt::Debug>(
    r: Result<impl std::fmt::Debug, E>,
    io: impl Fn(&E) -> Option<ErrorKind>,
) {
    match &r {
        Err(e) if io(e) == Some(ErrorKind::Unsupported) => {}
        other => panic!("expected an Unsupported error outside a runtime, got {other:?}"),
    }
}

#[test]
fn async_calls_outside_a_runtime_return_errors_instead_of_panicking() {
    use futures::executor::block_on;
    let (tx, rx) = procq::Options::new()
        .buffer_bytes(1)
        .channel::<Vec<u8>>()
        .unwrap();
    unsupported(block_on(rx.recv()), |e| match e {
        RecvError::Io(e) => Some(e.kind()),
        _ => None,
    });
    unsupported(
        block_on(rx.recv_timeout(Duration::from_millis(10))),
        |e| match e {
            RecvTimeoutError::Io(e) => Some(e.kind()),
            _ => None,
        },
    );
    assert!(!block_on(rx.poll(Duration::from_millis(10))));
    unsupported(block_on(tx.closed()), |e| Some(e.kind()));
    // The buffer takes one item without a runtime (written through at once) ...
    block_on(tx.send(vec![1; 10])).unwrap();
    assert_eq!(rx.try_recv().unwrap(), vec![1; 10]);
    // ... and a send that would have to wait for room fails instead of hanging.
    let mut sent = 0;
    let err = loop {
        match block_on(tx.send(vec![0; 60_000])) {
            Ok(()) => sent += 1,
            Err(e) => break e,
        }
        assert!(sent < 10_000, "never had to wait");
    };
    assert!(
        matches!(err.kind(), SendErrorKind::Io(e) if e.kind() == ErrorKind::Unsupported),
        "{err}"
    );
    assert!(matches!(tx.try_send(vec![]), Err(TrySendError::Full(_))));
    unsupported(
        block_on(tx.flush_timeout(Duration::from_millis(10))),
        |e| match e {
            procq::FlushTimeoutError::Failed(procq::FlushError::Io(e)) => Some(e.kind()),
            _ => None,
        },
    );
    unsupported(block_on(tx.flush()), |e| match e {
        procq::FlushError::Io(e) => Some(e.kind()),
        _ => None,
    });
    let q = procq::JoinableQueue::<u8>::new().unwrap();
    block_on(q.put(1)).unwrap();
    unsupported(block_on(q.join()), |e| Some(e.kind()));
    unsupported(
        block_on(q.join_timeout(Duration::from_millis(10))),
        |e| match e {
            procq::JoinTimeoutError::Io(e) => Some(e.kind()),
            _ => None,
        },
    );
    unsupported(
        block_on(q.put_timeout(2, Duration::from_millis(10))),
        |e| match e {
            SendTimeoutError::Failed(e) => match e.kind() {
                SendErrorKind::Io(e) => Some(e.kind()),
                _ => None,
            },
            _ => None,
        },
    );
    assert_eq!(q.blocking_get().unwrap(), 1);
    unsupported(block_on(q.get()), |e| match e {
        RecvError::Io(e) => Some(e.kind()),
        _ => None,
    });
    // drain does not wait outside a runtime: it hands back at once what the kernel did not
    // take (the one item the full buffer held).
    let started = std::time::Instant::now();
    let left = block_on(tx.drain(Duration::from_secs(5)));
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(left.items().len(), 1);
    assert!(block_on(tx.send(vec![])).unwrap_err().is_closed());
}

/// A thread blocked in `blocking_send` because the kernel is full is woken by another
/// thread's `close` of the sending side, and told `Closed` (buffered and direct senders).
#[test]
fn close_from_another_thread_wakes_a_blocked_blocking_send() {
    for direct in [false, true] {
        let mut opts = procq::Options::new().buffer_bytes(64 * 1024);
        if direct {
            opts = opts.direct();
        }
        let (tx, rx) = opts.channel::<Vec<u8>>().unwrap();
        let big = || vec![1u8; 16 * 1024];
        // Fill the kernel: a send that has to wait gives up at once.
        let mut sent = 0;
        while tx
            .blocking_send_timeout(big(), Duration::from_millis(1))
            .is_ok()
        {
            sent += 1;
            assert!(sent < 100_000, "the kernel never filled");
        }
        let (started, started_rx) = std::sync::mpsc::channel();
        let blocked = {
            let tx = tx.clone();
            std::thread::spawn(move || {
                started.send(common::thread_id()).unwrap();
                tx.blocking_send_timeout(big(), PATIENCE)
            })
        };
        common::wait_until_asleep(started_rx.recv().unwrap());
        let since = std::time::Instant::now();
        tx.close();
        match blocked.join().unwrap() {
            Err(SendTimeoutError::Failed(e)) if matches!(e.kind(), SendErrorKind::Closed) => {}
            other => panic!("direct {direct}: the blocked send: {other:?}"),
        }
        assert!(
            since.elapsed() < PATIENCE / 2,
            "direct {direct}: woken late"
        );
        drop(rx);
    }
}
