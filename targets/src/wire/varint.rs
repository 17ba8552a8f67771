//! Varint-prefixed frames: an unsigned LEB128 length, then the payload (protobuf's
//! `writeDelimitedTo` streams, npm `length-prefixed-stream`, Go `binary.Uvarint`).
//!
//! ```text
//! +--------------------------------+----------------------+
//! | length: LEB128, 1..=5 bytes    | payload (length B)   |
//! | 7 bits a byte, low group first |                      |
//! | high bit set = another follows |                      |
//! +--------------------------------+----------------------+
//!   300 = 0xAC 0x02   (0b10_0101100: 0101100 first, with the high bit; then 10)
//! ```
//!
//! The length is checked against `max` byte by byte, as it is being read: a peer that
//! announces more than `max` is refused as soon as the prefix says so, before anything
//! is reserved for the body, and a prefix can therefore never be longer than the
//! [`varint_len`] of `max` (at most 5 bytes, as `max` < 4 GiB). Only the shortest
//! encoding is accepted: a zero last group (`0x85 0x00` for 5) is
//! [`WireError::MalformedLength`], so a stream's frame boundaries and its re-encoding
//! are unique. EOF inside the prefix or the body is [`WireError::Truncated`].

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use super::WireError;

/// Bytes of the LEB128 encoding of `n`.
pub fn varint_len(n: u64) -> usize {
    (64 - n.max(1).leading_zeros() as usize).div_ceil(7)
}

/// Appends `n` as LEB128.
pub fn put_varint(mut n: u64, dst: &mut BytesMut) {
    while n >= 0x80 {
        dst.put_u8((n as u8) | 0x80);
        n >>= 7;
    }
    dst.put_u8(n as u8);
}

/// What a varint prefix at the front of a buffer says so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefix {
    /// The prefix is whole: `len` bytes of payload follow its `header` bytes.
    Done { header: usize, len: usize },
    /// Every byte so far had its high bit set; more are needed.
    Partial,
}

/// Reads the varint at the front of `src` (which may hold only part of it), checking
/// the value against `max` as each byte arrives. Shared by the codec and the scanner.
pub fn read_prefix(src: &[u8], max: usize) -> Result<Prefix, WireError> {
    // The shortest encoding of any length up to `max` has at most this many bytes, so
    // a longer prefix is corrupt whatever follows (and no shift reaches 64 bits).
    let longest = varint_len(max as u64);
    let mut value: u64 = 0;
    for (i, &b) in src.iter().enumerate() {
        if i == longest {
            return Err(WireError::MalformedLength(
                "varint length has more bytes than any length up to `max` needs",
            ));
        }
        value |= u64::from(b & 0x7f) << (7 * i);
        if value > max as u64 {
            return Err(WireError::FrameTooLarge { len: value, max });
        }
        if b & 0x80 == 0 {
            if b == 0 && i > 0 {
                return Err(WireError::MalformedLength(
                    "varint length is not in its shortest form",
                ));
            }
            return Ok(Prefix::Done {
                header: i + 1,
                len: value as usize,
            });
        }
    }
    Ok(Prefix::Partial)
}

/// Codec for `varint` framing. Decodes to the payload only.
#[derive(Debug)]
pub struct VarintCodec {
    max: usize,
    /// The payload length of the frame whose prefix has been consumed, if any.
    pending: Option<usize>,
}

impl VarintCodec {
    pub fn new(max: usize) -> Self {
        VarintCodec { max, pending: None }
    }
}

impl Decoder for VarintCodec {
    type Item = Bytes;
    type Error = WireError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, WireError> {
        let len = match self.pending {
            Some(len) => len,
            None => match read_prefix(src, self.max)? {
                Prefix::Partial => return Ok(None),
                Prefix::Done { header, len } => {
                    src.advance(header);
                    src.reserve(len.saturating_sub(src.len()));
                    self.pending = Some(len);
                    len
                }
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
                received: src.len() + self.pending.map_or(0, |len| varint_len(len as u64)),
            }),
        }
    }
}

impl Encoder<&[u8]> for VarintCodec {
    type Error = WireError;

    fn encode(&mut self, payload: &[u8], dst: &mut BytesMut) -> Result<(), WireError> {
        if payload.len() > self.max {
            return Err(WireError::FrameTooLarge {
                len: payload.len() as u64,
                max: self.max,
            });
        }
        dst.reserve(varint_len(payload.len() as u64) + payload.len());
        put_varint(payload.len() as u64, dst);
        dst.put_slice(payload);
        Ok(())
    }
}

impl Encoder<Bytes> for VarintCodec {
    type Error = WireError;

    fn encode(&mut self, payload: Bytes, dst: &mut BytesMut) -> Result<(), WireError> {
        self.encode(payload.as_ref(), dst)
    }
}
