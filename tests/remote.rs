//! Remote queues: a server embedded in the test process, clients in it and in child
//! processes, over TCP on loopback.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{child_command, report, Kid, PATIENCE};
use procq::remote::{RemoteQueue, Server, ServerConfig};
use procq::RemoteError;

const KEY: &[u8] = b"test key";

#[test]
fn child_main() {
    common::run_child(|role| async move { play(&role).await });
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

async fn start_server(config: ServerConfig) -> (Server, String) {
    let server = Server::new(config);
    server.declare("jobs", 0);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let serving = server.clone();
    tokio::spawn(async move { serving.serve_tcp(listener).await });
    (server, addr)
}

#[tokio::test]
async fn put_get_len_and_join_through_the_server() {
    let (_server, addr) = start_server(ServerConfig::new(KEY)).await;
    let producer = RemoteQueue::<String>::connect(&addr, "jobs", KEY)
        .await
        .unwrap();
    let consumer = RemoteQueue::<String>::connect(&addr, "jobs", KEY)
        .await
        .unwrap();
    for i in 0..100 {
        producer.feed(&format!("job {i}")).await.unwrap();
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
    let seq = producer.try_put(&"one more".to_string()).unwrap();
    assert_eq!(seq, 101);
    producer.flush().await.unwrap();
    assert!(matches!(
        producer.join_timeout(Duration::from_millis(50)).await,
        Err(RemoteError::Timeout)
    ));
    assert_eq!(consumer.get_timeout(PATIENCE).await.unwrap(), "one more");
    consumer.task_done().await.unwrap();
    assert!(matches!(
        consumer.task_done().await,
        Err(RemoteError::Server(_))
    ));
    assert!(matches!(
        consumer.get_timeout(Duration::from_millis(50)).await,
        Err(RemoteError::Timeout)
    ));
}

#[tokio::test]
async fn a_wrong_key_or_unknown_queue_is_a_clear_error() {
    let (_server, addr) = start_server(ServerConfig::new(KEY)).await;
    let err = RemoteQueue::<u8>::connect(&addr, "jobs", b"wrong")
        .await
        .err()
        .unwrap();
    assert!(
        matches!(err, RemoteError::Auth(procq::AuthError::Rejected)),
        "{err}"
    );
    let err = RemoteQueue::<u8>::connect(&addr, "nope", KEY)
        .await
        .err()
        .unwrap();
    assert_eq!(err.to_string(), "server: no queue named \"nope\"");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_consumers_unacknowledged_items_go_to_the_others() {
    const ITEMS: u64 = 100_000;
    let (server, addr) = start_server(ServerConfig::new(KEY)).await;
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
        producer.feed(&i).await.unwrap();
    }
    producer.flush().await.unwrap();
    // Let the victim take some, then kill it mid-stream.
    let mut seen = HashSet::new();
    for _ in 0..1000 {
        seen.insert(victim.report().await.parse::<u64>().unwrap());
    }
    victim.kill().await;
    // Whatever the victim reported before dying may have reached its ack or not; the
    // rest must all come through the survivor.
    while let Some(line) = victim.report_within(Duration::from_millis(100)).await {
        seen.insert(line.parse().unwrap());
    }
    while seen.len() < ITEMS as usize {
        let line = survivor.report().await;
        seen.insert(line.parse().unwrap());
    }
    survivor.kill().await;
    let stats = server.stats();
    let jobs = stats.iter().find(|s| s.name == "jobs").unwrap();
    eprintln!(
        "redeliveries after killing a consumer: {}",
        jobs.redeliveries
    );
    assert!(jobs.redeliveries > 0, "the victim held prefetched items");
    assert_eq!(seen.len() as u64, ITEMS);
}

async fn raw_authenticated(addr: &str) -> tokio::net::TcpStream {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    procq::remote::auth::client(&mut stream, KEY).await.unwrap();
    stream
}

/// Reads until the server closes the connection; fails the test if it does not.
async fn closed_by_server(mut stream: tokio::net::TcpStream) {
    use tokio::io::AsyncReadExt;
    let mut sink = Vec::new();
    let closed = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut sink)).await;
    assert!(closed.is_ok(), "the server kept a bad connection open");
}

#[tokio::test]
async fn hostile_input_closes_that_connection_only() {
    use tokio::io::AsyncWriteExt;
    let (server, addr) = start_server(ServerConfig::new(KEY).max_frame(1024 * 1024)).await;
    let good = RemoteQueue::<u32>::connect(&addr, "jobs", KEY)
        .await
        .unwrap();
    good.put(&1).await.unwrap();

    // Garbage instead of a handshake.
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let _ = s
        .write_all(b"\x00\x00\x00\x05hello, is this a queue?")
        .await;
    closed_by_server(s).await;
    // A frame that claims 4 GiB.
    let mut s = raw_authenticated(&addr).await;
    s.write_all(&u32::MAX.to_le_bytes()).await.unwrap();
    closed_by_server(s).await;
    // A well-sized frame of garbage.
    let mut s = raw_authenticated(&addr).await;
    s.write_all(&[
        9, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    ])
    .await
    .unwrap();
    closed_by_server(s).await;
    // A put before opening a queue.
    let mut s = raw_authenticated(&addr).await;
    let mut frame = bytes::BytesMut::new();
    let put = procq::remote::protocol::Request::Put {
        item: bytes::Bytes::from_static(b"x"),
    };
    procq::remote::frame::encode(1, &procq::remote::protocol::encode(&put), &mut frame);
    s.write_all(&frame).await.unwrap();
    closed_by_server(s).await;
    // A truncated frame, then the client hangs up.
    let mut s = raw_authenticated(&addr).await;
    s.write_all(&[200, 0, 0, 0, 1, 2, 3]).await.unwrap();
    drop(s);

    // The good client never noticed, and the queue holds exactly its item.
    good.put(&2).await.unwrap();
    assert_eq!(good.get_timeout(PATIENCE).await.unwrap(), 1);
    assert_eq!(good.get_timeout(PATIENCE).await.unwrap(), 2);
    let jobs = server
        .stats()
        .into_iter()
        .find(|s| s.name == "jobs")
        .unwrap();
    assert_eq!(jobs.puts, 2);
}

#[tokio::test]
async fn an_oversize_item_is_refused_and_closes_the_connection() {
    let (_server, addr) = start_server(ServerConfig::new(KEY).max_frame(64 * 1024)).await;
    let q = RemoteQueue::<Vec<u8>>::connect(&addr, "jobs", KEY)
        .await
        .unwrap();
    let err = q
        .put_timeout(&vec![0u8; 100_000], PATIENCE)
        .await
        .unwrap_err();
    assert!(matches!(err, RemoteError::Disconnected(_)), "{err}");
    let q = q.reconnect().await.unwrap();
    q.put(&vec![1u8; 1000]).await.unwrap();
}

#[tokio::test]
async fn queues_are_served_on_unix_sockets_too() {
    let dir = std::env::temp_dir().join(format!("procq-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("server.sock");
    let server = Server::new(ServerConfig::new(KEY).create_on_use(true));
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let serving = server.clone();
    tokio::spawn(async move { serving.serve_unix(listener).await });
    let addr = format!("unix:{}", path.display());
    let q = RemoteQueue::<String>::connect(&addr, "made-on-use", KEY)
        .await
        .unwrap();
    q.put(&"over a unix socket".to_string()).await.unwrap();
    assert_eq!(q.get_timeout(PATIENCE).await.unwrap(), "over a unix socket");
    let stats = procq::remote::server_stats(&addr, KEY).await.unwrap();
    assert_eq!(stats[0].name, "made-on-use");
    server.shutdown();
    drop(q);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_idle_connections_do_not_slow_an_active_client() {
    // Room for 1,000 connections' descriptors on both ends.
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    let want = 4096.min(limit.maximum.unwrap_or(4096));
    if limit.current.unwrap_or(0) < want {
        let raised = rustix::process::Rlimit {
            current: Some(want),
            maximum: limit.maximum,
        };
        rustix::process::setrlimit(rustix::process::Resource::Nofile, raised).unwrap();
    }
    let (_server, addr) = start_server(ServerConfig::new(KEY)).await;
    let q = RemoteQueue::<u64>::connect(&addr, "jobs", KEY)
        .await
        .unwrap();
    async fn round(q: &RemoteQueue<u64>) -> Duration {
        let start = std::time::Instant::now();
        for i in 0..20_000 {
            q.feed(&i).await.unwrap();
        }
        q.flush().await.unwrap();
        for _ in 0..20_000 {
            q.get().await.unwrap();
        }
        start.elapsed()
    }
    round(&q).await; // warm up
    let alone = round(&q).await;
    let mut idle = Vec::new();
    for _ in 0..1000 {
        idle.push(raw_authenticated(&addr).await);
    }
    let crowded = round(&q).await;
    eprintln!("20,000 puts and gets: {alone:?} alone, {crowded:?} beside 1,000 idle connections");
    assert!(
        crowded < alone * 3,
        "{alone:?} alone, {crowded:?} with 1,000 idle connections"
    );
    drop(idle);
}
