//! Every resource bounded and released: join waiters, handshake slots, frame limits,
//! and the small contract items.

mod remote_common;

use std::time::Duration;

use procq::remote::protocol::{Refusal, Reply, Request};
use procq::remote::{ClientOptions, RemoteQueue, ServerConfig};
use procq::RemoteError;
use remote_common::*;

/// A client that calls `join_timeout` and disconnects gives its slot back; before, four
/// of them filled `max_connections(4)` and nobody could connect to call `task_done`.
#[tokio::test]
async fn join_waiters_are_tied_to_their_connection() {
    let (server, addr) = start_server(ServerConfig::new(KEY).max_connections(4), 0).await;
    let producer = RemoteQueue::<u64>::connect(&addr, "jobs", KEY)
        .await
        .unwrap();
    producer.put(1).await.unwrap();
    producer.close().await.unwrap();
    for _ in 0..4 {
        let q = RemoteQueue::<u64>::connect(&addr, "jobs", KEY)
            .await
            .unwrap();
        assert!(matches!(
            q.join_timeout(Duration::from_millis(20)).await,
            Err(RemoteError::Timeout)
        ));
        drop(q);
    }
    eventually("the joiners' slots are free", || {
        server.stats().connections == 0
    })
    .await;
    let worker = ClientOptions::new(KEY)
        .connect_timeout(Duration::from_secs(5))
        .connect::<u64>(&addr, "jobs")
        .await
        .unwrap();
    assert_eq!(worker.get_timeout(PATIENCE).await.unwrap(), 1);
    worker.task_done().await.unwrap();
    worker.join_timeout(PATIENCE).await.unwrap();
}

/// Pending joins per connection are bounded: a flood of `Join` frames is refused, not
/// stored.
#[tokio::test]
async fn a_flood_of_joins_is_refused_not_stored() {
    let (_server, addr) = start_server(ServerConfig::new(KEY), 0).await;
    let producer = RemoteQueue::<u64>::connect(&addr, "jobs", KEY)
        .await
        .unwrap();
    producer.put(1).await.unwrap();
    let mut s = raw_client(&addr, Some("jobs")).await;
    for req in 1..=10_000 {
        send(&mut s, &Request::Join { req }).await;
    }
    send(&mut s, &Request::Len { req: 0 }).await;
    let mut refused = 0;
    loop {
        match recv(&mut s).await.unwrap() {
            Reply::Error {
                code: Refusal::TooManyRequests,
                ..
            } => refused += 1,
            Reply::Value { req: 0, value } => {
                assert_eq!(value, 1);
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(refused, 10_000 - 64);
}

/// Silent connections take handshake slots, not connection slots, and a new connection
/// evicts the oldest silent one: real clients get in at once.
#[tokio::test]
async fn silent_connections_do_not_keep_real_clients_out() {
    room_for_descriptors(4096);
    let config = ServerConfig::new(KEY)
        .max_connections(16)
        .max_handshakes(16)
        .handshake_timeout(Duration::from_secs(2));
    let (server, addr) = start_server(config, 0).await;
    let mut silent = Vec::new();
    for _ in 0..64 {
        silent.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    eventually("silent connections in handshake slots", || {
        server.stats().handshaking == 16
    })
    .await;
    // A silent connection may be evicted once it has waited a tenth of the handshake
    // timeout: let that much time pass.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let options = ClientOptions::new(KEY).connect_timeout(Duration::from_secs(2));
    for _ in 0..16 {
        let q = options.connect::<u64>(&addr, "jobs").await.unwrap();
        q.put(1).await.unwrap();
        q.close().await.unwrap();
    }
    assert!(server.stats().handshaking <= 16);
    drop(silent);
}

/// A client that accepts smaller frames than the server's limit does not connect, so the
/// server never holds an item it cannot deliver to it (before, such an item was
/// redelivered forever at the head of the queue).
#[tokio::test]
async fn frame_limits_are_agreed_at_connect() {
    let (_server, addr) = start_server(ServerConfig::new(KEY).max_frame(2 << 20), 0).await;
    let err = ClientOptions::new(KEY)
        .max_frame(1 << 20)
        .connect::<Vec<u8>>(&addr, "jobs")
        .await
        .unwrap_err();
    assert!(
        matches!(err, RemoteError::Refused(Refusal::FrameLimit)),
        "{err}"
    );
    let q = RemoteQueue::<serde_bytes::ByteBuf>::connect(&addr, "jobs", KEY)
        .await
        .unwrap();
    let big = serde_bytes::ByteBuf::from(vec![1u8; (2 << 20) - 64]);
    q.put(big.clone()).await.unwrap();
    q.put(serde_bytes::ByteBuf::from(vec![2u8])).await.unwrap();
    assert_eq!(q.get_timeout(PATIENCE).await.unwrap(), big);
    assert_eq!(q.get_timeout(PATIENCE).await.unwrap()[0], 2);
}

#[tokio::test]
async fn task_done_needs_an_item_acknowledged_on_that_connection() {
    let (_server, addr) = start_server(ServerConfig::new(KEY), 0).await;
    let producer = RemoteQueue::<u64>::connect(&addr, "jobs", KEY)
        .await
        .unwrap();
    producer.put(1).await.unwrap();
    let err = producer.task_done().await.unwrap_err();
    assert!(
        matches!(err, RemoteError::Refused(Refusal::TaskDoneMisuse)),
        "{err}"
    );
    assert_eq!(producer.get().await.unwrap(), 1);
    producer.task_done().await.unwrap();
}

#[tokio::test]
async fn len_counts_the_connections_own_puts_read_before_it() {
    let (_server, addr) = start_server(ServerConfig::new(KEY), 0).await;
    let q = RemoteQueue::<u64>::connect(&addr, "jobs", KEY)
        .await
        .unwrap();
    for round in 1..=20u64 {
        for i in 0..50 {
            q.feed(i).await.unwrap();
        }
        assert_eq!(q.len().await.unwrap(), round * 50);
    }
}

/// Items already pushed to a client are handed out before the end of the connection is
/// reported.
#[tokio::test]
async fn get_unacked_hands_out_items_in_hand_before_reporting_the_end() {
    let (server, addr) = start_server(ServerConfig::new(KEY), 0).await;
    let producer = RemoteQueue::<u64>::connect(&addr, "jobs", KEY)
        .await
        .unwrap();
    for i in 0..10 {
        producer.feed(i).await.unwrap();
    }
    producer.flush().await.unwrap();
    let consumer = RemoteQueue::<u64>::connect(&addr, "jobs", KEY)
        .await
        .unwrap();
    assert_eq!(consumer.get().await.unwrap(), 0);
    eventually("the rest pushed", || {
        server.stats().queues[0].in_flight == 9
    })
    .await;
    let report = server.shutdown(Duration::ZERO).await;
    assert_eq!(report.total(), 9, "{report}");
    for i in 1..10 {
        let (item, delivery) = consumer.get_unacked_timeout(PATIENCE).await.unwrap();
        assert_eq!(item, i);
        assert!(
            delivery.ack().await.is_err(),
            "the server gave it back already"
        );
    }
    assert!(matches!(
        consumer.get_unacked_timeout(PATIENCE).await,
        Err(RemoteError::Disconnected(_))
    ));
}
