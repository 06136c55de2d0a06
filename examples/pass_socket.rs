//! The pre-fork server: one process accepts TCP connections and hands each socket to
//! the next free worker process, which serves it.
//!
//! ```text
//! cargo run --release --example pass_socket -- [WORKERS] [CONNECTIONS]
//! ```
//!
//! The parent listens on a loopback port, starts WORKERS worker processes (this same
//! binary, re-run with `PROCQ_ROLE=worker`) on one fair queue of accepted connections, and
//! accepts: every accepted `TcpStream` goes into the queue as a [`procq::Fd`], and the
//! worker that gets it owns a descriptor for the same connection (the parent's copy is
//! closed once the item is written). To show it working, the parent also runs
//! CONNECTIONS clients against its own port; each prints which worker answered it.
//!
//! Python does this with `multiprocessing.reduction.send_handle` over a `Connection`, or
//! by pickling sockets through a queue; here the socket is a typed field of an item.

use std::os::fd::OwnedFd;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// An accepted connection on its way to a worker.
#[derive(Serialize, Deserialize)]
struct Accepted {
    peer: String,
    socket: procq::Fd,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var("PROCQ_ROLE").as_deref() == Ok("worker") {
        return worker().await;
    }
    let mut args = std::env::args().skip(1);
    let workers: u32 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(3);
    let connections: u32 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(12);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let accepted = procq::Queue::<Accepted>::with_options(0, &procq::queue_options())?;
    let mut children = Vec::new();
    for n in 0..workers {
        let mut cmd = tokio::process::Command::new(std::env::current_exe()?);
        cmd.env("PROCQ_ROLE", "worker").env("WORKER", n.to_string());
        procq::pass(&mut cmd, "ACCEPTED", accepted.clone())?;
        children.push(procq::spawn(cmd)?);
    }
    println!("listening on {addr}, {workers} workers");

    // The acceptor: each connection goes to whichever worker asks next.
    let acceptor = tokio::spawn(async move {
        for _ in 0..connections {
            let (stream, peer) = listener.accept().await?;
            let socket = OwnedFd::from(stream.into_std()?);
            accepted
                .put(Accepted {
                    peer: peer.to_string(),
                    socket: procq::Fd::new(socket),
                })
                .await?;
        }
        // No more connections: the workers finish when the queue ends.
        accepted.flush().await?;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    });

    // Clients, to show the server at work.
    let mut clients = Vec::new();
    for n in 0..connections {
        clients.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(addr).await?;
            let (read, mut write) = stream.into_split();
            write.write_all(format!("hello {n}\n").as_bytes()).await?;
            let mut line = String::new();
            BufReader::new(read).read_line(&mut line).await?;
            Ok::<_, std::io::Error>(line)
        }));
    }
    for client in clients {
        print!("client got: {}", client.await??);
    }
    acceptor.await?.map_err(|e| e.to_string())?;
    for mut child in children {
        let status = child.wait().await?;
        assert!(status.success(), "a worker failed: {status}");
    }
    Ok(())
}

/// Serves connections handed over by the acceptor: reads a line, answers it.
async fn worker() -> Result<(), Box<dyn std::error::Error>> {
    let id = std::env::var("WORKER")?;
    let accepted = procq::Queue::<Accepted>::from_env("ACCEPTED")?;
    accepted.close(); // a worker only gets
    let mut served = 0;
    while let Ok(Accepted { peer, socket }) = accepted.get().await {
        let stream = std::net::TcpStream::from(socket.into_owned());
        stream.set_nonblocking(true)?;
        let stream = tokio::net::TcpStream::from_std(stream)?;
        let (read, mut write) = stream.into_split();
        let mut line = String::new();
        BufReader::new(read).read_line(&mut line).await?;
        write
            .write_all(
                format!(
                    "worker {id} (pid {}) served {peer}: {line}",
                    std::process::id()
                )
                .as_bytes(),
            )
            .await?;
        served += 1;
    }
    let line = format!("worker {id}: served {served} connections");
    println!("{line}");
    Ok(())
}
