//! Errors of the wire layer: a bad framing spec, and a corrupt or truncated stream.

use std::io;

/// A framing spec string that cannot be honoured (see [`super::Framing`]).
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SpecError {
    #[error("empty framing spec")]
    Empty,
    #[error("unknown framing `{0}` (expected u8, u16be, u16le, u32be, u32le, u64be, u64le, i32le, i32be, varint, netstring, line, hjson or raw)")]
    UnknownKind(String),
    #[error("modifier `{0}` is not of the form key=value")]
    MalformedModifier(String),
    #[error("unknown modifier `{0}` (expected offset, adjust, max or keep)")]
    UnknownModifier(String),
    #[error("modifier `{0}` given twice")]
    DuplicateModifier(String),
    #[error("modifier `{key}` does not apply to `{kind}` framing")]
    NotApplicable { key: String, kind: String },
    #[error("bad value `{value}` for `{key}`: {reason}")]
    BadValue {
        key: String,
        value: String,
        reason: &'static str,
    },
    #[error("max={max} cannot be expressed by a {width}-byte length field with adjust={adjust} (largest is {limit})")]
    MaxBeyondField {
        max: u64,
        width: usize,
        adjust: i64,
        limit: u64,
    },
}

/// A byte stream that does not decode, or a frame that cannot be encoded.
///
/// Decoders return these from `decode`/`decode_eof`; after one, the stream is corrupt
/// and the connection should be closed. [`WireError::kind`] gives a short stable label
/// for counters and reports.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    #[error("frame length {len} exceeds the maximum of {max} bytes")]
    FrameTooLarge { len: u64, max: usize },
    #[error("negative frame length {0}")]
    NegativeLength(i64),
    #[error("length field {field} with adjust={adjust} gives a negative payload length")]
    LengthUnderflow { field: u64, adjust: i64 },
    #[error("a {len}-byte payload cannot be encoded with adjust={adjust} (the length field would be negative)")]
    TooShortForAdjust { len: usize, adjust: i64 },
    /// With `keep`, a payload must hold the header it keeps.
    #[error("a {len}-byte payload is shorter than the {header}-byte header it must carry (framing with `keep`)")]
    ShorterThanHeader { len: usize, header: usize },
    #[error("stream ended inside a frame: {received} byte(s) of an incomplete frame received")]
    Truncated { received: usize },
    #[error("line longer than the maximum of {max} bytes")]
    LineTooLong { max: usize },
    #[error("a line payload cannot contain a newline")]
    NewlineInPayload,
    #[error("header JSON is {len} bytes, more than the limit of {max}")]
    HeaderTooLarge { len: u64, max: usize },
    #[error("bad header: {0}")]
    BadHeader(String),
    /// A varint or netstring length that is not well formed (see their modules).
    #[error("malformed length: {0}")]
    MalformedLength(&'static str),
    /// A netstring payload followed by something other than its `,`.
    #[error("frame not terminated: expected `,` after the payload, found byte 0x{found:02x}")]
    MissingTerminator { found: u8 },
    /// An error from a codec that is not one of these framings (a library user's own),
    /// as it displays.
    #[error("codec: {0}")]
    Codec(String),
}

impl WireError {
    /// A short, stable label (`too_large`, `truncated`, ...) for counters and reports.
    pub fn kind(&self) -> &'static str {
        match self {
            WireError::Io(e) if e.kind() == io::ErrorKind::ConnectionReset => "reset",
            WireError::Io(_) => "io",
            WireError::FrameTooLarge { .. } => "too_large",
            WireError::NegativeLength(_) => "negative_length",
            WireError::LengthUnderflow { .. } => "length_underflow",
            WireError::Truncated { .. } => "truncated",
            WireError::LineTooLong { .. } => "too_large",
            WireError::NewlineInPayload
            | WireError::TooShortForAdjust { .. }
            | WireError::ShorterThanHeader { .. } => "bad_payload",
            WireError::HeaderTooLarge { .. } => "too_large",
            WireError::BadHeader(_) => "bad_header",
            WireError::MalformedLength(_) => "malformed_length",
            WireError::MissingTerminator { .. } => "bad_trailer",
            WireError::Codec(_) => "codec",
        }
    }
}
