//! Replacing `multiprocessing.connection.wait` with `tokio::select!` and
//! `futures::stream::select_all`.
//!
//! ```text
//! cargo run --example wait_many
//! ```
//!
//! Python waits on many connections with `wait(conns, timeout)` and then reads from
//! whichever are ready. Here, four child processes each send a few messages over their own
//! pipe at their own pace; the parent merges them into one stream with `select_all`, and
//! races that stream against a timer and ctrl-c with `tokio::select!`.

use std::time::Duration;

use futures::StreamExt;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    if let Ok(n) = std::env::var("PROCQ_SENDER") {
        let n: u64 = n.parse()?;
        let tx = procq::Sender::<String>::from_env("PIPE")?;
        for i in 0..3 {
            tokio::time::sleep(Duration::from_millis(50 + 90 * n)).await;
            tx.send(format!("sender {n}, message {i}")).await?;
        }
        return Ok(());
    }

    let mut receivers = Vec::new();
    let mut children = Vec::new();
    for n in 0..4 {
        let (tx, rx) = procq::pipe::<String>()?;
        let mut cmd = tokio::process::Command::new(std::env::current_exe()?);
        cmd.env("PROCQ_SENDER", n.to_string());
        procq::pass(&mut cmd, "PIPE", tx)?;
        children.push(procq::spawn(cmd)?);
        receivers.push(rx);
    }
    // connection.wait(receivers) + recv(), as one stream; it ends when every sender has.
    let mut all = futures::stream::select_all(receivers);
    let shutdown = tokio::signal::ctrl_c();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            msg = all.next() => match msg {
                Some(msg) => println!("{}", msg?),
                None => break,
            },
            _ = tokio::time::sleep(Duration::from_millis(120)) => println!("(nothing for 120 ms)"),
            _ = &mut shutdown => break,
        }
    }
    for mut child in children {
        child.wait().await?;
    }
    Ok(())
}
