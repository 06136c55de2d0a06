//! The "joining processes that use queues" deadlock from Python's docs, and procq's answer.
//!
//! ```text
//! cargo run --example exit_deadlock
//! ```
//!
//! Python's programming guidelines warn that this program deadlocks:
//!
//! ```python
//! from multiprocessing import Process, Queue
//!
//! def f(q):
//!     q.put('X' * 1000000)
//!
//! if __name__ == '__main__':
//!     queue = Queue()
//!     p = Process(target=f, args=(queue,))
//!     p.start()
//!     p.join()                    # this deadlocks
//!     obj = queue.get()
//! ```
//!
//! The child cannot exit: its feeder thread must push the megabyte through a 64 KiB pipe
//! before the process may end, and nobody reads until the child has ended.
//!
//! With procq the child's `put` writes the megabyte into a sealed memfd and sends only its
//! descriptor; `drain` confirms it reached the kernel (and would hand it back, not hang, if
//! it could not), and the child exits at once. The parent joins, then gets.

use std::time::Duration;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var("PROCQ_ROLE").as_deref() == Ok("child") {
        let q = procq::Queue::<String>::from_env("QUEUE")?;
        q.put("X".repeat(1_000_000)).await?;
        let left = q.drain(Duration::from_secs(1)).await;
        println!(
            "child: exiting ({:?}, {} items left behind)",
            left.outcome(),
            left.items().len()
        );
        return Ok(());
    }
    let queue = procq::Queue::<String>::new()?;
    let mut cmd = tokio::process::Command::new(std::env::current_exe()?);
    cmd.env("PROCQ_ROLE", "child");
    procq::pass(&mut cmd, "QUEUE", queue.clone())?;
    let mut p = procq::spawn(cmd)?; // the parent keeps no copy of what was passed
    let status = tokio::time::timeout(Duration::from_secs(10), p.wait()).await??; // join
    println!("parent: child exited ({status}) without anyone reading");
    let obj = queue.get_timeout(Duration::from_secs(10)).await?;
    println!("parent: got {} bytes", obj.len());
    Ok(())
}
