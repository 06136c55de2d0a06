use std::time::Duration;

#[tokio::test]
async fn send_and_receive_in_one_process() {
    let (tx, rx) = procq::channel::<(u32, String)>().unwrap();
    for i in 0..1000 {
        tx.send((i, format!("item {i}"))).await.unwrap();
    }
    for i in 0..1000 {
        assert_eq!(rx.recv().await.unwrap(), (i, format!("item {i}")));
    }
    drop(tx);
    assert!(matches!(
        rx.recv_timeout(Duration::from_secs(5)).await,
        Err(procq::RecvError::Closed)
    ));
}
