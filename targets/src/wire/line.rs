//! Newline-terminated frames, on top of tokio-util's `AnyDelimiterCodec`.
//!
//! ```text
//! +---------------------------+------+
//! | payload (no '\n', <= max) | '\n' |
//! +---------------------------+------+
//! ```
//!
//! The payload is taken byte for byte (a `\r` before the newline is kept). Unlike the
//! inner codec, bytes left at EOF without their newline are an error, not a last frame.

use bytes::{BufMut, Bytes, BytesMut};
use tokio_util::codec::{AnyDelimiterCodec, AnyDelimiterCodecError, Decoder, Encoder};

use super::WireError;

#[derive(Debug)]
pub struct LineCodec {
    inner: AnyDelimiterCodec,
    max: usize,
}

impl LineCodec {
    pub fn new(max: usize) -> Self {
        LineCodec {
            inner: AnyDelimiterCodec::new_with_max_length(b"\n".to_vec(), b"\n".to_vec(), max),
            max,
        }
    }

    fn map_err(&self, e: AnyDelimiterCodecError) -> WireError {
        match e {
            AnyDelimiterCodecError::MaxChunkLengthExceeded => {
                WireError::LineTooLong { max: self.max }
            }
            AnyDelimiterCodecError::Io(e) => WireError::Io(e),
        }
    }
}

impl Decoder for LineCodec {
    type Item = Bytes;
    type Error = WireError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, WireError> {
        self.inner.decode(src).map_err(|e| self.map_err(e))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, WireError> {
        match self.decode(src)? {
            Some(line) => Ok(Some(line)),
            None if src.is_empty() => Ok(None),
            None => Err(WireError::Truncated {
                received: src.len(),
            }),
        }
    }
}

impl Encoder<&[u8]> for LineCodec {
    type Error = WireError;

    fn encode(&mut self, payload: &[u8], dst: &mut BytesMut) -> Result<(), WireError> {
        if payload.len() > self.max {
            return Err(WireError::FrameTooLarge {
                len: payload.len() as u64,
                max: self.max,
            });
        }
        if payload.contains(&b'\n') {
            return Err(WireError::NewlineInPayload);
        }
        dst.reserve(payload.len() + 1);
        dst.put_slice(payload);
        dst.put_u8(b'\n');
        Ok(())
    }
}

impl Encoder<Bytes> for LineCodec {
    type Error = WireError;

    fn encode(&mut self, payload: Bytes, dst: &mut BytesMut) -> Result<(), WireError> {
        self.encode(payload.as_ref(), dst)
    }
}
