//! The handle contract, for every handle type × {several tasks in one process, several
//! processes, a handle re-passed to a grandchild} × {current-thread, multi-thread runtime}:
//!
//! * every item reaches exactly one receiver (count, sum and sum of squares of the numbers
//!   received, over every receiving task of every process, match what was sent);
//! * every waiting task sees the end (each one ends with `Closed`);
//! * a receive with a timeout returns `Timeout` while nothing is there;
//! * nothing is lost at exit: producer processes return from `main` without `flush` or
//!   `drain`, having sent less than the kernel's buffer holds.
//!
//! For queues the end is every process closing its putting side (consumers close theirs
//! first thing); a `JoinableQueue`'s producers `join` before they return.

mod common;

use std::time::Duration;

use common::{child_command, report, Kid, FLAVOR, PATIENCE};
use procq::{
    Duplex, JoinableQueue, Queue, Receiver, RecvError, RecvTimeoutError, Sender, SimpleQueue,
};

/// Items each producer sends: few enough (about 13 bytes each) that everything fits in the
/// kernel's buffer, so producers may return from main without flushing.
const PER_PRODUCER: u64 = 2000;
const PRODUCERS: u64 = 2;
const CONSUMER_TASKS: usize = 3;

#[test]
fn child_main() {
    common::run_child(|role| async move { play(&role).await });
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Channel,
    Pipe,
    Duplex,
    PipeDuplex,
    Queue,
    JoinableQueue,
    SimpleQueue,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Channel => "channel",
            Kind::Pipe => "pipe",
            Kind::Duplex => "duplex",
            Kind::PipeDuplex => "pipe-duplex",
            Kind::Queue => "queue",
            Kind::JoinableQueue => "joinable-queue",
            Kind::SimpleQueue => "simple-queue",
        }
    }

    fn from_env() -> Kind {
        let name = std::env::var("KIND").unwrap();
        [
            Kind::Channel,
            Kind::Pipe,
            Kind::Duplex,
            Kind::PipeDuplex,
            Kind::Queue,
            Kind::JoinableQueue,
            Kind::SimpleQueue,
        ]
        .into_iter()
        .find(|k| k.name() == name)
        .unwrap()
    }

    /// A producing handle and a consuming handle of a new channel or queue.
    fn make(self) -> (Producer, Consumer) {
        match self {
            Kind::Channel => {
                let (tx, rx) = procq::channel().unwrap();
                (Producer::Tx(tx), Consumer::Rx(rx))
            }
            Kind::Pipe => {
                let (tx, rx) = procq::pipe().unwrap();
                (Producer::Tx(tx), Consumer::Rx(rx))
            }
            Kind::Duplex => {
                let (a, b) = procq::duplex().unwrap();
                (Producer::Duplex(a), Consumer::Duplex(b))
            }
            Kind::PipeDuplex => {
                let (a, b) = procq::pipe_duplex().unwrap();
                (Producer::Duplex(a), Consumer::Duplex(b))
            }
            Kind::Queue => {
                let q = Queue::new().unwrap();
                (Producer::Queue(q.clone()), Consumer::Queue(q))
            }
            Kind::JoinableQueue => {
                let q = JoinableQueue::new().unwrap();
                (Producer::Joinable(q.clone()), Consumer::Joinable(q))
            }
            Kind::SimpleQueue => {
                let q = SimpleQueue::new().unwrap();
                (Producer::Simple(q.clone()), Consumer::Simple(q))
            }
        }
    }
}

#[derive(Clone)]
enum Producer {
    Tx(Sender<u64>),
    Duplex(Duplex<u64, u64>),
    Queue(Queue<u64>),
    Joinable(JoinableQueue<u64>),
    Simple(SimpleQueue<u64>),
}

#[derive(Clone)]
enum Consumer {
    Rx(Receiver<u64>),
    Duplex(Duplex<u64, u64>),
    Queue(Queue<u64>),
    Joinable(JoinableQueue<u64>),
    Simple(SimpleQueue<u64>),
}

impl Producer {
    fn from_env(kind: Kind) -> Producer {
        match kind {
            Kind::Channel | Kind::Pipe => Producer::Tx(Sender::from_env("CH").unwrap()),
            Kind::Duplex | Kind::PipeDuplex => Producer::Duplex(Duplex::from_env("CH").unwrap()),
            Kind::Queue => Producer::Queue(Queue::from_env("CH").unwrap()),
            Kind::JoinableQueue => Producer::Joinable(JoinableQueue::from_env("CH").unwrap()),
            Kind::SimpleQueue => Producer::Simple(SimpleQueue::from_env("CH").unwrap()),
        }
    }

    fn pass(self, cmd: &mut tokio::process::Command) {
        match self {
            Producer::Tx(h) => procq::pass(cmd, "CH", h),
            Producer::Duplex(h) => procq::pass(cmd, "CH", h),
            Producer::Queue(h) => procq::pass(cmd, "CH", h),
            Producer::Joinable(h) => procq::pass(cmd, "CH", h),
            Producer::Simple(h) => procq::pass(cmd, "CH", h),
        }
        .unwrap();
    }

    async fn send(&self, item: u64) {
        match self {
            Producer::Tx(h) => h.send(item).await.unwrap(),
            Producer::Duplex(h) => h.send(item).await.unwrap(),
            Producer::Queue(h) => h.put(item).await.unwrap(),
            Producer::Joinable(h) => h.put(item).await.unwrap(),
            Producer::Simple(h) => h.put(item).await.unwrap(),
        }
    }

    /// After the last item: a joinable queue's producer waits until every task is done;
    /// a queue's producer closes its putting side (channels end when the handle drops).
    async fn finish(&self) {
        match self {
            Producer::Joinable(h) => {
                h.join_timeout(PATIENCE).await.unwrap();
                h.close();
            }
            Producer::Queue(h) => h.close(),
            Producer::Simple(h) => h.close(),
            Producer::Tx(_) | Producer::Duplex(_) => {}
        }
    }
}

impl Consumer {
    fn from_env(kind: Kind) -> Consumer {
        match kind {
            Kind::Channel | Kind::Pipe => Consumer::Rx(Receiver::from_env("CH").unwrap()),
            Kind::Duplex | Kind::PipeDuplex => Consumer::Duplex(Duplex::from_env("CH").unwrap()),
            Kind::Queue => Consumer::Queue(Queue::from_env("CH").unwrap()),
            Kind::JoinableQueue => Consumer::Joinable(JoinableQueue::from_env("CH").unwrap()),
            Kind::SimpleQueue => Consumer::Simple(SimpleQueue::from_env("CH").unwrap()),
        }
    }

    fn pass(self, cmd: &mut tokio::process::Command) {
        match self {
            Consumer::Rx(h) => procq::pass(cmd, "CH", h),
            Consumer::Duplex(h) => procq::pass(cmd, "CH", h),
            Consumer::Queue(h) => procq::pass(cmd, "CH", h),
            Consumer::Joinable(h) => procq::pass(cmd, "CH", h),
            Consumer::Simple(h) => procq::pass(cmd, "CH", h),
        }
        .unwrap();
    }

    /// A consumer process never puts: it closes its putting side, so that the queue ends
    /// once the producers close theirs.
    fn close_putting_side(&self) {
        match self {
            Consumer::Queue(h) => h.close(),
            Consumer::Joinable(h) => h.close(),
            Consumer::Simple(h) => h.close(),
            Consumer::Rx(_) | Consumer::Duplex(_) => {}
        }
    }

    async fn recv(&self) -> Result<u64, RecvError> {
        let item = match self {
            Consumer::Rx(h) => h.recv().await,
            Consumer::Duplex(h) => h.recv().await,
            Consumer::Queue(h) => h.get().await,
            Consumer::Joinable(h) => h.get().await,
            Consumer::Simple(h) => h.get().await,
        }?;
        if let Consumer::Joinable(h) = self {
            h.task_done().unwrap();
        }
        Ok(item)
    }

    async fn recv_timeout(&self, d: Duration) -> Result<u64, RecvTimeoutError> {
        match self {
            Consumer::Rx(h) => h.recv_timeout(d).await,
            Consumer::Duplex(h) => h.recv_timeout(d).await,
            Consumer::Queue(h) => h.get_timeout(d).await,
            Consumer::Joinable(h) => h.get_timeout(d).await,
            Consumer::Simple(h) => h.get_timeout(d).await,
        }
    }
}

/// What one receiving task saw: how many items, their sum and sum of squares.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Tally {
    count: u64,
    sum: u128,
    squares: u128,
}

impl Tally {
    fn add(&mut self, item: u64) {
        self.count += 1;
        self.sum += item as u128;
        self.squares += (item as u128) * (item as u128);
    }

    fn merge(&mut self, other: Tally) {
        self.count += other.count;
        self.sum += other.sum;
        self.squares += other.squares;
    }

    /// What `producers` producers of `per` items each send.
    fn expected(producers: u64, per: u64) -> Tally {
        let mut t = Tally::default();
        for p in 0..producers {
            for s in 0..per {
                t.add(item(p, s));
            }
        }
        t
    }

    fn parse(line: &str) -> Tally {
        let mut parts = line.split(' ');
        assert_eq!(parts.next(), Some("end"), "{line}");
        Tally {
            count: parts.next().unwrap().parse().unwrap(),
            sum: parts.next().unwrap().parse().unwrap(),
            squares: parts.next().unwrap().parse().unwrap(),
        }
    }
}

fn item(producer: u64, seq: u64) -> u64 {
    (producer << 32) | seq
}

/// Checks that a receive times out while nothing is there.
async fn idle_receive_times_out(consumer: &Consumer) {
    match consumer.recv_timeout(Duration::from_millis(20)).await {
        Err(RecvTimeoutError::Timeout) => {}
        other => panic!("an idle receive returned {other:?}"),
    }
}

/// Receives until the end; every item counted. Fails the test if the end does not come.
async fn consume_to_the_end(consumer: Consumer) -> Tally {
    let mut tally = Tally::default();
    loop {
        match tokio::time::timeout(PATIENCE, consumer.recv()).await {
            Ok(Ok(item)) => tally.add(item),
            Ok(Err(RecvError::Closed)) => return tally,
            Ok(Err(e)) => panic!("receive failed: {e}"),
            Err(_) => panic!("no end after {tally:?}"),
        }
    }
}

async fn play(role: &str) {
    let kind = Kind::from_env();
    match role {
        // Sends PER_PRODUCER numbered items and returns from main without flushing.
        "produce" => {
            let me: u64 = std::env::var("ME").unwrap().parse().unwrap();
            let producer = Producer::from_env(kind);
            for seq in 0..PER_PRODUCER {
                producer.send(item(me, seq)).await;
            }
            producer.finish().await;
        }
        // Several tasks receive on clones of one handle until the end; each reports.
        "consume" => {
            let consumer = Consumer::from_env(kind);
            consumer.close_putting_side();
            idle_receive_times_out(&consumer).await;
            report("ready");
            let tasks: Vec<_> = (0..CONSUMER_TASKS)
                .map(|_| tokio::spawn(consume_to_the_end(consumer.clone())))
                .collect();
            drop(consumer);
            for task in tasks {
                let t = task.await.unwrap();
                report(format!("end {} {} {}", t.count, t.sum, t.squares));
            }
        }
        // Rebuilds the handle and passes it on to a grandchild playing ROLE2 (which reports
        // straight to the test through the inherited stdout).
        "relay" => {
            let role2 = std::env::var("ROLE2").unwrap();
            let mut cmd = child_command(&role2);
            cmd.stdout(std::process::Stdio::inherit());
            for var in ["KIND", "ME", FLAVOR] {
                if let Ok(v) = std::env::var(var) {
                    cmd.env(var, v);
                }
            }
            if role2 == "produce" {
                Producer::from_env(kind).pass(&mut cmd);
            } else {
                Consumer::from_env(kind).pass(&mut cmd);
            }
            let mut grandchild = procq::spawn(cmd).unwrap();
            let status = tokio::time::timeout(PATIENCE, grandchild.wait())
                .await
                .expect("grandchild did not exit")
                .unwrap();
            assert!(status.success(), "grandchild {role2}: {status}");
        }
        other => panic!("unknown role {other}"),
    }
}

#[derive(Debug, Clone, Copy)]
enum Topology {
    /// Producer and consumer tasks share clones of the handles in this process.
    Tasks,
    /// Consumer and producer processes.
    Processes,
    /// Each handle is rebuilt in a child that passes it on to a grandchild.
    Grandchildren,
}

fn run(kind: Kind, topology: Topology, multi: bool) {
    let rt = common::runtime(multi);
    rt.block_on(async {
        tokio::time::timeout(PATIENCE * 2, scenario(kind, topology, multi))
            .await
            .expect("the scenario did not finish");
    });
}

async fn scenario(kind: Kind, topology: Topology, multi: bool) {
    let expected = Tally::expected(PRODUCERS, PER_PRODUCER);
    let (producer, consumer) = kind.make();
    match topology {
        Topology::Tasks => {
            idle_receive_times_out(&consumer).await;
            let consumers: Vec<_> = (0..CONSUMER_TASKS)
                .map(|_| tokio::spawn(consume_to_the_end(consumer.clone())))
                .collect();
            drop(consumer);
            let producers: Vec<_> = (0..PRODUCERS)
                .map(|me| {
                    let producer = producer.clone();
                    tokio::spawn(async move {
                        for seq in 0..PER_PRODUCER {
                            producer.send(item(me, seq)).await;
                        }
                    })
                })
                .collect();
            for p in producers {
                p.await.unwrap();
            }
            if let Producer::Joinable(q) = &producer {
                // Several tasks join at once; all of them wake.
                let joiners: Vec<_> = (0..3)
                    .map(|_| {
                        let q = q.clone();
                        tokio::spawn(async move { q.join_timeout(PATIENCE).await })
                    })
                    .collect();
                for j in joiners {
                    j.await.unwrap().unwrap();
                }
            }
            producer.finish().await;
            drop(producer);
            let mut total = Tally::default();
            for c in consumers {
                total.merge(c.await.unwrap());
            }
            assert_eq!(total, expected, "{kind:?}: exactly once, in one process");
        }
        Topology::Processes | Topology::Grandchildren => {
            let relay = matches!(topology, Topology::Grandchildren);
            let spawn = |role: &str, env: &[(&str, String)]| {
                let mut cmd = child_command(if relay { "relay" } else { role });
                cmd.env("KIND", kind.name())
                    .env(FLAVOR, if multi { "multi" } else { "current" })
                    .env("ROLE2", role);
                for (k, v) in env {
                    cmd.env(k, v);
                }
                cmd
            };
            let mut consumers = Vec::new();
            for _ in 0..2 {
                let mut cmd = spawn("consume", &[]);
                consumer.clone().pass(&mut cmd);
                consumers.push(Kid::spawn(cmd));
            }
            drop(consumer);
            for c in &mut consumers {
                assert_eq!(c.report().await, "ready");
            }
            let mut producers = Vec::new();
            for me in 0..PRODUCERS {
                let mut cmd = spawn("produce", &[("ME", me.to_string())]);
                producer.clone().pass(&mut cmd);
                producers.push(Kid::spawn(cmd));
            }
            // The parent holds no handle any more: the end depends on the children alone.
            drop(producer);
            let mut total = Tally::default();
            for c in &mut consumers {
                for _ in 0..CONSUMER_TASKS {
                    total.merge(Tally::parse(&c.report().await));
                }
            }
            assert_eq!(total, expected, "{kind:?}: exactly once, across processes");
            for mut kid in producers.into_iter().chain(consumers) {
                assert!(kid.exit_within(PATIENCE).await.success());
            }
        }
    }
}

macro_rules! matrix {
    ($($module:ident => $kind:expr;)*) => {$(
        mod $module {
            use super::*;
            #[test]
            fn tasks_current_thread() { run($kind, Topology::Tasks, false) }
            #[test]
            fn tasks_multi_thread() { run($kind, Topology::Tasks, true) }
            #[test]
            fn processes_current_thread() { run($kind, Topology::Processes, false) }
            #[test]
            fn processes_multi_thread() { run($kind, Topology::Processes, true) }
            #[test]
            fn grandchildren_current_thread() { run($kind, Topology::Grandchildren, false) }
            #[test]
            fn grandchildren_multi_thread() { run($kind, Topology::Grandchildren, true) }
        }
    )*};
}

matrix! {
    channel => Kind::Channel;
    pipe => Kind::Pipe;
    duplex => Kind::Duplex;
    pipe_duplex => Kind::PipeDuplex;
    queue => Kind::Queue;
    joinable_queue => Kind::JoinableQueue;
    simple_queue => Kind::SimpleQueue;
}
