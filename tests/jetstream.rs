//! The `RemoteQueue` API on NATS JetStream (feature `nats`), against a real
//! `nats-server` started by each test: the same calls and errors as on procq's server,
//! and what differs (packs, leases counted by the client, messages in `len`).

mod nats_common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use nats_common::*;
use procq::remote::jetstream::{self, QueueConfig};
use procq::remote::{ClientOptions, Disconnect, Refusal, RemoteError, RemoteQueue};

const KEY: &str = "token";
const PATIENCE: Duration = Duration::from_secs(60);

fn options() -> ClientOptions {
    ClientOptions::new(KEY)
}

async fn declared(url: &str, name: &str, config: QueueConfig) {
    jetstream::declare(&options(), url, name, &config)
        .await
        .expect("declare");
}

#[tokio::test]
async fn put_get_len_task_done_and_join_on_jetstream() {
    let server = Single::start();
    let url = server.url();
    declared(&url, "jobs", QueueConfig::new()).await;
    // The same code as against procq's server: only the address differs.
    let producer = RemoteQueue::<String>::connect(&url, "jobs", KEY)
        .await
        .unwrap();
    let consumer = RemoteQueue::<String>::connect(&url, "jobs", KEY)
        .await
        .unwrap();
    assert_eq!(producer.name(), "jobs");
    assert_eq!(producer.maxsize(), None);
    assert_eq!(producer.lease(), Duration::from_secs(30));
    for i in 0..100 {
        producer.put(format!("job {i}")).await.unwrap();
    }
    assert_eq!(producer.len().await.unwrap(), 100, "one message per put");
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
        producer.join_timeout(Duration::from_millis(100)).await,
        Err(RemoteError::Timeout)
    ));
    let (item, delivery) = consumer.get_unacked_timeout(PATIENCE).await.unwrap();
    assert_eq!(item, "one more");
    delivery.ack().await.unwrap();
    consumer.task_done().await.unwrap();
    assert!(matches!(
        consumer.task_done().await,
        Err(RemoteError::Refused(Refusal::TaskDoneMisuse))
    ));
    producer.join_timeout(PATIENCE).await.unwrap();
    assert!(matches!(
        consumer.get_timeout(Duration::from_millis(100)).await,
        Err(RemoteError::Timeout)
    ));
    assert!(matches!(consumer.try_get(), Err(RemoteError::Empty)));
    producer.close().await.unwrap();
    consumer.close().await.unwrap();
    assert!(matches!(
        consumer.len().await,
        Err(RemoteError::Disconnected(Disconnect::ClosedHere))
    ));
    let err = producer.put("late".to_string()).await.unwrap_err();
    assert!(matches!(
        err.error(),
        RemoteError::Disconnected(Disconnect::ClosedHere)
    ));
    assert_eq!(err.into_inner(), "late");
}

#[tokio::test]
async fn errors_are_the_same_typed_codes() {
    let server = Single::start();
    let url = server.url();
    let unknown = RemoteQueue::<u8>::connect(&url, "nope", KEY)
        .await
        .unwrap_err();
    assert!(
        matches!(unknown, RemoteError::Refused(Refusal::UnknownQueue)),
        "{unknown}"
    );
    let bad = RemoteQueue::<u8>::connect(&url, "a.b", KEY)
        .await
        .unwrap_err();
    assert!(matches!(bad, RemoteError::InvalidName(_)), "{bad}");
    declared(
        &url,
        "small",
        QueueConfig::new().maxsize(1).lease(Duration::from_secs(5)),
    )
    .await;
    let lease = ClientOptions::new(KEY)
        .lease(Duration::from_secs(9))
        .connect::<u8>(&url, "small")
        .await
        .unwrap_err();
    assert!(matches!(lease, RemoteError::InvalidOptions(_)), "{lease}");
    let q = RemoteQueue::<u8>::connect(&url, "small", KEY)
        .await
        .unwrap();
    assert_eq!(q.maxsize(), Some(1));
    assert_eq!(q.lease(), Duration::from_secs(5));
    q.try_put(1).await.unwrap();
    let full = q.try_put(2).await.unwrap_err();
    assert!(
        matches!(full.error(), RemoteError::Refused(Refusal::Full)),
        "{full}"
    );
    assert!(!full.error().put_in_doubt());
    assert_eq!(full.into_inner(), 2, "the item comes back");
    let started = Instant::now();
    let timed_out = q
        .put_timeout(3, Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(matches!(timed_out.error(), RemoteError::Timeout));
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(timed_out.into_inner(), 3);
    // Nothing but item 1 was stored.
    assert_eq!(q.get_timeout(PATIENCE).await.unwrap(), 1);
    assert!(matches!(
        q.get_timeout(Duration::from_millis(200)).await,
        Err(RemoteError::Timeout)
    ));
    // Larger than the server's payload limit (1 MiB): refused before sending.
    let big = RemoteQueue::<Vec<u8>>::connect(&url, "small", KEY)
        .await
        .unwrap();
    let too_large = big.put(vec![1u8; 2 << 20]).await.unwrap_err();
    assert!(
        matches!(too_large.error(), RemoteError::TooLarge { .. }),
        "{too_large}"
    );
    // A fed item that never finds room is handed back by close, refused as full.
    let impatient = ClientOptions::new(KEY)
        .request_timeout(Duration::from_millis(500))
        .connect::<u8>(&url, "small")
        .await
        .unwrap();
    impatient.put(9).await.unwrap();
    impatient.feed(10).await.unwrap();
    let closed = impatient.close().await.unwrap_err();
    assert_eq!(closed.refused().len(), 1, "{closed}");
    assert_eq!(closed.refused()[0].0, 10);
    assert_eq!(closed.refused()[0].1, Refusal::Full);
    assert!(closed.in_doubt().is_empty());
    // Declaring what the server cannot hold: JetStream's own refusal, in words.
    let three = jetstream::declare(&options(), &url, "wide", &QueueConfig::new().replicas(3))
        .await
        .unwrap_err();
    assert!(matches!(three, RemoteError::JetStream(_)), "{three}");
    let zero = jetstream::declare(&options(), &url, "wide", &QueueConfig::new().replicas(0))
        .await
        .unwrap_err();
    assert!(matches!(zero, RemoteError::InvalidOptions(_)), "{zero}");
    // Declaring again updates the queue in place; deleting removes it.
    declared(
        &url,
        "small",
        QueueConfig::new().maxsize(5).lease(Duration::from_secs(7)),
    )
    .await;
    let updated = RemoteQueue::<u8>::connect(&url, "small", KEY)
        .await
        .unwrap();
    assert_eq!(updated.maxsize(), Some(5));
    assert_eq!(updated.lease(), Duration::from_secs(7));
    updated.close().await.unwrap();
    jetstream::delete(&options(), &url, "small").await.unwrap();
    assert!(matches!(
        RemoteQueue::<u8>::connect(&url, "small", KEY).await,
        Err(RemoteError::Refused(Refusal::UnknownQueue))
    ));
    assert!(matches!(
        jetstream::delete(&options(), &url, "small").await,
        Err(RemoteError::Refused(Refusal::UnknownQueue))
    ));
    // stats are procq's server's.
    assert!(matches!(
        q.stats().await,
        Err(RemoteError::Refused(Refusal::NotAllowed))
    ));
    q.close().await.unwrap();
    big.close().await.unwrap();
}

#[tokio::test]
async fn a_bounded_queue_waits_for_room_until_an_ack() {
    let server = Single::start();
    let url = server.url();
    declared(&url, "bounded", QueueConfig::new().maxsize(2)).await;
    let producer = RemoteQueue::<u32>::connect(&url, "bounded", KEY)
        .await
        .unwrap();
    let consumer = RemoteQueue::<u32>::connect(&url, "bounded", KEY)
        .await
        .unwrap();
    producer.put(1).await.unwrap();
    producer.put(2).await.unwrap();
    let waiting = tokio::spawn({
        let producer = producer.clone();
        async move { producer.put(3).await.map_err(|e| e.to_string()) }
    });
    let (one, delivery) = consumer.get_unacked_timeout(PATIENCE).await.unwrap();
    assert_eq!(one, 1);
    // Delivered but not acknowledged still counts toward the bound.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "room comes back with the ack, not the delivery"
    );
    delivery.ack().await.unwrap();
    tokio::time::timeout(PATIENCE, waiting)
        .await
        .expect("the put got room")
        .unwrap()
        .unwrap();
    // Fed items into a bounded queue also wait, one item per message (a message that
    // found the queue full and was published again may land after later ones).
    for i in 10..14 {
        producer.feed(i).await.unwrap();
    }
    let mut got = Vec::new();
    while got.len() < 6 {
        got.push(consumer.get_timeout(PATIENCE).await.unwrap());
    }
    producer.flush_timeout(PATIENCE).await.unwrap();
    got.sort();
    assert_eq!(got, vec![2, 3, 10, 11, 12, 13]);
    producer.close().await.unwrap();
    consumer.close().await.unwrap();
}

#[tokio::test]
async fn fed_items_share_messages_and_a_pack_is_redelivered_whole() {
    let server = Single::start();
    let url = server.url();
    declared(
        &url,
        "packs",
        QueueConfig::new().lease(Duration::from_secs(2)),
    )
    .await;
    let producer = ClientOptions::new(KEY)
        .pack(10, 64 * 1024)
        .connect::<u32>(&url, "packs")
        .await
        .unwrap();
    for i in 0..100 {
        producer.feed(i).await.unwrap();
    }
    producer.flush().await.unwrap();
    let info = jetstream::info(&options(), &url, "packs").await.unwrap();
    assert_eq!(
        info.messages, 10,
        "100 items fed back to back: 10 packs of 10"
    );
    assert_eq!(producer.len().await.unwrap(), 10, "len counts messages");

    // A consumer acks 5 items of the first pack and walks away from the rest.
    let first = ClientOptions::new(KEY)
        .prefetch(10)
        .connect::<u32>(&url, "packs")
        .await
        .unwrap();
    let mut held = Vec::new();
    for i in 0..10 {
        let (item, delivery) = first.get_unacked_timeout(PATIENCE).await.unwrap();
        assert_eq!(item, i);
        held.push(delivery);
    }
    for delivery in held.drain(..5) {
        delivery.ack().await.unwrap(); // recorded: the pack waits for its other items
    }
    let left = std::mem::take(&mut held);
    // Past the lease the whole pack comes back, the acked items included.
    let second = ClientOptions::new(KEY)
        .prefetch(1)
        .connect::<u32>(&url, "packs")
        .await
        .unwrap();
    let mut counts = HashMap::new();
    let started = Instant::now();
    while counts.len() < 100 {
        let (item, delivery) = second.get_unacked_timeout(PATIENCE).await.unwrap();
        *counts.entry(item).or_insert(0) += 1;
        delivery.ack().await.unwrap();
    }
    let duplicates: u32 = counts.values().map(|c| c - 1).sum();
    assert_eq!(
        duplicates, 0,
        "the first pack went to the second consumer once"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(1000),
        "after the lease"
    );
    // The first consumer's late acks are refused: its lease ran out.
    for delivery in left {
        assert!(matches!(
            delivery.ack().await,
            Err(RemoteError::Refused(Refusal::LeaseExpired))
        ));
    }
    second.join_timeout(PATIENCE).await.unwrap();
    for q in [producer, first, second] {
        q.close().await.unwrap();
    }
}

#[tokio::test]
async fn keep_alive_holds_a_delivery_past_its_lease_and_a_lapsed_one_is_refused() {
    let server = Single::start();
    let url = server.url();
    declared(
        &url,
        "long",
        QueueConfig::new().lease(Duration::from_secs(1)),
    )
    .await;
    let q = ClientOptions::new(KEY)
        .prefetch(1)
        .connect::<String>(&url, "long")
        .await
        .unwrap();
    let other = ClientOptions::new(KEY)
        .prefetch(1)
        .connect::<String>(&url, "long")
        .await
        .unwrap();
    q.put("long job".to_string()).await.unwrap();
    let (job, delivery) = q.get_unacked_timeout(PATIENCE).await.unwrap();
    assert_eq!(job, "long job");
    // Three leases long, extended every 400 ms: nobody else gets it.
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        delivery.keep_alive().await.unwrap();
    }
    assert!(matches!(
        other.get_timeout(Duration::from_millis(200)).await,
        Err(RemoteError::Timeout)
    ));
    delivery.ack().await.unwrap();
    // (`other` may still have a pull outstanding, which would take the next item.)
    other.close().await.unwrap();
    // A lease let run out: keep_alive and ack are refused, and the item comes back.
    q.put("slow job".to_string()).await.unwrap();
    let (_, lapsed) = q.get_unacked_timeout(PATIENCE).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(matches!(
        lapsed.keep_alive().await,
        Err(RemoteError::Refused(Refusal::LeaseExpired))
    ));
    let third = RemoteQueue::<String>::connect(&url, "long", KEY)
        .await
        .unwrap();
    assert_eq!(third.get_timeout(PATIENCE).await.unwrap(), "slow job");
    assert!(matches!(
        lapsed.ack().await,
        Err(RemoteError::Refused(Refusal::LeaseExpired))
    ));
    q.close().await.unwrap();
    third.close().await.unwrap();
}

#[tokio::test]
async fn a_dropped_delivery_and_a_closed_handle_give_items_back_at_once() {
    let server = Single::start();
    let url = server.url();
    // A lease far longer than the test: what comes back came back by a give-back.
    declared(
        &url,
        "back",
        QueueConfig::new().lease(Duration::from_secs(300)),
    )
    .await;
    let q = RemoteQueue::<u32>::connect(&url, "back", KEY)
        .await
        .unwrap();
    for i in 0..3 {
        q.put(i).await.unwrap();
    }
    let (zero, delivery) = q.get_unacked_timeout(PATIENCE).await.unwrap();
    assert_eq!(zero, 0);
    drop(delivery);
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(q.get_timeout(PATIENCE).await.unwrap());
    }
    seen.sort();
    assert_eq!(seen, vec![0, 1, 2]);
    q.close().await.unwrap();
    // Items pulled by a handle and not taken go back when it closes (a handle with a
    // pull outstanding is given what arrives: so one handle puts, one pulls).
    let producer = RemoteQueue::<u32>::connect(&url, "back", KEY)
        .await
        .unwrap();
    for i in 10..20 {
        producer.put(i).await.unwrap();
    }
    let puller = RemoteQueue::<u32>::connect(&url, "back", KEY)
        .await
        .unwrap();
    assert_eq!(puller.get_timeout(PATIENCE).await.unwrap(), 10);
    puller.close().await.unwrap();
    let consumer = RemoteQueue::<u32>::connect(&url, "back", KEY)
        .await
        .unwrap();
    let mut rest = Vec::new();
    for _ in 0..9 {
        rest.push(consumer.get_timeout(PATIENCE).await.unwrap());
    }
    rest.sort();
    assert_eq!(rest, (11..20).collect::<Vec<_>>());
    producer.close().await.unwrap();
    consumer.close().await.unwrap();
}

#[tokio::test]
async fn an_undecodable_item_is_handed_back_and_taken_off_the_stream() {
    let server = Single::start();
    let url = server.url();
    declared(&url, "mixed", QueueConfig::new()).await;
    let bytes = RemoteQueue::<Vec<u8>>::connect(&url, "mixed", KEY)
        .await
        .unwrap();
    let flags = RemoteQueue::<bool>::connect(&url, "mixed", KEY)
        .await
        .unwrap();
    // Its first byte (the length, 11) is no bool.
    bytes.put(vec![0; 11]).await.unwrap();
    flags.put(true).await.unwrap();
    match flags.get_timeout(PATIENCE).await {
        Err(RemoteError::Decode { item, .. }) => assert_eq!(item.len(), 12),
        other => panic!("expected a decode error, got {other:?}"),
    }
    assert!(flags.get_timeout(PATIENCE).await.unwrap());
    flags.join_timeout(PATIENCE).await.unwrap();
    bytes.close().await.unwrap();
    flags.close().await.unwrap();
}

#[tokio::test]
async fn the_key_is_the_nats_token() {
    let server = Single::start_with(&["--auth", "s3cret"]);
    let url = server.url();
    let wrong = RemoteQueue::<u8>::connect(&url, "jobs", "guess")
        .await
        .unwrap_err();
    assert!(
        matches!(wrong, RemoteError::Auth(procq::AuthError::Rejected)),
        "{wrong}"
    );
    let right = ClientOptions::new("s3cret\n"); // trimmed, as for procq's server
    jetstream::declare(&right, &url, "jobs", &QueueConfig::new())
        .await
        .unwrap();
    let q = right.connect::<u8>(&url, "jobs").await.unwrap();
    q.put(1).await.unwrap();
    assert_eq!(q.get_timeout(PATIENCE).await.unwrap(), 1);
    q.close().await.unwrap();
}

#[tokio::test]
async fn a_dead_server_turns_every_wait_into_a_timeout() {
    let mut server = Single::start();
    let url = server.url();
    declared(&url, "gone", QueueConfig::new()).await;
    let short = ClientOptions::new(KEY).request_timeout(Duration::from_secs(1));
    let q = short.connect::<u32>(&url, "gone").await.unwrap();
    q.put(1).await.unwrap();
    server.server.kill9();
    let started = Instant::now();
    let put = q.put(2).await.unwrap_err();
    assert!(matches!(put.error(), RemoteError::Timeout), "{put}");
    assert!(put.error().put_in_doubt());
    assert_eq!(put.into_inner(), 2);
    assert!(started.elapsed() < Duration::from_secs(10));
    let try_put = q.try_put(3).await.unwrap_err();
    assert!(try_put.error().put_in_doubt(), "{try_put}");
    assert!(matches!(
        q.put_timeout(4, Duration::from_millis(200))
            .await
            .unwrap_err()
            .error(),
        RemoteError::Timeout
    ));
    assert!(matches!(
        q.get_timeout(Duration::from_millis(300)).await,
        Err(RemoteError::Timeout)
    ));
    assert!(matches!(q.len().await, Err(RemoteError::Timeout)));
    assert!(matches!(
        q.join_timeout(Duration::from_millis(300)).await,
        Err(RemoteError::Timeout)
    ));
    q.feed(5).await.unwrap();
    let flushed = q.flush().await.unwrap_err();
    assert_eq!(flushed.in_doubt(), &[5], "{flushed}");
    assert!(matches!(flushed.error(), RemoteError::Timeout));
    q.feed(6).await.unwrap();
    let closed = q.close().await.unwrap_err();
    assert_eq!(closed.into_items(), vec![6]);
    // Connecting to a server that is not there fails at once.
    let refused = short.connect::<u32>(&url, "gone").await.unwrap_err();
    assert!(matches!(refused, RemoteError::Io(_)), "{refused}");
    // Back on the same store: the acknowledged item is there.
    server.server.start();
    server.server.wait_ready(started);
    let again = short.connect::<u32>(&url, "gone").await.unwrap();
    let mut got = Vec::new();
    while let Ok(item) = again.get_timeout(Duration::from_secs(2)).await {
        got.push(item);
    }
    assert!(got.contains(&1), "{got:?}");
    again.close().await.unwrap();
}

#[tokio::test]
async fn tasks_of_one_handle_share_its_items() {
    let server = Single::start();
    let url = server.url();
    declared(&url, "shared", QueueConfig::new()).await;
    let q = RemoteQueue::<u64>::connect(&url, "shared", KEY)
        .await
        .unwrap();
    let n = 5000u64;
    let producer = tokio::spawn({
        let q = q.clone();
        async move {
            for i in 0..n {
                q.feed(i).await.unwrap();
            }
            q.flush().await.unwrap();
        }
    });
    let mut workers = Vec::new();
    for _ in 0..4 {
        let q = q.clone();
        workers.push(tokio::spawn(async move {
            let mut got = Vec::new();
            while let Ok(item) = q.get_timeout(Duration::from_millis(1500)).await {
                got.push(item);
            }
            got
        }));
    }
    producer.await.unwrap();
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await.unwrap());
    }
    all.sort();
    assert_eq!(all, (0..n).collect::<Vec<_>>());
    q.close().await.unwrap();
}

/// A user the NATS server does not permit to publish on the queue's subject (users and
/// passwords in the URLs): the put is refused as `NotAllowed` as soon as the server says
/// so (not a timeout, not "in doubt") and the item comes back; a fed item is refused by
/// the flush. Getting stays allowed.
#[tokio::test]
async fn a_put_the_server_does_not_permit_is_refused_as_not_allowed() {
    let conf = TempDir::new("nats-permissions");
    let path = conf.0.join("permissions.conf");
    std::fs::write(
        &path,
        r#"authorization {
  users = [
    { user: admin, password: adminpw }
    { user: reader, password: readerpw, permissions: { publish: { deny: ["procq.jobs"] } } }
  ]
}
"#,
    )
    .unwrap();
    let server = Single::start_with(&["-c", path.to_str().unwrap()]);
    let as_user = |user: &str, pw: &str| {
        let url = server.url();
        url.replace("nats://", &format!("nats://{user}:{pw}@"))
    };
    let admin = as_user("admin", "adminpw");
    let reader = as_user("reader", "readerpw");
    let options = ClientOptions::new("unused").request_timeout(Duration::from_secs(2));
    jetstream::declare(&options, &admin, "jobs", &QueueConfig::new())
        .await
        .unwrap();
    let producer = options.connect::<u8>(&admin, "jobs").await.unwrap();
    producer.put(1).await.unwrap();
    let wrong = options
        .connect::<u8>(&as_user("reader", "guess"), "jobs")
        .await
        .unwrap_err();
    assert!(
        matches!(wrong, RemoteError::Auth(procq::AuthError::Rejected)),
        "{wrong}"
    );
    let q = options.connect::<u8>(&reader, "jobs").await.unwrap();
    let started = Instant::now();
    let refused = q.put(2).await.unwrap_err();
    println!("refused after {:?}: {refused}", started.elapsed());
    assert!(
        matches!(refused.error(), RemoteError::Refused(Refusal::NotAllowed)),
        "{refused}"
    );
    assert!(!refused.error().put_in_doubt(), "{refused}");
    assert_eq!(refused.into_inner(), 2, "the item comes back");
    // A fed item: refused by the flush, not in doubt.
    q.feed(3).await.unwrap();
    let flushed = q.flush().await.unwrap_err();
    assert_eq!(flushed.refused(), &[(3, Refusal::NotAllowed)], "{flushed}");
    assert!(flushed.in_doubt().is_empty(), "{flushed}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(q.get_timeout(PATIENCE).await.unwrap(), 1);
    q.close().await.unwrap();
    producer.close().await.unwrap();
}

/// A future that uses up the task's cooperative budget on its first poll and is pending
/// then (so the other branch of a `select!` is cut off at its next await), ready on the
/// next: a way to cancel a future part-way, deterministically.
#[derive(Default)]
struct CutOff {
    polled: bool,
}

impl std::future::Future for CutOff {
    type Output = ();
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        if self.polled {
            return std::task::Poll::Ready(());
        }
        self.polled = true;
        for _ in 0..10_000 {
            let mut budget = Box::pin(tokio::task::consume_budget());
            if budget.as_mut().poll(cx).is_pending() {
                break;
            }
        }
        std::task::Poll::Pending
    }
}

/// Cancel safety over JetStream: a `get` cut off part-way loses no item (it used to take
/// the item, then await the ack's publish: cut off there, the item waited for its lease);
/// an `ack` cut off before its answer gives the item back at once; and an item taken by
/// `try_get` counts as acknowledged for `task_done`.
#[tokio::test]
async fn cut_off_gets_and_acks_lose_nothing_and_try_get_counts_for_task_done() {
    let server = Single::start();
    let url = server.url();
    let lease = Duration::from_secs(300); // far beyond the test: only a give-back helps
    declared(&url, "cut", QueueConfig::new().lease(lease)).await;
    let q = options().connect::<u32>(&url, "cut").await.unwrap();
    q.put(1).await.unwrap();
    q.put(2).await.unwrap();
    let (one, delivery) = q.get_unacked_timeout(PATIENCE).await.unwrap();
    assert_eq!(one, 1);
    let cut = tokio::select! {
        biased;
        _ = CutOff::default() => true,
        acked = delivery.ack() => { acked.unwrap(); false }
    };
    let mut rest = Vec::new();
    for _ in 0..if cut { 2 } else { 1 } {
        // Within 10 s, not the 300 s lease: a cut-off ack gave item 1 back at once.
        let (item, delivery) = q
            .get_unacked_timeout(Duration::from_secs(10))
            .await
            .unwrap();
        delivery.ack().await.unwrap();
        rest.push(item);
    }
    rest.sort();
    assert_eq!(rest, if cut { vec![1, 2] } else { vec![2] }, "cut {cut}");
    q.put(3).await.unwrap();
    let deadline = Instant::now() + PATIENCE;
    while !format!("{q:?}").contains("buffered: 1") {
        assert!(Instant::now() < deadline, "item 3 never pulled: {q:?}");
        tokio::task::yield_now().await;
    }
    let got = tokio::select! {
        biased;
        _ = CutOff::default() => None,
        got = q.get() => Some(got.unwrap()),
    };
    let three = match got {
        Some(three) => three,
        None => q.get_timeout(Duration::from_secs(10)).await.unwrap(),
    };
    assert_eq!(three, 3, "the cut-off get lost nothing");
    q.feed(4).await.unwrap();
    q.feed(5).await.unwrap();
    q.flush().await.unwrap(); // one pack
    assert_eq!(q.get_timeout(PATIENCE).await.unwrap(), 4);
    assert_eq!(q.try_get().unwrap(), 5);
    for _ in 0..5 {
        q.task_done().await.unwrap();
    }
    q.join_timeout(PATIENCE).await.unwrap();
    q.close().await.unwrap();
}
