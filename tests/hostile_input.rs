//! A foreign process (Python, not procq) writes garbage datagrams into a channel: each one
//! costs a decode error for itself only, the next good item arrives, nothing panics, and
//! descriptors that came with garbage are closed.

mod common;

use std::process::Stdio;
use std::time::Duration;

use procq::{DecodeError, RecvTimeoutError};

const FOREIGN_WRITER: &str = r#"
import os, socket, struct
fields = dict(f.split("=", 1) for f in os.environ["CH"].split(";")[1:])
fd = int(fields["fds"].split("@")[0])
s = socket.socket(fileno=fd)
def hdr(kind, count): return b"PQ" + bytes([2, kind]) + struct.pack("<I", count)
def ool(size, fds=0): return struct.pack("<QH", size, fds)
def frame(b): return struct.pack("<I", len(b)) + b
r, w = os.pipe()
loose = os.memfd_create("unsealed")
os.write(loose, b"\x05\x05\x05\x05\x05")
try:
    s.setsockopt(socket.SOL_SOCKET, 32, 4 << 20)  # SO_SNDBUFFORCE: root only
    oversize = True
except OSError:
    oversize = False
print("@@ oversize", int(oversize), flush=True)
cases = [
    (b"garbage!", []),                                  # bad magic
    (hdr(0, 1) + struct.pack("<I", 0xFFFFFFFF), []),    # a frame claiming 4 GiB
    (hdr(0, 2) + frame(b"\x05"), []),                   # two items claimed, one present
    (hdr(0, 1) + frame(b"\x05")[:3], []),               # truncated frame prefix
    (hdr(0, 4000000000) + frame(b"\x05"), []),          # count claiming 4 billion items
    (hdr(1, 1) + ool(1 << 40), [r]),      # out-of-line item of 1 TiB
    (hdr(1, 1) + ool(5), [r]),                    # bogus descriptor: a pipe
    (hdr(1, 1) + ool(5), [loose]),        # memfd without seals
    (hdr(1, 1) + ool(5), []),                    # descriptor missing
    (hdr(0, 1) + frame(b"\x05"), [r, w]),               # descriptors where none belong
    (hdr(9, 1), []),                                    # unknown kind
    (b"PQ\x07\x00\x01\x00\x00\x00", []),                # unknown version
    (hdr(0, 1) + struct.pack("<IH", 0x80000001, 2) + b"\x05", [r]),  # claims 2 descriptors, carries 1
    (hdr(0, 2) + frame(b"\xff" * 12) + frame(b"\x07"), []),  # bad item, then 7
    (hdr(0, 1) + struct.pack("<IH", 0x80000001, 1) + b"\x05", [w]),  # 5 with a descriptor it never names
    (b"", []),                                          # empty datagram
]
if oversize:
    cases.append((b"PQ" + b"\x00" * 300000, []))        # longer than any procq datagram
cases.append((hdr(0, 1) + frame(b"\x2a"), []))          # a good item: 42
for data, fds in cases:
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i" * len(fds), *fds))] if fds else []
    s.sendmsg([data], anc)
print("@@ sent", flush=True)
"#;

fn open_fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[tokio::test]
async fn garbage_datagrams_cost_only_themselves() {
    // Spawning a child sets up tokio's SIGCHLD machinery once (a descriptor that stays);
    // do that before counting.
    let status = tokio::process::Command::new("true").status().await.unwrap();
    assert!(status.success());
    let before = open_fd_count();
    let (tx, rx) = procq::channel::<u64>().unwrap();
    let mut cmd = tokio::process::Command::new("python3");
    cmd.args(["-c", FOREIGN_WRITER])
        .stdout(Stdio::piped())
        .kill_on_drop(true);
    procq::pass(&mut cmd, "CH", tx).unwrap();
    let mut kid = common::Kid::spawn(cmd);
    let oversize = kid.report().await == "oversize 1";
    assert_eq!(kid.report().await, "sent");

    let mut errors = Vec::new();
    let mut items = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_secs(30)).await {
            Ok(item) => items.push(item),
            Err(RecvTimeoutError::Decode(e)) => errors.push(e),
            Err(RecvTimeoutError::Closed) => break,
            Err(other) => panic!("unexpected {other}"),
        }
    }
    use DecodeError::*;
    let mut expected = vec![
        BadMagic,
        Truncated,
        BadCount(2),
        BadCount(1),
        BadCount(4_000_000_000),
        TooLarge {
            size: 1 << 40,
            max: 4 << 30,
        },
        NotSealed,
        NotSealed,
        Descriptor,
        Descriptor,
        Kind(9),
        Version(7),
        Descriptor,
    ];
    // The bad item's error (its datagram's good item 7 follows), then the empty datagram.
    assert_eq!(
        errors.len(),
        expected.len() + 2 + usize::from(oversize),
        "{errors:?}"
    );
    assert!(matches!(errors[expected.len()], Item(_)), "{errors:?}");
    expected.push(errors[expected.len()].clone());
    expected.push(Empty);
    if oversize {
        expected.push(TooLong(256 * 1024));
    }
    assert_eq!(errors, expected);
    // The 5 came with a descriptor it does not name: the item arrives, the descriptor is
    // closed (counted below).
    assert_eq!(items, vec![7, 5, 42]);
    assert!(kid.exit_within(Duration::from_secs(30)).await.success());
    drop(rx);
    drop(kid); // its stdout pipe
    assert_eq!(
        open_fd_count(),
        before,
        "descriptors that came with garbage were closed"
    );
}
