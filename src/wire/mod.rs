//! The datagram format, and item encoding.
//!
//! Every datagram starts with an 8-byte header:
//!
//! ```text
//! 0      2         3       4            8
//! +------+---------+-------+------------+
//! | "PQ" | version | kind  | count: u32 |   (little endian)
//! +------+---------+-------+------------+
//! ```
//!
//! * kind 0, an **inline batch**: `count` (≥ 1) *entries* follow, each a `u32` length and
//!   that many bytes of one postcard-encoded item; the entries fill the datagram exactly.
//! * kind 1, an **out-of-line item**: `count` is 1 and a `u64` size follows; the item's
//!   bytes are in a sealed memfd that travels with the datagram as `SCM_RIGHTS`.
//!
//! The whole datagram is checked before any item is handed out, and every length is checked
//! against the bytes actually present (or, out of line, against the configured maximum)
//! before anything is allocated from it. A datagram that fails is dropped whole; the next
//! one starts clean because the kernel delivers datagrams whole.
//!
//! [`datagram`] assembles and sends every datagram procq writes; [`encode`] turns items
//! into entries (or memfd contents).

pub(crate) mod datagram;
pub(crate) mod encode;

use std::ops::Range;

use crate::error::DecodeError;

pub(crate) const MAGIC: [u8; 2] = *b"PQ";
pub(crate) const VERSION: u8 = 1;
pub(crate) const KIND_INLINE: u8 = 0;
pub(crate) const KIND_OUT_OF_LINE: u8 = 1;
pub(crate) const HEADER_LEN: usize = 8;
/// Bytes in front of each entry: its length.
pub(crate) const ENTRY_PREFIX: usize = 4;
/// Bytes of an out-of-line datagram: header and the `u64` size.
pub(crate) const OUT_OF_LINE_LEN: usize = HEADER_LEN + 8;

/// The largest datagram any procq sender produces; receivers size their buffer to it, so a
/// longer one is foreign and reported as such.
pub(crate) const MAX_DATAGRAM: usize = 256 * 1024;

pub(crate) fn header(kind: u8, count: u32) -> [u8; HEADER_LEN] {
    let c = count.to_le_bytes();
    [MAGIC[0], MAGIC[1], VERSION, kind, c[0], c[1], c[2], c[3]]
}

/// What a received datagram holds, after validation.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Body {
    /// `count` entries starting at byte `HEADER_LEN`, all lengths already checked.
    Inline { count: u32 },
    /// One item of `size` bytes in the attached memfd.
    OutOfLine { size: u64 },
}

/// Validates a whole datagram. `max_item` bounds an out-of-line size.
pub(crate) fn parse(datagram: &[u8], max_item: u64) -> Result<Body, DecodeError> {
    if datagram.len() < HEADER_LEN {
        return Err(DecodeError::Truncated);
    }
    if datagram[0..2] != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    if datagram[2] != VERSION {
        return Err(DecodeError::Version(datagram[2]));
    }
    let count = u32::from_le_bytes(datagram[4..8].try_into().expect("4 bytes"));
    match datagram[3] {
        KIND_INLINE => {
            let body = &datagram[HEADER_LEN..];
            // Each entry takes at least its prefix: reject impossible counts before looping.
            if count == 0 || count as usize > body.len() / ENTRY_PREFIX {
                return Err(DecodeError::BadCount(count));
            }
            let mut rest = body;
            for _ in 0..count {
                let (len, after) = split_entry(rest)?;
                rest = &after[len..];
            }
            if !rest.is_empty() {
                return Err(DecodeError::TrailingBytes(rest.len()));
            }
            Ok(Body::Inline { count })
        }
        KIND_OUT_OF_LINE => {
            if count != 1 {
                return Err(DecodeError::BadCount(count));
            }
            if datagram.len() != OUT_OF_LINE_LEN {
                return Err(DecodeError::Truncated);
            }
            let size = u64::from_le_bytes(datagram[8..16].try_into().expect("8 bytes"));
            if size > max_item {
                return Err(DecodeError::TooLarge {
                    size,
                    max: max_item,
                });
            }
            Ok(Body::OutOfLine { size })
        }
        other => Err(DecodeError::Kind(other)),
    }
}

/// Splits one entry off `bytes`: returns the item length (checked against what is there)
/// and the bytes after the prefix.
fn split_entry(bytes: &[u8]) -> Result<(usize, &[u8]), DecodeError> {
    if bytes.len() < ENTRY_PREFIX {
        return Err(DecodeError::Truncated);
    }
    let len = u32::from_le_bytes(bytes[..ENTRY_PREFIX].try_into().expect("4 bytes")) as usize;
    let after = &bytes[ENTRY_PREFIX..];
    if len > after.len() {
        return Err(DecodeError::Truncated);
    }
    Ok((len, after))
}

/// Walks the entries of a datagram [`parse`] accepted, yielding each item's byte range.
#[derive(Debug, Default, Clone)]
pub(crate) struct Entries {
    pos: usize,
    left: u32,
}

impl Entries {
    pub(crate) fn new(count: u32) -> Self {
        Entries {
            pos: HEADER_LEN,
            left: count,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.left == 0
    }

    /// Entries not yet handed out.
    pub(crate) fn len(&self) -> usize {
        self.left as usize
    }

    /// Where the entries not yet handed out start in the datagram.
    pub(crate) fn position(&self) -> usize {
        self.pos
    }

    /// The next item's range in `datagram`. Only call on a datagram [`parse`] accepted.
    pub(crate) fn next_range(&mut self, datagram: &[u8]) -> Option<Range<usize>> {
        if self.left == 0 {
            return None;
        }
        let (len, _) = split_entry(&datagram[self.pos..]).ok()?;
        let start = self.pos + ENTRY_PREFIX;
        self.pos = start + len;
        self.left -= 1;
        Some(start..start + len)
    }
}

/// Decodes one item; trailing bytes are an error (a foreign or mismatched writer).
pub(crate) fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    let (item, rest) = postcard::take_from_bytes(bytes).map_err(DecodeError::Item)?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes(rest.len()));
    }
    Ok(item)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(items: &[&[u8]]) -> Vec<u8> {
        let mut d = header(KIND_INLINE, items.len() as u32).to_vec();
        for i in items {
            d.extend_from_slice(&(i.len() as u32).to_le_bytes());
            d.extend_from_slice(i);
        }
        d
    }

    #[test]
    fn a_valid_batch_yields_every_entry() {
        let d = batch(&[b"ab", b"", b"cde"]);
        assert_eq!(parse(&d, 10), Ok(Body::Inline { count: 3 }));
        let mut e = Entries::new(3);
        let got: Vec<&[u8]> = std::iter::from_fn(|| e.next_range(&d))
            .map(|r| &d[r])
            .collect();
        assert_eq!(got, vec![&b"ab"[..], b"", b"cde"]);
    }

    #[test]
    fn lengths_that_overrun_the_datagram_are_rejected() {
        let mut d = batch(&[b"abcd"]);
        d[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(parse(&d, 10), Err(DecodeError::Truncated));
        let mut d = batch(&[b"abcd"]);
        d[4..8].copy_from_slice(&4_000_000_000u32.to_le_bytes());
        assert_eq!(parse(&d, 10), Err(DecodeError::BadCount(4_000_000_000)));
        let mut d = batch(&[b"abcd"]);
        d.push(0);
        assert_eq!(parse(&d, 10), Err(DecodeError::TrailingBytes(1)));
    }

    #[test]
    fn out_of_line_size_is_bounded() {
        let mut d = header(KIND_OUT_OF_LINE, 1).to_vec();
        d.extend_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(matches!(
            parse(&d, 1 << 30),
            Err(DecodeError::TooLarge { .. })
        ));
    }
}
