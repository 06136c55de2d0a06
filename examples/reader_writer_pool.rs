//! The reader/writer example with several readers sharing one queue.
//!
//! ```text
//! cargo run --release --example reader_writer_pool -- [READERS]
//! ```
//!
//! The Python pattern: start N reader processes on one `Queue`, put the numbers, then one
//! `"DONE"` per reader, and join them all. Each reader reports how many numbers it took.
//! The queue is made with `procq::queue_options()` so each `get` takes exactly one item
//! from the shared queue, as in Python: whichever reader asks first gets the next number,
//! so how the numbers split depends on how fast each reader runs (a reader with no work
//! per number can take most of them).

use std::time::Instant;

use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Debug, PartialEq)]
enum Msg {
    Number(u64),
    Done,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var("PROCQ_ROLE").as_deref() == Ok("reader") {
        let queue = procq::Queue::<Msg>::from_env("QUEUE")?;
        let (mut taken, mut sum) = (0u64, 0u64);
        while let Msg::Number(n) = queue.get().await? {
            taken += 1;
            sum += n;
        }
        println!(
            "reader {}: took {taken} numbers (sum {sum})",
            std::process::id()
        );
        return Ok(());
    }
    let readers: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(3);
    let count = 100_000u64;
    let queue = procq::Queue::<Msg>::with_options(0, &procq::queue_options())?;
    let mut children = Vec::new();
    for _ in 0..readers {
        let mut cmd = tokio::process::Command::new(std::env::current_exe()?);
        cmd.env("PROCQ_ROLE", "reader").kill_on_drop(true);
        procq::pass(&mut cmd, "QUEUE", queue.clone())?;
        children.push(procq::spawn(cmd)?);
    }
    let start = Instant::now();
    for n in 0..count {
        queue.put(Msg::Number(n)).await?;
    }
    for _ in 0..readers {
        queue.put(Msg::Done).await?;
    }
    for mut child in children {
        child.wait().await?;
    }
    println!(
        "{count} numbers through {readers} readers in {:.3} seconds",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
