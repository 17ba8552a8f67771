//! Parsing of framing spec strings (`u32be`, `i32le,max=1MiB`, `hjson`, ...).
//!
//! Grammar: `KIND[,KEY=VALUE|,keep]*` where KIND is a length-field kind, `varint`,
//! `netstring`, `line`, `hjson` or `raw`,
//! and KEY is `offset` (bytes before the length field), `adjust` (signed value added to
//! the length field to get the payload length) or `max` (largest payload; a plain
//! number or one with a KiB/MiB/GiB suffix). The bare flag `keep` makes the payload the
//! whole frame, header included (see [`LengthSpec::keep`]). `offset`, `adjust` and
//! `keep` only apply to length kinds. [`Framing`]'s `Display` prints the canonical
//! form, which parses back to the same value.

use std::fmt;
use std::str::FromStr;

use super::{SpecError, WireError};

/// Largest payload when the spec sets no `max=`.
pub const DEFAULT_MAX: usize = 8 * 1024 * 1024;
/// Largest `max=` accepted at all: 4 GiB - 1, so a frame always fits a u32 counter.
pub const MAX_MAX: u64 = u32::MAX as u64;
/// Largest `offset=`: the bytes before the length field are opaque padding to us.
pub const MAX_OFFSET: usize = 64;
/// The flag modifier that keeps the header in the payload ([`LengthSpec::keep`]).
const KEEP: &str = "keep";

/// Byte order of a length field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endian {
    Big,
    Little,
}

/// A length-prefixed framing: `offset` opaque bytes, a `width`-byte length field, the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LengthSpec {
    /// Length field width in bytes: 1, 2, 4 or 8.
    pub width: usize,
    pub endian: Endian,
    /// Whether the field is a two's-complement signed integer (negative = error).
    pub signed: bool,
    /// Bytes before the length field (written as zeros, skipped when decoding).
    pub offset: usize,
    /// Added to the field's value to get the payload length (e.g. -4 when the field counts itself).
    pub adjust: i64,
    /// Largest payload accepted or produced (with `keep`: its part after the header,
    /// the bytes the length field describes).
    pub max: usize,
    /// The payload is the whole frame (`keep`): decoding yields the offset bytes, the
    /// length field and the rest, and encoding sends the payload's own offset bytes and
    /// rewrites its length field from the payload's length. For protocols whose header
    /// carries more than the length (memcached's binary protocol: opcode, key length,
    /// opaque, CAS around `u32be,offset=8,adjust=12`), so a recorded frame replays whole.
    pub keep: bool,
}

impl LengthSpec {
    /// Bytes before the part the length field describes: offset plus the length field.
    pub fn header_len(&self) -> usize {
        self.offset + self.width
    }

    /// Header bytes a payload carries itself: [`Self::header_len`] with `keep`, else 0.
    pub fn kept_header_len(&self) -> usize {
        if self.keep {
            self.header_len()
        } else {
            0
        }
    }

    /// Largest unsigned value the length field can hold.
    pub fn field_limit(&self) -> u64 {
        let bits = self.width as u32 * 8 - u32::from(self.signed);
        if bits >= 64 {
            u64::MAX
        } else {
            (1u64 << bits) - 1
        }
    }

    /// Largest payload the field can describe: field limit plus adjust, within [0, MAX_MAX].
    pub fn payload_limit(&self) -> u64 {
        (self.field_limit() as i128 + self.adjust as i128).clamp(0, MAX_MAX as i128) as u64
    }

    /// `max` when the spec sets none: 8 MiB, or less if the field cannot say more.
    pub fn default_max(&self) -> usize {
        (DEFAULT_MAX as u64).min(self.payload_limit()) as usize
    }

    /// Reads the length field at the front of `src` and returns the payload length, or
    /// the typed reason it is unacceptable. `src` must hold a whole header.
    pub fn payload_len(&self, src: &[u8]) -> Result<usize, WireError> {
        let s = self;
        // By hand rather than `Buf::get_uint`, which copies through a scratch array:
        // this runs once per frame and showed up in the decode benchmark.
        let field = &src[s.offset..s.header_len()];
        let byte = |acc: u64, &b: &u8| (acc << 8) | u64::from(b);
        let raw = match s.endian {
            Endian::Big => field.iter().fold(0, byte),
            Endian::Little => field.iter().rev().fold(0, byte),
        };
        let value = if s.signed {
            let shift = 64 - 8 * s.width as u32;
            let signed = ((raw << shift) as i64) >> shift;
            if signed < 0 {
                return Err(WireError::NegativeLength(signed));
            }
            signed as i128
        } else {
            raw as i128
        };
        let len = value + s.adjust as i128;
        if len < 0 {
            return Err(WireError::LengthUnderflow {
                field: raw,
                adjust: s.adjust,
            });
        }
        if len > s.max as i128 {
            return Err(WireError::FrameTooLarge {
                len: len.min(u64::MAX as i128) as u64,
                max: s.max,
            });
        }
        Ok(len as usize)
    }

    fn kind_name(&self) -> String {
        let sign = if self.signed { 'i' } else { 'u' };
        let bits = self.width * 8;
        match (self.width, self.endian) {
            (1, _) => format!("{sign}8"),
            (_, Endian::Big) => format!("{sign}{bits}be"),
            (_, Endian::Little) => format!("{sign}{bits}le"),
        }
    }
}

/// A parsed framing spec. Build codecs with [`Framing::codec`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Framing {
    Length(LengthSpec),
    /// Newline-terminated frames; `max` bounds the line without its newline.
    Line {
        max: usize,
    },
    /// `u32be` header length, a JSON object header with a `size` field, then `size` body bytes.
    Hjson {
        max: usize,
    },
    /// Unsigned LEB128 length, then the payload (protobuf delimited streams).
    Varint {
        max: usize,
    },
    /// `5:hello,`: decimal length, colon, payload, comma.
    Netstring {
        max: usize,
    },
    /// No framing: one write is one message, never cut inside (see [`super::RawCodec`]).
    Raw {
        max: usize,
    },
}

impl Default for Framing {
    fn default() -> Self {
        Framing::Length(length_kind("u32be").expect("u32be is a known kind"))
    }
}

impl Framing {
    /// The same framing with `max` lowered (never raised) to `max`.
    pub fn with_max(mut self, max: usize) -> Framing {
        match &mut self {
            Framing::Length(l) => l.max = l.max.min(max),
            Framing::Line { max: m }
            | Framing::Hjson { max: m }
            | Framing::Varint { max: m }
            | Framing::Netstring { max: m }
            | Framing::Raw { max: m } => *m = (*m).min(max),
        }
        self
    }

    /// Whether this is `raw`: no boundaries in the bytes, so a message must go in one
    /// write and must never be cut, split or merged by a fault.
    pub fn is_raw(&self) -> bool {
        matches!(self, Framing::Raw { .. })
    }

    /// Header bytes each payload carries itself (only length framings with `keep`): a
    /// payload is at least this long, and `max` bounds what follows them.
    pub fn kept_header_len(&self) -> usize {
        match self {
            Framing::Length(l) => l.kept_header_len(),
            _ => 0,
        }
    }

    /// Largest payload (for hjson: body; with `keep`: the part after the header) this
    /// framing accepts.
    pub fn max(&self) -> usize {
        match self {
            Framing::Length(l) => l.max,
            Framing::Line { max }
            | Framing::Hjson { max }
            | Framing::Varint { max }
            | Framing::Netstring { max }
            | Framing::Raw { max } => *max,
        }
    }
}

fn length_kind(kind: &str) -> Option<LengthSpec> {
    let (width, endian, signed) = match kind {
        "u8" => (1, Endian::Big, false),
        "u16be" => (2, Endian::Big, false),
        "u16le" => (2, Endian::Little, false),
        "u32be" => (4, Endian::Big, false),
        "u32le" => (4, Endian::Little, false),
        "u64be" => (8, Endian::Big, false),
        "u64le" => (8, Endian::Little, false),
        "i32be" => (4, Endian::Big, true),
        "i32le" => (4, Endian::Little, true),
        _ => return None,
    };
    Some(LengthSpec {
        width,
        endian,
        signed,
        offset: 0,
        adjust: 0,
        max: DEFAULT_MAX,
        keep: false,
    })
}

/// Parses `123`, `64KiB`, `8MiB`, `1GiB` (also `k`/`m`/`g`, any case).
pub fn parse_size(value: &str) -> Result<u64, &'static str> {
    let v = value.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (digits, unit) = v.split_at(split);
    if digits.is_empty() {
        return Err("expected a number, optionally with a KiB/MiB/GiB suffix");
    }
    let n: u64 = digits.parse().map_err(|_| "number too large")?;
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        _ => return Err("unknown unit (use KiB, MiB or GiB)"),
    };
    n.checked_mul(mult).ok_or("number too large")
}

impl FromStr for Framing {
    type Err = SpecError;

    fn from_str(spec: &str) -> Result<Self, SpecError> {
        let mut parts = spec.split(',').map(str::trim);
        let kind = parts.next().unwrap_or_default();
        if kind.is_empty() {
            return Err(SpecError::Empty);
        }
        let mut length = length_kind(kind);
        let others = ["line", "hjson", "varint", "netstring", "raw"];
        if length.is_none() && !others.contains(&kind) {
            return Err(SpecError::UnknownKind(kind.to_string()));
        }
        let (mut offset, mut adjust, mut max, mut keep) = (None, None, None, false);
        for part in parts {
            if part == KEEP {
                if length.is_none() {
                    return Err(SpecError::NotApplicable {
                        key: KEEP.to_string(),
                        kind: kind.to_string(),
                    });
                }
                if std::mem::replace(&mut keep, true) {
                    return Err(SpecError::DuplicateModifier(KEEP.to_string()));
                }
                continue;
            }
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| SpecError::MalformedModifier(part.to_string()))?;
            let (key, value) = (key.trim(), value.trim());
            let bad = |reason| SpecError::BadValue {
                key: key.to_string(),
                value: value.to_string(),
                reason,
            };
            let slot_taken = match key {
                "offset" | "adjust" if length.is_none() => {
                    return Err(SpecError::NotApplicable {
                        key: key.to_string(),
                        kind: kind.to_string(),
                    })
                }
                "offset" => {
                    let n: usize = value.parse().map_err(|_| bad("expected a byte count"))?;
                    if n > MAX_OFFSET {
                        return Err(bad("offset is at most 64 bytes"));
                    }
                    offset.replace(n).is_some()
                }
                "adjust" => {
                    let n: i64 = value
                        .parse()
                        .map_err(|_| bad("expected a signed integer"))?;
                    if n.unsigned_abs() > MAX_MAX {
                        return Err(bad("adjust is out of range"));
                    }
                    adjust.replace(n).is_some()
                }
                KEEP => return Err(bad("keep is a flag and takes no value")),
                "max" => {
                    let n = parse_size(value).map_err(bad)?;
                    if n > MAX_MAX {
                        return Err(bad("max is at most 4 GiB - 1"));
                    }
                    max.replace(n).is_some()
                }
                _ => return Err(SpecError::UnknownModifier(key.to_string())),
            };
            if slot_taken {
                return Err(SpecError::DuplicateModifier(key.to_string()));
            }
        }
        match length.as_mut() {
            Some(l) => {
                l.offset = offset.unwrap_or(0);
                l.adjust = adjust.unwrap_or(0);
                l.keep = keep;
                // Not even an empty payload fits (payload_limit clamps this to 0).
                if i128::from(l.field_limit()) + i128::from(l.adjust) < 0 {
                    return Err(SpecError::BadValue {
                        key: "adjust".to_string(),
                        value: l.adjust.to_string(),
                        reason: "the length field cannot describe any payload",
                    });
                }
                let limit = l.payload_limit();
                l.max = match max {
                    Some(m) if m > limit => {
                        return Err(SpecError::MaxBeyondField {
                            max: m,
                            width: l.width,
                            adjust: l.adjust,
                            limit,
                        })
                    }
                    Some(m) => m as usize,
                    None => l.default_max(),
                };
                Ok(Framing::Length(*l))
            }
            None => {
                let max = max.map_or(DEFAULT_MAX, |m| m as usize);
                Ok(match kind {
                    "line" => Framing::Line { max },
                    "hjson" => Framing::Hjson { max },
                    "varint" => Framing::Varint { max },
                    "netstring" => Framing::Netstring { max },
                    _ => Framing::Raw { max },
                })
            }
        }
    }
}

impl fmt::Display for Framing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (kind, max) = match self {
            Framing::Length(l) => {
                f.write_str(&l.kind_name())?;
                if l.offset != 0 {
                    write!(f, ",offset={}", l.offset)?;
                }
                if l.adjust != 0 {
                    write!(f, ",adjust={}", l.adjust)?;
                }
                if l.max != l.default_max() {
                    write!(f, ",max={}", l.max)?;
                }
                return if l.keep { write!(f, ",{KEEP}") } else { Ok(()) };
            }
            Framing::Line { max } => ("line", *max),
            Framing::Hjson { max } => ("hjson", *max),
            Framing::Varint { max } => ("varint", *max),
            Framing::Netstring { max } => ("netstring", *max),
            Framing::Raw { max } => ("raw", *max),
        };
        f.write_str(kind)?;
        if max != DEFAULT_MAX {
            write!(f, ",max={max}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn len(spec: &str) -> LengthSpec {
        match spec.parse::<Framing>().unwrap() {
            Framing::Length(l) => l,
            other => panic!("{spec} parsed as {other:?}"),
        }
    }

    #[test]
    fn every_kind_parses_with_its_width_and_order() {
        for (spec, width, endian, signed) in [
            ("u8", 1, Endian::Big, false),
            ("u16be", 2, Endian::Big, false),
            ("u16le", 2, Endian::Little, false),
            ("u32be", 4, Endian::Big, false),
            ("u32le", 4, Endian::Little, false),
            ("u64be", 8, Endian::Big, false),
            ("u64le", 8, Endian::Little, false),
            ("i32be", 4, Endian::Big, true),
            ("i32le", 4, Endian::Little, true),
        ] {
            let l = len(spec);
            assert_eq!(
                (l.width, l.endian, l.signed),
                (width, endian, signed),
                "{spec}"
            );
        }
        assert_eq!(
            "line".parse::<Framing>().unwrap(),
            Framing::Line { max: DEFAULT_MAX }
        );
        assert_eq!(
            "hjson".parse::<Framing>().unwrap(),
            Framing::Hjson { max: DEFAULT_MAX }
        );
        assert_eq!(
            "varint".parse::<Framing>().unwrap(),
            Framing::Varint { max: DEFAULT_MAX }
        );
        assert_eq!(
            "netstring,max=5".parse::<Framing>().unwrap(),
            Framing::Netstring { max: 5 }
        );
        assert!("raw".parse::<Framing>().unwrap().is_raw());
        assert_eq!(Framing::default(), "u32be".parse().unwrap());
    }

    #[test]
    fn modifiers_and_size_units() {
        let l = len("u16le, offset=2, adjust=-2, max=1KiB");
        assert_eq!((l.offset, l.adjust, l.max), (2, -2, 1024));
        assert_eq!(len("u32be,max=8MiB").max, 8 << 20);
        assert_eq!(len("u64be,max=2GiB").max, 2 << 30);
        assert_eq!(len("u32be,max=100").max, 100);
        assert_eq!("line,max=1k".parse::<Framing>().unwrap().max(), 1024);
    }

    #[test]
    fn keep_is_a_bare_flag_of_length_kinds_in_any_position() {
        let l = len("u32be,offset=8,adjust=12,keep");
        assert!(l.keep);
        assert_eq!(
            (l.offset, l.adjust, l.header_len(), l.kept_header_len()),
            (8, 12, 12, 12)
        );
        assert_eq!(
            len("u16le, keep ,max=10"),
            LengthSpec {
                max: 10,
                ..len("u16le,keep")
            }
        );
        assert!(!len("u32be,offset=8").keep);
        assert_eq!(len("u32be,offset=8").kept_header_len(), 0);
        assert_eq!("varint".parse::<Framing>().unwrap().kept_header_len(), 0);
        // `max` still bounds what the length field describes.
        assert_eq!(len("u8,keep").max, 255);
    }

    #[test]
    fn narrow_fields_default_to_what_they_can_express() {
        assert_eq!(len("u8").max, 255);
        assert_eq!(len("u8,adjust=-1").max, 254);
        assert_eq!(len("u16be").max, 65535);
        assert_eq!(len("u32be").max, DEFAULT_MAX);
    }

    #[test]
    fn display_round_trips() {
        for spec in [
            "u32be",
            "i32le",
            "u8",
            "u16le,offset=3,adjust=-5,max=1000",
            "line,max=10",
            "hjson",
            "varint",
            "varint,max=300",
            "netstring,max=1000",
            "raw",
            "u64le,max=1",
            "u32be,offset=8,adjust=12,keep",
            "u16le,max=100,keep",
        ] {
            let f: Framing = spec.parse().unwrap();
            assert_eq!(f.to_string().parse::<Framing>().unwrap(), f, "{spec}");
            assert_eq!(f.to_string(), spec);
        }
    }

    #[test]
    fn bad_specs_get_typed_errors() {
        let err = |s: &str| s.parse::<Framing>().unwrap_err();
        assert_eq!(err(""), SpecError::Empty);
        assert!(matches!(err("u24be"), SpecError::UnknownKind(k) if k == "u24be"));
        assert!(matches!(err("u32be,max"), SpecError::MalformedModifier(_)));
        assert!(matches!(err("u32be,foo=1"), SpecError::UnknownModifier(_)));
        assert!(matches!(
            err("u32be,max=1,max=2"),
            SpecError::DuplicateModifier(_)
        ));
        assert!(matches!(
            err("line,offset=1"),
            SpecError::NotApplicable { .. }
        ));
        assert!(matches!(
            err("varint,offset=1"),
            SpecError::NotApplicable { .. }
        ));
        assert!(matches!(
            err("netstring,adjust=1"),
            SpecError::NotApplicable { .. }
        ));
        assert!(matches!(err("varint,max=5GiB"), SpecError::BadValue { .. }));
        assert!(matches!(
            err("hjson,adjust=1"),
            SpecError::NotApplicable { .. }
        ));
        assert!(matches!(err("u32be,max=1TiB"), SpecError::BadValue { .. }));
        assert!(matches!(err("u32be,max=-1"), SpecError::BadValue { .. }));
        assert!(matches!(err("u32be,max=5GiB"), SpecError::BadValue { .. }));
        assert!(matches!(err("u32be,offset=x"), SpecError::BadValue { .. }));
        assert!(matches!(err("u32be,offset=65"), SpecError::BadValue { .. }));
        assert!(matches!(err("line,keep"), SpecError::NotApplicable { .. }));
        assert!(matches!(
            err("netstring,keep"),
            SpecError::NotApplicable { .. }
        ));
        assert!(matches!(
            err("u32be,keep,keep"),
            SpecError::DuplicateModifier(k) if k == "keep"
        ));
        assert!(matches!(err("u32be,keep=1"), SpecError::BadValue { .. }));
        assert!(matches!(err("u32be,kept"), SpecError::MalformedModifier(_)));
        assert!(matches!(
            err("u8,max=256"),
            SpecError::MaxBeyondField { limit: 255, .. }
        ));
        assert!(matches!(
            err("i32le,max=3GiB"),
            SpecError::MaxBeyondField { .. }
        ));
    }
}
