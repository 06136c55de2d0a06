//! Liveness and leases: live consumers are never cut for silence, deliveries come back
//! after their lease, acks are confirmed, stalled peers are let go.

mod remote_common;

use std::time::{Duration, Instant};

use procq::remote::protocol::{Refusal, Request};
use procq::remote::{ClientOptions, RemoteQueue, ServerConfig};
use procq::RemoteError;
use remote_common::*;

#[test]
fn child_main() {
    run_child(|role| async move { play(&role).await });
}

async fn play(role: &str) {
    let addr = std::env::var("ADDR").unwrap_or_default();
    match role {
        // Gets one item, acknowledges it, and exits at once.
        "ack-and-exit" => {
            let q = RemoteQueue::<u64>::connect(&addr, "jobs", KEY)
                .await
                .unwrap();
            let (_, delivery) = q.get_unacked().await.unwrap();
            delivery.ack().await.unwrap();
            std::process::exit(0);
        }
        // Gets `N` items with `get`, closes, exits.
        "get-close-exit" => {
            let n: usize = std::env::var("N").unwrap().parse().unwrap();
            let q = RemoteQueue::<u64>::connect(&addr, "jobs", KEY)
                .await
                .unwrap();
            for _ in 0..n {
                q.get().await.unwrap();
            }
            q.close().await.unwrap();
            std::process::exit(0);
        }
        // Feeds big items into a full queue until killed.
        "stalled-producer" => {
            let q = ClientOptions::new(KEY)
                .put_window(10_000, 64 << 20)
                .connect::<Vec<u8>>(&addr, "jobs")
                .await
                .unwrap();
            for i in 0..200 {
                q.feed(vec![i as u8; 60_000]).await.unwrap();
            }
            report("fed");
            std::future::pending::<()>().await;
        }
        // Feeds items into a full queue and drops the handle without closing.
        "feed-and-drop" => {
            let q = RemoteQueue::<u64>::connect(&addr, "jobs", KEY)
                .await
                .unwrap();
            for i in 0..10 {
                q.feed(i).await.unwrap();
            }
            drop(q);
            report("dropped");
        }
        // A server with a queue "jobs", until killed.
        "server" => {
            let (_server, addr) = start_server(ServerConfig::new(KEY), 0).await;
            report(addr);
            std::future::pending::<()>().await;
        }
        other => panic!("unknown role {other}"),
    }
}

#[tokio::test]
async fn a_consumer_holding_a_job_past_the_idle_timeout_is_not_cut() {
    let idle = Duration::from_millis(400);
    let (server, addr) = start_server(ServerConfig::new(KEY).idle_timeout(idle), 0).await;
    let producer = RemoteQueue::<u64>::connect(&addr, "jobs", KEY)
        .await
        .unwrap();
    let consumer = RemoteQueue::<u64>::connect(&addr, "jobs", KEY)
        .await
        .unwrap();
    producer.put(1).await.unwrap();
    let (job, delivery) = consumer.get_unacked().await.unwrap();
    tokio::time::sleep(idle * 3).await; // the "work": longer than the idle timeout
    delivery.ack().await.unwrap();
    assert_eq!(job, 1);
    // Waiting on an empty queue past the idle timeout is a timeout, not a disconnect.
    let waited = consumer.get_timeout(idle * 3).await;
    assert!(matches!(waited, Err(RemoteError::Timeout)), "{waited:?}");
    producer.put(2).await.unwrap();
    assert_eq!(consumer.get_timeout(PATIENCE).await.unwrap(), 2);
    assert_eq!(server.stats().queues[0].redeliveries, 0);
}

#[tokio::test]
async fn a_delivery_comes_back_after_its_lease_and_keep_alive_extends_it() {
    let lease = Duration::from_millis(300);
    let (server, addr) = start_server(ServerConfig::new(KEY), 0).await;
    let options = ClientOptions::new(KEY).lease(lease).prefetch(1);
    let a = options.connect::<u64>(&addr, "jobs").await.unwrap();
    let b = options.connect::<u64>(&addr, "jobs").await.unwrap();
    assert_eq!(a.lease(), lease);
    a.put(7).await.unwrap();
    let (_, held) = a.get_unacked().await.unwrap();
    let start = Instant::now();
    let (again, delivery) = b.get_unacked_timeout(PATIENCE).await.unwrap();
    let redelivered_after = start.elapsed();
    assert_eq!(again, 7);
    assert!(redelivered_after >= lease, "{redelivered_after:?}");
    eprintln!("lease {lease:?}: redelivered after {redelivered_after:?}");
    let late = held.ack().await.unwrap_err();
    assert!(
        matches!(late, RemoteError::Refused(Refusal::LeaseExpired)),
        "{late}"
    );
    delivery.ack().await.unwrap();

    // Kept alive, a delivery stays with its consumer past its lease.
    a.put(8).await.unwrap();
    let (_, held) = a.get_unacked().await.unwrap();
    let until = Instant::now() + lease * 4;
    while Instant::now() < until {
        held.keep_alive().await.unwrap();
        assert!(matches!(
            b.get_timeout(lease / 3).await,
            Err(RemoteError::Timeout)
        ));
    }
    held.ack().await.unwrap();
    let jobs = &server.stats().queues[0];
    assert_eq!((jobs.acks, jobs.redeliveries), (2, 1));
}

#[tokio::test]
async fn a_dropped_delivery_goes_back_at_once() {
    let (_server, addr) = start_server(ServerConfig::new(KEY), 0).await;
    let a = ClientOptions::new(KEY)
        .prefetch(1)
        .connect::<u64>(&addr, "jobs")
        .await
        .unwrap();
    let b = ClientOptions::new(KEY)
        .prefetch(1)
        .connect::<u64>(&addr, "jobs")
        .await
        .unwrap();
    a.put(9).await.unwrap();
    let (_, delivery) = a.get_unacked().await.unwrap();
    drop(delivery);
    assert_eq!(b.get_timeout(PATIENCE).await.unwrap(), 9);
}

/// The ack is the server's when `ack` returns: a consumer that acks and exits at once
/// never gets its item delivered again.
#[tokio::test]
async fn an_ack_is_held_by_the_server_when_ack_returns() {
    let (server, addr) = start_server(ServerConfig::new(KEY), 0).await;
    let producer = RemoteQueue::<u64>::connect(&addr, "jobs", KEY)
        .await
        .unwrap();
    for round in 0..20 {
        producer.put(round).await.unwrap();
        let mut cmd = child_command("ack-and-exit");
        cmd.env("ADDR", &addr);
        let mut kid = Kid::spawn(cmd);
        assert!(kid.exit_within(PATIENCE).await.success());
        let jobs = &server.stats().queues[0];
        assert_eq!(jobs.acks, round + 1, "round {round}: the ack was lost");
    }
    eventually("every consumer gone", || server.stats().connections == 1).await;
    let jobs = &server.stats().queues[0];
    assert_eq!((jobs.len, jobs.redeliveries), (0, 0));
}

#[tokio::test]
async fn close_flushes_the_acks_of_get() {
    let (server, addr) = start_server(ServerConfig::new(KEY), 0).await;
    let producer = RemoteQueue::<u64>::connect(&addr, "jobs", KEY)
        .await
        .unwrap();
    for i in 0..1000 {
        producer.feed(i).await.unwrap();
    }
    producer.flush().await.unwrap();
    let mut cmd = child_command("get-close-exit");
    cmd.env("ADDR", &addr).env("N", "1000");
    let mut kid = Kid::spawn(cmd);
    assert!(kid.exit_within(PATIENCE).await.success());
    let jobs = &server.stats().queues[0];
    assert_eq!((jobs.acks, jobs.len, jobs.in_flight), (1000, 0, 0));
}

/// A producer stalled at its connection's memory cap is noticed when it is killed: its
/// slot and memory come back, and its puts that were never confirmed are not admitted.
#[tokio::test]
async fn a_killed_producer_stalled_at_the_memory_cap_is_let_go() {
    // The killed producer's unsent data holds its FIN back while the server is not
    // reading: the server's next ping (a quarter of the idle timeout) draws the reset.
    let config = ServerConfig::new(KEY)
        .max_frame(64 * 1024)
        .connection_memory(1 << 20)
        .idle_timeout(Duration::from_secs(1));
    let (server, addr) = start_server(config, 1).await;
    let mut cmd = child_command("stalled-producer");
    cmd.env("ADDR", &addr);
    let mut producer = Kid::spawn(cmd);
    assert_eq!(producer.report().await, "fed");
    eventually("the producer fills its connection's memory", || {
        server.stats().memory >= 1 << 20
    })
    .await;
    producer.kill().await;
    eventually("the server lets the killed producer go", || {
        let s = server.stats();
        s.connections == 0 && s.memory == 60_000 + 3
    })
    .await;
    let consumer = RemoteQueue::<Vec<u8>>::connect(&addr, "jobs", KEY)
        .await
        .unwrap();
    assert_eq!(consumer.get_timeout(PATIENCE).await.unwrap()[0], 0);
    assert!(matches!(
        consumer.get_timeout(Duration::from_millis(300)).await,
        Err(RemoteError::Timeout)
    ));
    assert_eq!(server.stats().queues[0].puts, 1);
}

/// A consumer that grants credit and stops reading: its items come back when their
/// leases run out; if it also stops taking bytes, the server disconnects it.
#[tokio::test]
async fn a_consumer_that_stops_reading_gives_its_items_back() {
    let idle = Duration::from_millis(500);
    let config = ServerConfig::new(KEY)
        .idle_timeout(idle)
        .lease(Duration::from_millis(300));
    let (server, addr) = start_server(config, 0).await;
    let mut stuck = raw_client(&addr, Some("jobs")).await;
    send(&mut stuck, &Request::Credit { n: 1000 }).await;
    let producer = RemoteQueue::<Vec<u8>>::connect(&addr, "jobs", KEY)
        .await
        .unwrap();
    for i in 0..5u8 {
        producer.put(vec![i; 10]).await.unwrap();
    }
    eventually("the stuck consumer holds the items", || {
        server.stats().queues[0].in_flight == 5
    })
    .await;
    let good = ClientOptions::new(KEY)
        .prefetch(1)
        .connect::<Vec<u8>>(&addr, "jobs")
        .await
        .unwrap();
    for i in 0..5u8 {
        assert_eq!(good.get_timeout(PATIENCE).await.unwrap(), vec![i; 10]);
    }
    // Now big items: the stuck consumer's socket fills, the server's write stalls.
    for i in 0..200u8 {
        producer.feed(vec![i; 60_000]).await.unwrap();
    }
    producer.flush().await.unwrap();
    eventually("the stalled consumer is disconnected", || {
        server.stats().queues[0].consumers == 1
    })
    .await;
    for _ in 0..200 {
        good.get_timeout(PATIENCE).await.unwrap();
    }
    drop(stuck);
}

/// A handle dropped with puts the server has not confirmed says so (on stderr, as no
/// tracing subscriber is installed), instead of staying silent.
#[tokio::test]
async fn a_handle_dropped_with_unconfirmed_puts_says_so() {
    let (_server, addr) = start_server(ServerConfig::new(KEY), 1).await;
    let mut cmd = child_command("feed-and-drop");
    cmd.env("ADDR", &addr).stderr(std::process::Stdio::piped());
    let mut kid = Kid::spawn(cmd);
    let mut stderr = kid.child.stderr.take().unwrap();
    assert_eq!(kid.report().await, "dropped");
    assert!(kid.exit_within(PATIENCE).await.success());
    let mut said = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut stderr, &mut said)
        .await
        .unwrap();
    assert!(
        said.contains("procq: remote queue \"jobs\" dropped with") && said.contains("close()"),
        "{said}"
    );
}

/// Every wait on the server has a bound: a server that stops answering (SIGSTOP) turns
/// an ack, a flush and a len into `Timeout`, not a hang.
#[tokio::test]
async fn a_server_that_stops_answering_is_a_timeout() {
    let mut server = Kid::spawn(child_command("server"));
    let addr = server.report().await;
    let q = ClientOptions::new(KEY)
        .request_timeout(Duration::from_millis(300))
        .connect::<u64>(&addr, "jobs")
        .await
        .unwrap();
    q.put(1).await.unwrap();
    let (_, delivery) = q.get_unacked().await.unwrap();
    let pid = rustix::process::Pid::from_raw(server.child.id().unwrap() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::STOP).unwrap();
    stopped(pid.as_raw_nonzero().get()).await;
    let acked = delivery.ack().await;
    assert!(matches!(acked, Err(RemoteError::Timeout)), "{acked:?}");
    assert!(matches!(q.len().await, Err(RemoteError::Timeout)));
    q.feed(2).await.unwrap();
    let flushed = q
        .flush_timeout(Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(matches!(flushed.error(), RemoteError::Timeout), "{flushed}");
    rustix::process::kill_process(pid, rustix::process::Signal::CONT).unwrap();
    q.flush().await.unwrap(); // it answers again: the fed item is held
    server.kill().await;
}

/// Waits until process `pid` is stopped (`T` in `/proc/PID/stat`): `kill` only queues the
/// signal, and a server still running for a moment could answer what the test sends next.
async fn stopped(pid: i32) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        // The state follows the command name, which is in parentheses.
        let state = stat.rsplit_once(')').unwrap().1.trim_start().chars().next();
        if state == Some('T') {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "process {pid} never stopped"
        );
        tokio::task::yield_now().await;
    }
}
