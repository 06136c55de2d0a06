//! The remote protocol's shared-key handshake, over real TCP connections on loopback.

use std::time::Duration;

use procq::remote::auth;
use procq::AuthError;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const DEADLINE: Duration = Duration::from_secs(10);

/// Accepts one connection and runs the server's side of the handshake with `key`.
async fn serve_once(
    key: &'static [u8],
) -> (String, tokio::task::JoinHandle<Result<(), AuthError>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        match tokio::time::timeout(DEADLINE, auth::server(&mut stream, key)).await {
            Ok(result) => result,
            Err(_) => Err(AuthError::Timeout),
        }
    });
    (addr, server)
}

/// Reads one length-prefixed handshake message, as a peer without the key would.
async fn read_message(stream: &mut TcpStream) -> Vec<u8> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await.unwrap();
    let mut message = vec![0; u32::from_be_bytes(len) as usize];
    stream.read_exact(&mut message).await.unwrap();
    message
}

#[tokio::test]
async fn the_same_key_passes_both_ways() {
    let (addr, server) = serve_once(b"sesame").await;
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    auth::client(&mut stream, b"sesame").await.unwrap();
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_wrong_key_fails_on_both_sides_with_a_clear_error() {
    let (addr, server) = serve_once(b"sesame").await;
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    let client = auth::client(&mut stream, b"guess").await.unwrap_err();
    assert!(matches!(client, AuthError::Rejected), "{client}");
    assert_eq!(
        client.to_string(),
        "authentication failed: the peer rejected our key"
    );
    let server = server.await.unwrap().unwrap_err();
    assert!(matches!(server, AuthError::WrongKey), "{server}");
}

#[tokio::test]
async fn an_unauthenticated_peer_learns_only_a_challenge_and_a_failure() {
    let (addr, server) = serve_once(b"sesame").await;
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    let challenge = read_message(&mut stream).await;
    assert!(challenge.starts_with(b"#CHALLENGE#{sha256}"));
    assert_eq!(
        challenge.len(),
        11 + 8 + 40,
        "a tag and 40 random bytes, nothing else"
    );
    // A wrong answer: the server says failure, and nothing else, and hangs up.
    stream.write_all(&8u32.to_be_bytes()).await.unwrap();
    stream.write_all(b"{sha256}").await.unwrap();
    let mut failure = [0u8; 13];
    stream.read_exact(&mut failure).await.unwrap();
    assert_eq!(
        &failure[..],
        &[&9u32.to_be_bytes()[..], b"#FAILURE#"].concat()[..]
    );
    assert!(matches!(server.await.unwrap(), Err(AuthError::WrongKey)));
    // Whatever it sends now, nobody is listening: end of stream (or a reset).
    let _ = stream.write_all(b"GET /queues HTTP/1.0\r\n\r\n").await;
    let mut rest = Vec::new();
    let read = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut rest))
        .await
        .unwrap();
    assert!(
        read.is_err() || rest.is_empty(),
        "the server said more: {rest:?}"
    );
}

#[tokio::test]
async fn a_silent_peer_runs_into_the_handshake_deadline() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        tokio::time::timeout(Duration::from_millis(200), auth::server(&mut stream, b"k")).await
    });
    let _silent = TcpStream::connect(addr).await.unwrap();
    assert!(
        server.await.unwrap().is_err(),
        "the deadline ends the handshake"
    );
}

#[tokio::test]
async fn an_oversize_handshake_message_is_refused_unread() {
    let (addr, server) = serve_once(b"sesame").await;
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    read_message(&mut stream).await; // the challenge, unanswered
    stream.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    let err = server.await.unwrap().unwrap_err();
    assert!(matches!(err, AuthError::Protocol(_)), "{err}");
}
