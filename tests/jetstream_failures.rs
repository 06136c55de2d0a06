//! Failures on one JetStream server (feature `nats`), with real processes: a consumer
//! SIGKILLed mid-stream loses nothing, and a server killed with SIGKILL and started again
//! on its store still holds every acknowledged put.

mod common;
mod nats_common;

use std::collections::HashSet;
use std::io::Write;
use std::time::{Duration, Instant};

use common::{child_command, report, run_child, Kid};
use nats_common::*;
use procq::remote::jetstream::{self, QueueConfig};
use procq::remote::{ClientOptions, RemoteError};
use serde::{Deserialize, Serialize};

const KEY: &str = "token";
const PATIENCE: Duration = Duration::from_secs(60);

/// A job: its number and some payload.
#[derive(Serialize, Deserialize)]
pub struct Job {
    id: u64,
    #[serde(with = "serde_bytes")]
    pad: Vec<u8>,
}

#[test]
fn child_main() {
    run_child(|role| async move { play(&role).await });
}

async fn play(role: &str) {
    let url = std::env::var("URL").unwrap();
    let n: u64 = std::env::var("N").unwrap_or_default().parse().unwrap_or(0);
    match role {
        // Feeds jobs 0..N, then closes; every job must be confirmed.
        "producer" => {
            let q = ClientOptions::new(KEY)
                .connect::<Job>(&url, "work")
                .await
                .unwrap();
            for id in 0..n {
                q.feed(Job {
                    id,
                    pad: vec![7; 64],
                })
                .await
                .unwrap();
            }
            q.close().await.unwrap();
            report("confirmed");
        }
        // Writes each job's id to its file (unbuffered: it survives a SIGKILL) before
        // acknowledging it, until killed. Reports once it has done `HALFWAY` jobs.
        "consumer" => {
            let halfway: u64 = std::env::var("HALFWAY").unwrap().parse().unwrap();
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(std::env::var("OUT").unwrap())
                .unwrap();
            let q = ClientOptions::new(KEY)
                .prefetch(256)
                .connect::<Job>(&url, "work")
                .await
                .unwrap();
            let mut done = 0u64;
            loop {
                let (job, delivery) = q.get_unacked().await.unwrap();
                file.write_all(format!("{}\n", job.id).as_bytes()).unwrap();
                // A lease that ran out is no loss: the job comes back.
                let _ = delivery.ack().await;
                done += 1;
                if done == halfway {
                    report("halfway");
                }
            }
        }
        // Feeds 10 jobs and drops the handle without closing it; lives on until killed.
        "feed-and-drop" => {
            let q = ClientOptions::new(KEY)
                .connect::<Job>(&url, "work")
                .await
                .unwrap();
            for id in 0..10 {
                q.feed(Job { id, pad: vec![] }).await.unwrap();
            }
            drop(q);
            report("dropped");
            std::future::pending::<()>().await;
        }
        other => panic!("unknown role {other}"),
    }
}

fn ids_in(path: &std::path::Path) -> Vec<u64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect()
}

/// 100,000 jobs, one producer and two consumer processes; one consumer is SIGKILLed
/// mid-stream holding unacknowledged jobs. Every job is processed at least once: what
/// the dead one held comes back after the lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_killed_mid_stream_loses_no_job() {
    let server = Single::start();
    let url = server.url();
    let lease = Duration::from_secs(3);
    let options = ClientOptions::new(KEY);
    jetstream::declare(&options, &url, "work", &QueueConfig::new().lease(lease))
        .await
        .unwrap();
    let n = 100_000u64;
    let out = |name: &str| server.dir.0.join(format!("{name}.ids"));
    let consumer = |name: &str, halfway: u64| {
        let mut cmd = child_command("consumer");
        cmd.env("URL", &url)
            .env("OUT", out(name))
            .env("HALFWAY", halfway.to_string());
        Kid::spawn(cmd)
    };
    let mut victim = consumer("victim", 20_000);
    let mut survivor = consumer("survivor", u64::MAX);
    let mut producer = {
        let mut cmd = child_command("producer");
        cmd.env("URL", &url).env("N", n.to_string());
        Kid::spawn(cmd)
    };
    assert_eq!(victim.report().await, "halfway");
    let pid = rustix::process::Pid::from_raw(victim.child.id().unwrap() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
    let killed = Instant::now();
    assert!(!victim.exit_within(PATIENCE).await.success());
    assert_eq!(producer.report().await, "confirmed");
    assert!(producer.exit_within(PATIENCE).await.success());
    // Done when the stream holds nothing: every job acknowledged.
    let watcher = options.connect::<Job>(&url, "work").await.unwrap();
    watcher.join_timeout(PATIENCE).await.unwrap();
    let drained = killed.elapsed();
    survivor.kill().await;
    let victim_ids = ids_in(&out("victim"));
    let survivor_ids = ids_in(&out("survivor"));
    let all: HashSet<u64> = victim_ids.iter().chain(&survivor_ids).copied().collect();
    let missing: Vec<u64> = (0..n).filter(|id| !all.contains(id)).take(10).collect();
    assert!(missing.is_empty(), "jobs never processed: {missing:?}…");
    let duplicates = victim_ids.len() + survivor_ids.len() - all.len();
    // What the victim held unacknowledged came back only after its lease.
    assert!(
        drained >= lease / 2,
        "queue empty {drained:?} after the kill"
    );
    eprintln!(
        "consumer SIGKILL: {n} jobs, victim processed {} before the kill, survivor {}; \
         {duplicates} processed twice (redelivered after the {lease:?} lease); queue empty \
         {drained:.1?} after the kill",
        victim_ids.len(),
        survivor_ids.len()
    );
    watcher.close().await.unwrap();
}

/// Puts acknowledged by JetStream survive a kill -9 of the server: started again on the
/// same store, it holds every one.
#[tokio::test]
async fn a_server_killed_and_restarted_keeps_every_acknowledged_put() {
    let mut server = Single::start();
    let url = server.url();
    let options = ClientOptions::new(KEY).request_timeout(Duration::from_secs(2));
    jetstream::declare(&options, &url, "work", &QueueConfig::new())
        .await
        .unwrap();
    let q = options.connect::<Job>(&url, "work").await.unwrap();
    // Confirmed in rounds of 1,000 fed jobs, plus single puts.
    let mut confirmed = HashSet::new();
    for round in 0..20u64 {
        for id in round * 1000..(round + 1) * 1000 {
            q.feed(Job {
                id,
                pad: vec![1; 64],
            })
            .await
            .unwrap();
        }
        q.flush().await.unwrap();
        confirmed.extend(round * 1000..(round + 1) * 1000);
        q.put(Job {
            id: 1_000_000 + round,
            pad: vec![2; 64],
        })
        .await
        .unwrap();
        confirmed.insert(1_000_000 + round);
    }
    // More fed, not waited for, when the server dies: those are in doubt, not promised.
    for id in 2_000_000..2_005_000 {
        q.feed(Job {
            id,
            pad: vec![3; 64],
        })
        .await
        .unwrap();
    }
    server.server.kill9();
    let unconfirmed = match q.close().await {
        Ok(()) => 0,
        Err(e) => e.in_doubt().len() + e.refused().len(),
    };
    server.restart();
    let restarted = Instant::now();
    let reader = options.connect::<Job>(&url, "work").await.unwrap();
    let info = jetstream::info(&options, &url, "work").await.unwrap();
    assert!(info.messages > 0, "{info:?}");
    let mut got = HashSet::new();
    loop {
        match reader.get_timeout(Duration::from_secs(2)).await {
            Ok(job) => {
                got.insert(job.id);
            }
            Err(RemoteError::Timeout) => break,
            Err(e) => panic!("{e}"),
        }
    }
    let lost: Vec<&u64> = confirmed.difference(&got).take(10).collect();
    assert!(lost.is_empty(), "acknowledged puts lost: {lost:?}");
    eprintln!(
        "restart: {} acknowledged items all back (of {} read) {:?} after the restart; \
         {unconfirmed} fed items were unconfirmed when the server died",
        confirmed.len(),
        got.len(),
        restarted.elapsed()
    );
    reader.close().await.unwrap();
}

/// A handle dropped without `close` says on stderr how many fed items were unconfirmed,
/// and its task still sends them while the runtime runs.
#[tokio::test]
async fn a_handle_dropped_unconfirmed_says_so_and_still_sends() {
    let server = Single::start();
    let url = server.url();
    let options = ClientOptions::new(KEY);
    jetstream::declare(&options, &url, "work", &QueueConfig::new())
        .await
        .unwrap();
    let mut cmd = child_command("feed-and-drop");
    cmd.env("URL", &url).stderr(std::process::Stdio::piped());
    let mut kid = Kid::spawn(cmd);
    let stderr = kid.child.stderr.take().unwrap();
    assert_eq!(kid.report().await, "dropped");
    let reader = options.connect::<Job>(&url, "work").await.unwrap();
    let mut got = HashSet::new();
    while got.len() < 10 {
        got.insert(reader.get_timeout(PATIENCE).await.unwrap().id);
    }
    kid.kill().await;
    let mut text = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut tokio::io::BufReader::new(stderr), &mut text)
        .await
        .unwrap();
    assert!(
        text.contains("dropped with 10 fed items not yet confirmed"),
        "stderr: {text}"
    );
    reader.close().await.unwrap();
}
