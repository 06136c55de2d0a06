//! Mutual authentication with a shared key, before anything else is said.
//!
//! Both sides prove they hold the key without sending it, as CPython 3.12's
//! `multiprocessing.connection` does: the server sends a random challenge, the client
//! answers with its HMAC-SHA256 under the key, the server checks it (in constant time) and
//! says welcome or failure; then the client challenges the server the same way. A peer
//! without the key learns nothing but a random challenge and a failure.
//!
//! Messages are length-prefixed (`u32`, big endian, as Python's `send_bytes`) and at most
//! [`MAX_MESSAGE`] bytes; a longer one ends the handshake before it is read. The caller
//! bounds the whole handshake with a deadline.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::error::AuthError;

const CHALLENGE: &[u8] = b"#CHALLENGE#";
const WELCOME: &[u8] = b"#WELCOME#";
const FAILURE: &[u8] = b"#FAILURE#";
/// Names the digest, as Python 3.12 does, so it can change without ambiguity.
const DIGEST_TAG: &[u8] = b"{sha256}";
/// Random bytes in a challenge (Python 3.12 uses 40).
const NONCE_LEN: usize = 40;
/// The longest handshake message accepted.
pub const MAX_MESSAGE: usize = 256;

/// The server's side: challenge the client, then answer the client's challenge.
pub async fn server<S>(stream: &mut S, key: &[u8]) -> Result<(), AuthError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    deliver_challenge(stream, key).await?;
    answer_challenge(stream, key).await
}

/// The client's side: answer the server's challenge, then challenge the server.
pub async fn client<S>(stream: &mut S, key: &[u8]) -> Result<(), AuthError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    answer_challenge(stream, key).await?;
    deliver_challenge(stream, key).await
}

/// Sends a fresh challenge and checks the peer's answer.
async fn deliver_challenge<S>(stream: &mut S, key: &[u8]) -> Result<(), AuthError>
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
    send(stream, &challenge).await?;
    let response = recv(stream).await?;
    let message = &challenge[CHALLENGE.len()..];
    if verify(key, message, &response) {
        send(stream, WELCOME).await
    } else {
        // Tell the peer, then fail: it learns only that its answer was wrong.
        let _ = send(stream, FAILURE).await;
        Err(AuthError::WrongKey)
    }
}

/// Answers the peer's challenge and reads its verdict.
async fn answer_challenge<S>(stream: &mut S, key: &[u8]) -> Result<(), AuthError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let challenge = recv(stream).await?;
    let message = challenge
        .strip_prefix(CHALLENGE)
        .ok_or(AuthError::Protocol("expected a challenge"))?;
    if !message.starts_with(DIGEST_TAG) || message.len() < DIGEST_TAG.len() + 20 {
        return Err(AuthError::Protocol("challenge without a sha256 nonce"));
    }
    send(stream, &answer(key, message)).await?;
    match recv(stream).await?.as_slice() {
        WELCOME => Ok(()),
        FAILURE => Err(AuthError::Rejected),
        _ => Err(AuthError::Protocol("expected welcome or failure")),
    }
}

fn mac(key: &[u8], message: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(message);
    mac
}

/// `{sha256}` followed by the HMAC of `message`.
fn answer(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut out = DIGEST_TAG.to_vec();
    out.extend_from_slice(&mac(key, message).finalize().into_bytes());
    out
}

/// Checks an answer in constant time (the HMAC comparison does not stop at the first
/// differing byte).
fn verify(key: &[u8], message: &[u8], response: &[u8]) -> bool {
    match response.strip_prefix(DIGEST_TAG) {
        Some(digest) => mac(key, message).verify_slice(digest).is_ok(),
        None => false,
    }
}

async fn send<S: AsyncWrite + Unpin>(stream: &mut S, message: &[u8]) -> Result<(), AuthError> {
    let len = u32::try_from(message.len()).expect("handshake messages are short");
    let mut out = Vec::with_capacity(4 + message.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(message);
    stream.write_all(&out).await?;
    stream.flush().await?;
    Ok(())
}

async fn recv<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Vec<u8>, AuthError> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_MESSAGE {
        return Err(AuthError::Protocol("handshake message too long"));
    }
    let mut message = vec![0; len];
    stream.read_exact(&mut message).await?;
    Ok(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_verifies_only_under_the_same_key() {
        let message = b"{sha256}0123456789012345678901234567890123456789";
        assert!(verify(b"key", message, &answer(b"key", message)));
        assert!(!verify(b"other", message, &answer(b"key", message)));
        assert!(!verify(b"key", message, b"{md5}whatever"));
    }
}
