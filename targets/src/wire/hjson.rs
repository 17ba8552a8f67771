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
//!
//! [`HjsonCodec`] treats a header over the limit as a corrupt stream. A server that
//! refuses such a request with an error reply instead uses [`SkippingHjsonCodec`]: it
//! discards the header as it streams in (up to the body limit, never holding it; see
//! `hjson_skip.rs`), then the body its `size` announces, and yields
//! [`HjsonItem::Oversize`] in the frame's place.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde_json::{Map, Value};
use tokio_util::codec::{Decoder, Encoder};

use super::hjson_skip::SizeScan;
use super::{Endian, LengthCodec, LengthSpec, WireError};

/// Bytes of the `u32be` header length.
const HLEN_BYTES: usize = 4;

/// The header length at the start of `src`, if it has arrived.
fn peek_hlen(src: &[u8]) -> Option<usize> {
    let field: [u8; HLEN_BYTES] = src.get(..HLEN_BYTES)?.try_into().ok()?;
    Some(u32::from_be_bytes(field) as usize)
}

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
            // The header codec is only handed a whole header (or a length it refuses),
            // so between calls it never holds a half-read one: at a frame boundary
            // `src` starts with a length, which `SkippingHjsonCodec` relies on.
            if let Some(hlen) = peek_hlen(src) {
                let whole = HLEN_BYTES + hlen;
                if hlen <= MAX_HEADER && src.len() < whole {
                    src.reserve(whole - src.len());
                    return Ok(None);
                }
            }
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

/// What a [`SkippingHjsonCodec`] decodes.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum HjsonItem {
    Frame(HjsonFrame),
    /// A frame whose header was longer than [`MAX_HEADER`]: header and body were
    /// discarded unread, and the next frame starts after them.
    Oversize {
        header_len: usize,
        body_len: usize,
    },
}

/// An hjson decoder that steps over a header longer than [`MAX_HEADER`] (but within
/// the body limit `max`) instead of failing, so the server can answer it with an
/// error and keep the connection. Memory stays that of a normal read buffer: the
/// header is scanned for its `size` and dropped as it arrives.
///
/// What still ends the stream: a header longer than `max`, one whose `size` cannot be
/// found for sure ([`WireError::HeaderTooLarge`]; without it the next frame cannot be
/// found), a `size` above `max`, and everything [`HjsonCodec`] refuses.
#[derive(Debug)]
pub struct SkippingHjsonCodec {
    inner: HjsonCodec,
    skip: Option<Skip>,
}

/// An oversize frame being discarded.
#[derive(Debug)]
struct Skip {
    header_len: usize,
    header_left: usize,
    scan: SizeScan,
    /// Known once the whole header has gone by.
    body: Option<(usize, usize)>,
}

impl SkippingHjsonCodec {
    pub fn new(max: usize) -> Self {
        SkippingHjsonCodec {
            inner: HjsonCodec::new(max),
            skip: None,
        }
    }

    /// Starts skipping if `src` begins a frame with an oversize (but skippable) header.
    fn start_skip(&mut self, src: &mut BytesMut) -> Result<(), WireError> {
        if self.skip.is_some() || self.inner.pending.is_some() {
            return Ok(());
        }
        let Some(hlen) = peek_hlen(src) else {
            return Ok(());
        };
        if hlen <= MAX_HEADER {
            return Ok(());
        }
        if hlen > self.inner.max {
            return Err(WireError::HeaderTooLarge {
                len: hlen as u64,
                max: MAX_HEADER,
            });
        }
        src.advance(HLEN_BYTES);
        self.skip = Some(Skip {
            header_len: hlen,
            header_left: hlen,
            scan: SizeScan::default(),
            body: None,
        });
        Ok(())
    }

    /// Discards what has arrived of the frame being skipped; the item once it is gone.
    fn continue_skip(&mut self, src: &mut BytesMut) -> Result<Option<HjsonItem>, WireError> {
        let Some(skip) = &mut self.skip else {
            return Ok(None);
        };
        if skip.body.is_none() {
            let n = src.len().min(skip.header_left);
            skip.scan.feed(&src[..n]);
            src.advance(n);
            skip.header_left -= n;
            if skip.header_left > 0 {
                return Ok(None);
            }
            let size = skip.scan.size().ok_or(WireError::HeaderTooLarge {
                len: skip.header_len as u64,
                max: MAX_HEADER,
            })?;
            if size > self.inner.max as u64 {
                return Err(WireError::FrameTooLarge {
                    len: size,
                    max: self.inner.max,
                });
            }
            skip.body = Some((size as usize, size as usize));
        }
        let (body_len, left) = skip.body.as_mut().expect("set above");
        let n = src.len().min(*left);
        src.advance(n);
        *left -= n;
        if *left > 0 {
            return Ok(None);
        }
        let item = HjsonItem::Oversize {
            header_len: skip.header_len,
            body_len: *body_len,
        };
        self.skip = None;
        Ok(Some(item))
    }
}

impl Decoder for SkippingHjsonCodec {
    type Item = HjsonItem;
    type Error = WireError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<HjsonItem>, WireError> {
        self.start_skip(src)?;
        if self.skip.is_some() {
            return self.continue_skip(src);
        }
        Ok(self.inner.decode(src)?.map(HjsonItem::Frame))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<HjsonItem>, WireError> {
        if let Some(item) = self.decode(src)? {
            return Ok(Some(item));
        }
        if let Some(skip) = &self.skip {
            let received = match skip.body {
                None => HLEN_BYTES + skip.header_len - skip.header_left,
                Some((body_len, left)) => HLEN_BYTES + skip.header_len + body_len - left,
            };
            return Err(WireError::Truncated { received });
        }
        Ok(self.inner.decode_eof(src)?.map(HjsonItem::Frame))
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
