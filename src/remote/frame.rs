//! Framing for the remote protocol's byte stream.
//!
//! ```text
//! +---------------------+-----------+-----------------+
//! | length: u32 (LE)    | kind: u8  | body            |
//! +---------------------+-----------+-----------------+
//!   length counts kind and body: 1 ..= max_frame
//! ```
//!
//! The decoder reads the length first and rejects it before buffering a byte of the frame
//! if it is zero or above the connection's cap, so a peer that announces 4 GiB costs four
//! bytes and a closed connection, never an allocation. What it buffers grows only as
//! bytes arrive.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Bytes in front of every frame's body: the length and the kind.
pub const HEADER_LEN: usize = 5;

/// One frame: its kind and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// What the body holds (the protocol assigns the values).
    pub kind: u8,
    /// The body, shared with the read buffer (no copy).
    pub body: Bytes,
}

/// Why a stream is no longer valid framing. The connection must be closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// A frame announced a length above the cap.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// The announced length.
        len: u64,
        /// The cap.
        max: u64,
    },
    /// A frame announced length zero (it must hold at least its kind).
    #[error("empty frame")]
    Empty,
}

/// Splits frames off a read buffer, enforcing a size cap.
#[derive(Debug, Clone)]
pub struct Decoder {
    max_frame: usize,
}

impl Decoder {
    /// A decoder accepting frames of up to `max_frame` bytes (kind and body).
    pub fn new(max_frame: usize) -> Self {
        Decoder { max_frame }
    }

    /// The next whole frame in `buf`, if there is one; `Ok(None)` means more bytes are
    /// needed. Consumes exactly the frame's bytes.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_le_bytes(buf[..4].try_into().expect("4 bytes")) as usize;
        if len == 0 {
            return Err(FrameError::Empty);
        }
        if len > self.max_frame {
            return Err(FrameError::TooLarge {
                len: len as u64,
                max: self.max_frame as u64,
            });
        }
        if buf.len() < 4 + len {
            return Ok(None);
        }
        buf.advance(4);
        let mut frame = buf.split_to(len);
        let kind = frame.get_u8();
        Ok(Some(Frame {
            kind,
            body: frame.freeze(),
        }))
    }
}

/// Appends a frame to `out`. Panics if the body is larger than a `u32` length can say,
/// which callers prevent by checking against their cap first.
pub fn encode(kind: u8, body: &[u8], out: &mut BytesMut) {
    let len = u32::try_from(body.len() + 1).expect("frame length fits a u32");
    out.reserve(4 + len as usize);
    out.put_u32_le(len);
    out.put_u8(kind);
    out.put_slice(body);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_arrive_in_pieces() {
        let mut wire = BytesMut::new();
        encode(7, b"hello", &mut wire);
        encode(8, b"", &mut wire);
        let d = Decoder::new(1024);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for byte in wire.iter() {
            buf.put_u8(*byte);
            while let Some(f) = d.decode(&mut buf).unwrap() {
                got.push(f);
            }
        }
        assert_eq!(
            got[0],
            Frame {
                kind: 7,
                body: Bytes::from_static(b"hello")
            }
        );
        assert_eq!(
            got[1],
            Frame {
                kind: 8,
                body: Bytes::new()
            }
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn oversize_and_empty_lengths_are_refused_before_buffering() {
        let d = Decoder::new(1024);
        let mut buf = BytesMut::from(&u32::MAX.to_le_bytes()[..]);
        assert_eq!(
            d.decode(&mut buf),
            Err(FrameError::TooLarge {
                len: u32::MAX as u64,
                max: 1024
            })
        );
        let mut buf = BytesMut::from(&0u32.to_le_bytes()[..]);
        assert_eq!(d.decode(&mut buf), Err(FrameError::Empty));
    }
}
