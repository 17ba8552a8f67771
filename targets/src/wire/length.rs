//! Length-prefixed frames: `LengthDelimitedCodec` plus the checks it does not make.
//!
//! ```text
//! +----------------+------------------+---------------------------+
//! | offset (N B)   | length (1/2/4/8) | payload (length + adjust) |
//! | zeros, skipped | be/le, u or i    |                           |
//! +----------------+------------------+---------------------------+
//! ```
//!
//! With `keep` ([`LengthSpec::keep`]) the payload is the whole frame: the decoder hands
//! out the offset bytes and the length field with the rest, and the encoder sends the
//! payload's own offset bytes and writes the length field from the payload's length
//! (whatever the payload's copy of it said), so a recorded frame replays byte for byte.
//!
//! tokio-util's codec encodes; this wrapper decodes itself, with what a hostile peer
//! needs: a typed error for a negative signed length, for a payload over `max` (checked
//! before anything is reserved for the body), and for EOF anywhere inside a frame —
//! including right after a complete header, which the inner codec would report as a
//! clean end. (tokio-util's decoder also cannot be used with a negative `adjust`: it
//! clamps its check of the raw field to the field's maximum plus `adjust`, and so
//! rejects valid frames whose payload is within `-adjust` of `max`.)

use bytes::{Buf, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

use super::{Endian, LengthSpec, WireError};

/// Codec for one [`LengthSpec`]. Decodes to the payload only (with `keep`: the frame).
#[derive(Debug)]
pub struct LengthCodec {
    spec: LengthSpec,
    inner: LengthDelimitedCodec,
    /// Once the header of the frame in progress has been read: the bytes `src` must
    /// hold from its front for the frame to be whole (the payload; with `keep`, header
    /// included, as it stays in `src`).
    pending: Option<usize>,
}

impl LengthCodec {
    pub fn new(spec: LengthSpec) -> Self {
        let mut builder = LengthDelimitedCodec::builder();
        builder
            .length_field_offset(spec.offset)
            .length_field_length(spec.width)
            .length_adjustment(spec.adjust as isize)
            .num_skip(spec.header_len())
            // Only used to encode, after our own check of the payload against `max`.
            .max_frame_length(
                spec.max
                    .saturating_add(spec.adjust.min(0).unsigned_abs() as usize),
            );
        match spec.endian {
            Endian::Big => builder.big_endian(),
            Endian::Little => builder.little_endian(),
        };
        LengthCodec {
            spec,
            inner: builder.new_codec(),
            pending: None,
        }
    }

    pub fn spec(&self) -> &LengthSpec {
        &self.spec
    }
}

impl LengthCodec {
    /// Reads a complete header and returns the bytes the whole payload takes in `src`
    /// (`None`: the header is not whole yet).
    #[inline(never)]
    fn take_header(&mut self, src: &mut BytesMut) -> Result<Option<usize>, WireError> {
        if src.len() < self.spec.header_len() {
            return Ok(None);
        }
        let len = self.spec.payload_len(src)? + self.spec.kept_header_len();
        // The header is consumed as soon as it is whole, even without the body (unless
        // the payload keeps it).
        src.advance(self.spec.header_len() - self.spec.kept_header_len());
        src.reserve(len.saturating_sub(src.len()));
        self.pending = Some(len);
        Ok(Some(len))
    }
}

impl Decoder for LengthCodec {
    type Item = Bytes;
    type Error = WireError;

    // Inlined: with small reads this runs once per read while a body is still
    // arriving, and then only compares two lengths (the header path stays out of line).
    #[inline]
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, WireError> {
        let len = match self.pending {
            Some(len) => len,
            None => match self.take_header(src)? {
                Some(len) => len,
                None => return Ok(None),
            },
        };
        if src.len() < len {
            return Ok(None);
        }
        self.pending = None;
        Ok(Some(src.split_to(len).freeze()))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, WireError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if self.pending.is_none() && src.is_empty() => Ok(None),
            None => Err(WireError::Truncated {
                received: src.len()
                    + if self.pending.is_none() {
                        0
                    } else {
                        self.spec.header_len() - self.spec.kept_header_len()
                    },
            }),
        }
    }
}

impl Encoder<&[u8]> for LengthCodec {
    type Error = WireError;

    fn encode(&mut self, payload: &[u8], dst: &mut BytesMut) -> Result<(), WireError> {
        let kept = self.spec.kept_header_len();
        if payload.len() < kept {
            return Err(WireError::ShorterThanHeader {
                len: payload.len(),
                header: kept,
            });
        }
        let (head, body) = payload.split_at(kept);
        if body.len() > self.spec.max {
            return Err(WireError::FrameTooLarge {
                len: body.len() as u64,
                max: self.spec.max,
            });
        }
        if (body.len() as i128) < self.spec.adjust as i128 {
            return Err(WireError::TooShortForAdjust {
                len: body.len(),
                adjust: self.spec.adjust,
            });
        }
        dst.reserve(self.spec.header_len() + body.len());
        if self.spec.keep {
            // The payload's own offset bytes; its length field is the inner codec's to write.
            dst.extend_from_slice(&head[..self.spec.offset]);
        } else {
            dst.resize(dst.len() + self.spec.offset, 0);
        }
        Encoder::<&[u8]>::encode(&mut self.inner, body, dst)?;
        Ok(())
    }
}

impl Encoder<Bytes> for LengthCodec {
    type Error = WireError;

    fn encode(&mut self, payload: Bytes, dst: &mut BytesMut) -> Result<(), WireError> {
        self.encode(payload.as_ref(), dst)
    }
}
