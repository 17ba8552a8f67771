//! Planted bugs (feature `planted-bugs`, never in CI's fuzz stage): copies of decoder and
//! validator paths with one known bug each, chosen at run time by `CHOPSTICK_PLANTED`.
//! `fuzz/planted.sh` runs each target with its bug and records how fast it is found.
//! They live here, in the fuzz crate, so the product crates never contain them; the
//! targets run their checks on a copy through `chopstick_targets::fuzzing::*_with`.
//!
//! | name | target | the bug |
//! |---|---|---|
//! | `frame-max-off-by-one` | frame_decode | the max check lets a `max + 1` frame through |
//! | `frame-short-header` | frame_decode | reads the length field from a partial header (panics on a 1-byte one) |
//! | `frame-one-read` | frame_decode | one read = one message: a body split across reads comes out short |
//! | `hjson-no-max` | hjson_decode | `size` is not checked against max before the body is reserved |
//! | `exec-nul` | exec_request | arguments are not checked for NUL |
//! | `file-dotdot` | file_request | `..` is refused only as the first component |

use std::path::Path;
use std::sync::OnceLock;

use bytes::{Buf, Bytes, BytesMut};
use chopstick_targets::exec::{self, FIXED_PATH, MAX_ARGS, MAX_ARG_LEN};
use chopstick_targets::file::names::{is_valid_component, MAX_NAME};
use chopstick_targets::fuzzing::Accepted;
use chopstick_targets::wire::{
    Endian, FrameCodec, Framing, HjsonCodec, HjsonFrame, LengthCodec, LengthSpec, WireError,
    MAX_HEADER,
};
use serde_json::{Map, Value};
use tokio_util::codec::Decoder;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bug {
    FrameMaxOffByOne,
    FrameShortHeader,
    FrameOneRead,
    HjsonNoMax,
    ExecNul,
    FileDotDot,
}

pub const BUGS: &[(&str, Bug)] = &[
    ("frame-max-off-by-one", Bug::FrameMaxOffByOne),
    ("frame-short-header", Bug::FrameShortHeader),
    ("frame-one-read", Bug::FrameOneRead),
    ("hjson-no-max", Bug::HjsonNoMax),
    ("exec-nul", Bug::ExecNul),
    ("file-dotdot", Bug::FileDotDot),
];

/// The bug named by `CHOPSTICK_PLANTED` (read once), if any.
pub fn chosen() -> Option<Bug> {
    static CHOSEN: OnceLock<Option<Bug>> = OnceLock::new();
    *CHOSEN.get_or_init(|| {
        let name = std::env::var("CHOPSTICK_PLANTED").ok()?;
        let bug = BUGS.iter().find(|(n, _)| *n == name).map(|(_, b)| *b);
        assert!(
            bug.is_some(),
            "unknown CHOPSTICK_PLANTED={name:?}; known: {BUGS:?}"
        );
        bug
    })
}

/// A frame decoder with the chosen bug (the real one if the bug is elsewhere).
pub fn frame_codec(framing: Framing) -> PlantedFrame {
    let bug = chosen();
    let inner = match (bug, framing) {
        // The copy's max check is off by one: it compares with max + 1.
        (Some(Bug::FrameMaxOffByOne), Framing::Length(spec)) => {
            let max = (spec.max as u64 + 1).min(spec.payload_limit()) as usize;
            FrameCodec::Length(LengthCodec::new(LengthSpec { max, ..spec }))
        }
        (Some(Bug::FrameMaxOffByOne), Framing::Line { max }) => {
            Framing::Line { max: max + 1 }.codec()
        }
        (Some(Bug::FrameMaxOffByOne), Framing::Hjson { max }) => {
            Framing::Hjson { max: max + 1 }.codec()
        }
        _ => framing.codec(),
    };
    let spec = match framing {
        Framing::Length(spec) => Some(spec),
        _ => None,
    };
    PlantedFrame {
        bug,
        spec,
        inner,
        at_start: true,
    }
}

pub struct PlantedFrame {
    bug: Option<Bug>,
    spec: Option<LengthSpec>,
    inner: FrameCodec,
    at_start: bool,
}

fn field(spec: &LengthSpec, src: &[u8]) -> u64 {
    let mut field = &src[spec.offset..spec.header_len()];
    match spec.endian {
        Endian::Big => field.get_uint(spec.width),
        Endian::Little => field.get_uint_le(spec.width),
    }
}

impl Decoder for PlantedFrame {
    type Item = Bytes;
    type Error = WireError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, WireError> {
        if let (Some(spec), true) = (self.spec, self.at_start && !src.is_empty()) {
            match self.bug {
                // Peeks at the length field as soon as any byte is there.
                Some(Bug::FrameShortHeader) if src.len() < spec.header_len() => {
                    let _peek = field(&spec, &src[..]);
                }
                // A header and part of the body: returns what is there as the frame.
                Some(Bug::FrameOneRead) if src.len() >= spec.header_len() && !spec.signed => {
                    let len = field(&spec, src) as i128 + i128::from(spec.adjust);
                    let have = src.len() - spec.header_len();
                    if len >= 0 && len <= spec.max as i128 && (have as i128) < len {
                        src.advance(spec.header_len());
                        return Ok(Some(src.split().freeze()));
                    }
                }
                _ => {}
            }
        }
        let before = src.len();
        let result = self.inner.decode(src);
        self.at_start = matches!(result, Ok(Some(_))) || (self.at_start && src.len() == before);
        result
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, WireError> {
        let result = self.inner.decode_eof(src);
        self.at_start = matches!(result, Ok(Some(_)));
        result
    }
}

/// An hjson decoder; with `hjson-no-max`, a copy of [`HjsonCodec`] that does not check
/// `size` against max.
pub fn hjson_codec(max: usize) -> PlantedHjson {
    PlantedHjson {
        real: (chosen() != Some(Bug::HjsonNoMax)).then(|| HjsonCodec::new(max)),
        header: LengthCodec::new(LengthSpec {
            width: 4,
            endian: Endian::Big,
            signed: false,
            offset: 0,
            adjust: 0,
            max: MAX_HEADER,
            keep: false,
        }),
        pending: None,
    }
}

pub struct PlantedHjson {
    real: Option<HjsonCodec>,
    header: LengthCodec,
    pending: Option<(Map<String, Value>, usize)>,
}

impl Decoder for PlantedHjson {
    type Item = HjsonFrame;
    type Error = WireError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<HjsonFrame>, WireError> {
        if let Some(real) = &mut self.real {
            return real.decode(src);
        }
        if self.pending.is_none() {
            let Some(raw) = self.header.decode(src)? else {
                return Ok(None);
            };
            let value: Value = serde_json::from_slice(&raw)
                .map_err(|e| WireError::BadHeader(format!("invalid JSON: {e}")))?;
            let Value::Object(map) = value else {
                return Err(WireError::BadHeader("not an object".into()));
            };
            let size = map
                .get("size")
                .and_then(Value::as_u64)
                .ok_or_else(|| WireError::BadHeader("no size".into()))?;
            // The planted bug: no `size > max` check here.
            let size = size as usize;
            src.reserve(size.saturating_sub(src.len()));
            self.pending = Some((map, size));
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
        if let Some(real) = &mut self.real {
            return real.decode_eof(src);
        }
        if let Some(frame) = self.decode(src)? {
            return Ok(Some(frame));
        }
        if self.pending.is_some() {
            return Err(WireError::Truncated {
                received: src.len(),
            });
        }
        self.header.decode_eof(src).map(|_| None)
    }
}

/// A copy of the exec request validator without the NUL check (`exec-nul`).
pub fn parse_exec_request(request: &HjsonFrame, config: &exec::Config) -> Result<Accepted, String> {
    let Some(Value::Array(items)) = request.header.get("argv") else {
        return Err("`argv` must be an array of strings".into());
    };
    if items.is_empty() || items.len() > MAX_ARGS {
        return Err("bad argument count".into());
    }
    let mut argv = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let Value::String(arg) = item else {
            return Err(format!("argv[{i}] is not a string"));
        };
        if arg.len() > MAX_ARG_LEN {
            return Err(format!("argv[{i}] is too long"));
        }
        // The planted bug: no NUL check.
        argv.push(arg.clone());
    }
    let name = &argv[0];
    if name.contains('/') || !config.allow.iter().any(|a| a == name) {
        return Err(format!("program {name:?} is not allowed"));
    }
    let program = FIXED_PATH
        .split(':')
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| format!("program {name:?} not found"))?;
    Ok(Accepted {
        argv,
        program,
        stdin: request.body.clone(),
    })
}

/// A copy of the file name validator that refuses `..` only first (`file-dotdot`).
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME || name.starts_with('/') {
        return Err("empty, too long or absolute".into());
    }
    for (i, component) in name.split('/').enumerate() {
        // The planted bug: `..` is only looked for at the start.
        if component == ".." {
            if i == 0 {
                return Err("name has a '..' component".into());
            }
            continue;
        }
        if !is_valid_component(component) {
            return Err(format!("bad component {component:?}"));
        }
    }
    Ok(())
}
