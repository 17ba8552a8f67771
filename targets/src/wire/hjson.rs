//! Header-JSON frames: a length-prefixed JSON object whose `size` says how long the body is.
//!
//! ```text
//! +--------------+------------------------------+-------------------+
//! | u32be hlen   | header: JSON object, hlen B  | body: `size` B    |
//! |              | {"size": N, ...}             |                   |
//! +--------------+------------------------------+-------------------+
//! ```
//!
//! This is the classic "send a JSON header with the size, then the bytes" protocol.
//! The header is bounded by [`MAX_HEADER`] and the body by the codec's `max`; both are
//! checked before anything is reserved. `size` must be a non-negative integer.

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::{Map, Value};
use tokio_util::codec::{Decoder, Encoder};

use super::{Endian, LengthCodec, LengthSpec, WireError};

/// Largest header JSON accepted (64 KiB): headers carry metadata, not data.
pub const MAX_HEADER: usize = 64 * 1024;

/// One hjson frame. `header["size"]` always equals `body.len()` once decoded.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HjsonFrame {
    pub header: Map<String, Value>,
    pub body: Bytes,
}

impl HjsonFrame {
    /// A frame with the given header fields (`size` is filled in when encoded).
    pub fn new(header: Value, body: impl Into<Bytes>) -> Self {
        let header = match header {
            Value::Object(map) => map,
            Value::Null => Map::new(),
            other => panic!("HjsonFrame header must be a JSON object, got {other}"),
        };
        HjsonFrame {
            header,
            body: body.into(),
        }
    }
}

#[derive(Debug)]
pub struct HjsonCodec {
    header: LengthCodec,
    max: usize,
    /// A decoded header waiting for `size` body bytes.
    pending: Option<(Map<String, Value>, usize)>,
}

impl HjsonCodec {
    pub fn new(max: usize) -> Self {
        let header = LengthCodec::new(LengthSpec {
            width: 4,
            endian: Endian::Big,
            signed: false,
            offset: 0,
            adjust: 0,
            max: MAX_HEADER,
            keep: false,
        });
        HjsonCodec {
            header,
            max,
            pending: None,
        }
    }

    /// Serialises `header` with `size` = `body_len`; the header bytes, without the prefix.
    pub fn header_bytes(header: &Map<String, Value>, body_len: usize) -> Vec<u8> {
        let mut header = header.clone();
        header.insert("size".into(), Value::from(body_len as u64));
        serde_json::to_vec(&Value::Object(header)).expect("a JSON map always serialises")
    }

    fn parse_header(&self, raw: &[u8]) -> Result<(Map<String, Value>, usize), WireError> {
        let value: Value = serde_json::from_slice(raw)
            .map_err(|e| WireError::BadHeader(format!("invalid JSON: {e}")))?;
        let Value::Object(map) = value else {
            return Err(WireError::BadHeader("header is not a JSON object".into()));
        };
        let size = match map.get("size") {
            None => return Err(WireError::BadHeader("header has no `size` field".into())),
            Some(v) => v.as_u64().ok_or_else(|| {
                WireError::BadHeader(format!("`size` is not a non-negative integer: {v}"))
            })?,
        };
        if size > self.max as u64 {
            return Err(WireError::FrameTooLarge {
                len: size,
                max: self.max,
            });
        }
        Ok((map, size as usize))
    }
}

impl Decoder for HjsonCodec {
    type Item = HjsonFrame;
    type Error = WireError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<HjsonFrame>, WireError> {
        if self.pending.is_none() {
            let raw = match self.header.decode(src) {
                Ok(Some(raw)) => raw,
                Ok(None) => return Ok(None),
                Err(WireError::FrameTooLarge { len, max }) => {
                    return Err(WireError::HeaderTooLarge { len, max })
                }
                Err(e) => return Err(e),
            };
            let (header, size) = self.parse_header(&raw)?;
            src.reserve(size.saturating_sub(src.len()));
            self.pending = Some((header, size));
        }
        let size = self.pending.as_ref().map_or(0, |p| p.1);
        if src.len() < size {
            return Ok(None);
        }
        let (header, _) = self.pending.take().expect("checked above");
        Ok(Some(HjsonFrame {
            header,
            body: src.split_to(size).freeze(),
        }))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<HjsonFrame>, WireError> {
        if let Some(frame) = self.decode(src)? {
            return Ok(Some(frame));
        }
        if self.pending.is_some() {
            return Err(WireError::Truncated {
                received: src.len(),
            });
        }
        // No complete header: the header codec tells a clean end from a partial header.
        match self.header.decode_eof(src)? {
            None => Ok(None),
            Some(_) => unreachable!("decode() just found no complete header"),
        }
    }
}

impl Encoder<HjsonFrame> for HjsonCodec {
    type Error = WireError;

    fn encode(&mut self, frame: HjsonFrame, dst: &mut BytesMut) -> Result<(), WireError> {
        self.encode(&frame, dst)
    }
}

impl Encoder<&HjsonFrame> for HjsonCodec {
    type Error = WireError;

    fn encode(&mut self, frame: &HjsonFrame, dst: &mut BytesMut) -> Result<(), WireError> {
        if frame.body.len() > self.max {
            return Err(WireError::FrameTooLarge {
                len: frame.body.len() as u64,
                max: self.max,
            });
        }
        let header = Self::header_bytes(&frame.header, frame.body.len());
        if header.len() > MAX_HEADER {
            return Err(WireError::HeaderTooLarge {
                len: header.len() as u64,
                max: MAX_HEADER,
            });
        }
        dst.reserve(4 + header.len() + frame.body.len());
        dst.put_u32(header.len() as u32);
        dst.put_slice(&header);
        dst.put_slice(&frame.body);
        Ok(())
    }
}
