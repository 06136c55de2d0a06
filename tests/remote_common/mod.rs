//! Helpers for the remote tests: child processes with roles (as tests/common does), an
//! embedded server, a foreign client that speaks the wire protocol by hand, and TLS
//! certificates made at test time.
#![allow(dead_code)]

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use procq::remote::protocol::{Reply, Request};
use procq::remote::{rustls, Server, ServerConfig};
use sha2::Sha256;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::TcpStream;
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

/// A command that re-runs this test binary as a child playing `role`.
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

/// A child process whose stdout lines starting with `@@ ` are its reports.
pub struct Kid {
    pub child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Kid {
    pub fn spawn(mut cmd: Command) -> Kid {
        let mut child = cmd.spawn().expect("spawn child");
        let stdout = child.stdout.take().expect("piped stdout");
        Kid {
            child,
            lines: BufReader::new(stdout).lines(),
        }
    }

    /// The next report line; fails the test after `PATIENCE`.
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

/// Runs a child role on a fresh current-thread runtime and exits with its status.
pub fn run_child<F, Fut>(dispatch: F)
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(dispatch(role));
    drop(rt);
    std::process::exit(0);
}

pub const KEY: &[u8] = b"test key";

/// An embedded server on 127.0.0.1 with a queue "jobs" of `maxsize`; returns it and its
/// address.
pub async fn start_server(config: ServerConfig, maxsize: usize) -> (Server, String) {
    let server = Server::new(config).expect("valid config");
    server.declare("jobs", maxsize).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let serving = server.clone();
    tokio::spawn(async move { serving.serve_tcp(listener).await });
    (server, addr)
}

/// Waits until `check` holds, looking again whenever `interval` passes; fails the test
/// after `PATIENCE`. For server-side state that has no event to await from outside.
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    loop {
        if check() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        tick.tick().await;
    }
}

// ---- A foreign client: the wire protocol written out by hand. ----

/// Writes one frame: a u32 big-endian length, then the bytes.
pub async fn write_frame<W: AsyncWriteExt + Unpin>(w: &mut W, body: &[u8]) {
    w.write_all(&(body.len() as u32).to_be_bytes())
        .await
        .unwrap();
    w.write_all(body).await.unwrap();
}

/// Reads one frame of at most 1 MiB.
pub async fn read_frame<R: AsyncReadExt + Unpin>(r: &mut R) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    assert!(len <= 1 << 20, "frame of {len} bytes");
    let mut body = vec![0; len];
    r.read_exact(&mut body).await?;
    Ok(body)
}

fn hmac(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(message);
    let mut out = b"{sha256}".to_vec();
    out.extend_from_slice(&mac.finalize().into_bytes());
    out
}

/// The client's side of the handshake, by hand (plain connection: empty binding).
pub async fn handshake(s: &mut TcpStream, key: &[u8]) {
    let challenge = read_frame(s).await.unwrap();
    let message = challenge.strip_prefix(b"#CHALLENGE#").expect("a challenge");
    write_frame(s, &hmac(key, message)).await;
    assert_eq!(read_frame(s).await.unwrap(), b"#WELCOME#");
    let mut ours = b"#CHALLENGE#{sha256}".to_vec();
    ours.extend_from_slice(&[7u8; 40]);
    write_frame(s, &ours).await;
    let answer = read_frame(s).await.unwrap();
    assert_eq!(answer, hmac(key, &ours[11..]), "the server knows the key");
    write_frame(s, b"#WELCOME#").await;
}

pub async fn send(s: &mut TcpStream, request: &Request) {
    write_frame(s, &postcard::to_stdvec(request).unwrap()).await;
}

/// The next reply that is not a ping.
pub async fn recv(s: &mut TcpStream) -> std::io::Result<Reply> {
    loop {
        let body = read_frame(s).await?;
        let reply: Reply = postcard::from_bytes(&body).expect("a reply");
        if reply != Reply::Ping {
            return Ok(reply);
        }
    }
}

/// A foreign client, authenticated, that opened `queue` (None: statistics only).
pub async fn raw_client(addr: &str, queue: Option<&str>) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    handshake(&mut s, KEY).await;
    let hello = Request::Hello {
        version: procq::remote::protocol::VERSION,
        queue: queue.map(str::to_string),
        max_frame: 64 << 20,
        lease_ms: None,
    };
    send(&mut s, &hello).await;
    match recv(&mut s).await.unwrap() {
        Reply::Welcome { .. } => s,
        other => panic!("not welcomed: {other:?}"),
    }
}

/// Reads until the server closes the connection; fails the test if it does not.
pub async fn closed_by_server(mut s: TcpStream) {
    let mut sink = Vec::new();
    let closed = tokio::time::timeout(PATIENCE, s.read_to_end(&mut sink)).await;
    assert!(closed.is_ok(), "the server kept a bad connection open");
}

// ---- TLS, with certificates made now. ----

/// A certificate authority and server certificates it signed.
pub struct Pki {
    ca: rcgen::Issuer<'static, rcgen::KeyPair>,
    pub ca_pem: String,
}

impl Pki {
    pub fn new() -> Pki {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "procq test ca");
        let cert = params.self_signed(&key).unwrap();
        Pki {
            ca_pem: cert.pem(),
            ca: rcgen::Issuer::new(params, key),
        }
    }

    /// A certificate for `name` signed by this CA: (chain PEM, key PEM).
    pub fn server_cert(&self, name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    pub fn server_config(&self, name: &str) -> Arc<rustls::ServerConfig> {
        let (chain, key) = self.server_cert(name);
        procq::remote::tls::server_config(chain.as_bytes(), key.as_bytes()).unwrap()
    }

    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        procq::remote::tls::client_config(self.ca_pem.as_bytes()).unwrap()
    }
}

/// Raises the descriptor limit to what `n` connections on both ends need.
pub fn room_for_descriptors(n: u64) {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    let want = n.min(limit.maximum.unwrap_or(n));
    if limit.current.unwrap_or(0) < want {
        let raised = rustix::process::Rlimit {
            current: Some(want),
            maximum: limit.maximum,
        };
        rustix::process::setrlimit(rustix::process::Resource::Nofile, raised).unwrap();
    }
}
