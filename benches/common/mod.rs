//! What the benchmark binaries share: children that re-run the binary in a role, their
//! stdout reports, and best-of-N timing.

#![allow(dead_code)] // each bench uses its own part

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// The environment variable that names the part a re-run of the bench binary plays.
pub const ROLE: &str = "PROCQ_BENCH_ROLE";

/// How many runs each row takes the best of (`PROCQ_BENCH_RUNS`, default 3).
pub fn runs() -> usize {
    env_number("PROCQ_BENCH_RUNS").unwrap_or(3)
}

/// A number from the environment, if set and valid.
pub fn env_number(name: &str) -> Option<usize> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// A child of this binary playing `role`; its reports are stdout lines.
pub fn child_cmd(role: &str) -> Command {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.env(ROLE, role)
        .stdout(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// A running child and its report lines.
pub struct Kid {
    child: tokio::process::Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Kid {
    pub fn spawn(cmd: Command) -> Kid {
        let mut child = procq::spawn(cmd).expect("spawn");
        let out = child.stdout.take().unwrap();
        Kid {
            child,
            lines: BufReader::new(out).lines(),
        }
    }

    /// The child's next report; fails the bench if none comes within five minutes.
    pub async fn line(&mut self) -> String {
        tokio::time::timeout(Duration::from_secs(300), self.lines.next_line())
            .await
            .expect("child report timed out")
            .unwrap()
            .expect("child exited early")
    }

    pub async fn finish(mut self) {
        let _ = self.child.wait().await;
    }
}

/// Writes one report line to stdout, flushed (a child's reports are read line by line).
pub fn say(line: impl std::fmt::Display) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").unwrap();
    out.flush().unwrap();
}

/// The best (highest) of `runs` measurements.
pub async fn best<F, Fut>(runs: usize, mut f: F) -> f64
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = f64>,
{
    let mut best = 0f64;
    for _ in 0..runs {
        best = best.max(f().await);
    }
    best
}

/// Runs `benches/SCRIPT` with `python3` and `args`; its one line of output is a rate.
pub async fn python(script: &str, args: &[String]) -> f64 {
    let path = format!("{}/benches/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("python3")
        .arg(path)
        .args(args)
        .output()
        .await
        .expect("python3");
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// The bench binary's `main`: a child plays the role its environment names (see
/// [`ROLE`]), the parent runs the rows; both on a current-thread runtime.
pub fn run<C, P>(child: impl FnOnce(String) -> C, parent: impl FnOnce() -> P)
where
    C: std::future::Future<Output = ()>,
    P: std::future::Future<Output = ()>,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    match std::env::var(ROLE) {
        Ok(role) => rt.block_on(child(role)),
        // `cargo bench` passes `--bench`; arguments are ignored.
        Err(_) => rt.block_on(parent()),
    }
}
