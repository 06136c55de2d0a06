//! Several fed items in one JetStream message.
//!
//! A message without the [`HEADER`] header carries one encoded item as its whole payload,
//! so any NATS publisher can put an item in a queue. A message with it carries that many
//! items, each as a postcard varint length and then its bytes, and nothing after the
//! last one.

use bytes::{BufMut, Bytes, BytesMut};

/// The header that marks a pack and gives its item count.
pub(crate) const HEADER: &str = "Procq-Items";

/// Bytes a length prefix may take (a `u32` as a postcard varint).
pub(crate) const PREFIX: usize = 5;

/// Appends one item, length first.
pub(crate) fn push(buf: &mut BytesMut, item: &[u8]) {
    let mut len = item.len() as u32;
    while len >= 0x80 {
        buf.put_u8((len as u8 & 0x7f) | 0x80);
        len >>= 7;
    }
    buf.put_u8(len as u8);
    buf.put_slice(item);
}

/// Splits a pack of `count` items. Every length is checked against what is left before
/// anything is taken, so a malformed pack costs an error, never a panic or a large
/// allocation.
pub(crate) fn split(payload: &Bytes, count: usize) -> Result<Vec<Bytes>, postcard::Error> {
    // Each item takes at least its one-byte prefix.
    if count == 0 || count > payload.len() {
        return Err(postcard::Error::DeserializeBadVarint);
    }
    let mut items = Vec::with_capacity(count);
    let mut at = 0usize;
    for _ in 0..count {
        let mut len = 0u64;
        let mut shift = 0;
        loop {
            let Some(&b) = payload.get(at) else {
                return Err(postcard::Error::DeserializeUnexpectedEnd);
            };
            at += 1;
            len |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                break;
            }
            shift += 7;
            if shift >= 35 {
                return Err(postcard::Error::DeserializeBadVarint);
            }
        }
        let len = usize::try_from(len).map_err(|_| postcard::Error::DeserializeBadVarint)?;
        if len > payload.len() - at {
            return Err(postcard::Error::DeserializeUnexpectedEnd);
        }
        items.push(payload.slice(at..at + len));
        at += len;
    }
    if at != payload.len() {
        return Err(postcard::Error::DeserializeBadEncoding);
    }
    Ok(items)
}

/// The item count a message's header gives: `None` for a plain one-item message, an error
/// for a header that is not a count.
pub(crate) fn count(headers: Option<&async_nats::HeaderMap>) -> Result<Option<usize>, ()> {
    let Some(value) = headers.and_then(|h| h.get(HEADER)) else {
        return Ok(None);
    };
    value.as_str().parse::<usize>().map(Some).map_err(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_split_back_into_their_items() {
        let items: Vec<Vec<u8>> =
            vec![vec![], vec![1], vec![7; 127], vec![9; 128], vec![3; 70_000]];
        let mut buf = BytesMut::new();
        for item in &items {
            push(&mut buf, item);
        }
        let payload = buf.freeze();
        let back = split(&payload, items.len()).unwrap();
        assert_eq!(back.len(), items.len());
        for (a, b) in items.iter().zip(&back) {
            assert_eq!(&a[..], &b[..]);
        }
    }

    #[test]
    fn malformed_packs_are_errors() {
        let mut buf = BytesMut::new();
        push(&mut buf, b"abc");
        push(&mut buf, b"de");
        let payload = buf.freeze();
        assert!(split(&payload, 3).is_err(), "count above what is there");
        assert!(split(&payload, 1).is_err(), "bytes left over");
        assert!(split(&payload, 0).is_err());
        assert!(split(&payload, usize::MAX).is_err());
        let huge = Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 0x0f, 1, 2]);
        assert!(split(&huge, 1).is_err(), "length beyond the payload");
        let endless = Bytes::from_static(&[0x80; 12]);
        assert!(split(&endless, 1).is_err(), "varint that never ends");
        assert!(split(&Bytes::new(), 1).is_err());
    }
}
