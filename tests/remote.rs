//! Remote queues: the API through a real server on loopback, clients in this process and
//! in child processes; hostile input from a foreign client.

mod remote_common;

use std::collections::HashSet;
use std::time::Duration;

use procq::remote::protocol::{Refusal, Reply, Request};
use procq::remote::{ClientOptions, RemoteQueue, Server, ServerConfig};
use procq::RemoteError;
use remote_common::*;
use tokio::io::AsyncWriteExt;

#[test]
fn child_main() {
    run_child(|role| async move { play(&role).await });
}

async fn play(role: &str) {
    let addr = std::env::var("ADDR").unwrap();
    match role {
        // Gets items, reporting each before acknowledging it, until killed.
        "consumer" => {
            let q = RemoteQueue::<u64>::connect(&addr, "jobs", KEY)
                .await
                .unwrap();
            loop {
                let (item, delivery) = q.get_unacked().await.unwrap();
                report(item);
                delivery.ack().await.unwrap();
            }
        }
        other => panic!("unknown role {other}"),
    }
}

#[tokio::test]
async fn put_get_len_task_done_and_join_through_the_server() {
    let (_server, addr) = start_server(ServerConfig::new(KEY), 0).await;
    let producer = RemoteQueue::<String>::connect(&addr, "jobs", KEY)
        .await
        .unwrap();
    let consumer = RemoteQueue::<String>::connect(&addr, "jobs", KEY)
        .await
        .unwrap();
    for i in 0..100 {
        producer.feed(format!("job {i}")).await.unwrap();
    }
    producer.flush().await.unwrap();
    assert_eq!(producer.len().await.unwrap(), 100);
    for i in 0..100 {
        assert_eq!(
            consumer.get_timeout(PATIENCE).await.unwrap(),
            format!("job {i}")
        );
        consumer.task_done().await.unwrap();
    }
    producer.join_timeout(PATIENCE).await.unwrap();
    producer.put("one more".to_string()).await.unwrap();
    assert!(matches!(
        producer.join_timeout(Duration::from_millis(50)).await,
        Err(RemoteError::Timeout)
    ));
    assert_eq!(consumer.get_timeout(PATIENCE).await.unwrap(), "one more");
    consumer.task_done().await.unwrap();
    assert!(matches!(
        consumer.task_done().await,
        Err(RemoteError::Refused(Refusal::TaskDoneMisuse))
    ));
    assert!(matches!(
        consumer.get_timeout(Duration::from_millis(50)).await,
        Err(RemoteError::Timeout)
    ));
    producer.close().await.unwrap();
    consumer.close().await.unwrap();
    assert!(matches!(
        consumer.len().await,
        Err(RemoteError::Disconnected(
            procq::remote::Disconnect::ClosedHere
        ))
    ));
}

#[tokio::test]
async fn errors_are_typed_codes() {
    let (_server, addr) = start_server(ServerConfig::new(KEY), 1).await;
    let err = RemoteQueue::<u8>::connect(&addr, "jobs", b"wrong")
        .await
        .unwrap_err();
    assert!(
        matches!(err, RemoteError::Auth(procq::AuthError::Rejected)),
        "{err}"
    );
    let err = RemoteQueue::<u8>::connect(&addr, "nope", KEY)
        .await
        .unwrap_err();
    assert!(
        matches!(err, RemoteError::Refused(Refusal::UnknownQueue)),
        "{err}"
    );
    assert_eq!(err.to_string(), "refused: no such queue");
    let q = RemoteQueue::<u8>::connect(&addr, "jobs", KEY)
        .await
        .unwrap();
    assert_eq!(q.maxsize(), Some(1));
    q.try_put(1).await.unwrap();
    let full = q.try_put(2).await.unwrap_err();
    assert!(
        matches!(full.error(), RemoteError::Refused(Refusal::Full)),
        "{full}"
    );
    assert_eq!(full.into_inner(), 2, "the item comes back");
    let timed_out = q
        .put_timeout(3, Duration::from_millis(50))
        .await
        .unwrap_err();
    assert!(matches!(timed_out.error(), RemoteError::Timeout));
    // The withdrawn put is gone from the server: after one get, only item 1 was there.
    assert_eq!(q.get_timeout(PATIENCE).await.unwrap(), 1);
    assert_eq!(q.len().await.unwrap(), 0);
}

#[tokio::test]
async fn the_key_is_trimmed_by_one_rule_and_never_printed() {
    let (_server, addr) = start_server(ServerConfig::new("test key\n"), 0).await;
    let q = RemoteQueue::<u8>::connect(&addr, "jobs", "test key \r\n")
        .await
        .unwrap();
    assert!(!format!("{q:?}").contains("test key"));
    assert!(!format!("{:?}", ServerConfig::new("test key")).contains("test key"));
    assert!(!format!("{:?}", ClientOptions::new("test key")).contains("test key"));
    q.put(1).await.unwrap();
}

#[tokio::test]
async fn bad_config_values_are_rejected_at_construction() {
    for config in [
        ServerConfig::new(KEY).connection_memory(0),
        ServerConfig::new(""),
        ServerConfig::new(KEY).max_connections(0),
        ServerConfig::new(KEY).idle_timeout(Duration::ZERO),
        ServerConfig::new(KEY).max_frame(10),
        ServerConfig::new(KEY).lease(Duration::ZERO),
        ServerConfig::new(KEY).memory_limit(1),
    ] {
        assert!(Server::new(config).is_err());
    }
    let (_server, addr) = start_server(ServerConfig::new(KEY), 0).await;
    let err = ClientOptions::new(KEY)
        .prefetch(0)
        .connect::<u8>(&addr, "jobs")
        .await
        .unwrap_err();
    assert!(matches!(err, RemoteError::InvalidOptions(_)), "{err}");
}

/// A loop of feeds that never has to wait (well within the put window) still lets the
/// other tasks of a current-thread runtime run: sending counts against tokio's cooperative
/// budget, as waiting on a bounded channel did.
#[tokio::test]
async fn a_busy_feed_loop_lets_other_tasks_run() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let (_server, addr) = start_server(ServerConfig::new(KEY), 0).await;
    let q = RemoteQueue::<u64>::connect(&addr, "jobs", KEY)
        .await
        .unwrap();
    let ran = std::sync::Arc::new(AtomicBool::new(false));
    let flag = ran.clone();
    tokio::spawn(async move { flag.store(true, Ordering::SeqCst) });
    // 3,000 feeds: within the put window (4,096), and well past tokio's budget of 128
    // units at one unit per 8 requests.
    for i in 0..3000 {
        q.feed(i).await.unwrap();
    }
    assert!(
        ran.load(Ordering::SeqCst),
        "3,000 feeds never let another task run"
    );
    q.close().await.unwrap();
}

/// Several tasks share clones of one handle: every item reaches exactly one of them, on
/// both runtime flavors, and all see the end.
async fn many_tasks_share_one_handle() {
    let (server, addr) = start_server(ServerConfig::new(KEY), 0).await;
    let q = RemoteQueue::<u64>::connect(&addr, "jobs", KEY)
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let q = q.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            while let Ok(item) = q.get().await {
                got.push(item);
            }
            got
        }));
    }
    let producers: Vec<_> = (0..4u64)
        .map(|p| {
            let q = q.clone();
            tokio::spawn(async move {
                for i in 0..1000 {
                    q.put(p * 1000 + i).await.unwrap();
                }
            })
        })
        .collect();
    for p in producers {
        p.await.unwrap();
    }
    eventually("all acked", || server.stats().queues[0].acks == 4000).await;
    let report = server.shutdown(Duration::from_secs(1)).await;
    assert!(report.is_clean(), "{report}");
    let mut seen = HashSet::new();
    for t in tasks {
        for item in tokio::time::timeout(PATIENCE, t).await.unwrap().unwrap() {
            assert!(seen.insert(item), "{item} twice");
        }
    }
    assert_eq!(seen.len(), 4000);
}

#[tokio::test(flavor = "current_thread")]
async fn many_tasks_share_one_handle_current_thread() {
    many_tasks_share_one_handle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_tasks_share_one_handle_multi_thread() {
    many_tasks_share_one_handle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_consumers_unacknowledged_items_go_to_the_others() {
    const ITEMS: u64 = 20_000;
    let (server, addr) = start_server(ServerConfig::new(KEY), 0).await;
    let spawn = || {
        let mut cmd = child_command("consumer");
        cmd.env("ADDR", &addr);
        Kid::spawn(cmd)
    };
    let mut victim = spawn();
    let mut survivor = spawn();
    let producer = RemoteQueue::<u64>::connect(&addr, "jobs", KEY)
        .await
        .unwrap();
    for i in 0..ITEMS {
        producer.feed(i).await.unwrap();
    }
    producer.flush().await.unwrap();
    let mut seen = HashSet::new();
    for _ in 0..500 {
        seen.insert(victim.report().await.parse::<u64>().unwrap());
    }
    victim.kill().await; // SIGKILL mid-stream
    while let Some(line) = victim.report_within(Duration::from_millis(100)).await {
        seen.insert(line.parse().unwrap());
    }
    while seen.len() < ITEMS as usize {
        seen.insert(survivor.report().await.parse().unwrap());
    }
    survivor.kill().await;
    let jobs = &server.stats().queues[0];
    eprintln!(
        "redeliveries after killing a consumer: {}",
        jobs.redeliveries
    );
    assert!(jobs.redeliveries > 0, "the victim held prefetched items");
}

#[tokio::test]
async fn hostile_input_closes_that_connection_only() {
    let (server, addr) = start_server(ServerConfig::new(KEY).max_frame(1 << 20), 0).await;
    let good = RemoteQueue::<u32>::connect(&addr, "jobs", KEY)
        .await
        .unwrap();
    good.put(1).await.unwrap();

    // Garbage instead of a handshake.
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let _ = s
        .write_all(b"\x00\x00\x00\x05hello, is this a queue?")
        .await;
    closed_by_server(s).await;
    // A frame that claims 4 GiB, after authenticating.
    let mut s = raw_client(&addr, Some("jobs")).await;
    s.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    closed_by_server(s).await;
    // A well-sized frame of garbage.
    let mut s = raw_client(&addr, Some("jobs")).await;
    write_frame(&mut s, &[0xff; 9]).await;
    closed_by_server(s).await;
    // A put with trailing bytes.
    let mut s = raw_client(&addr, Some("jobs")).await;
    let mut put = postcard::to_stdvec(&Request::Put {
        item: bytes::Bytes::from_static(b"x"),
        wait: true,
    })
    .unwrap();
    put.push(0);
    write_frame(&mut s, &put).await;
    closed_by_server(s).await;
    // A put on a statistics-only connection (no queue open).
    let mut s = raw_client(&addr, None).await;
    send(
        &mut s,
        &Request::Put {
            item: bytes::Bytes::from_static(b"x"),
            wait: true,
        },
    )
    .await;
    closed_by_server(s).await;
    // A hello with a name that is too long, or has control characters.
    for name in ["x".repeat(16 << 10), "\x1b[2Jjobs".to_string()] {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        handshake(&mut s, KEY).await;
        send(
            &mut s,
            &Request::Hello {
                version: 2,
                queue: Some(name),
                max_frame: 1 << 26,
                lease_ms: None,
            },
        )
        .await;
        assert_eq!(
            recv(&mut s).await.unwrap(),
            Reply::Refused {
                code: Refusal::InvalidName
            }
        );
        closed_by_server(s).await;
    }
    // A truncated frame, then the client hangs up.
    let mut s = raw_client(&addr, Some("jobs")).await;
    s.write_all(&[0, 0, 0, 200, 1, 2, 3]).await.unwrap();
    drop(s);

    // The good client never noticed, and the queue holds exactly its items.
    good.put(2).await.unwrap();
    assert_eq!(good.get_timeout(PATIENCE).await.unwrap(), 1);
    assert_eq!(good.get_timeout(PATIENCE).await.unwrap(), 2);
    assert_eq!(server.stats().queues[0].puts, 2);
    assert!(RemoteQueue::<u8>::connect(&addr, "bad name", KEY)
        .await
        .is_err());
    assert!(server.declare("bell\x07", 0).is_err());
}

#[tokio::test]
async fn an_oversize_item_is_refused_before_sending_and_the_connection_stays() {
    let (_server, addr) = start_server(ServerConfig::new(KEY).max_frame(64 * 1024), 0).await;
    let q = RemoteQueue::<Vec<u8>>::connect(&addr, "jobs", KEY)
        .await
        .unwrap();
    let err = q.put(vec![0u8; 100_000]).await.unwrap_err();
    assert!(matches!(err.error(), RemoteError::TooLarge { .. }), "{err}");
    assert_eq!(err.into_inner().len(), 100_000);
    q.put(vec![1u8; 1000]).await.unwrap();
}

#[tokio::test]
async fn queues_are_served_on_unix_sockets_and_a_path_is_only_reused_when_stale() {
    let dir = std::env::temp_dir().join(format!("procq-remote-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("server.sock");
    // A regular file there is never removed.
    std::fs::write(&path, b"precious").unwrap();
    let err = procq::remote::bind_unix(&path).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
    assert_eq!(std::fs::read(&path).unwrap(), b"precious");
    std::fs::remove_file(&path).unwrap();

    let server = Server::new(ServerConfig::new(KEY).create_on_use(true)).unwrap();
    let listener = procq::remote::bind_unix(&path).unwrap();
    // A second server on the same path does not steal the live socket.
    let err = procq::remote::bind_unix(&path).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
    let serving = server.clone();
    let task = tokio::spawn(async move { serving.serve_unix(listener).await });
    let addr = format!("unix:{}", path.display());
    let q = RemoteQueue::<String>::connect(&addr, "made-on-use", KEY)
        .await
        .unwrap();
    q.put("over a unix socket".to_string()).await.unwrap();
    assert_eq!(q.get_timeout(PATIENCE).await.unwrap(), "over a unix socket");
    let stats = procq::remote::server_stats(&addr, KEY).await.unwrap();
    assert_eq!(stats.queues[0].name, "made-on-use");
    q.close().await.unwrap();
    assert!(server.shutdown(Duration::from_secs(1)).await.is_clean());
    task.await.unwrap().unwrap(); // the listener is dropped: the socket is stale now
    procq::remote::bind_unix(&path).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A put whose future is dropped while it waits for room is withdrawn on the server.
#[tokio::test]
async fn a_cancelled_put_leaves_nothing_behind() {
    let (server, addr) = start_server(ServerConfig::new(KEY), 1).await;
    let q = RemoteQueue::<u64>::connect(&addr, "jobs", KEY)
        .await
        .unwrap();
    q.put(1).await.unwrap();
    let waiting = tokio::spawn({
        let q = q.clone();
        async move { q.put(2).await }
    });
    eventually("the put waits on the server", || server.stats().memory > 1).await;
    waiting.abort();
    assert!(waiting.await.unwrap_err().is_cancelled());
    eventually("the put is withdrawn", || server.stats().memory == 1).await;
    assert_eq!(q.get_timeout(PATIENCE).await.unwrap(), 1);
    assert!(matches!(
        q.get_timeout(Duration::from_millis(200)).await,
        Err(RemoteError::Timeout)
    ));
    assert_eq!(server.stats().queues[0].puts, 1);
}

/// With a prefetch of 1 a consumer holds only what it works on: the next item goes to
/// whichever consumer is free.
#[tokio::test]
async fn prefetch_one_shares_work_fairly() {
    let (_server, addr) = start_server(ServerConfig::new(KEY), 0).await;
    let fair = ClientOptions::new(KEY).prefetch(1);
    let a = fair.connect::<u64>(&addr, "jobs").await.unwrap();
    let b = fair.connect::<u64>(&addr, "jobs").await.unwrap();
    a.put(1).await.unwrap();
    let (first, working) = a.get_unacked().await.unwrap();
    a.put(2).await.unwrap();
    assert_eq!(
        b.get_timeout(PATIENCE).await.unwrap(),
        2,
        "not kept by busy a"
    );
    assert_eq!(first, 1);
    working.ack().await.unwrap();
}

fn jobs_stats(server: &Server) -> procq::remote::QueueStats {
    server
        .stats()
        .queues
        .into_iter()
        .find(|q| q.name == "jobs")
        .unwrap()
}

/// After `close`, items pushed to this client and not taken went back to the queue: no
/// later call hands them out (they used to, so another consumer got them too).
/// A server, and a client of its queue `jobs` (prefetch 8) to which the server has pushed
/// the `n` items (0, 1, …) the client put.
async fn items_pushed_to_a_client(n: u64) -> (Server, String, RemoteQueue<u64>) {
    let (server, addr) = start_server(ServerConfig::new(KEY), 0).await;
    let q = ClientOptions::new(KEY)
        .prefetch(8)
        .connect::<u64>(&addr, "jobs")
        .await
        .unwrap();
    for i in 0..n {
        q.put(i).await.unwrap();
    }
    assert!(matches!(q.try_get(), Err(RemoteError::Empty))); // asks for items
    eventually("the items pushed to the client", || {
        jobs_stats(&server).in_flight == n
    })
    .await;
    (server, addr, q)
}

#[tokio::test]
async fn after_close_items_pushed_here_are_not_handed_out_again() {
    let (server, addr, q) = items_pushed_to_a_client(8).await;
    q.close().await.unwrap();
    eventually("the items back in the queue", || {
        jobs_stats(&server).len == 8
    })
    .await;
    let closed = |e: &RemoteError| {
        matches!(
            e,
            RemoteError::Disconnected(procq::remote::Disconnect::ClosedHere)
        )
    };
    assert!(closed(&q.try_get().unwrap_err()));
    assert!(closed(&q.get().await.unwrap_err()));
    assert!(closed(&q.get_unacked().await.unwrap_err()));
    let other = RemoteQueue::<u64>::connect(&addr, "jobs", KEY)
        .await
        .unwrap();
    let mut got = Vec::new();
    for _ in 0..8 {
        got.push(other.get_timeout(PATIENCE).await.unwrap());
    }
    got.sort();
    assert_eq!(got, (0..8).collect::<Vec<_>>(), "each item once");
}

/// Once the connection has ended, the items already pushed to this client are handed out
/// by every kind of get (as documented), and their acks, which cannot be sent, are
/// counted by `close`; `get` used to drop the item and return the error.
#[tokio::test]
async fn after_the_connection_ends_pushed_items_are_handed_out_and_their_acks_counted() {
    let (server, _addr, q) = items_pushed_to_a_client(6).await;
    let report = server.shutdown(Duration::ZERO).await; // ends the connection
    assert_eq!(report.total(), 6, "{report}");
    let mut got = vec![q.get().await.unwrap()];
    got.push(q.get_timeout(PATIENCE).await.unwrap());
    got.push(q.try_get().unwrap());
    let (item, delivery) = q.get_unacked().await.unwrap();
    got.push(item);
    assert!(delivery.ack().await.is_err());
    got.push(q.get().await.unwrap());
    got.push(q.get().await.unwrap());
    assert_eq!(got, (0..6).collect::<Vec<_>>());
    assert!(matches!(
        q.get().await.unwrap_err(),
        RemoteError::Disconnected(_)
    ));
    let closed = q.close().await.unwrap_err();
    assert_eq!(closed.acks_failed(), 5, "{closed}");
}
