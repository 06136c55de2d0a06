//! The channel API's contract inside one process: every error a caller can see, the
//! timeouts, cancellation, `Sink` / `Stream`, duplex.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use procq::{RecvTimeoutError, SendErrorKind, TryRecvError};
use serde::{Deserialize, Serialize};

const PATIENCE: Duration = Duration::from_secs(30);

#[tokio::test]
async fn try_send_on_a_full_buffer_gives_the_item_back() {
    let (tx, rx) = procq::Options::new()
        .buffer_bytes(4096)
        .channel::<String>()
        .unwrap();
    let mut accepted = 0;
    let err = loop {
        match tx.try_send(format!("item {accepted}")) {
            Ok(()) => accepted += 1,
            Err(e) => break e,
        }
        assert!(accepted < 1_000_000, "never full");
    };
    assert!(err.is_full());
    assert_eq!(err.into_inner(), format!("item {accepted}"));
    drop(tx);
    for i in 0..accepted {
        assert_eq!(
            rx.recv_timeout(PATIENCE).await.unwrap(),
            format!("item {i}")
        );
    }
}

#[tokio::test]
async fn send_timeout_gives_up_with_the_item_when_nobody_reads() {
    let (tx, _rx) = procq::Options::new()
        .buffer_bytes(1)
        .channel::<Vec<u32>>()
        .unwrap();
    // Fill the kernel and the one-byte buffer.
    let big = vec![7u32; 10_000];
    let err = loop {
        match tx
            .send_timeout(big.clone(), Duration::from_millis(50))
            .await
        {
            Ok(()) => continue,
            Err(e) => break e,
        }
    };
    assert!(err.is_timeout(), "{err}");
    assert_eq!(err.into_inner(), big);
}

#[tokio::test]
async fn recv_timeout_and_try_recv_on_an_empty_channel() {
    let (tx, rx) = procq::channel::<u8>().unwrap();
    assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));
    assert!(matches!(
        rx.recv_timeout(Duration::from_millis(20)).await,
        Err(RecvTimeoutError::Timeout)
    ));
    assert!(!rx.is_ready());
    tx.send(1).await.unwrap();
    tx.flush().await.unwrap();
    assert!(rx.is_ready());
    assert_eq!(rx.try_recv().unwrap(), 1);
}

#[tokio::test]
async fn the_stream_ends_when_the_last_sender_is_gone() {
    let (tx, mut rx) = procq::channel::<u32>().unwrap();
    let tx2 = tx.clone();
    tx.send(1).await.unwrap();
    tx2.send(2).await.unwrap();
    drop(tx);
    drop(tx2);
    let all: Vec<u32> = (&mut rx).map(|r| r.unwrap()).collect().await;
    assert_eq!(all, vec![1, 2]);
    assert!(rx.recv().await.unwrap_err().is_closed());
}

/// A type whose serialization fails for some values.
#[derive(Debug, PartialEq, Deserialize)]
struct Picky(u32);
impl Serialize for Picky {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0 == 13 {
            return Err(serde::ser::Error::custom("unlucky"));
        }
        s.serialize_u32(self.0)
    }
}

#[tokio::test]
async fn an_encoding_error_reaches_the_caller_and_loses_nothing_else() {
    let (tx, rx) = procq::channel::<Picky>().unwrap();
    tx.send(Picky(1)).await.unwrap();
    let err = tx.send(Picky(13)).await.unwrap_err();
    assert!(matches!(err.kind(), SendErrorKind::Encode(_)), "{err}");
    assert_eq!(err.into_inner(), Picky(13));
    tx.send(Picky(2)).await.unwrap();
    assert_eq!(rx.recv().await.unwrap(), Picky(1));
    assert_eq!(rx.recv().await.unwrap(), Picky(2));
}

#[tokio::test]
async fn an_item_over_max_item_bytes_is_refused() {
    let (tx, _rx) = procq::Options::new()
        .max_item_bytes(100_000)
        .channel::<Vec<u8>>()
        .unwrap();
    let err = tx.send(vec![1u8; 200_000]).await.unwrap_err();
    assert!(
        matches!(err.kind(), SendErrorKind::TooLarge { max: 100_000, .. }),
        "{err}"
    );
    assert_eq!(err.into_inner().len(), 200_000);
}

#[tokio::test]
async fn close_refuses_new_items_but_delivers_the_accepted_ones() {
    let (tx, rx) = procq::channel::<u32>().unwrap();
    let other = tx.clone();
    tx.send(1).await.unwrap();
    tx.close();
    assert!(tx.is_closed());
    let err = other.send(2).await.unwrap_err();
    assert!(matches!(err.kind(), SendErrorKind::Closed));
    assert_eq!(rx.recv().await.unwrap(), 1);
    // This process's side is closed and flushed: the channel ends even though handles live.
    assert!(rx.recv_timeout(PATIENCE).await.unwrap_err().is_closed());
}

#[tokio::test]
async fn drain_with_a_live_reader_delivers_everything() {
    let (tx, rx) = procq::channel::<u32>().unwrap();
    let reader = tokio::spawn(async move {
        let mut n = 0;
        while rx.recv().await.is_ok() {
            n += 1;
        }
        n
    });
    for i in 0..10_000 {
        tx.send(i).await.unwrap();
    }
    let left = tx.drain(PATIENCE).await;
    assert!(left.is_complete());
    assert_eq!(left.outcome(), procq::DrainOutcome::Flushed);
    drop(tx);
    assert_eq!(reader.await.unwrap(), 10_000);
}

#[tokio::test]
async fn drain_without_a_reader_returns_the_items_at_its_deadline() {
    let (tx, _rx) = procq::Options::new()
        .buffer_bytes(64 * 1024 * 1024)
        .channel::<Vec<u32>>()
        .unwrap();
    // About 15 MiB: more than the kernel's send buffer takes.
    for i in 0..400 {
        tx.send(vec![i; 25_000]).await.unwrap();
    }
    let start = std::time::Instant::now();
    let left = tx.drain(Duration::from_millis(200)).await;
    assert!(start.elapsed() < Duration::from_secs(2));
    assert_eq!(left.outcome(), procq::DrainOutcome::TimedOut);
    let items = left.undelivered();
    // The kernel took the first few; the rest come back, in order.
    let first = items[0][0];
    assert!(first > 0);
    let seqs: Vec<u32> = items.iter().map(|v| v[0]).collect();
    assert_eq!(seqs, (first..400).collect::<Vec<_>>());
    assert!(tx.send(vec![]).await.unwrap_err().is_closed());
}

#[tokio::test]
async fn sink_and_stream() {
    let (mut tx, rx) = procq::channel::<u64>().unwrap();
    let mut items = futures::stream::iter((0..5000u64).map(Ok));
    tx.send_all(&mut items).await.unwrap();
    SinkExt::close(&mut tx).await.unwrap();
    drop(tx);
    let got: Vec<u64> = rx.map(|r| r.unwrap()).collect().await;
    assert_eq!(got, (0..5000).collect::<Vec<_>>());
}

#[tokio::test]
async fn duplex_request_response_and_split() {
    let (client, server) = procq::duplex::<String, usize>().unwrap();
    let server = tokio::spawn(async move {
        let (tx, rx) = server.split();
        while let Ok(q) = rx.recv().await {
            tx.send(q.len()).await.unwrap();
        }
    });
    for word in ["a", "bb", "ccc"] {
        client.send(word.to_string()).await.unwrap();
        assert_eq!(client.recv_timeout(PATIENCE).await.unwrap(), word.len());
    }
    drop(client);
    tokio::time::timeout(PATIENCE, server)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_cancelled_send_drops_its_item_and_an_accepted_one_arrives() {
    let (tx, rx) = procq::Options::new()
        .buffer_bytes(1)
        .channel::<Vec<u64>>()
        .unwrap();
    let mut accepted = Vec::new();
    let mut cancelled = Vec::new();
    // About 30 MB, far more than the kernel takes: once it is full, every send waits.
    for i in 0..3000u64 {
        // A zero timeout cancels the send whenever it has to wait for room.
        match tokio::time::timeout(Duration::ZERO, tx.send(vec![i; 5000])).await {
            Ok(Ok(())) => accepted.push(i),
            Ok(Err(e)) => panic!("{e}"),
            Err(_) => cancelled.push(i),
        }
    }
    assert!(!cancelled.is_empty(), "no send ever had to wait");
    drop(tx);
    while let Ok(v) = rx.recv_timeout(PATIENCE).await {
        assert_eq!(v[0], accepted.remove(0), "cancelled items never arrive");
    }
    assert!(accepted.is_empty(), "accepted items all arrive");
}

#[test]
fn handles_are_send_sync_and_clone() {
    fn send_sync_clone<T: Send + Sync + Clone>() {}
    send_sync_clone::<procq::Sender<String>>();
    send_sync_clone::<procq::Receiver<String>>();
    send_sync_clone::<procq::Duplex<String, u8>>();
}
