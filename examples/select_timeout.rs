//! Race a receive against a timer and a shutdown signal with `tokio::select!`.
//!
//! ```text
//! cargo run --example select_timeout
//! ```
//!
//! A child process sends readings at irregular intervals. The parent prints each one, says
//! so when nothing came for 250 ms, and stops on ctrl-c or when the child is done. `recv`
//! is cancel-safe: losing the race to the timer never loses a reading.

use std::time::Duration;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var("PROCQ_ROLE").as_deref() == Ok("sensor") {
        let tx = procq::Sender::<(u32, f64)>::from_env("READINGS")?;
        for (i, pause) in [50u64, 400, 80, 600, 30, 10].into_iter().enumerate() {
            tokio::time::sleep(Duration::from_millis(pause)).await;
            tx.send((i as u32, 20.0 + i as f64 / 2.0)).await?;
        }
        let left = tx.drain(Duration::from_secs(5)).await;
        assert!(left.is_complete(), "the reader went away early");
        return Ok(());
    }

    let (tx, rx) = procq::channel::<(u32, f64)>()?;
    let mut cmd = tokio::process::Command::new(std::env::current_exe()?);
    cmd.env("PROCQ_ROLE", "sensor");
    procq::pass(&mut cmd, "READINGS", tx)?;
    let mut child = procq::spawn(cmd)?; // the parent keeps no copy of what was passed

    let shutdown = tokio::signal::ctrl_c();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            reading = rx.recv() => match reading {
                Ok((n, celsius)) => println!("reading {n}: {celsius:.1} °C"),
                Err(e) if e.is_closed() => {
                    println!("sensor finished");
                    break;
                }
                Err(e) => return Err(e.into()),
            },
            _ = tokio::time::sleep(Duration::from_millis(250)) => {
                println!("no reading for 250 ms");
            }
            _ = &mut shutdown => {
                println!("shutting down");
                break;
            }
        }
    }
    child.wait().await?;
    Ok(())
}
