//! `frame_decode` and `hjson_decode`: decoders against arbitrary bytes and chunkings.
//!
//! What every decoder must do, whatever the bytes and however they arrive:
//! - never panic, and never yield a frame (hjson: body) longer than `max` (with `keep`:
//!   than the header and `max`);
//! - never grow the buffer by more than `max` plus a constant in one `decode` call
//!   (a declared length is checked before anything is reserved for it);
//! - decode the same frames and end the same way whether the bytes come in one read or
//!   in the fuzzer's chunks;
//! - consume at least one byte per frame, and at a clean end have consumed every byte:
//!   EOF inside a frame is an error ([`WireError::Truncated`]), never a short frame;
//! - cut anywhere inside a complete frame, the stream decodes to the frames before the
//!   cut and then `Truncated`; cut at a frame boundary, to those frames and a clean end;
//! - re-encoding what was decoded gives the input back (offset padding aside; with
//!   `keep`, byte for byte).

use arbitrary::Arbitrary;
use bytes::{Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use super::{chunk_sizes, Rest};
use crate::wire::{FrameCodec, Framing, HjsonCodec, HjsonFrame, WireError, MAX_HEADER};

/// Largest `max` a fuzzed framing gets, so a correct decoder never allocates much.
pub const FUZZ_MAX: usize = 64 * 1024;
/// What one `decode` call may reserve beyond `max`: the largest header (hjson's JSON),
/// its length prefix, the largest offset and length field, and slack.
const RESERVE_SLACK: usize = MAX_HEADER + 4 + 64 + 8 + 64;

/// The framing kinds [`SpecInput::kind`] indexes (new kinds go at the end, so that
/// committed inputs keep their meaning). `raw` is left out: it has no boundaries to
/// check, and a text spec naming it gets only [`check_raw`].
pub const KINDS: [&str; 13] = [
    "u32be",
    "u8",
    "u16be",
    "u16le",
    "u32le",
    "u64be",
    "u64le",
    "i32le",
    "i32be",
    "line",
    "hjson",
    "varint",
    "netstring",
];

/// A framing spec built from a few fields, or (flag `0x80`) taken as text from the first
/// line of the input's tail, so the spec parser is fuzzed too.
#[derive(Arbitrary, Debug, Clone, Default)]
pub struct SpecInput {
    /// Index into [`KINDS`] (`u32be`, `u8`, ..., `line`, `hjson`, `varint`, `netstring`).
    pub kind: u8,
    /// Bit 0: add `offset=`, bit 1: `adjust=`, bit 2: `max=`, bit 3: `keep`, bit 7: text spec.
    pub flags: u8,
    /// `offset=` value, modulo 72 (above 64 is refused by the parser).
    pub offset: u8,
    pub adjust: i16,
    pub max: u16,
}

impl SpecInput {
    /// The spec string and the stream bytes that follow it.
    pub fn split<'a>(&self, tail: &'a [u8]) -> (String, &'a [u8]) {
        if self.flags & 0x80 != 0 {
            let end = tail.iter().position(|&b| b == b'\n').unwrap_or(tail.len());
            let spec = String::from_utf8_lossy(&tail[..end]).into_owned();
            return (spec, tail.get(end + 1..).unwrap_or_default());
        }
        let mut spec = KINDS[usize::from(self.kind) % KINDS.len()].to_string();
        if self.flags & 1 != 0 {
            spec += &format!(",offset={}", self.offset % 72);
        }
        if self.flags & 2 != 0 {
            spec += &format!(",adjust={}", self.adjust);
        }
        if self.flags & 4 != 0 {
            spec += &format!(",max={}", self.max);
        }
        if self.flags & 8 != 0 {
            spec += ",keep";
        }
        (spec, tail)
    }

    /// The fixed-size header bytes of this value (for hand-written seeds).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = vec![self.kind, self.flags, self.offset];
        b.extend_from_slice(&self.adjust.to_le_bytes());
        b.extend_from_slice(&self.max.to_le_bytes());
        b
    }
}

#[derive(Arbitrary, Debug, Clone)]
pub struct FrameDecodeInput {
    pub spec: SpecInput,
    /// Read sizes, repeated over the stream (0 = a `decode` call with nothing new).
    pub chunks: [u8; 8],
    /// Where the truncated copy of the stream is cut (modulo its length + 1).
    pub cut: u16,
    pub data: Rest,
}

#[derive(Arbitrary, Debug, Clone)]
pub struct HjsonDecodeInput {
    /// The codec's `max` (largest body).
    pub max: u16,
    /// Bit 0: the tail is a list of frames to build (see [`hjson_frames`]), not raw bytes.
    pub mode: u8,
    pub chunks: [u8; 8],
    pub cut: u16,
    pub data: Rest,
}

/// Any framing spec, bytes and chunking through [`Framing::codec`].
pub fn frame_decode(input: FrameDecodeInput) {
    frame_decode_impl(input, None::<fn(Framing) -> FrameCodec>);
}

/// [`frame_decode`]'s checks on another decoder of the same framings (`make` builds
/// one per stream): how `fuzz/` proves the target finds a planted bug in a copy.
pub fn frame_decode_with<D, F>(input: FrameDecodeInput, make: F)
where
    D: Decoder<Item = Bytes, Error = WireError>,
    F: Fn(Framing) -> D,
{
    frame_decode_impl(input, Some(make));
}

fn frame_decode_impl<D, F>(input: FrameDecodeInput, other: Option<F>)
where
    D: Decoder<Item = Bytes, Error = WireError>,
    F: Fn(Framing) -> D,
{
    let (spec, data) = input.spec.split(&input.data.0);
    let Ok(framing) = spec.parse::<Framing>() else {
        return;
    };
    let canonical = framing.to_string();
    assert_eq!(
        canonical.parse::<Framing>().ok(),
        Some(framing),
        "spec {spec:?} prints as {canonical:?}, which parses to something else"
    );
    let framing = framing.with_max(FUZZ_MAX);
    // With `keep` a frame is its header and up to `max` more bytes.
    let max = framing.max() + framing.kept_header_len();
    if framing.is_raw() {
        check_raw(framing, data, &input.chunks);
        return;
    }

    if let Some(other) = other {
        let make = || other(framing);
        check_decoder(make, data, &input.chunks, input.cut, max, Bytes::len);
        return;
    }
    let whole = check_decoder(
        || framing.codec(),
        data,
        &input.chunks,
        input.cut,
        max,
        Bytes::len,
    );
    if whole.end.is_ok() && !matches!(framing, Framing::Hjson { .. }) {
        check_reencodes(framing, data, &whole.frames);
    }
}

/// `raw`: whatever the chunking, the messages are the bytes in order, none over `max`,
/// and the stream always ends cleanly.
fn check_raw(framing: Framing, data: &[u8], chunks: &[u8]) {
    let max = framing.max();
    if max == 0 {
        return;
    }
    let split = decode_chunked(
        framing.codec(),
        data,
        &chunk_sizes(chunks, data.len()),
        max,
        Bytes::len,
    );
    assert_eq!(split.end, Ok(()), "raw never fails");
    assert_eq!(split.frames.concat(), data, "raw lost or reordered bytes");
}

/// [`HjsonCodec`] itself, whose frames carry the header too.
pub fn hjson_decode(input: HjsonDecodeInput) {
    hjson_decode_impl(input, None::<fn(usize) -> HjsonCodec>);
}

/// [`hjson_decode`]'s checks on another hjson decoder (`make(max)` builds one per
/// stream), as [`frame_decode_with`].
pub fn hjson_decode_with<D, F>(input: HjsonDecodeInput, make: F)
where
    D: Decoder<Item = HjsonFrame, Error = WireError>,
    F: Fn(usize) -> D,
{
    hjson_decode_impl(input, Some(make));
}

fn hjson_decode_impl<D, F>(input: HjsonDecodeInput, other: Option<F>)
where
    D: Decoder<Item = HjsonFrame, Error = WireError>,
    F: Fn(usize) -> D,
{
    let max = usize::from(input.max);
    let built;
    let data = if input.mode & 1 != 0 {
        built = hjson_frames(&input.data.0);
        &built
    } else {
        &input.data.0
    };
    let body_len = |f: &HjsonFrame| f.body.len();

    if let Some(other) = other {
        let make = || other(max);
        check_decoder(make, data, &input.chunks, input.cut, max, body_len);
        return;
    }
    let whole = check_decoder(
        || HjsonCodec::new(max),
        data,
        &input.chunks,
        input.cut,
        max,
        body_len,
    );
    for frame in &whole.frames {
        assert_eq!(
            frame.header.get("size").and_then(|v| v.as_u64()),
            Some(frame.body.len() as u64),
            "header size differs from the body length: {:?}",
            frame.header
        );
        // Re-encoded (with a compact header), the frame decodes to the same body and keys.
        let mut encoded = BytesMut::new();
        match HjsonCodec::new(max).encode(frame, &mut encoded) {
            Ok(()) => {}
            // Re-serialising may lengthen a header that was just under the limit (1e2 -> 100.0).
            Err(WireError::HeaderTooLarge { .. }) => continue,
            Err(e) => panic!("a decoded frame does not encode: {e}"),
        }
        let again = HjsonCodec::new(max)
            .decode_eof(&mut encoded)
            .expect("a re-encoded frame decodes")
            .expect("a re-encoded frame is whole");
        assert_eq!(again.body, frame.body);
        assert!(again.header.keys().eq(frame.header.keys()));
        assert!(encoded.is_empty(), "re-encoded frame left bytes behind");
    }
}

/// Structure-aware hjson: the tail is 0xFF-separated pieces, each a little-endian u32
/// `size` (4 bytes) then the body actually sent; each becomes `{"size":N}` plus that body,
/// so declared and real lengths disagree as often as they agree.
pub fn hjson_frames(tail: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for piece in tail.split(|&b| b == 0xff) {
        let mut size = [0u8; 4];
        let n = piece.len().min(4);
        size[..n].copy_from_slice(&piece[..n]);
        let header = format!(r#"{{"size":{}}}"#, u32::from_le_bytes(size));
        out.extend_from_slice(&(header.len() as u32).to_be_bytes());
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(&piece[n..]);
    }
    out
}

/// How one decoding went: the frames, the stream offset at which each ended, and how the
/// stream ended (`Err((kind, message))` on the first error).
#[derive(Debug)]
pub(crate) struct Decoded<T> {
    pub frames: Vec<T>,
    pub ends: Vec<usize>,
    pub end: Result<(), (&'static str, String)>,
}

/// Feeds `data` to `codec` in reads of `sizes`, calling `decode` until it wants more
/// after each read, then `decode_eof` until it is done, the way `FramedRead` does.
/// Checks the per-call invariants (frame size, buffer growth) on the way.
pub(crate) fn decode_chunked<D>(
    mut codec: D,
    data: &[u8],
    sizes: &[usize],
    max: usize,
    len_of: impl Fn(&D::Item) -> usize,
) -> Decoded<D::Item>
where
    D: Decoder<Error = WireError>,
{
    let mut out = Decoded {
        frames: Vec::new(),
        ends: Vec::new(),
        end: Ok(()),
    };
    let mut buf = BytesMut::new();
    let mut fed = 0;
    let last = sizes.len();
    // One extra round for EOF.
    for round in 0..=last {
        let eof = round == last;
        if !eof {
            buf.extend_from_slice(&data[fed..fed + sizes[round]]);
            fed += sizes[round];
        }
        loop {
            let (cap, len) = (buf.capacity(), buf.len());
            let result = if eof {
                codec.decode_eof(&mut buf)
            } else {
                codec.decode(&mut buf)
            };
            let grown = buf.capacity();
            assert!(
                grown <= cap || grown <= 2 * (len + max + RESERVE_SLACK),
                "one decode call grew the buffer from {cap} to {grown} bytes \
                 (holding {len}, max {max})"
            );
            match result {
                Ok(Some(frame)) => {
                    let n = len_of(&frame);
                    assert!(n <= max, "decoded a {n}-byte frame, max is {max}");
                    let end = fed - buf.len();
                    assert!(
                        out.ends.last().is_none_or(|&prev| end > prev) && end > 0,
                        "a frame consumed no bytes (ends at {end}, previous {:?})",
                        out.ends.last()
                    );
                    out.frames.push(frame);
                    out.ends.push(end);
                }
                Ok(None) => break,
                Err(e) => {
                    out.end = Err((e.kind(), e.to_string()));
                    return out;
                }
            }
        }
    }
    assert!(
        buf.is_empty(),
        "clean end with {} undecoded bytes in the buffer",
        buf.len()
    );
    out
}

/// The whole-stream, chunked and truncated decodings of `data`, compared.
fn check_decoder<D, F>(
    make: F,
    data: &[u8],
    chunks: &[u8],
    cut: u16,
    max: usize,
    len_of: impl Fn(&D::Item) -> usize + Copy,
) -> Decoded<D::Item>
where
    D: Decoder<Error = WireError>,
    D::Item: PartialEq + std::fmt::Debug,
    F: Fn() -> D,
{
    let whole = decode_chunked(make(), data, &[data.len()], max, len_of);
    let split = decode_chunked(make(), data, &chunk_sizes(chunks, data.len()), max, len_of);
    assert_eq!(whole.frames, split.frames, "frames depend on the chunking");
    assert_eq!(whole.end, split.end, "the end depends on the chunking");
    if whole.end.is_ok() {
        assert_eq!(
            whole.ends.last().copied().unwrap_or(0),
            data.len(),
            "clean end before the last byte was part of a frame: EOF inside a frame"
        );
    }

    // A cut inside the part that decoded: the frames before it, then Truncated.
    let cut = usize::from(cut) % (data.len() + 1);
    let decoded_len = whole.ends.last().copied().unwrap_or(0);
    if cut <= decoded_len {
        let before = whole.ends.iter().take_while(|&&e| e <= cut).count();
        let prefix = decode_chunked(make(), &data[..cut], &[cut], max, len_of);
        assert_eq!(
            prefix.frames[..],
            whole.frames[..before],
            "cut at {cut}: frames differ"
        );
        let at_boundary = cut == 0 || whole.ends.contains(&cut);
        match (&prefix.end, at_boundary) {
            (Ok(()), true) => {}
            (Err(("truncated", _)), false) => {}
            (end, _) => panic!("cut at {cut} (boundary: {at_boundary}): stream ended {end:?}"),
        }
    }
    whole
}

/// Re-encodes `frames` and compares with `data`, except offset padding (opaque bytes).
fn check_reencodes(framing: Framing, data: &[u8], frames: &[Bytes]) {
    let (encoded, layouts) = framing
        .encode_all(frames)
        .unwrap_or_else(|e| panic!("decoded frames do not encode with {framing}: {e}"));
    assert_eq!(encoded.len(), data.len(), "re-encoded length differs");
    let mut expected = data.to_vec();
    for l in &layouts {
        expected[l.start..l.length_field.start]
            .copy_from_slice(&encoded[l.start..l.length_field.start]);
    }
    assert_eq!(
        &encoded[..],
        &expected[..],
        "re-encoding differs from the input"
    );
}

fn frame_seed(spec: SpecInput, chunks: [u8; 8], cut: u16, data: &[u8]) -> Vec<u8> {
    let mut b = spec.to_bytes();
    b.extend_from_slice(&chunks);
    b.extend_from_slice(&cut.to_le_bytes());
    b.extend_from_slice(data);
    b
}

fn kind(name: &str) -> u8 {
    KINDS.iter().position(|k| *k == name).expect("known kind") as u8
}

pub(crate) fn seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let spec = |k: &str| SpecInput {
        kind: kind(k),
        ..SpecInput::default()
    };
    let text_spec = SpecInput {
        flags: 0x80,
        ..SpecInput::default()
    };
    let hjson = |header: &str, body: &[u8]| {
        let mut b = (header.len() as u32).to_be_bytes().to_vec();
        b.extend_from_slice(header.as_bytes());
        b.extend_from_slice(body);
        b
    };
    let ones = [1; 8];
    let mixed = [1, 3, 0, 7, 2, 64, 5, 255];
    let mut two_hjson = hjson(r#"{"size":5}"#, b"hello");
    two_hjson.extend(hjson(r#"{"op":"get","name":"a","size":0}"#, b""));
    let hjson_input = |max: u16, chunks: [u8; 8], cut: u16, data: &[u8]| {
        let mut b = max.to_le_bytes().to_vec();
        b.push(0);
        b.extend_from_slice(&chunks);
        b.extend_from_slice(&cut.to_le_bytes());
        b.extend_from_slice(data);
        b
    };
    vec![
        (
            "frame_decode",
            "u32be-two-frames",
            frame_seed(spec("u32be"), mixed, 6, b"\0\0\0\x05hello\0\0\0\0"),
        ),
        (
            "frame_decode",
            "u8-bytewise",
            frame_seed(spec("u8"), ones, 2, b"\x03abc\x01z"),
        ),
        (
            "frame_decode",
            "u16le-over-max",
            frame_seed(
                SpecInput {
                    kind: kind("u16le"),
                    flags: 4,
                    max: 4,
                    ..SpecInput::default()
                },
                mixed,
                3,
                b"\x05\0hello",
            ),
        ),
        (
            "frame_decode",
            "i32le-negative",
            frame_seed(spec("i32le"), ones, 0, b"\xff\xff\xff\xff"),
        ),
        (
            "frame_decode",
            "u64be-offset-adjust",
            frame_seed(
                SpecInput {
                    kind: kind("u64be"),
                    flags: 3,
                    offset: 2,
                    adjust: -8,
                    ..SpecInput::default()
                },
                mixed,
                5,
                b"\xab\xcd\0\0\0\0\0\0\0\x0bxyz",
            ),
        ),
        (
            // memcached's binary protocol: a `get` of key `k` and a `noop`, whole frames.
            "frame_decode",
            "u32be-memcached-keep",
            frame_seed(
                SpecInput {
                    kind: kind("u32be"),
                    flags: 1 | 2 | 8,
                    offset: 8,
                    adjust: 12,
                    ..SpecInput::default()
                },
                mixed,
                30,
                b"\x80\x00\x00\x01\0\0\0\0\0\0\0\x01\0\0\0\x07\0\0\0\0\0\0\0\0k\
                  \x80\x0a\0\0\0\0\0\0\0\0\0\0\0\0\0\x08\0\0\0\0\0\0\0\0",
            ),
        ),
        (
            "frame_decode",
            "line-frames",
            frame_seed(spec("line"), mixed, 4, b"one\n\ntwo\r\nthree"),
        ),
        (
            "frame_decode",
            "hjson-frames",
            frame_seed(spec("hjson"), mixed, 9, &two_hjson),
        ),
        (
            "frame_decode",
            "text-spec",
            frame_seed(
                text_spec.clone(),
                ones,
                7,
                b"u16be,offset=1,adjust=2,max=1KiB\n\x00\x00\x01abc",
            ),
        ),
        (
            "frame_decode",
            "varint-two-byte-prefix",
            frame_seed(spec("varint"), mixed, 2, &{
                let mut b = vec![0x80, 0x01];
                b.extend_from_slice(&[b'v'; 128]);
                b.extend_from_slice(b"\x03abc\x00");
                b
            }),
        ),
        (
            "frame_decode",
            "varint-over-max-and-overlong",
            frame_seed(
                SpecInput {
                    kind: kind("varint"),
                    flags: 4,
                    max: 200,
                    ..SpecInput::default()
                },
                ones,
                1,
                b"\x02hi\x85\x00",
            ),
        ),
        (
            "frame_decode",
            "netstring-frames",
            frame_seed(spec("netstring"), mixed, 5, b"5:hello,0:,12:hello world!,"),
        ),
        (
            "frame_decode",
            "netstring-missing-comma",
            frame_seed(spec("netstring"), ones, 3, b"3:abc;05:x,"),
        ),
        (
            "frame_decode",
            "raw-text-spec",
            frame_seed(text_spec, mixed, 0, b"raw,max=3\nls -l /tmp"),
        ),
        (
            "hjson_decode",
            "two-frames",
            hjson_input(64, mixed, 11, &two_hjson),
        ),
        ("hjson_decode", "structured", {
            // max 8, structured: sizes 3 (body "abc"), 0, then 2 with 1 byte (truncated).
            let mut b = vec![8, 0, 1];
            b.extend_from_slice(&mixed);
            b.extend_from_slice(&5u16.to_le_bytes());
            b.extend_from_slice(b"\x03\0\0\0abc\xff\xff\x02\0\0\0z");
            b
        }),
        (
            "hjson_decode",
            "size-over-max",
            hjson_input(4, ones, 3, &hjson(r#"{"size":99999999999}"#, b"")),
        ),
        (
            "hjson_decode",
            "bad-headers",
            hjson_input(
                64,
                ones,
                0,
                &[
                    hjson(r#"{"size":-1}"#, b""),
                    hjson(r#"[1,2]"#, b""),
                    hjson(r#"{"size":1.5}"#, b""),
                ]
                .concat(),
            ),
        ),
    ]
}
