//! [`SharedBytes`]: byte payloads that a large item's receiver gets without a copy.

use std::fmt;
use std::ops::Deref;

use bytes::Bytes;
use serde::de::Visitor;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::wire::fds;

/// A byte payload that a receiver gets without copying it, when it arrives in an
/// out-of-line item (one larger than a datagram, carried in a sealed memfd): the bytes
/// stay in the receiver's read-only mapping of the sender's memfd, shared by every clone,
/// and the mapping goes when the last of them is dropped. A small item, carried inline,
/// is copied out of its datagram as any other field.
///
/// It serializes as bytes (one length, then the bytes, like `serde_bytes`), so it costs
/// nothing extra to send, and converts to and from [`bytes::Bytes`] without copying.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let (tx, rx) = procq::channel::<(String, procq::SharedBytes)>()?;
/// let frame = procq::SharedBytes::from(vec![7u8; 8 << 20]); // 8 MiB: out of line
/// tx.send(("frame 1".into(), frame)).await?;
/// let (name, data) = rx.recv().await?;
/// assert_eq!(data.len(), 8 << 20); // read straight from the mapping
/// let as_bytes: bytes::Bytes = data.into();
/// # Ok(()) }
/// ```
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SharedBytes(Bytes);

impl SharedBytes {
    /// Wraps bytes (no copy).
    pub fn new(bytes: impl Into<Bytes>) -> Self {
        SharedBytes(bytes.into())
    }

    /// The bytes, as [`bytes::Bytes`] (no copy).
    pub fn into_bytes(self) -> Bytes {
        self.0
    }
}

impl Deref for SharedBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for SharedBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl From<Vec<u8>> for SharedBytes {
    fn from(v: Vec<u8>) -> Self {
        SharedBytes(Bytes::from(v))
    }
}

impl From<Bytes> for SharedBytes {
    fn from(b: Bytes) -> Self {
        SharedBytes(b)
    }
}

impl From<SharedBytes> for Bytes {
    fn from(b: SharedBytes) -> Self {
        b.0
    }
}

impl From<&'static [u8]> for SharedBytes {
    fn from(b: &'static [u8]) -> Self {
        SharedBytes(Bytes::from_static(b))
    }
}

impl fmt::Debug for SharedBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SharedBytes({} bytes)", self.0.len())
    }
}

impl Serialize for SharedBytes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for SharedBytes {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_bytes(SharedBytesVisitor)
    }
}

struct SharedBytesVisitor;

impl<'de> Visitor<'de> for SharedBytesVisitor {
    type Value = SharedBytes;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("bytes")
    }

    fn visit_borrowed_bytes<E: serde::de::Error>(self, v: &'de [u8]) -> Result<SharedBytes, E> {
        // Borrowed from an out-of-line item's mapping: share it; else copy.
        Ok(SharedBytes(
            fds::share(v).unwrap_or_else(|| Bytes::copy_from_slice(v)),
        ))
    }

    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<SharedBytes, E> {
        Ok(SharedBytes(Bytes::copy_from_slice(v)))
    }

    fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<SharedBytes, E> {
        Ok(SharedBytes(Bytes::from(v)))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<SharedBytes, A::Error> {
        let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(b) = seq.next_element()? {
            v.push(b);
        }
        Ok(SharedBytes(Bytes::from(v)))
    }
}
