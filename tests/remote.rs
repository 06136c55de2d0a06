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
    tokio::time::timeout(PATIENCE, producer.join())
        .await
        .unwrap()
        .unwrap();
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
