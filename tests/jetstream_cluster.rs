//! A three-node JetStream cluster on loopback (feature `nats`), a queue with 3 replicas,
//! a producer and two consumers as processes: killing the stream's leader, and cutting
//! one node off in its own network namespace, lose no acknowledged put; the producer and
//! the consumers go on after the re-election; duplicates come only from redelivery and
//! are counted; a node that was cut off or killed catches up.

mod common;
mod nats_common;

use std::collections::HashSet;
use std::io::Write;
use std::time::{Duration, Instant};

use common::{child_command, report, run_child, Kid};
use nats_common::*;
use procq::remote::jetstream::{self, QueueConfig};
use procq::remote::ClientOptions;
use procq::RemoteError;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

const KEY: &str = "token";
/// Jobs per round of the producer: each round is fed, then confirmed by a flush.
const ROUND: u64 = 1000;
/// How long the cluster may take to elect a leader and move again (measured 5–28 s on 2
/// cores; nats raft's election timeout is 4–9 s, with extra rounds under load).
const ELECTION_BOUND: Duration = Duration::from_secs(60);
/// The whole run, after the failure.
const FINISH_BOUND: Duration = Duration::from_secs(180);

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

/// Options that ride out an election: a put is published again (same message id) for
/// up to a minute before it is called in doubt.
fn options() -> ClientOptions {
    ClientOptions::new(KEY).request_timeout(Duration::from_secs(60))
}

async fn play(role: &str) {
    let url = std::env::var("URL").unwrap();
    match role {
        // Feeds jobs 0..N in rounds of 1,000, each confirmed by a flush; whatever a
        // flush hands back (in doubt or refused) is fed again. Reports each round.
        "producer" => {
            let n: u64 = std::env::var("N").unwrap().parse().unwrap();
            // A pause between rounds keeps the stream flowing through the whole failure.
            let pace = Duration::from_millis(std::env::var("PACE_MS").unwrap().parse().unwrap());
            let q = options().connect::<Job>(&url, "work").await.unwrap();
            let mut confirmed = 0u64;
            let mut refed = 0u64;
            let mut round: Vec<u64> = Vec::new();
            for id in 0..n {
                round.push(id);
                if (round.len() as u64) < ROUND && id + 1 < n {
                    continue;
                }
                tokio::time::sleep(pace).await;
                let mut todo = std::mem::take(&mut round);
                while !todo.is_empty() {
                    for &id in &todo {
                        q.feed(Job {
                            id,
                            pad: vec![5; 64],
                        })
                        .await
                        .unwrap();
                    }
                    let sent = todo.len() as u64;
                    match q.flush().await {
                        Ok(()) => {
                            confirmed += sent;
                            todo.clear();
                        }
                        Err(e) => {
                            let back: Vec<u64> = e.into_items().iter().map(|j| j.id).collect();
                            refed += back.len() as u64;
                            confirmed += sent - back.len() as u64;
                            todo = back;
                        }
                    }
                }
                report(format!("confirmed {confirmed}"));
            }
            q.close().await.unwrap();
            report(format!("done {refed}"));
        }
        // Writes each job's id to its file before acknowledging it; reports every
        // 1,000 jobs; runs until killed.
        "consumer" => {
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(std::env::var("OUT").unwrap())
                .unwrap();
            let q = options()
                .prefetch(256)
                .connect::<Job>(&url, "work")
                .await
                .unwrap();
            let mut done = 0u64;
            loop {
                let (job, delivery) = q.get_unacked().await.unwrap();
                file.write_all(format!("{}\n", job.id).as_bytes()).unwrap();
                // A failed ack (an election, a lease run out) is no loss: it comes back.
                let _ = delivery.ack().await;
                done += 1;
                if done.is_multiple_of(ROUND) {
                    report(format!("got {done}"));
                }
            }
        }
        other => panic!("unknown role {other}"),
    }
}

/// A report from a child, with when it arrived.
#[derive(Clone)]
struct Heard {
    who: &'static str,
    line: String,
    at: Instant,
}

/// Forwards every report of `kid` to `tx`; the kid is handed back when its output ends.
fn listen(
    mut kid: Kid,
    who: &'static str,
    tx: mpsc::UnboundedSender<Heard>,
) -> tokio::task::JoinHandle<Kid> {
    tokio::spawn(async move {
        while let Some(line) = kid.report_within(Duration::from_secs(3600)).await {
            let _ = tx.send(Heard {
                who,
                line,
                at: Instant::now(),
            });
        }
        kid
    })
}

/// The processes of one run: a producer and two consumers.
struct Run {
    n: u64,
    heard: mpsc::UnboundedReceiver<Heard>,
    producer: tokio::task::JoinHandle<Kid>,
    consumers: Vec<tokio::task::JoinHandle<Kid>>,
    files: Vec<std::path::PathBuf>,
    confirmed: u64,
    refed: Option<u64>,
    last_got: Option<Instant>,
    /// Every report read so far: a question about the past (`first_after`) must not
    /// depend on which other question read a report first.
    history: Vec<Heard>,
}

impl Run {
    fn start(
        dir: &std::path::Path,
        (n, pace_ms): (u64, u64),
        producer_url: &str,
        consumer_urls: [&str; 2],
    ) -> Run {
        let (tx, heard) = mpsc::unbounded_channel();
        let mut files = Vec::new();
        let mut consumers = Vec::new();
        for (i, url) in consumer_urls.iter().enumerate() {
            let file = dir.join(format!("consumer{i}.ids"));
            let mut cmd = child_command("consumer");
            cmd.env("URL", url).env("OUT", &file);
            consumers.push(listen(Kid::spawn(cmd), "consumer", tx.clone()));
            files.push(file);
        }
        let mut cmd = child_command("producer");
        cmd.env("URL", producer_url)
            .env("N", n.to_string())
            .env("PACE_MS", pace_ms.to_string());
        let producer = listen(Kid::spawn(cmd), "producer", tx);
        Run {
            n,
            heard,
            producer,
            consumers,
            files,
            confirmed: 0,
            refed: None,
            last_got: None,
            history: Vec::new(),
        }
    }

    /// The next report; fails the test after `within`.
    async fn next(&mut self, within: Duration) -> Heard {
        self.try_next(within)
            .await
            .expect("no report from the producer or the consumers in time")
    }

    /// The next report, or `None` after `within`.
    async fn try_next(&mut self, within: Duration) -> Option<Heard> {
        let heard = tokio::time::timeout(within, self.heard.recv())
            .await
            .ok()?
            .expect("children gone");
        if heard.who == "producer" {
            if let Some(n) = heard.line.strip_prefix("confirmed ") {
                self.confirmed = n.parse().unwrap();
            }
            if let Some(n) = heard.line.strip_prefix("done ") {
                self.refed = Some(n.parse().unwrap());
            }
        } else {
            self.last_got = Some(heard.at);
        }
        self.history.push(heard.clone());
        Some(heard)
    }

    /// Waits until the producer has confirmed at least `n` jobs.
    async fn until_confirmed(&mut self, n: u64, within: Duration) {
        let deadline = Instant::now() + within;
        while self.confirmed < n {
            self.next(deadline.saturating_duration_since(Instant::now()))
                .await;
        }
    }

    /// The first report of `who` made at or after `since` (the producer's: a confirmed
    /// round), as a time after `since`; `None` if none came within `within`. (The
    /// producer may finish first: consumers that reconnect after an election can resume
    /// later than it.)
    async fn first_after(
        &mut self,
        who: &str,
        since: Instant,
        within: Duration,
    ) -> Option<Duration> {
        let wanted = |h: &Heard| h.who == who && h.at >= since && !h.line.starts_with("done");
        if let Some(h) = self.history.iter().find(|h| wanted(h)) {
            return Some(h.at - since);
        }
        let deadline = Instant::now() + within;
        while let Some(heard) = self
            .try_next(deadline.saturating_duration_since(Instant::now()))
            .await
        {
            if wanted(&heard) {
                return Some(heard.at - since);
            }
        }
        None
    }

    /// Waits for the producer to finish, then for the queue to empty; stops the
    /// consumers and checks what they processed. Returns (duplicates, re-fed puts).
    async fn finish(mut self, urls: &str) -> (u64, u64) {
        let deadline = Instant::now() + FINISH_BOUND;
        while self.refed.is_none() {
            self.next(deadline.saturating_duration_since(Instant::now()))
                .await;
        }
        let mut producer = self.producer.await.unwrap();
        assert!(producer
            .exit_within(Duration::from_secs(30))
            .await
            .success());
        let watcher = options().connect::<Job>(urls, "work").await.unwrap();
        watcher
            .join_timeout(deadline.saturating_duration_since(Instant::now()))
            .await
            .expect("the queue empties");
        watcher.close().await.unwrap();
        for c in self.consumers {
            c.abort();
        }
        let mut lines = 0u64;
        let mut seen = HashSet::new();
        for file in &self.files {
            for id in std::fs::read_to_string(file).unwrap_or_default().lines() {
                lines += 1;
                seen.insert(id.parse::<u64>().unwrap());
            }
        }
        let missing: Vec<u64> = (0..self.n)
            .filter(|id| !seen.contains(id))
            .take(10)
            .collect();
        assert!(
            missing.is_empty(),
            "acknowledged jobs never processed: {missing:?}…"
        );
        (lines - seen.len() as u64, self.refed.unwrap())
    }
}

async fn leader_of(urls: &str) -> Option<String> {
    jetstream::info(&options(), urls, "work")
        .await
        .ok()
        .and_then(|i| i.leader)
}

/// Waits until the stream's leader reports `node` current, with no lag; returns how
/// long that took. There is no event for it, so JetStream is asked every 100 ms.
async fn caught_up(urls: &str, node: &str, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    let short = options()
        .connect_timeout(Duration::from_secs(2))
        .request_timeout(Duration::from_secs(2));
    while started.elapsed() < within {
        if let Ok(info) = jetstream::info(&short, urls, "work").await {
            let current = info.leader.as_deref() != Some(node)
                && info
                    .replicas
                    .iter()
                    .any(|r| r.name == node && r.current && !r.offline && r.lag.is_none());
            if current
                || info.leader.as_deref() == Some(node) && info.replicas.iter().all(|r| r.current)
            {
                return Some(started.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// Declares the test's queue with 3 replicas. A metadata leader can be elected before it
/// counts all three servers as peers; placement then fails with "no suitable peers" (code
/// 10005) until they are: retried until then, within a bound.
async fn declare_work(urls: &str) {
    let config = QueueConfig::new().replicas(3).lease(Duration::from_secs(5));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match jetstream::declare(&options(), urls, "work", &config).await {
            Ok(_) => return,
            Err(RemoteError::JetStream(e)) if e.contains("10005") && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("declaring the queue: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_stream_leader_loses_no_acknowledged_put() {
    let n = 60_000;
    let mut cluster = Cluster::start(None);
    let urls = cluster.urls();
    declare_work(&urls).await;
    let leader = leader_of(&urls).await.expect("a stream leader");
    let mut run = Run::start(cluster.dir(), (n, 50), &urls, [&urls, &urls]);
    run.until_confirmed(n / 4, FINISH_BOUND).await;
    let at = run.confirmed;
    cluster.node_mut(&leader).kill9();
    let killed = Instant::now();
    let elected = cluster
        .wait_new_stream_leader("work", killed, ELECTION_BOUND)
        .map(|at| at - killed);
    let elected_at = killed + elected.unwrap_or_default();
    // Jobs pulled before the kill are worked on through it: count from the election.
    let consumed = run
        .first_after("consumer", elected_at, ELECTION_BOUND)
        .await;
    let produced = run.first_after("producer", killed, ELECTION_BOUND).await;
    // The old leader comes back on its store and catches up.
    let since = Instant::now();
    cluster.node_mut(&leader).start();
    cluster.node(&leader).wait_ready(since);
    let catch_up = caught_up(&urls, &leader, Duration::from_secs(60))
        .await
        .map(|_| since.elapsed());
    let (duplicates, refed) = run.finish(&urls).await;
    eprintln!(
        "leader kill: {n} jobs, R3, stream leader {leader} killed at {at} confirmed; new \
         stream leader after {}; the producer confirmed a round {} after the kill, the \
         consumers finished 1,000 jobs {} after the election; {duplicates} jobs processed \
         twice (redelivered), {refed} puts fed again after a flush called them in doubt; the \
         restarted ex-leader was current {} after it was started",
        shown(elected),
        shown(produced),
        shown(consumed),
        shown(catch_up),
    );
    assert!(
        elected.is_some(),
        "no new stream leader:\n{}",
        cluster.logs()
    );
    assert!(
        produced.is_some() && consumed.is_some(),
        "the stream did not move again"
    );
    assert!(catch_up.is_some(), "the restarted node did not catch up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_node_catches_up_and_nothing_acknowledged_is_lost() {
    let n = 120_000;
    let cut_for = Duration::from_secs(8);
    let netns = Netns::create();
    let ns_name = netns.name.clone();
    let cluster = Cluster::start(Some(netns));
    let urls = cluster.urls();
    declare_work(&urls).await;
    let leader = leader_of(&urls).await;
    let majority = format!("{},{}", cluster.node("n1").url(), cluster.node("n2").url());
    let n3 = cluster.node("n3").url();
    // The producer on the majority side; one consumer starts on the node to be cut off.
    let mut run = Run::start(cluster.dir(), (n, 100), &majority, [&n3, &majority]);
    run.until_confirmed(n / 8, FINISH_BOUND).await;
    let at = run.confirmed;
    let netns = cluster.netns.as_ref().unwrap();
    netns.cut();
    let cut = Instant::now();
    // The majority goes on without n3 (after electing a leader if n3 led): a round
    // confirmed after the route to n3 is surely closed (write deadline 2 s).
    let went_on = run
        .first_after("producer", cut + Duration::from_secs(3), ELECTION_BOUND)
        .await
        .map(|d| d + Duration::from_secs(3));
    let new_leader = cluster
        .wait_new_stream_leader("work", cut, Duration::ZERO)
        .map(|at| at - cut);
    // The partition lasts `cut_for` (the scenario, not a wait for an event).
    tokio::time::sleep(cut_for.saturating_sub(cut.elapsed())).await;
    let confirmed_at_restore = run.confirmed;
    netns.restore();
    let catch_up = caught_up(&majority, "n3", Duration::from_secs(90)).await;
    let (duplicates, refed) = run.finish(&majority).await;
    let election = match (&leader, new_leader) {
        (Some(l), _) if l != "n3" => format!("{l} stayed the stream leader"),
        (_, elected) => format!("a new stream leader after {}", shown(elected)),
    };
    eprintln!(
        "partition: {n} jobs, R3, stream leader before the cut {}; n3 cut off for \
         {cut_for:?} at {at} confirmed; the majority confirmed a round {} after the cut \
         ({election}) and {confirmed_at_restore} jobs by the restore; n3 current {} after \
         the link was restored; {duplicates} jobs processed twice (redelivered), {refed} \
         puts fed again",
        leader.as_deref().unwrap_or("unknown"),
        shown(went_on),
        shown(catch_up),
    );
    assert!(went_on.is_some(), "the majority did not go on");
    assert!(
        confirmed_at_restore > at,
        "nothing confirmed during the cut"
    );
    assert!(
        catch_up.is_some(),
        "n3 did not catch up:\n{}",
        cluster.logs()
    );
    drop(cluster);
    assert!(!Netns::exists(&ns_name), "network namespace left behind");
}

/// A measured time for the report, or "never" when the event did not happen in time.
fn shown(d: Option<Duration>) -> String {
    d.map_or_else(
        || "never".to_string(),
        |d| format!("{:.1} s", d.as_secs_f64()),
    )
}
