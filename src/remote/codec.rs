//! Frames and messages on a remote connection: tokio-util's [`LengthDelimitedCodec`]
//! (a `u32` big-endian length, then the frame) carrying postcard-encoded messages. The
//! encoder writes that same format with the message encoded in place.
//!
//! The decoder refuses a length above its limit as soon as it sees the four length bytes,
//! and hands a frame to [`LengthDelimitedCodec`] only once all of it has arrived, so the
//! read buffer grows with the bytes received, never with the length a peer announces.

use std::marker::PhantomData;

use bytes::{BufMut, BytesMut};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

use super::protocol;

/// Bytes in front of every frame.
pub(crate) const HEAD: usize = 4;

/// Why a stream of frames cannot be read further. The connection must end.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FrameError {
    /// A frame announced more bytes than the limit.
    #[error("frame too large")]
    TooLarge,
    /// A frame is not one valid message (unknown variant, truncated, trailing bytes).
    #[error("undecodable message")]
    Undecodable,
    /// Reading or writing failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// A frame length codec, capped at `max` bytes per frame, that reserves nothing for a
/// frame until the whole frame is buffered.
pub(crate) fn frames(max: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_type::<u32>()
        .max_frame_length(max)
        .new_codec()
}

/// Decodes frames of at most `max` bytes into `In` messages and encodes `Out` messages
/// into frames of the same format.
pub(crate) struct MessageCodec<In, Out> {
    decode: LengthDelimitedCodec,
    max: usize,
    _messages: PhantomData<fn(Out) -> In>,
}

impl<In, Out> MessageCodec<In, Out> {
    /// Accepts frames of up to `max_in` bytes; writes frames of any length a `u32` holds
    /// (callers keep what they send within the peer's limit).
    pub(crate) fn new(max_in: usize) -> Self {
        MessageCodec {
            decode: frames(max_in),
            max: max_in,
            _messages: PhantomData,
        }
    }

    /// The largest frame accepted.
    pub(crate) fn max_in(&self) -> usize {
        self.max
    }

    /// Changes the largest frame accepted.
    pub(crate) fn set_max_in(&mut self, max_in: usize) {
        self.max = max_in;
        self.decode.set_max_frame_length(max_in);
    }
}

/// Splits the next whole frame off `src`, or says that more bytes are needed; refuses a
/// length above `max` from its four bytes alone.
pub(crate) fn next_frame(
    codec: &mut LengthDelimitedCodec,
    max: usize,
    src: &mut BytesMut,
) -> Result<Option<BytesMut>, FrameError> {
    if src.len() < HEAD {
        return Ok(None);
    }
    let len = u32::from_be_bytes(src[..HEAD].try_into().expect("four bytes")) as usize;
    if len > max {
        return Err(FrameError::TooLarge);
    }
    if src.len() < HEAD + len {
        return Ok(None);
    }
    Ok(codec.decode(src)?)
}

impl<In: DeserializeOwned, Out> Decoder for MessageCodec<In, Out> {
    type Item = In;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<In>, FrameError> {
        match next_frame(&mut self.decode, self.max, src)? {
            Some(frame) => protocol::decode(&frame)
                .map(Some)
                .ok_or(FrameError::Undecodable),
            None => Ok(None),
        }
    }
}

impl<In, Out: Serialize> Encoder<Out> for MessageCodec<In, Out> {
    type Error = FrameError;

    /// Writes the frame in place: the length [`LengthDelimitedCodec`] expects, then the
    /// message, encoded straight into the write buffer.
    fn encode(&mut self, message: Out, dst: &mut BytesMut) -> Result<(), FrameError> {
        let start = dst.len();
        dst.put_u32(0);
        postcard::to_io(&message, dst.writer()).map_err(|_| FrameError::Undecodable)?;
        let len = dst.len() - start - HEAD;
        let len = u32::try_from(len).map_err(|_| FrameError::TooLarge)?;
        dst[start..start + HEAD].copy_from_slice(&len.to_be_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::protocol::Request;

    #[test]
    fn messages_round_trip_and_arrive_in_pieces() {
        let mut codec = MessageCodec::<Request, Request>::new(1024);
        let mut wire = BytesMut::new();
        codec.encode(Request::Ping, &mut wire).unwrap();
        codec.encode(Request::Len { req: 7 }, &mut wire).unwrap();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for byte in wire.iter() {
            buf.put_u8(*byte);
            while let Some(m) = codec.decode(&mut buf).unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got, vec![Request::Ping, Request::Len { req: 7 }]);
        assert!(buf.is_empty());
    }

    #[test]
    fn what_the_encoder_writes_is_what_length_delimited_codec_reads() {
        let mut codec = MessageCodec::<Request, Request>::new(1024);
        let mut wire = BytesMut::new();
        codec.encode(Request::Len { req: 300 }, &mut wire).unwrap();
        let frame = frames(1024).decode(&mut wire).unwrap().unwrap();
        assert_eq!(
            &frame[..],
            &postcard::to_stdvec(&Request::Len { req: 300 }).unwrap()[..]
        );
    }

    #[test]
    fn an_oversize_length_is_refused_before_buffering() {
        let mut codec = MessageCodec::<Request, Request>::new(1024);
        let mut buf = BytesMut::from(&u32::MAX.to_be_bytes()[..]);
        assert!(matches!(codec.decode(&mut buf), Err(FrameError::TooLarge)));
        // A length within the limit reserves nothing until the frame is there.
        let mut buf = BytesMut::from(&1000u32.to_be_bytes()[..]);
        let before = buf.capacity();
        assert!(codec.decode(&mut buf).unwrap().is_none());
        assert_eq!(buf.capacity(), before);
    }

    #[test]
    fn garbage_and_trailing_bytes_are_undecodable() {
        let mut codec = MessageCodec::<Request, Request>::new(1024);
        let mut buf = BytesMut::from(&[0, 0, 0, 2, 0xff, 0xff][..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(FrameError::Undecodable)
        ));
        // `Ping` is one byte; a frame of two is a ping with a trailing byte.
        let mut buf = BytesMut::from(&[0, 0, 0, 2, 0, 0][..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(FrameError::Undecodable)
        ));
    }
}
