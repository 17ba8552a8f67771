//! Wire formats: framing specs, codecs, and the byte layout of every encoded frame.
//!
//! A framing is named by a short spec string (`u32be`, `i32le,max=1MiB`, `varint`,
//! `netstring`, `line`, `hjson`, `raw`, `u32be,offset=8,adjust=12,keep`; see [`Framing`]). [`Framing::codec`] builds a [`FrameCodec`] that implements
//! tokio-util's `Decoder`/`Encoder` for byte payloads; [`Framing::encode`] also returns
//! each frame's [`FrameLayout`] so the chaos engine can cut inside length fields,
//! headers and bodies.
//!
//! Every decoder here follows the tokio-util contract: `Ok(None)` = need more bytes,
//! `Err` = the stream is corrupt. Two rules on top: a declared length above `max` is
//! rejected before anything is reserved for it, and EOF anywhere inside a frame is
//! [`WireError::Truncated`], never a short frame and never a clean end. (`raw` has no
//! frames to be inside of: see `raw.rs`.)
//!
//! - `spec.rs`: the spec grammar ([`Framing`], [`LengthSpec`]);
//! - `length.rs`, `varint.rs`, `netstring.rs`, `line.rs`, `hjson.rs`, `raw.rs`: one
//!   codec each (`hjson_skip.rs`: finding `size` in a header too long to keep);
//! - `scan.rs`: frame boundaries of a relayed stream ([`FrameScanner`]);
//! - `error.rs`: [`SpecError`], [`WireError`].

mod error;
mod hjson;
mod hjson_skip;
mod length;
mod line;
mod netstring;
mod raw;
mod scan;
mod spec;
mod varint;

use std::ops::Range;

use bytes::{Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

pub use error::{SpecError, WireError};
pub use hjson::{HjsonCodec, HjsonFrame, HjsonItem, SkippingHjsonCodec, MAX_HEADER};
pub use length::LengthCodec;
pub use line::LineCodec;
pub use netstring::NetstringCodec;
pub use raw::RawCodec;
pub use scan::{FrameScanner, StreamFrame, UNKNOWN_OFFSET};
pub use spec::{parse_size, Endian, Framing, LengthSpec, DEFAULT_MAX};
pub use varint::{put_varint, varint_len, VarintCodec};

/// Where one encoded frame's parts lie in the byte stream (absolute offsets).
///
/// `start..length_field` is the offset padding (length framings with `offset=`),
/// `length_field` the length prefix (varint bytes, netstring digits; empty for `line`
/// and `raw`), `length_field.end..body.start` the rest of the header (hjson's JSON,
/// netstring's colon), `body.end..end` the trailer (`line`'s newline, netstring's comma).
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct FrameLayout {
    pub start: usize,
    pub length_field: Range<usize>,
    pub body: Range<usize>,
    pub end: usize,
}

impl FrameLayout {
    /// Everything before the body.
    pub fn header(&self) -> Range<usize> {
        self.start..self.body.start
    }

    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
}

impl Framing {
    /// A fresh codec (decoder state included) for this framing.
    pub fn codec(&self) -> FrameCodec {
        match *self {
            Framing::Length(spec) => FrameCodec::Length(LengthCodec::new(spec)),
            Framing::Line { max } => FrameCodec::Line(LineCodec::new(max)),
            Framing::Hjson { max } => FrameCodec::Hjson(HjsonCodec::new(max)),
            Framing::Varint { max } => FrameCodec::Varint(VarintCodec::new(max)),
            Framing::Netstring { max } => FrameCodec::Netstring(NetstringCodec::new(max)),
            Framing::Raw { max } => FrameCodec::Raw(RawCodec::new(max)),
        }
    }

    /// Width of the length header (1 for `line`'s terminator; for `varint` and
    /// `netstring` that of a short payload's), so workloads draw message sizes around it.
    pub fn header_width(&self) -> usize {
        match self {
            Framing::Length(l) => l.header_len(),
            Framing::Line { .. } | Framing::Varint { .. } | Framing::Raw { .. } => 1,
            Framing::Hjson { .. } => 4,
            Framing::Netstring { .. } => 2,
        }
    }

    /// Appends one frame carrying `payload` to `dst` and returns where its parts lie.
    /// For hjson the payload is the body, under the header `{"size": N}`; with `keep`
    /// it is the whole frame, and its length field is rewritten.
    pub fn encode(&self, payload: &[u8], dst: &mut BytesMut) -> Result<FrameLayout, WireError> {
        let start = dst.len();
        let n = payload.len();
        let length_field = match self {
            Framing::Length(l) => start + l.offset..start + l.header_len(),
            Framing::Line { .. } | Framing::Raw { .. } => start..start,
            Framing::Hjson { .. } => start..start + 4,
            Framing::Varint { .. } => start..start + varint_len(n as u64),
            Framing::Netstring { .. } => start..start + netstring::digits(n as u64),
        };
        self.codec().encode(payload, dst)?;
        let end = dst.len();
        let trailer = usize::from(matches!(
            self,
            Framing::Line { .. } | Framing::Netstring { .. }
        ));
        // With `keep` the payload's first bytes are the header itself.
        let body = payload.len() - self.kept_header_len();
        Ok(FrameLayout {
            start,
            length_field,
            body: end - trailer - body..end - trailer,
            end,
        })
    }

    /// Encodes every payload into one stream; returns the stream and the frame layouts.
    pub fn encode_all<P: AsRef<[u8]>>(
        &self,
        payloads: &[P],
    ) -> Result<(Bytes, Vec<FrameLayout>), WireError> {
        let mut dst = BytesMut::with_capacity(payloads.iter().map(|p| p.as_ref().len() + 16).sum());
        let layouts = payloads
            .iter()
            .map(|p| self.encode(p.as_ref(), &mut dst))
            .collect::<Result<_, _>>()?;
        Ok((dst.freeze(), layouts))
    }
}

/// A codec for any [`Framing`], decoding to and encoding from byte payloads.
///
/// For hjson the payload is the body; use [`HjsonCodec`] directly to see headers.
#[derive(Debug)]
#[non_exhaustive]
pub enum FrameCodec {
    Length(LengthCodec),
    Line(LineCodec),
    Hjson(HjsonCodec),
    Varint(VarintCodec),
    Netstring(NetstringCodec),
    Raw(RawCodec),
}

impl Decoder for FrameCodec {
    type Item = Bytes;
    type Error = WireError;

    #[inline]
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, WireError> {
        match self {
            FrameCodec::Length(c) => c.decode(src),
            FrameCodec::Line(c) => c.decode(src),
            FrameCodec::Hjson(c) => Ok(c.decode(src)?.map(|f| f.body)),
            FrameCodec::Varint(c) => c.decode(src),
            FrameCodec::Netstring(c) => c.decode(src),
            FrameCodec::Raw(c) => c.decode(src),
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, WireError> {
        match self {
            FrameCodec::Length(c) => c.decode_eof(src),
            FrameCodec::Line(c) => c.decode_eof(src),
            FrameCodec::Hjson(c) => Ok(c.decode_eof(src)?.map(|f| f.body)),
            FrameCodec::Varint(c) => c.decode_eof(src),
            FrameCodec::Netstring(c) => c.decode_eof(src),
            FrameCodec::Raw(c) => c.decode_eof(src),
        }
    }
}

impl Encoder<&[u8]> for FrameCodec {
    type Error = WireError;

    fn encode(&mut self, payload: &[u8], dst: &mut BytesMut) -> Result<(), WireError> {
        match self {
            FrameCodec::Length(c) => c.encode(payload, dst),
            FrameCodec::Line(c) => c.encode(payload, dst),
            FrameCodec::Hjson(c) => c.encode(
                HjsonFrame::new(serde_json::Value::Null, Bytes::copy_from_slice(payload)),
                dst,
            ),
            FrameCodec::Varint(c) => c.encode(payload, dst),
            FrameCodec::Netstring(c) => c.encode(payload, dst),
            FrameCodec::Raw(c) => c.encode(payload, dst),
        }
    }
}

impl Encoder<Bytes> for FrameCodec {
    type Error = WireError;

    fn encode(&mut self, payload: Bytes, dst: &mut BytesMut) -> Result<(), WireError> {
        match self {
            FrameCodec::Hjson(c) => {
                c.encode(HjsonFrame::new(serde_json::Value::Null, payload), dst)
            }
            _ => self.encode(payload.as_ref(), dst),
        }
    }
}

#[cfg(test)]
mod tests;
