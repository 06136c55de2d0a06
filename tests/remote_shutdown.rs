//! `Server::shutdown`: puts refused at once, consumers drain, losses reported.

mod remote_common;

use std::time::Duration;

use procq::remote::{Refusal, RemoteQueue, ServerConfig};
use procq::RemoteError;
use remote_common::*;

#[tokio::test]
async fn shutdown_refuses_puts_at_once_and_lets_consumers_drain() {
    let (server, addr) = start_server(ServerConfig::new(KEY), 0).await;
    let producer = RemoteQueue::<u64>::connect(&addr, "jobs", KEY)
        .await
        .unwrap();
    let consumer = RemoteQueue::<u64>::connect(&addr, "jobs", KEY)
        .await
        .unwrap();
    for i in 0..1000 {
        producer.feed(i).await.unwrap();
    }
    producer.flush().await.unwrap();
    let shutting = tokio::spawn({
        let server = server.clone();
        async move { server.shutdown(PATIENCE).await }
    });
    eventually("shutdown began", || server.is_shutting_down()).await;
    let refused = producer.put(1000).await.unwrap_err();
    assert!(
        matches!(refused.error(), RemoteError::Refused(Refusal::ShuttingDown)),
        "{refused}"
    );
    assert_eq!(refused.into_inner(), 1000);
    // Fed puts refused are handed back by flush.
    producer.feed(1001).await.unwrap();
    let flushed = producer.flush().await.unwrap_err();
    assert_eq!(flushed.refused().len(), 1);
    assert_eq!(flushed.refused()[0], (1001, Refusal::ShuttingDown));
    // New connections are refused.
    assert!(RemoteQueue::<u64>::connect(&addr, "jobs", KEY)
        .await
        .is_err());
    for i in 0..1000 {
        let (item, delivery) = consumer.get_unacked().await.unwrap();
        assert_eq!(item, i);
        delivery.ack().await.unwrap();
    }
    let report = tokio::time::timeout(PATIENCE, shutting)
        .await
        .unwrap()
        .unwrap();
    assert!(report.is_clean(), "{report}");
}

/// 100,000 acknowledged items, nobody to drain them: every one is reported.
#[tokio::test]
async fn shutdown_reports_every_item_it_discards() {
    let (server, addr) = start_server(ServerConfig::new(KEY), 0).await;
    server.declare("other", 0).unwrap();
    let producer = RemoteQueue::<u64>::connect(&addr, "jobs", KEY)
        .await
        .unwrap();
    for i in 0..100_000 {
        producer.feed(i).await.unwrap();
    }
    producer.flush().await.unwrap();
    let report = server.shutdown(Duration::from_millis(300)).await;
    assert_eq!(report.discarded, vec![("jobs".to_string(), 100_000)]);
    assert_eq!(report.to_string(), "discarded 100000 items: jobs 100000");
    eprintln!("shutdown report: {report}");
    let after = producer.put(1).await.unwrap_err();
    assert!(
        matches!(after.error(), RemoteError::Disconnected(_)),
        "{after}"
    );
}
