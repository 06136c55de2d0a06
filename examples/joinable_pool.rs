//! A `JoinableQueue` worker pool, as in Python's docs.
//!
//! ```text
//! cargo run --release --example joinable_pool
//! ```
//!
//! ```python
//! def worker(q):
//!     while True:
//!         item = q.get()
//!         do_work(item)
//!         q.task_done()
//!
//! q = JoinableQueue()
//! for _ in range(4):
//!     Process(target=worker, args=(q,), daemon=True).start()
//! for item in source():
//!     q.put(item)
//! q.join()  # block until all tasks are done
//! ```
//!
//! procq's `join` waits on an eventfd through the reactor, wakes as soon as the last
//! `task_done` anywhere signals it, and has a timeout form that says how many tasks are
//! left if a worker died.

use std::time::{Duration, Instant};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var("PROCQ_ROLE").as_deref() == Ok("worker") {
        let q = procq::JoinableQueue::<u64>::from_env("TASKS")?;
        let mut done = 0;
        while let Ok(n) = q.get().await {
            do_work(n);
            q.task_done()?;
            done += 1;
            if done % 250 == 0 {
                println!("worker {}: {done} tasks done", std::process::id());
            }
        }
        return Ok(());
    }
    // One task per datagram: every worker takes the next task when it is free.
    let q = procq::JoinableQueue::<u64>::with_options(0, &procq::queue_options())?;
    let mut workers = Vec::new();
    for _ in 0..4 {
        let mut cmd = tokio::process::Command::new(std::env::current_exe()?);
        cmd.env("PROCQ_ROLE", "worker").kill_on_drop(true); // daemon=True
        procq::pass(&mut cmd, "TASKS", q.clone())?;
        workers.push(procq::spawn(cmd)?);
    }
    let start = Instant::now();
    for n in 0..1000 {
        q.put(n).await?;
    }
    match q.join_timeout(Duration::from_secs(60)).await {
        Ok(()) => println!("all 1000 tasks done in {:.2?}", start.elapsed()),
        Err(e) => println!("gave up: {e}"),
    }
    // Daemon workers: killed when their handles drop, as Python kills daemons at exit.
    drop(workers);
    Ok(())
}

/// Half a millisecond of CPU.
fn do_work(n: u64) {
    let until = Instant::now() + Duration::from_micros(500);
    let mut x = n;
    while Instant::now() < until {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
    }
    std::hint::black_box(x);
}
