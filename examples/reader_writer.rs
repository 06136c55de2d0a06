//! Python's classic `multiprocessing.Queue` reader/writer, ported.
//!
//! ```text
//! cargo run --release --example reader_writer
//! ```
//!
//! The Python original (a reader process shares the queue by inheritance and reads until
//! the writer's `"DONE"`):
//!
//! ```python
//! def reader_proc(queue):
//!     while True:
//!         msg = queue.get()
//!         if msg == "DONE":
//!             break
//!
//! def writer(count, queue):
//!     for ii in range(0, count):
//!         queue.put(ii)
//!     queue.put("DONE")
//!
//! if __name__ == "__main__":
//!     pqueue = Queue()
//!     for count in [10**4, 10**5, 10**6]:
//!         reader_p = Process(target=reader_proc, args=(pqueue,))
//!         reader_p.daemon = True
//!         reader_p.start()
//!         _start = time.time()
//!         writer(count, pqueue)
//!         reader_p.join()
//!         print(f"Sending {count} numbers to Queue() took {time.time() - _start} seconds")
//! ```
//!
//! Here the queue goes to the reader with `procq::pass` (descriptors inherited by that
//! child only), and the reader is this same binary run with `PROCQ_ROLE=reader`.

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
        return reader_proc(procq::Queue::from_env("QUEUE")?).await;
    }
    let pqueue = procq::Queue::<Msg>::new()?;
    for count in [10_000, 100_000, 1_000_000] {
        let mut cmd = tokio::process::Command::new(std::env::current_exe()?);
        cmd.env("PROCQ_ROLE", "reader").kill_on_drop(true); // Python's daemon = True
        procq::pass(&mut cmd, "QUEUE", pqueue.clone())?;
        let mut reader_p = procq::spawn(cmd)?; // the parent keeps no copy of what was passed
        let start = Instant::now();
        writer(count, &pqueue).await?;
        reader_p.wait().await?;
        println!(
            "Sending {count} numbers to Queue() took {:.3} seconds",
            start.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

async fn reader_proc(queue: procq::Queue<Msg>) -> Result<(), Box<dyn std::error::Error>> {
    loop {
        if queue.get().await? == Msg::Done {
            return Ok(());
        }
    }
}

async fn writer(count: u64, queue: &procq::Queue<Msg>) -> Result<(), procq::SendError<Msg>> {
    for ii in 0..count {
        queue.put(Msg::Number(ii)).await?;
    }
    queue.put(Msg::Done).await
}
