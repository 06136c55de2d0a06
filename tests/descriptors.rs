//! Descriptors and handles inside items: `procq::Fd` through channels and queues, inline
//! and out of line, the kernel's per-message limit, and no leak on any path (the tests
//! count `/proc/self/fd`), including when either side is killed; every handle type sent
//! inside an item and working on the other side, with its settings and type check.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::{child_command, report, Kid, PATIENCE};
use procq::{Fd, RecvError, SendErrorKind};
use serde::{Deserialize, Serialize};

#[test]
fn child_main() {
    common::run_child(|role| async move { play(&role).await });
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// The tests of this file count this process's descriptors: they take turns.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs a test body on its own runtime, made only once it is this test's turn (a runtime
/// has descriptors of its own, which would blur another test's count).
fn serially(body: impl std::future::Future<Output = ()>) {
    let _turn = one_at_a_time();
    common::runtime(false).block_on(body);
}

/// An item that carries the write end of a pipe.
#[derive(Serialize, Deserialize)]
struct Writer {
    seq: u64,
    #[serde(with = "serde_bytes")]
    padding: Vec<u8>,
    pipe: Fd,
}

/// A request that carries where its answer goes.
#[derive(Serialize, Deserialize)]
struct Request {
    n: u64,
    reply: procq::Sender<u64>,
}

/// Every handle type, each in an item.
#[derive(Serialize, Deserialize)]
enum Handle {
    Sender(procq::Sender<String>),
    Receiver(procq::Receiver<String>),
    Duplex(procq::Duplex<String, String>),
    Queue(procq::Queue<String>),
    Joinable(procq::JoinableQueue<String>),
    Simple(procq::SimpleQueue<String>),
}

async fn play(role: &str) {
    match role {
        // Writes "<seq>\n" into every pipe it gets; reports how many and its descriptor
        // count once the channel ends (every Fd it got is dropped by then).
        "pipe-writer" => {
            let baseline = open_fds();
            let rx = procq::Receiver::<Writer>::from_env("CH").unwrap();
            report("ready");
            let mut n = 0;
            while let Ok(w) = rx.recv().await {
                let mut f = std::fs::File::from(w.pipe.into_owned());
                writeln!(f, "{}", w.seq).unwrap();
                n += 1;
            }
            drop(rx);
            report(format!("{n} {}", open_fds() as i64 - baseline as i64));
        }
        // Streams items carrying descriptors until killed.
        "fd-streamer" => {
            let tx = procq::Sender::<Writer>::from_env("CH").unwrap();
            let mut seq = 0;
            loop {
                let (_r, w) = std::io::pipe().unwrap();
                tx.send(Writer {
                    seq,
                    padding: vec![0; 100],
                    pipe: Fd::new(w),
                })
                .await
                .unwrap();
                seq += 1;
                if seq == 100 {
                    report("streaming");
                }
            }
        }
        // Receives items with descriptors, reports once it got some, then waits to be
        // killed holding the rest unread.
        "fd-hoarder" => {
            let rx = procq::Receiver::<Writer>::from_env("CH").unwrap();
            rx.recv().await.unwrap();
            report("got one");
            std::future::pending::<()>().await;
        }
        // Answers requests on the sender each one carries.
        "answerer" => {
            let requests = procq::Receiver::<Request>::from_env("CH").unwrap();
            while let Ok(req) = requests.recv().await {
                req.reply.send(req.n * 2).await.unwrap();
                // The reply sender is dropped here: the client sees its end.
            }
        }
        // Uses each handle it gets inside an item, as the parent asks.
        "handle-user" => {
            let rx = procq::Receiver::<Handle>::from_env("CH").unwrap();
            while let Ok(h) = rx.recv().await {
                match h {
                    Handle::Sender(tx) => {
                        let direct = format!("{tx:?}").contains("direct: true");
                        tx.send(format!("sender direct={direct}")).await.unwrap();
                    }
                    Handle::Receiver(rx) => {
                        let got = rx.recv_timeout(PATIENCE).await.unwrap();
                        report(format!("receiver got {got}"));
                    }
                    Handle::Duplex(end) => {
                        let q = end.recv_timeout(PATIENCE).await.unwrap();
                        end.send(q.to_uppercase()).await.unwrap();
                    }
                    Handle::Queue(q) => {
                        let got = q.get_timeout(PATIENCE).await.unwrap();
                        q.put(format!("{got} back")).await.unwrap();
                        q.flush().await.unwrap();
                    }
                    Handle::Joinable(q) => {
                        q.get_timeout(PATIENCE).await.unwrap();
                        q.task_done().unwrap();
                    }
                    Handle::Simple(q) => {
                        q.put("simple".into()).await.unwrap();
                    }
                }
                report("used");
            }
        }
        other => panic!("unknown role {other}"),
    }
}

fn spawn_with<P: procq::Passable>(role: &str, half: P) -> Kid {
    let mut cmd = child_command(role);
    procq::pass(&mut cmd, "CH", half).unwrap();
    Kid::spawn(cmd)
}

/// Sends `n` items, each with a pipe's write end and `padding` bytes (out of line when
/// large), to a child that writes into each; checks every pipe got its line and that no
/// descriptor leaked on either side.
async fn pipes_through_a_child(n: u64, padding: usize) {
    let status = tokio::process::Command::new("true").status().await.unwrap();
    assert!(status.success()); // tokio's SIGCHLD machinery, before counting
    let before = open_fds();
    let (tx, rx) = procq::channel::<Writer>().unwrap();
    let mut kid = spawn_with("pipe-writer", rx);
    assert_eq!(kid.report().await, "ready");
    let mut readers = Vec::new();
    for seq in 0..n {
        let (r, w) = std::io::pipe().unwrap();
        readers.push(r);
        tx.send(Writer {
            seq,
            padding: vec![1; padding],
            pipe: Fd::new(w),
        })
        .await
        .unwrap();
    }
    tx.flush().await.unwrap();
    drop(tx);
    let line = kid.report().await;
    // The child closed every descriptor it got; only its passed socket is gone since.
    assert_eq!(
        line,
        format!("{n} -1"),
        "count, and the child's descriptor change"
    );
    for (seq, mut r) in readers.into_iter().enumerate() {
        let mut got = String::new();
        r.read_to_string(&mut got).unwrap();
        assert_eq!(got, format!("{seq}\n"));
    }
    assert!(kid.exit_within(PATIENCE).await.success());
    drop(kid);
    assert_eq!(
        open_fds(),
        before,
        "every descriptor sent, and the channel, closed"
    );
}

#[test]
fn descriptors_travel_inline_to_another_process() {
    serially(async {
        pipes_through_a_child(1000, 16).await;
    });
}

#[test]
fn descriptors_travel_with_out_of_line_items() {
    serially(async {
        pipes_through_a_child(20, 400_000).await;
    });
}

#[test]
fn a_batch_is_cut_at_the_kernels_limit_and_an_item_over_it_is_refused() {
    serially(async {
        // 600 items of one descriptor each, sent back to back: batches cut at 253.
        pipes_through_a_child(600, 0).await;

        let (tx, _rx) = procq::channel::<Vec<Fd>>().unwrap();
        let before = open_fds();
        let many: Vec<Fd> = (0..300)
            .map(|_| Fd::new(std::fs::File::open("/dev/null").unwrap()))
            .collect();
        let err = tx.send(many).await.unwrap_err();
        assert!(
            matches!(
                err.kind(),
                SendErrorKind::TooManyDescriptors {
                    count: 300,
                    max: 253
                }
            ),
            "{err}"
        );
        assert_eq!(err.into_inner().len(), 300, "the item comes back whole");
        assert_eq!(
            open_fds(),
            before,
            "the duplicates made while encoding are closed"
        );
    });
}

#[test]
fn descriptors_travel_through_a_queue() {
    serially(async {
        let q = procq::Queue::<(u32, Fd)>::new().unwrap();
        let before = open_fds();
        let (mut r, w) = std::io::pipe().unwrap();
        q.put((7, Fd::new(w))).await.unwrap();
        let (n, fd) = q.get_timeout(PATIENCE).await.unwrap();
        assert_eq!(n, 7);
        std::fs::File::from(fd.into_owned())
            .write_all(b"through a queue")
            .unwrap();
        let mut got = String::new();
        r.read_to_string(&mut got).unwrap();
        assert_eq!(got, "through a queue");
        drop(r);
        assert_eq!(open_fds(), before);
    });
}

/// A number whose `Deserialize` refuses 13 (its `Serialize` does not).
#[derive(Serialize, Debug)]
struct NotThirteen(u32);

impl<'de> Deserialize<'de> for NotThirteen {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match u32::deserialize(d)? {
            13 => Err(serde::de::Error::custom("13 refused")),
            n => Ok(NotThirteen(n)),
        }
    }
}

#[test]
fn descriptors_of_items_that_are_not_received_are_closed() {
    serially(async {
        let before = open_fds();
        // The item fails to decode after its descriptor was taken, and before.
        let (tx, rx) = procq::channel::<(Fd, NotThirteen)>().unwrap();
        let null = || Fd::new(std::fs::File::open("/dev/null").unwrap());
        tx.send((null(), NotThirteen(13))).await.unwrap();
        tx.send((null(), NotThirteen(1))).await.unwrap();
        tx.flush().await.unwrap();
        assert!(matches!(rx.recv().await, Err(RecvError::Decode(_))));
        assert_eq!(rx.recv().await.unwrap().1 .0, 1);
        let (tx2, rx2) = procq::channel::<(NotThirteen, Fd)>().unwrap();
        tx2.send((NotThirteen(13), null())).await.unwrap();
        tx2.flush().await.unwrap();
        assert!(matches!(rx2.recv().await, Err(RecvError::Decode(_))));
        // An item read as raw bytes: its descriptor is closed.
        let (tx3, rx3) = procq::channel::<Writer>().unwrap();
        let (r, w) = std::io::pipe().unwrap();
        tx3.send(Writer {
            seq: 1,
            padding: vec![],
            pipe: Fd::new(w),
        })
        .await
        .unwrap();
        tx3.flush().await.unwrap();
        assert!(!rx3.recv_bytes().await.unwrap().is_empty());
        drop((tx, rx, tx2, rx2, tx3, rx3, r));
        assert_eq!(open_fds(), before);
    });
}

#[test]
fn drain_hands_back_items_with_their_descriptors() {
    serially(async {
        let (tx, rx) = procq::Options::new()
            .buffer_bytes(64 << 20)
            .channel::<Writer>()
            .unwrap();
        let before = open_fds();
        let mut readers = Vec::new();
        // Far more than the kernel holds; nobody reads.
        for seq in 0..3000 {
            let (r, w) = std::io::pipe().unwrap();
            readers.push(r);
            tx.send(Writer {
                seq,
                padding: vec![0; 4000],
                pipe: Fd::new(w),
            })
            .await
            .unwrap();
        }
        let left = tx.drain(Duration::from_millis(100)).await;
        let back = left.undelivered();
        assert!(!back.is_empty());
        // The items handed back own working descriptors.
        for w in back {
            let mut f = std::fs::File::from(w.pipe.into_owned());
            writeln!(f, "back").unwrap();
        }
        drop((tx, rx, readers));
        assert_eq!(
            open_fds(),
            before - 2,
            "the channel's two sockets are gone, nothing else"
        );
    });
}

#[test]
fn no_descriptor_leaks_when_a_sending_child_is_killed_mid_stream() {
    serially(async {
        let status = tokio::process::Command::new("true").status().await.unwrap();
        assert!(status.success());
        let before = open_fds();
        let (tx, rx) = procq::channel::<Writer>().unwrap();
        let mut kid = spawn_with("fd-streamer", tx);
        assert_eq!(kid.report().await, "streaming");
        let mut got = 0;
        while got < 500 {
            rx.recv_timeout(PATIENCE).await.unwrap();
            got += 1;
        }
        kid.kill().await;
        kid.exit_within(PATIENCE).await;
        while let Ok(w) = rx.recv_timeout(PATIENCE).await {
            drop(w);
        }
        drop(rx);
        drop(kid);
        assert_eq!(open_fds(), before);
    });
}

#[test]
fn no_descriptor_leaks_when_a_receiving_child_is_killed_holding_items() {
    serially(async {
        let status = tokio::process::Command::new("true").status().await.unwrap();
        assert!(status.success());
        let before = open_fds();
        let (tx, rx) = procq::channel::<Writer>().unwrap();
        let mut kid = spawn_with("fd-hoarder", rx);
        for seq in 0..2000 {
            let (_r, w) = std::io::pipe().unwrap();
            match tx
                .send_timeout(
                    Writer {
                        seq,
                        padding: vec![0; 2000],
                        pipe: Fd::new(w),
                    },
                    Duration::from_millis(100),
                )
                .await
            {
                Ok(()) => {}
                Err(e) => {
                    assert!(e.is_timeout(), "{e}");
                    break;
                }
            }
        }
        assert_eq!(kid.report().await, "got one");
        kid.kill().await;
        kid.exit_within(PATIENCE).await;
        // What did not get out comes back with its descriptors; the rest died with the child.
        drop(tx.drain(Duration::from_secs(5)).await);
        drop((tx, kid));
        assert_eq!(open_fds(), before);
    });
}

#[test]
fn an_fd_serialized_outside_procq_is_an_error() {
    let _turn = one_at_a_time();
    let fd = Fd::new(std::fs::File::open("/dev/null").unwrap());
    let err = postcard::to_stdvec(&fd).unwrap_err();
    assert!(err.to_string().contains("procq") || matches!(err, postcard::Error::SerdeSerCustom));
    let (tx, _rx) = procq::channel::<u8>().unwrap();
    assert!(postcard::to_stdvec(&tx).is_err(), "a handle neither");
}

#[test]
fn a_request_carries_its_reply_sender_across_processes() {
    serially(async {
        let (requests, for_worker) = procq::channel::<Request>().unwrap();
        let mut worker = spawn_with("answerer", for_worker);
        for n in 0..50u64 {
            let (reply, answer) = procq::channel::<u64>().unwrap();
            requests.send(Request { n, reply }).await.unwrap();
            // The only sender is in flight, then in the worker: the channel must not end early.
            assert_eq!(answer.recv_timeout(PATIENCE).await.unwrap(), n * 2);
            // The worker dropped its sender: now it ends.
            assert!(answer.recv_timeout(PATIENCE).await.unwrap_err().is_closed());
        }
        drop(requests);
        assert!(worker.exit_within(PATIENCE).await.success());
    });
}

#[test]
fn every_handle_type_works_after_travelling_in_an_item() {
    serially(async {
        let (to_child, for_child) = procq::channel::<Handle>().unwrap();
        let mut kid = spawn_with("handle-user", for_child);

        // A sender (of a pipe: its unbuffered setting travels with it).
        let (tx, rx) = procq::pipe::<String>().unwrap();
        to_child.send(Handle::Sender(tx)).await.unwrap();
        assert_eq!(
            rx.recv_timeout(PATIENCE).await.unwrap(),
            "sender direct=true"
        );
        assert_eq!(kid.report().await, "used");

        // A receiver.
        let (tx, rx) = procq::channel::<String>().unwrap();
        to_child.send(Handle::Receiver(rx)).await.unwrap();
        tx.send("hi".into()).await.unwrap();
        assert_eq!(kid.report().await, "receiver got hi");
        assert_eq!(kid.report().await, "used");

        // A duplex end.
        let (mine, theirs) = procq::duplex::<String, String>().unwrap();
        to_child.send(Handle::Duplex(theirs)).await.unwrap();
        mine.send("shout".into()).await.unwrap();
        assert_eq!(mine.recv_timeout(PATIENCE).await.unwrap(), "SHOUT");
        assert_eq!(kid.report().await, "used");

        // A queue, with its fair setting.
        let q = procq::Queue::<String>::with_options(0, &procq::queue_options()).unwrap();
        q.put("job".into()).await.unwrap();
        to_child.send(Handle::Queue(q.clone())).await.unwrap();
        assert_eq!(kid.report().await, "used");
        assert_eq!(q.get_timeout(PATIENCE).await.unwrap(), "job back");

        // A joinable queue: the child's task_done lets our join return.
        let jq = procq::JoinableQueue::<String>::new().unwrap();
        jq.put("task".into()).await.unwrap();
        to_child.send(Handle::Joinable(jq.clone())).await.unwrap();
        jq.join_timeout(PATIENCE).await.unwrap();
        assert_eq!(kid.report().await, "used");

        // A simple queue.
        let sq = procq::SimpleQueue::<String>::new().unwrap();
        to_child.send(Handle::Simple(sq.clone())).await.unwrap();
        assert_eq!(sq.get_timeout(PATIENCE).await.unwrap(), "simple");
        assert_eq!(kid.report().await, "used");

        drop(to_child);
        assert!(kid.exit_within(PATIENCE).await.success());
    });
}

/// How a handle is laid out inside an item (procq's own layout, written by hand here to
/// play a peer built for another item type).
#[derive(Serialize)]
struct CarriedByHand {
    kind: &'static str,
    types: Vec<&'static str>,
    fds: Vec<Option<u32>>,
    direct: bool,
    batch: u64,
    datagram: u64,
    max_item: u64,
    buffer: u64,
}

#[test]
fn a_handle_of_another_kind_or_type_in_an_item_is_refused_naming_both() {
    serially(async {
        let (tx, rx) = procq::channel::<procq::Sender<u64>>().unwrap();
        let by_hand = |kind, types| CarriedByHand {
            kind,
            types,
            fds: vec![Some(0)],
            direct: false,
            batch: 0,
            datagram: 65536,
            max_item: 1 << 32,
            buffer: 1 << 21,
        };
        for (carried, expected) in [
            (
                by_hand("sender", vec!["alloc::string::String"]),
                "a handle for `alloc::string::String`, not `u64`",
            ),
            (
                by_hand("receiver", vec!["u64"]),
                "a procq receiver, not a sender",
            ),
        ] {
            tx.send_bytes(&postcard::to_stdvec(&carried).unwrap())
                .await
                .unwrap();
            match rx.recv_timeout(PATIENCE).await {
                Err(procq::RecvTimeoutError::Decode(e)) => {
                    assert!(e.to_string().contains(expected), "{e}")
                }
                Ok(_) => panic!("accepted"),
                Err(e) => panic!("{e}"),
            }
        }
    });
}

#[test]
fn a_sender_keeps_no_copy_of_a_descriptor_once_it_is_written() {
    serially(async {
        // If the sending side kept its duplicate of the pipe's write end, the reader would
        // never see the end of the pipe.
        for direct in [false, true] {
            let opts = if direct {
                procq::Options::new().direct()
            } else {
                procq::Options::new()
            };
            let (tx, rx) = opts.channel::<Fd>().unwrap();
            let (mut r, w) = std::io::pipe().unwrap();
            tx.send(Fd::new(w)).await.unwrap();
            tx.flush().await.unwrap();
            let received = rx.recv().await.unwrap();
            std::fs::File::from(received.into_owned())
                .write_all(b"last words")
                .unwrap();
            let reading = tokio::task::spawn_blocking(move || {
                let mut got = String::new();
                r.read_to_string(&mut got).map(|_| got)
            });
            let got = tokio::time::timeout(PATIENCE, reading)
                .await
                .expect("the pipe never ended: a copy of its write end stayed open")
                .unwrap()
                .unwrap();
            assert_eq!(got, "last words");
        }
    });
}

/// Is `p` inside a mapping of one of procq's item memfds (per `/proc/self/maps`)?
fn in_an_item_mapping(p: *const u8) -> bool {
    let at = p as usize;
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .any(|line| {
            let range = line.split(' ').next().unwrap();
            let (a, b) = range.split_once('-').unwrap();
            let (a, b) = (
                usize::from_str_radix(a, 16).unwrap(),
                usize::from_str_radix(b, 16).unwrap(),
            );
            (a..b).contains(&at) && line.contains("memfd:procq-item")
        })
}

#[test]
fn a_large_payload_is_received_without_a_copy() {
    serially(async {
        let (tx, rx) = procq::channel::<(u32, procq::SharedBytes)>().unwrap();
        let payload: Vec<u8> = (0..8 << 20).map(|i| (i % 251) as u8).collect();
        tx.send((1, payload.clone().into())).await.unwrap();
        tx.send((2, vec![9u8; 100].into())).await.unwrap();
        let (n, big) = rx.recv().await.unwrap();
        assert_eq!(n, 1);
        assert!(
            in_an_item_mapping(big.as_ptr()),
            "an out-of-line payload points into the sender's memfd"
        );
        assert_eq!(&big[..], &payload[..]);
        let small = rx.recv().await.unwrap().1;
        assert!(!in_an_item_mapping(small.as_ptr()), "a small one is copied");
        // The mapping lives as long as the bytes do, through clones and conversion.
        let kept: bytes::Bytes = big.clone().into();
        drop(big);
        assert_eq!(kept[8 << 19], payload[8 << 19]);
    });
}

#[test]
fn an_item_over_a_batch_datagram_travels_inline_alone_up_to_256_kib() {
    serially(async {
        let (tx, rx) = procq::channel::<procq::SharedBytes>().unwrap();
        // Over the default 64 KiB datagram, under 256 KiB: a datagram of its own, no memfd.
        tx.send(vec![1u8; 200 << 10].into()).await.unwrap();
        // Over 256 KiB: out of line.
        tx.send(vec![2u8; 300 << 10].into()).await.unwrap();
        let alone = rx.recv().await.unwrap();
        assert_eq!(alone.len(), 200 << 10);
        assert!(!in_an_item_mapping(alone.as_ptr()), "carried inline");
        let big = rx.recv().await.unwrap();
        assert_eq!(big.len(), 300 << 10);
        assert!(in_an_item_mapping(big.as_ptr()), "carried in a memfd");
        // A receiver bound below the inline limit still refuses a larger item at the sender.
        let (tx, _rx) = procq::Options::new()
            .max_item_bytes(100 << 10)
            .channel::<procq::SharedBytes>()
            .unwrap();
        let err = tx.send(vec![3u8; 200 << 10].into()).await.unwrap_err();
        assert!(
            matches!(err.kind(), procq::SendErrorKind::TooLarge { .. }),
            "{err}"
        );
    });
}
