//! Incremental frame-boundary scanning: where do the frames of a stream start and end,
//! when the stream arrives in arbitrary pieces?
//!
//! A decoder (see [`super::FrameCodec`]) consumes frames; a relay such as the chaos proxy
//! must instead pass every byte on untouched and only *know* where frames lie, so that
//! faults can cut inside a length field or at a frame end. [`FrameScanner`] is fed the
//! stream piece by piece and reports each frame as a [`StreamFrame`] in absolute stream
//! offsets (`u64`, so a long-lived connection never overflows). Frames may straddle any
//! number of pieces; the scanner keeps only the header bytes it still needs (at most
//! `offset + 8` for length framings, 4 + [`MAX_HEADER`] for hjson, 5 for `varint`, 11
//! for `netstring`, nothing for `line` and `raw`). `raw` has no boundaries: each piece
//! fed is taken as one whole frame, as its decoder takes each read.
//!
//! The checks are the decoders' (negative length, length over `max`, header too large,
//! malformed hjson header, over-long line, malformed varint or netstring length, a
//! netstring without its comma), so a stream the scanner accepts is one the codec
//! accepts. After an error the scanner stops: a corrupt stream has no boundaries.

use std::ops::Range;

use serde_json::Value;

use super::netstring::{self, Header};
use super::varint::{self, Prefix};
use super::{FrameLayout, Framing, WireError, MAX_HEADER};

/// Stands for "not known yet" in a [`StreamFrame`] bound (e.g. the body end before the
/// length field has arrived). Clipping maps it to the end of the window.
pub const UNKNOWN_OFFSET: u64 = u64::MAX;

/// One frame's parts in absolute stream offsets (see [`FrameLayout`] for the parts).
///
/// For a frame still in progress, bounds not yet known are [`UNKNOWN_OFFSET`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StreamFrame {
    pub start: u64,
    pub length_field: Range<u64>,
    pub body: Range<u64>,
    pub end: u64,
}

impl StreamFrame {
    /// Whether every bound is known (the frame has been seen to its end).
    pub fn is_complete(&self) -> bool {
        self.end != UNKNOWN_OFFSET
    }

    /// This frame's layout relative to `window.start`, with every range clipped to the
    /// window; `None` if the frame has no byte in it.
    ///
    /// A frame that began before the window gets `start == 0` and the parts it had
    /// before the window collapse to empty ranges at 0; unknown bounds become the
    /// window's end. That is what a fault cutting one piece of a stream needs.
    pub fn clip(&self, window: Range<u64>) -> Option<FrameLayout> {
        if self.start >= window.end || self.end <= window.start || window.is_empty() {
            return None;
        }
        let c = |x: u64| (x.clamp(window.start, window.end) - window.start) as usize;
        Some(FrameLayout {
            start: c(self.start),
            length_field: c(self.length_field.start)..c(self.length_field.end),
            body: c(self.body.start)..c(self.body.end),
            end: c(self.end),
        })
    }
}

/// What the scanner waits for inside the open frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Collecting header bytes into `buf` until it holds this many.
    Header(usize),
    /// `varint`/`netstring`: collecting header bytes one at a time until the length is whole.
    Prefix,
    /// Skipping body (and trailer) bytes up to the known frame end.
    Body,
    /// `line`: looking for the newline.
    Line,
}

/// Finds frame boundaries in a stream fed in pieces. See the module docs.
#[derive(Debug, Clone)]
pub struct FrameScanner {
    framing: Framing,
    /// Stream bytes fed so far.
    pos: u64,
    /// The frame in progress and what it waits for; `None` at a frame boundary.
    open: Option<(StreamFrame, Stage)>,
    /// Header bytes of the open frame, while they are needed to learn its length.
    buf: Vec<u8>,
    failed: bool,
}

impl FrameScanner {
    pub fn new(framing: Framing) -> FrameScanner {
        FrameScanner {
            framing,
            pos: 0,
            open: None,
            buf: Vec::new(),
            failed: false,
        }
    }

    /// Stream bytes fed so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Whether the bytes fed so far end exactly at a frame boundary.
    pub fn at_boundary(&self) -> bool {
        self.open.is_none()
    }

    /// Whether an earlier [`feed`](Self::feed) failed (the scanner then ignores input).
    pub fn has_failed(&self) -> bool {
        self.failed
    }

    /// The frame in progress (started but not complete), with unknown bounds [`UNKNOWN_OFFSET`].
    pub fn open_frame(&self) -> Option<&StreamFrame> {
        self.open.as_ref().map(|(f, _)| f)
    }

    /// Scans the next piece of the stream, appending every frame completed in it to
    /// `done`. On a corrupt stream returns the decoder's error; the frames completed
    /// before the corruption are still appended, and later feeds do nothing.
    pub fn feed(&mut self, mut bytes: &[u8], done: &mut Vec<StreamFrame>) -> Result<(), WireError> {
        if self.failed {
            return Ok(());
        }
        while !bytes.is_empty() {
            let taken = match self.step(bytes, done) {
                Ok(n) => n,
                Err(e) => {
                    self.failed = true;
                    self.open = None;
                    self.buf = Vec::new();
                    return Err(e);
                }
            };
            bytes = &bytes[taken..];
        }
        Ok(())
    }

    /// Consumes some of `bytes` (at least one) and returns how many.
    fn step(&mut self, bytes: &[u8], done: &mut Vec<StreamFrame>) -> Result<usize, WireError> {
        if self.framing.is_raw() {
            let end = self.pos + bytes.len() as u64;
            done.push(StreamFrame {
                start: self.pos,
                length_field: self.pos..self.pos,
                body: self.pos..end,
                end,
            });
            self.pos = end;
            return Ok(bytes.len());
        }
        let (frame, stage) = match &mut self.open {
            Some(open) => open,
            None => self.open.insert(start_frame(&self.framing, self.pos)),
        };
        let taken = match *stage {
            Stage::Header(need) => {
                let take = (need - self.buf.len()).min(bytes.len());
                self.buf.extend_from_slice(&bytes[..take]);
                take
            }
            Stage::Prefix => {
                self.buf.push(bytes[0]);
                1
            }
            Stage::Body => (frame.end - self.pos).min(bytes.len() as u64) as usize,
            Stage::Line => match bytes.iter().position(|&b| b == b'\n') {
                Some(i) => i + 1,
                None => bytes.len(),
            },
        };
        self.pos += taken as u64;
        match *stage {
            Stage::Header(need) if self.buf.len() == need => {
                let header_start = frame.start;
                match header_done(&self.framing, &self.buf, header_start)? {
                    HeaderDone::NeedMore(total) => *stage = Stage::Header(total),
                    HeaderDone::Body(body) => {
                        frame.end = body.end;
                        frame.body = body;
                        *stage = Stage::Body;
                        self.buf.clear();
                    }
                }
            }
            Stage::Prefix => {
                let max = self.framing.max();
                let known = match self.framing {
                    Framing::Varint { .. } => match varint::read_prefix(&self.buf, max)? {
                        Prefix::Done { header, len } => Some((header, header, len)),
                        Prefix::Partial => None,
                    },
                    _ => match netstring::read_header(&self.buf, max)? {
                        Header::Done { header, len } => Some((header - 1, header, len)),
                        Header::Partial => None,
                    },
                };
                if let Some((field, header, len)) = known {
                    let trailer = u64::from(matches!(self.framing, Framing::Netstring { .. }));
                    let at = frame.start + header as u64;
                    frame.length_field = frame.start..frame.start + field as u64;
                    frame.body = at..at + len as u64;
                    frame.end = at + len as u64 + trailer;
                    *stage = Stage::Body;
                    self.buf.clear();
                }
            }
            Stage::Body
                if self.pos == frame.end
                    && matches!(self.framing, Framing::Netstring { .. })
                    && bytes[taken - 1] != b',' =>
            {
                return Err(WireError::MissingTerminator {
                    found: bytes[taken - 1],
                });
            }
            Stage::Line => {
                let newline = bytes[taken - 1] == b'\n';
                let line_len = self.pos - frame.start - u64::from(newline);
                if line_len > self.framing.max() as u64 {
                    return Err(WireError::LineTooLong {
                        max: self.framing.max(),
                    });
                }
                if newline {
                    frame.body.end = self.pos - 1;
                    frame.end = self.pos;
                }
            }
            _ => {}
        }
        // A frame is done once its end is known and reached (an empty body ends with
        // its header, in the same step).
        if frame.end == self.pos {
            done.push(frame.clone());
            self.open = None;
        }
        Ok(taken)
    }
}

/// A new frame starting at `start`, with what its framing tells before any byte is read.
fn start_frame(framing: &Framing, start: u64) -> (StreamFrame, Stage) {
    let unknown = UNKNOWN_OFFSET..UNKNOWN_OFFSET;
    match framing {
        Framing::Length(l) => (
            StreamFrame {
                start,
                length_field: start + l.offset as u64..start + l.header_len() as u64,
                body: unknown,
                end: UNKNOWN_OFFSET,
            },
            Stage::Header(l.header_len()),
        ),
        Framing::Line { .. } => (
            StreamFrame {
                start,
                length_field: start..start,
                body: start..UNKNOWN_OFFSET,
                end: UNKNOWN_OFFSET,
            },
            Stage::Line,
        ),
        Framing::Hjson { .. } => (
            StreamFrame {
                start,
                length_field: start..start + 4,
                body: unknown,
                end: UNKNOWN_OFFSET,
            },
            Stage::Header(4),
        ),
        Framing::Varint { .. } | Framing::Netstring { .. } => (
            StreamFrame {
                start,
                length_field: start..UNKNOWN_OFFSET,
                body: unknown,
                end: UNKNOWN_OFFSET,
            },
            Stage::Prefix,
        ),
        Framing::Raw { .. } => unreachable!("raw pieces are whole frames, never open"),
    }
}

enum HeaderDone {
    /// The header is longer than first thought (hjson: prefix read, JSON to come).
    NeedMore(usize),
    /// The body's absolute range.
    Body(Range<u64>),
}

/// Interprets a complete header (`header` = all header bytes so far).
fn header_done(framing: &Framing, header: &[u8], start: u64) -> Result<HeaderDone, WireError> {
    let body_at = |len: u64| {
        let from = start + header.len() as u64;
        HeaderDone::Body(from..from + len)
    };
    match framing {
        Framing::Length(spec) => Ok(body_at(spec.payload_len(header)? as u64)),
        Framing::Line { .. }
        | Framing::Varint { .. }
        | Framing::Netstring { .. }
        | Framing::Raw { .. } => unreachable!("no fixed-size header stage"),
        Framing::Hjson { max } => {
            if header.len() == 4 {
                let hlen = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
                if hlen as usize > MAX_HEADER {
                    return Err(WireError::HeaderTooLarge {
                        len: u64::from(hlen),
                        max: MAX_HEADER,
                    });
                }
                if hlen == 0 {
                    // The codec's JSON parse fails on an empty header; so does the scan.
                    return Err(WireError::BadHeader("invalid JSON: empty header".into()));
                }
                return Ok(HeaderDone::NeedMore(4 + hlen as usize));
            }
            Ok(body_at(hjson_size(&header[4..], *max)?))
        }
    }
}

/// The body size an hjson header announces, checked like [`super::HjsonCodec`].
fn hjson_size(json: &[u8], max: usize) -> Result<u64, WireError> {
    let value: Value = serde_json::from_slice(json)
        .map_err(|e| WireError::BadHeader(format!("invalid JSON: {e}")))?;
    let size = match value.get("size") {
        _ if !value.is_object() => {
            return Err(WireError::BadHeader("header is not a JSON object".into()))
        }
        None => return Err(WireError::BadHeader("header has no `size` field".into())),
        Some(v) => v.as_u64().ok_or_else(|| {
            WireError::BadHeader(format!("`size` is not a non-negative integer: {v}"))
        })?,
    };
    if size > max as u64 {
        return Err(WireError::FrameTooLarge { len: size, max });
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    const SPECS: &[&str] = &[
        "u32be",
        "u8",
        "u16le,offset=3,adjust=-2",
        "i32le",
        "u64be",
        "line",
        "hjson",
        "varint",
        "netstring",
    ];

    fn payloads() -> Vec<Vec<u8>> {
        [0usize, 1, 2, 3, 7, 100, 300, 5000]
            .iter()
            .map(|&n| (0..n).map(|i| b'a' + (i % 26) as u8).collect())
            .collect()
    }

    fn absolute(l: &FrameLayout) -> StreamFrame {
        let a = |x: usize| x as u64;
        StreamFrame {
            start: a(l.start),
            length_field: a(l.length_field.start)..a(l.length_field.end),
            body: a(l.body.start)..a(l.body.end),
            end: a(l.end),
        }
    }

    #[test]
    fn finds_the_encoders_layouts_whatever_the_piece_sizes() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for spec in SPECS {
            let framing: Framing = spec.parse().unwrap();
            let msgs: Vec<_> = payloads()
                .into_iter()
                .filter(|p| p.len() >= 2 || !spec.contains("adjust=-2"))
                .filter(|p| p.len() <= framing.max())
                .collect();
            let (stream, layouts) = framing.encode_all(&msgs).unwrap();
            let expected: Vec<_> = layouts.iter().map(absolute).collect();
            for max_piece in [1, 2, 5, 64, stream.len()] {
                let mut scanner = FrameScanner::new(framing);
                let mut found = Vec::new();
                let mut rest = &stream[..];
                while !rest.is_empty() {
                    let n = rng.random_range(1..=max_piece.min(rest.len()));
                    scanner.feed(&rest[..n], &mut found).unwrap();
                    rest = &rest[n..];
                }
                assert_eq!(found, expected, "{spec}, pieces of at most {max_piece}");
                assert!(scanner.at_boundary());
                assert_eq!(scanner.position(), stream.len() as u64);
            }
        }
    }

    #[test]
    fn open_frame_shows_what_is_known_so_far() {
        let framing: Framing = "u32be".parse().unwrap();
        let mut s = FrameScanner::new(framing);
        let mut done = Vec::new();
        s.feed(&[0, 0], &mut done).unwrap();
        let open = s.open_frame().unwrap().clone();
        assert_eq!((open.start, open.length_field.clone()), (0, 0..4));
        assert!(!open.is_complete());
        s.feed(&[0, 10, 1, 2], &mut done).unwrap();
        assert_eq!(s.open_frame().unwrap().body, 4..14);
        assert!(done.is_empty());
        // Clipped to the second piece: the header collapses, the body is cut at the window.
        let l = s.open_frame().unwrap().clip(2..6).unwrap();
        assert_eq!((l.start, l.length_field, l.body, l.end), (0, 0..2, 2..4, 4));
        assert_eq!(s.open_frame().unwrap().clip(6..6), None);
    }

    #[test]
    fn corrupt_streams_get_the_decoders_errors_and_stop_the_scan() {
        let cases: &[(&str, &[u8])] = &[
            ("i32le", &[0xff, 0xff, 0xff, 0xff]),
            ("u32be,max=10", &[0, 0, 0, 11]),
            ("u8,adjust=-2", &[1]),
            ("line,max=3", b"abcd"),
            ("line,max=3", b"abcd\n"),
            ("hjson", &[0, 0, 0, 2, b'[', b']']),
            ("hjson", &[0, 0, 0, 0]),
            ("hjson", &[0xff, 0, 0, 0]),
            ("hjson,max=1", b"\0\0\0\x0a{\"size\":2}"),
            ("varint,max=10", &[11]),
            ("varint,max=1000", &[0x81, 0x80, 0x00]),
            ("varint", &[0x85, 0x00]),
            ("varint", &[0x80, 0x80, 0x80, 0x80, 0x80]),
            ("netstring,max=10", b"11"),
            ("netstring", b"05:hello,"),
            ("netstring", b":"),
            ("netstring", b"x"),
            ("netstring", b"2:ab;"),
        ];
        for (spec, bytes) in cases {
            let mut s = FrameScanner::new(spec.parse().unwrap());
            let mut done = Vec::new();
            let err = s.feed(bytes, &mut done).unwrap_err();
            assert!(s.has_failed(), "{spec}: {err}");
            s.feed(b"\0\0\0\0\n", &mut done).unwrap();
            assert!(done.is_empty(), "{spec}");
        }
    }
}
