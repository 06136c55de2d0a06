//! Mutual authentication with a shared key, before anything else is said.
//!
//! Both sides prove they hold the key without sending it, as CPython 3.12's
//! `multiprocessing.connection` does: the server sends a random challenge, the client
//! answers with its HMAC-SHA256 under the key, the server checks it (in constant time) and
//! says welcome or failure; then the client challenges the server the same way. A peer
//! without the key learns nothing but a random challenge and a failure.
//!
//! Each answer covers the challenge and a *binding*: empty on a plain connection, keying
//! material exported from the TLS session otherwise (see [`protocol`](super::protocol)).
//! A relay that terminates TLS towards each side has two sessions with different keying
//! material, so the answers it forwards do not verify.
//!
//! Messages are frames of at most [`MAX_HANDSHAKE_MESSAGE`] bytes; a longer one ends the
//! handshake before it is read. The caller bounds the whole handshake with a deadline.

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::{Framed, LengthDelimitedCodec};

use super::error::AuthError;
use super::protocol::MAX_HANDSHAKE_MESSAGE;

const CHALLENGE: &[u8] = b"#CHALLENGE#";
const WELCOME: &[u8] = b"#WELCOME#";
const FAILURE: &[u8] = b"#FAILURE#";
/// Names the digest, as Python 3.12 does, so it can change without ambiguity.
const DIGEST_TAG: &[u8] = b"{sha256}";
/// Random bytes in a challenge (Python 3.12 uses 40).
const NONCE_LEN: usize = 40;

/// A connection during the handshake: frames of at most [`MAX_HANDSHAKE_MESSAGE`] bytes.
pub(crate) type Handshaking<S> = Framed<S, LengthDelimitedCodec>;

/// Starts the handshake framing on `stream`.
pub(crate) fn framed<S: AsyncRead + AsyncWrite>(stream: S) -> Handshaking<S> {
    Framed::new(stream, super::codec::frames(MAX_HANDSHAKE_MESSAGE))
}

/// The server's side: challenge the client, then answer the client's challenge.
pub(crate) async fn server<S>(
    framed: &mut Handshaking<S>,
    key: &[u8],
    binding: &[u8],
) -> Result<(), AuthError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    deliver_challenge(framed, key, binding).await?;
    answer_challenge(framed, key, binding).await
}

/// The client's side: answer the server's challenge, then challenge the server.
pub(crate) async fn client<S>(
    framed: &mut Handshaking<S>,
    key: &[u8],
    binding: &[u8],
) -> Result<(), AuthError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    answer_challenge(framed, key, binding).await?;
    deliver_challenge(framed, key, binding).await
}

/// Sends a fresh challenge and checks the peer's answer.
async fn deliver_challenge<S>(
    framed: &mut Handshaking<S>,
    key: &[u8],
    binding: &[u8],
) -> Result<(), AuthError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut nonce = [0u8; NONCE_LEN];
    rustix::rand::getrandom(&mut nonce, rustix::rand::GetRandomFlags::empty())
        .map_err(|e| AuthError::Io(e.into()))?;
    let mut challenge = Vec::with_capacity(CHALLENGE.len() + DIGEST_TAG.len() + NONCE_LEN);
    challenge.extend_from_slice(CHALLENGE);
    challenge.extend_from_slice(DIGEST_TAG);
    challenge.extend_from_slice(&nonce);
    send(framed, &challenge).await?;
    let response = recv(framed).await?;
    let message = &challenge[CHALLENGE.len()..];
    if verify(key, message, binding, &response) {
        send(framed, WELCOME).await
    } else {
        // Tell the peer, then fail: it learns only that its answer was wrong.
        let _ = send(framed, FAILURE).await;
        Err(AuthError::WrongKey)
    }
}

/// Answers the peer's challenge and reads its verdict.
async fn answer_challenge<S>(
    framed: &mut Handshaking<S>,
    key: &[u8],
    binding: &[u8],
) -> Result<(), AuthError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let challenge = recv(framed).await?;
    let message = challenge
        .strip_prefix(CHALLENGE)
        .ok_or(AuthError::Protocol("expected a challenge"))?;
    if !message.starts_with(DIGEST_TAG) || message.len() < DIGEST_TAG.len() + 20 {
        return Err(AuthError::Protocol("challenge without a sha256 nonce"));
    }
    send(framed, &answer(key, message, binding)).await?;
    match &recv(framed).await?[..] {
        WELCOME => Ok(()),
        FAILURE => Err(AuthError::Rejected),
        _ => Err(AuthError::Protocol("expected welcome or failure")),
    }
}

fn mac(key: &[u8], message: &[u8], binding: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(message);
    mac.update(binding);
    mac
}

/// `{sha256}` followed by the HMAC of `message` and `binding`.
fn answer(key: &[u8], message: &[u8], binding: &[u8]) -> Vec<u8> {
    let mut out = DIGEST_TAG.to_vec();
    out.extend_from_slice(&mac(key, message, binding).finalize().into_bytes());
    out
}

/// Checks an answer in constant time (the HMAC comparison does not stop at the first
/// differing byte).
fn verify(key: &[u8], message: &[u8], binding: &[u8], response: &[u8]) -> bool {
    match response.strip_prefix(DIGEST_TAG) {
        Some(digest) => mac(key, message, binding).verify_slice(digest).is_ok(),
        None => false,
    }
}

async fn send<S>(framed: &mut Handshaking<S>, message: &[u8]) -> Result<(), AuthError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    framed.send(Bytes::copy_from_slice(message)).await?;
    Ok(())
}

async fn recv<S>(framed: &mut Handshaking<S>) -> Result<bytes::BytesMut, AuthError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match framed.next().await {
        Some(Ok(message)) => Ok(message),
        Some(Err(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
            Err(AuthError::Protocol("handshake message too long"))
        }
        Some(Err(e)) => Err(AuthError::Io(e)),
        None => Err(AuthError::Io(std::io::ErrorKind::UnexpectedEof.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_verifies_only_under_the_same_key_and_binding() {
        let message = b"{sha256}0123456789012345678901234567890123456789";
        assert!(verify(b"key", message, b"", &answer(b"key", message, b"")));
        assert!(!verify(
            b"other",
            message,
            b"",
            &answer(b"key", message, b"")
        ));
        assert!(!verify(
            b"key",
            message,
            b"tls-a",
            &answer(b"key", message, b"tls-b")
        ));
        assert!(!verify(b"key", message, b"", b"{md5}whatever"));
    }
}
