//! Shared helpers: re-running this test binary as a child process with a role.
#![allow(dead_code)]

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// The environment variable naming the role a re-executed test binary plays.
pub const ROLE: &str = "PROCQ_TEST_ROLE";

/// How long any single wait in a test may take before the test fails.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Test-harness arguments that run only the `child_main` test, quietly.
pub const CHILD_ARGS: [&str; 5] = [
    "--exact",
    "child_main",
    "--nocapture",
    "--test-threads=1",
    "-q",
];

/// A command that re-runs this test binary, running only its `child_main` test, which
/// dispatches on `role`.
pub fn child_command(role: &str) -> Command {
    let mut cmd = Command::new(std::env::current_exe().expect("test binary path"));
    cmd.args(CHILD_ARGS)
        .env(ROLE, role)
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// The role this process was started with, if it is a child.
pub fn role() -> Option<String> {
    std::env::var(ROLE).ok()
}

/// A child process whose stdout lines starting with `@@ ` are its reports.
pub struct Kid {
    pub child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Kid {
    /// Spawns `cmd` with `procq::spawn`, so the parent keeps no copy of what was passed.
    pub fn spawn(cmd: Command) -> Kid {
        let mut child = procq::spawn(cmd).expect("spawn child");
        let stdout = child.stdout.take().expect("piped stdout");
        Kid {
            child,
            lines: BufReader::new(stdout).lines(),
        }
    }

    /// The next report line (without the `@@ ` prefix); fails the test after `PATIENCE`.
    pub async fn report(&mut self) -> String {
        self.report_within(PATIENCE).await.expect("child report")
    }

    pub async fn report_within(&mut self, d: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.next_line())
                .await
                .ok()?
                .expect("read child stdout")?;
            if let Some(report) = line.strip_prefix("@@ ") {
                return Some(report.to_string());
            }
        }
    }

    /// Waits for exit; fails the test after `d`.
    pub async fn exit_within(&mut self, d: Duration) -> std::process::ExitStatus {
        tokio::time::timeout(d, self.child.wait())
            .await
            .expect("child did not exit in time")
            .expect("wait")
    }

    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }
}

/// Prints a report line for the parent.
pub fn report(line: impl std::fmt::Display) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    writeln!(out, "@@ {line}").unwrap();
    out.flush().unwrap();
}

/// The environment variable naming the runtime flavor a child runs its role on.
pub const FLAVOR: &str = "PROCQ_TEST_FLAVOR";

/// A tokio runtime of the flavor `FLAVOR` names (`multi`: two worker threads; anything
/// else: current-thread).
pub fn runtime_for_child() -> tokio::runtime::Runtime {
    let multi = std::env::var(FLAVOR).as_deref() == Ok("multi");
    runtime(multi)
}

/// A current-thread runtime, or a multi-thread one with two workers.
pub fn runtime(multi: bool) -> tokio::runtime::Runtime {
    let mut builder = if multi {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(2);
        b
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    builder.enable_all().build().unwrap()
}

/// Runs a child role on a fresh runtime (of the flavor `FLAVOR` names), drops the runtime
/// as returning from `main` would, and exits the process.
pub fn run_child<F, Fut>(dispatch: F)
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let Some(role) = role() else { return };
    let rt = runtime_for_child();
    rt.block_on(dispatch(role));
    drop(rt);
    std::process::exit(0);
}

/// This thread's id, for [`wait_until_asleep`].
#[allow(dead_code)]
pub fn thread_id() -> i32 {
    rustix::thread::gettid().as_raw_nonzero().get()
}

/// Waits (polling the kernel's view, with a deadline that fails the test) until thread
/// `tid` of this process sleeps: it has entered the blocking call the test wants to
/// interrupt, not merely been started.
#[allow(dead_code)]
pub fn wait_until_asleep(tid: i32) {
    let path = format!("/proc/self/task/{tid}/stat");
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let stat = std::fs::read_to_string(&path).unwrap();
        let state = stat[stat.rfind(')').unwrap() + 2..].chars().next().unwrap();
        if state == 'S' {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "thread {tid} never slept"
        );
        std::thread::yield_now();
    }
}
