//! The shared-key handshake and TLS, over real connections on loopback, against foreign
//! peers written here by hand, and a relay between a genuine client and server.

mod remote_common;

use std::time::{Duration, Instant};

use procq::remote::{ClientOptions, RemoteQueue, ServerConfig};
use procq::{AuthError, RemoteError};
use remote_common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[tokio::test]
async fn a_wrong_key_fails_on_both_sides_with_a_clear_error() {
    let (server, addr) = start_server(ServerConfig::new(KEY), 0).await;
    let err = RemoteQueue::<u8>::connect(&addr, "jobs", b"guess")
        .await
        .unwrap_err();
    assert!(
        matches!(err, RemoteError::Auth(AuthError::Rejected)),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "authentication failed: the peer rejected our key"
    );
    assert_eq!(server.stats().connections, 0);
}

#[tokio::test]
async fn an_unauthenticated_peer_learns_only_a_challenge_and_a_failure() {
    let (_server, addr) = start_server(ServerConfig::new(KEY), 0).await;
    let mut s = TcpStream::connect(&addr).await.unwrap();
    let challenge = read_frame(&mut s).await.unwrap();
    assert!(challenge.starts_with(b"#CHALLENGE#{sha256}"));
    assert_eq!(
        challenge.len(),
        11 + 8 + 40,
        "a tag and 40 random bytes, nothing else"
    );
    write_frame(&mut s, b"{sha256}").await;
    assert_eq!(read_frame(&mut s).await.unwrap(), b"#FAILURE#");
    let _ = s.write_all(b"GET /queues HTTP/1.0\r\n\r\n").await;
    let mut rest = Vec::new();
    let read = tokio::time::timeout(PATIENCE, s.read_to_end(&mut rest))
        .await
        .unwrap();
    assert!(
        read.is_err() || rest.is_empty(),
        "the server said more: {rest:?}"
    );
}

#[tokio::test]
async fn an_oversize_handshake_message_is_refused_unread() {
    let (_server, addr) = start_server(ServerConfig::new(KEY), 0).await;
    let mut s = TcpStream::connect(&addr).await.unwrap();
    read_frame(&mut s).await.unwrap(); // the challenge, unanswered
    s.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    closed_by_server(s).await;
}

#[tokio::test]
async fn a_silent_peer_runs_into_the_configured_handshake_timeout() {
    let timeout = Duration::from_millis(300);
    let (server, addr) = start_server(ServerConfig::new(KEY).handshake_timeout(timeout), 0).await;
    let start = Instant::now();
    let mut s = TcpStream::connect(&addr).await.unwrap();
    read_frame(&mut s).await.unwrap(); // the challenge, then silence
    eventually("the handshake slot is taken", || {
        server.stats().handshaking == 1
    })
    .await;
    closed_by_server(s).await;
    assert!(
        start.elapsed() >= timeout,
        "closed before the handshake timeout"
    );
    eventually("the handshake slot is free", || {
        server.stats().handshaking == 0
    })
    .await;
}

#[tokio::test]
async fn tls_carries_the_queue_and_a_plain_client_cannot_talk_to_it() {
    let pki = Pki::new();
    let config = ServerConfig::new(KEY).tls(pki.server_config("localhost"));
    let (_server, addr) = start_server(config, 0).await;
    let tls = ClientOptions::new(KEY).tls(pki.client_config(), "localhost");
    let q = tls.connect::<String>(&addr, "jobs").await.unwrap();
    q.put("secret".to_string()).await.unwrap();
    assert_eq!(q.get_timeout(PATIENCE).await.unwrap(), "secret");
    let plain = ClientOptions::new(KEY).connect_timeout(Duration::from_secs(2));
    assert!(plain.connect::<String>(&addr, "jobs").await.is_err());
    // A client that does not trust the server's CA refuses it.
    let other = Pki::new();
    let err = ClientOptions::new(KEY)
        .tls(other.client_config(), "localhost")
        .connect::<String>(&addr, "jobs")
        .await
        .unwrap_err();
    assert!(matches!(err, RemoteError::Io(_)), "{err}");
}

/// A relay that terminates TLS towards the client (with a certificate the client trusts:
/// a misissued one) and opens its own TLS session to the server, forwarding the plaintext
/// both ways. Without the binding it would be authenticated by the genuine client's
/// answers; with it, both sides refuse.
#[tokio::test]
async fn a_relay_between_a_genuine_client_and_server_fails_the_handshake() {
    let pki = Pki::new();
    let (server, server_addr) = start_server(
        ServerConfig::new(KEY).tls(pki.server_config("localhost")),
        0,
    )
    .await;
    let relay = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay_addr = relay.local_addr().unwrap().to_string();
    let relay_tls = pki.server_config("localhost");
    let upstream_tls = pki.client_config();
    let relaying = tokio::spawn(async move {
        let (downstream, _) = relay.accept().await.unwrap();
        let mut downstream = tokio_rustls::TlsAcceptor::from(relay_tls)
            .accept(downstream)
            .await
            .unwrap();
        let upstream = TcpStream::connect(&server_addr).await.unwrap();
        let name = procq::remote::rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut upstream = tokio_rustls::TlsConnector::from(upstream_tls)
            .connect(name, upstream)
            .await
            .unwrap();
        let _ = tokio::io::copy_bidirectional(&mut downstream, &mut upstream).await;
    });
    let err = ClientOptions::new(KEY)
        .tls(pki.client_config(), "localhost")
        .connect::<u8>(&relay_addr, "jobs")
        .await
        .unwrap_err();
    assert!(matches!(err, RemoteError::Auth(_)), "{err}");
    tokio::time::timeout(PATIENCE, relaying)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(server.stats().connections, 0, "the relay never got in");
}

/// A relay that only forwards bytes (TLS end to end) is no man in the middle: it works.
#[tokio::test]
async fn a_byte_forwarder_with_tls_end_to_end_is_harmless() {
    let pki = Pki::new();
    let (_server, server_addr) = start_server(
        ServerConfig::new(KEY).tls(pki.server_config("localhost")),
        0,
    )
    .await;
    let relay = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay_addr = relay.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let (mut downstream, _) = relay.accept().await.unwrap();
        let mut upstream = TcpStream::connect(&server_addr).await.unwrap();
        let _ = tokio::io::copy_bidirectional(&mut downstream, &mut upstream).await;
    });
    let q = ClientOptions::new(KEY)
        .tls(pki.client_config(), "localhost")
        .connect::<u8>(&relay_addr, "jobs")
        .await
        .unwrap();
    q.put(7).await.unwrap();
    assert_eq!(q.get_timeout(PATIENCE).await.unwrap(), 7);
}

/// A foreign "server" that sends garbage, an oversize length, or nothing: the client gets
/// an error value within its connect timeout, never a panic or a hang.
#[tokio::test]
async fn a_foreign_server_is_an_error_value_never_a_hang() {
    for garbage in [
        &b"\x00\x00\x00\x05hello, I am not a queue server"[..],
        &b"\xff\xff\xff\xff"[..],
        &b"\x00\x00\x00\x08#WELCOME"[..],
        &b""[..],
    ] {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let serving = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let _ = s.write_all(garbage).await;
            // Then silence, with the connection open.
            let mut sink = Vec::new();
            let _ = s.read_to_end(&mut sink).await;
        });
        let result = ClientOptions::new(KEY)
            .connect_timeout(Duration::from_millis(500))
            .connect::<u8>(&addr, "jobs")
            .await;
        match result {
            Err(RemoteError::Auth(_)) | Err(RemoteError::Timeout) => {}
            other => panic!("{garbage:?}: {other:?}"),
        }
        serving.abort();
    }
}
