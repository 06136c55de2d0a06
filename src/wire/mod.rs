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
//! * kind 0, an **inline batch**: `count` (≥ 1) *entries* follow, each a `u32` length, and
//!   that many bytes of one postcard-encoded item. When the length's top bit is set, the
//!   item carries descriptors: a `u16` count follows the length, and the item's bytes come
//!   after it. The entries fill the datagram exactly.
//! * kind 1, an **out-of-line item**: `count` is 1, and a `u64` size and a `u16`
//!   descriptor count follow; the item's bytes are in a sealed memfd.
//!
//! Descriptors travel as `SCM_RIGHTS` with their datagram, in order: an out-of-line item's
//! memfd first, then each item's own descriptors (see [`crate::Fd`]), item by item. An item
//! refers to its descriptors by index within its own list.
//!
//! The whole datagram is checked before any item is handed out, and every length and count
//! is checked against the bytes (and descriptors) actually present, or, out of line,
//! against the configured maximum, before anything is allocated from it. A datagram that
//! fails is dropped whole, its descriptors closed; the next one starts clean because the
//! kernel delivers datagrams whole.
//!
//! [`datagram`] assembles and sends every datagram procq writes; [`encode`] turns items
//! into entries (or memfd contents); [`fds`] carries descriptors between the item's
//! `Serialize` / `Deserialize` and the datagram.

pub(crate) mod datagram;
pub(crate) mod encode;
pub(crate) mod fds;

use std::ops::Range;

use crate::error::DecodeError;

pub(crate) const MAGIC: [u8; 2] = *b"PQ";
pub(crate) const VERSION: u8 = 2;
pub(crate) const KIND_INLINE: u8 = 0;
pub(crate) const KIND_OUT_OF_LINE: u8 = 1;
pub(crate) const HEADER_LEN: usize = 8;
/// Bytes in front of each entry: its length.
pub(crate) const ENTRY_PREFIX: usize = 4;
/// The length's top bit: a `u16` descriptor count follows it.
pub(crate) const HAS_FDS: u32 = 1 << 31;
/// Bytes of the descriptor count, when there is one.
pub(crate) const FD_COUNT_LEN: usize = 2;
/// The most bytes in front of an entry's item.
pub(crate) const MAX_ENTRY_HEADER: usize = ENTRY_PREFIX + FD_COUNT_LEN;
/// Bytes of an out-of-line datagram: header, the `u64` size and the `u16` count.
pub(crate) const OUT_OF_LINE_LEN: usize = HEADER_LEN + 8 + FD_COUNT_LEN;
/// The most descriptors one datagram carries (the kernel's `SCM_MAX_FD`).
pub(crate) const MAX_FDS: usize = crate::sys::socket::MAX_DATAGRAM_FDS;

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
    /// `count` entries starting at byte `HEADER_LEN`, all lengths already checked; their
    /// items carry `fds` descriptors in all.
    Inline { count: u32, fds: usize },
    /// One item of `size` bytes in the attached memfd, carrying `fds` descriptors.
    OutOfLine { size: u64, fds: usize },
}

impl Body {
    /// How many descriptors must have come with the datagram.
    pub(crate) fn descriptors(&self) -> usize {
        match self {
            Body::Inline { fds, .. } => *fds,
            Body::OutOfLine { fds, .. } => 1 + fds,
        }
    }
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
            let mut fds = 0usize;
            for _ in 0..count {
                let entry = split_entry(rest)?;
                fds += entry.fds;
                rest = &rest[entry.header + entry.len..];
            }
            if !rest.is_empty() {
                return Err(DecodeError::TrailingBytes(rest.len()));
            }
            if fds > MAX_FDS {
                return Err(DecodeError::Descriptor);
            }
            Ok(Body::Inline { count, fds })
        }
        KIND_OUT_OF_LINE => {
            if count != 1 {
                return Err(DecodeError::BadCount(count));
            }
            if datagram.len() != OUT_OF_LINE_LEN {
                return Err(DecodeError::Truncated);
            }
            let size = u64::from_le_bytes(datagram[8..16].try_into().expect("8 bytes"));
            let fds = u16::from_le_bytes(datagram[16..18].try_into().expect("2 bytes")) as usize;
            if size > max_item {
                return Err(DecodeError::TooLarge {
                    size,
                    max: max_item,
                });
            }
            if 1 + fds > MAX_FDS {
                return Err(DecodeError::Descriptor);
            }
            Ok(Body::OutOfLine { size, fds })
        }
        other => Err(DecodeError::Kind(other)),
    }
}

/// An entry's header, read and checked against the bytes present.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EntryHeader {
    /// Bytes in front of the item (4, or 6 with a descriptor count).
    pub(crate) header: usize,
    /// The item's length.
    pub(crate) len: usize,
    /// Descriptors the item carries.
    pub(crate) fds: usize,
}

/// Reads the entry at the start of `bytes`, checking its length against what is there.
pub(crate) fn split_entry(bytes: &[u8]) -> Result<EntryHeader, DecodeError> {
    if bytes.len() < ENTRY_PREFIX {
        return Err(DecodeError::Truncated);
    }
    let prefix = u32::from_le_bytes(bytes[..ENTRY_PREFIX].try_into().expect("4 bytes"));
    let (header, fds) = if prefix & HAS_FDS != 0 {
        let count = bytes
            .get(ENTRY_PREFIX..MAX_ENTRY_HEADER)
            .ok_or(DecodeError::Truncated)?;
        let fds = u16::from_le_bytes(count.try_into().expect("2 bytes")) as usize;
        (MAX_ENTRY_HEADER, fds)
    } else {
        (ENTRY_PREFIX, 0)
    };
    let len = (prefix & !HAS_FDS) as usize;
    if len > bytes.len() - header {
        return Err(DecodeError::Truncated);
    }
    Ok(EntryHeader { header, len, fds })
}

/// The header in front of an item of `len` bytes carrying `fds` descriptors.
pub(crate) fn entry_header(len: usize, fds: usize) -> ([u8; MAX_ENTRY_HEADER], usize) {
    let mut out = [0u8; MAX_ENTRY_HEADER];
    let len = u32::try_from(len).expect("entries are bounded by the datagram size");
    if fds == 0 {
        out[..ENTRY_PREFIX].copy_from_slice(&len.to_le_bytes());
        (out, ENTRY_PREFIX)
    } else {
        out[..ENTRY_PREFIX].copy_from_slice(&(len | HAS_FDS).to_le_bytes());
        let fds = u16::try_from(fds).expect("callers bound descriptors per item");
        out[ENTRY_PREFIX..].copy_from_slice(&fds.to_le_bytes());
        (out, MAX_ENTRY_HEADER)
    }
}

/// One entry of a datagram: where its item's bytes are, and how many descriptors it has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) range: Range<usize>,
    pub(crate) fds: usize,
}

/// Walks the entries of a datagram [`parse`] accepted.
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

    /// The next entry of `datagram`. Only call on a datagram [`parse`] accepted.
    pub(crate) fn next_entry(&mut self, datagram: &[u8]) -> Option<Entry> {
        if self.left == 0 {
            return None;
        }
        let e = split_entry(&datagram[self.pos..]).ok()?;
        let start = self.pos + e.header;
        self.pos = start + e.len;
        self.left -= 1;
        Some(Entry {
            range: start..start + e.len,
            fds: e.fds,
        })
    }
}

/// Decodes one item from `bytes` with the descriptors it carries (closed if the item does
/// not take them) and, for an out-of-line item, the mapping `bytes` lies in; trailing bytes
/// are an error (a foreign or mismatched writer).
pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    fds: Vec<std::os::fd::OwnedFd>,
    mapping: Option<std::sync::Arc<crate::sys::memfd::Mapping>>,
) -> Result<T, DecodeError> {
    let (decoded, refusal) = fds::decoding(fds, mapping, || postcard::take_from_bytes(bytes));
    let (item, rest) = decoded.map_err(|e| match refusal {
        Some(reason) => DecodeError::Refused(reason),
        None => DecodeError::Item(e),
    })?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes(rest.len()));
    }
    Ok(item)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(items: &[(&[u8], usize)]) -> Vec<u8> {
        let mut d = header(KIND_INLINE, items.len() as u32).to_vec();
        for (item, fds) in items {
            let (h, n) = entry_header(item.len(), *fds);
            d.extend_from_slice(&h[..n]);
            d.extend_from_slice(item);
        }
        d
    }

    #[test]
    fn a_valid_batch_yields_every_entry_and_its_descriptors() {
        let d = batch(&[(b"ab", 0), (b"", 2), (b"cde", 1)]);
        assert_eq!(parse(&d, 10), Ok(Body::Inline { count: 3, fds: 3 }));
        let mut e = Entries::new(3);
        let got: Vec<(&[u8], usize)> = std::iter::from_fn(|| e.next_entry(&d))
            .map(|e| (&d[e.range], e.fds))
            .collect();
        assert_eq!(got, vec![(&b"ab"[..], 0), (&b""[..], 2), (&b"cde"[..], 1)]);
    }

    #[test]
    fn lengths_that_overrun_the_datagram_are_rejected() {
        let mut d = batch(&[(b"abcd", 0)]);
        d[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(parse(&d, 10), Err(DecodeError::Truncated));
        let mut d = batch(&[(b"abcd", 0)]);
        d[4..8].copy_from_slice(&4_000_000_000u32.to_le_bytes());
        assert_eq!(parse(&d, 10), Err(DecodeError::BadCount(4_000_000_000)));
        let mut d = batch(&[(b"abcd", 0)]);
        d.push(0);
        assert_eq!(parse(&d, 10), Err(DecodeError::TrailingBytes(1)));
        // A descriptor count cut off, and more descriptors than a datagram may carry.
        let mut d = header(KIND_INLINE, 1).to_vec();
        d.extend_from_slice(&HAS_FDS.to_le_bytes());
        assert_eq!(parse(&d, 10), Err(DecodeError::Truncated));
        let d = batch(&[(b"a", 200), (b"b", 200)]);
        assert_eq!(parse(&d, 10), Err(DecodeError::Descriptor));
    }

    #[test]
    fn out_of_line_size_is_bounded() {
        let mut d = header(KIND_OUT_OF_LINE, 1).to_vec();
        d.extend_from_slice(&(1u64 << 40).to_le_bytes());
        d.extend_from_slice(&0u16.to_le_bytes());
        assert!(matches!(
            parse(&d, 1 << 30),
            Err(DecodeError::TooLarge { .. })
        ));
    }
}
