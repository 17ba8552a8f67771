//! Skipping an hjson header too long to keep (issue 13, finding 9): a server that
//! answers such a request with an error, instead of closing the connection, must find
//! where the next frame starts, so it needs the header's `size` — without holding the
//! header. [`SizeScan`] reads the header a chunk at a time as it streams past and
//! keeps only a few integers: how deep it is in the JSON, whether it is inside a
//! string, and the last top-level `size` it saw.
//!
//! ```text
//! u32be hlen > MAX_HEADER | {"argv": ["echo", "...1 MiB..."], "size": 3} | 3 B body
//!                         | discarded as it arrives, scanned for `size` | discarded
//! ```
//!
//! The scan is not a validator: the header is thrown away, only `size` matters. It
//! follows serde_json where that changes the answer: the last `size` wins (serde_json's
//! map), and `size` must be a plain non-negative integer (`5`, not `5.0`, `-1`, `1e3`,
//! `"5"` or a leading zero). Anything it cannot be sure of — no object, an escape in a
//! top-level key (`"\u0073ize"` is `size`), an unterminated object — gives no size, and
//! the stream cannot be resynchronised: the caller closes it, as for any corrupt frame.

/// Where the scan stands at depth 1 (directly inside the top-level object).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Slot {
    /// After `{` or `,`: a key string comes next.
    #[default]
    Key,
    /// After a key: its `:` comes next.
    Colon,
    /// After the `:`: the value.
    Value,
    /// After a value: `,` or `}`.
    Comma,
}

/// A string being read: whether the previous byte was a backslash, and for a
/// top-level key how much of it matched `size`.
#[derive(Debug, Clone, Copy)]
struct Str {
    escaped: bool,
    key: Option<KeyMatch>,
}

#[derive(Debug, Clone, Copy, Default)]
struct KeyMatch {
    len: usize,
    differs: bool,
}

const SIZE_KEY: &[u8] = b"size";

impl KeyMatch {
    fn push(&mut self, b: u8) {
        if SIZE_KEY.get(self.len) != Some(&b) {
            self.differs = true;
        }
        self.len += 1;
    }

    fn is_size(&self) -> bool {
        !self.differs && self.len == SIZE_KEY.len()
    }
}

/// The digits of a top-level `size` value being read.
#[derive(Debug, Clone, Copy, Default)]
struct Number {
    digits: usize,
    value: Option<u64>,
    leading_zero: bool,
}

impl Number {
    fn push(&mut self, digit: u8) {
        if self.digits == 0 {
            self.value = Some(0);
            self.leading_zero = digit == b'0';
        }
        self.digits += 1;
        self.value = self
            .value
            .and_then(|v| v.checked_mul(10))
            .and_then(|v| v.checked_add(u64::from(digit - b'0')));
    }

    /// The value, if the number ended here (at `end`, the byte after it) and is one
    /// serde_json reads as a `u64`.
    fn finish(&self, end: u8) -> Option<u64> {
        let plain = self.digits > 0
            && !(self.leading_zero && self.digits > 1)
            && !matches!(end, b'.' | b'e' | b'E');
        self.value.filter(|_| plain)
    }
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// The top-level `size` of a JSON object fed a chunk at a time, in constant memory.
#[derive(Debug, Default)]
pub(super) struct SizeScan {
    /// Open `{`/`[` around the current byte; 0 before the object and after it.
    depth: u64,
    /// The top-level object has been opened.
    opened: bool,
    slot: Slot,
    string: Option<Str>,
    /// The key just read (depth 1) was `size`.
    key_is_size: bool,
    /// Reading the value of a top-level `size`.
    number: Option<Number>,
    /// The last top-level `size`: `Some(None)` if it was not a plain integer.
    size: Option<Option<u64>>,
    /// Something the scan cannot be sure of was seen: no size will be given.
    unsure: bool,
}

impl SizeScan {
    pub(super) fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.unsure {
                return;
            }
            self.byte(b);
        }
    }

    /// The header's `size`, once all of it has been fed; `None` if it has none the
    /// scan is sure of.
    pub(super) fn size(&self) -> Option<u64> {
        let complete = self.opened && self.depth == 0 && self.string.is_none();
        if self.unsure || !complete {
            return None;
        }
        self.size.flatten()
    }

    fn byte(&mut self, b: u8) {
        if let Some(s) = &mut self.string {
            if s.escaped {
                s.escaped = false;
            } else if b == b'\\' {
                s.escaped = true;
                // An escape in a top-level key may spell `size`; do not guess.
                if s.key.is_some() {
                    self.unsure = true;
                }
            } else if b == b'"' {
                let key = s.key;
                self.string = None;
                self.string_ended(key);
            } else if let Some(key) = &mut s.key {
                key.push(b);
            }
            return;
        }
        if let Some(number) = &mut self.number {
            if b.is_ascii_digit() {
                number.push(b);
                return;
            }
            if number.digits == 0 && is_space(b) {
                return;
            }
            self.size = Some(number.finish(b));
            self.number = None;
            // The byte that ended the number is structure (`,`, `}`) or the rest of a
            // value that is not a plain integer: read it as such below.
        }
        if !self.opened {
            match b {
                b'{' => {
                    self.opened = true;
                    self.depth = 1;
                    self.slot = Slot::Key;
                }
                _ if is_space(b) => {}
                _ => self.unsure = true,
            }
            return;
        }
        if self.depth == 0 {
            // After the object only whitespace may follow.
            if !is_space(b) {
                self.unsure = true;
            }
            return;
        }
        self.structure(b);
    }

    fn string_ended(&mut self, key: Option<KeyMatch>) {
        if self.depth != 1 {
            return;
        }
        match key {
            Some(key) => {
                self.key_is_size = key.is_size();
                self.slot = Slot::Colon;
            }
            None => self.slot = Slot::Comma,
        }
    }

    fn structure(&mut self, b: u8) {
        let top = self.depth == 1;
        match b {
            b'"' => {
                let is_key = top && self.slot == Slot::Key;
                self.string = Some(Str {
                    escaped: false,
                    key: is_key.then(KeyMatch::default),
                });
            }
            b'{' | b'[' => self.depth += 1,
            b'}' | b']' => {
                self.depth -= 1;
                if self.depth == 1 {
                    // A nested value just closed.
                    self.slot = Slot::Comma;
                }
            }
            b':' if top && self.slot == Slot::Colon => {
                self.slot = Slot::Value;
                if self.key_is_size {
                    self.number = Some(Number::default());
                }
            }
            b',' if top => self.slot = Slot::Key,
            _ if top && self.slot == Slot::Value && !is_space(b) => {
                // A literal or number value (not `size`'s): it ends at `,` or `}`.
                self.slot = Slot::Comma;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_in_chunks(header: &[u8], chunk: usize) -> Option<u64> {
        let mut scan = SizeScan::default();
        for piece in header.chunks(chunk.max(1)) {
            scan.feed(piece);
        }
        scan.size()
    }

    /// What serde_json makes of the same header, as the codec reads `size`.
    fn serde_size(header: &[u8]) -> Option<u64> {
        let value: serde_json::Value = serde_json::from_slice(header).ok()?;
        value.as_object()?.get("size")?.as_u64()
    }

    #[test]
    fn size_is_found_wherever_it_is_and_however_the_header_is_cut() {
        for header in [
            &br#"{"size": 3}"#[..],
            br#"{"argv":["echo","a,b}]\"size\": 9"],"size":12}"#,
            br#" { "nested": {"size": 7, "x": [1, {"size": 8}]}, "size" : 0 } "#,
            br#"{"size":1,"size":42}"#,
            br#"{"a":true,"b":null,"c":-1.5e3,"size":18446744073709551615}"#,
            br#"{"sizes":4,"siz":5,"size":6}"#,
        ] {
            let want = serde_size(header);
            assert!(want.is_some(), "{}", String::from_utf8_lossy(header));
            for chunk in [1, 2, 3, 7, header.len()] {
                assert_eq!(
                    scan_in_chunks(header, chunk),
                    want,
                    "{} in chunks of {chunk}",
                    String::from_utf8_lossy(header)
                );
            }
        }
    }

    #[test]
    fn a_size_serde_json_would_not_read_as_an_integer_gives_none() {
        for header in [
            &br#"{"size": 5.0}"#[..],
            br#"{"size": -1}"#,
            br#"{"size": 1e3}"#,
            br#"{"size": "5"}"#,
            br#"{"size": 18446744073709551616}"#,
            br#"{"size": [5]}"#,
            br#"{"size": 5, "size": null}"#,
            br#"{"argv": ["echo"]}"#,
        ] {
            assert_eq!(serde_size(header), None);
            assert_eq!(
                scan_in_chunks(header, 1),
                None,
                "{}",
                String::from_utf8_lossy(header)
            );
        }
    }

    #[test]
    fn what_the_scan_cannot_be_sure_of_gives_none() {
        for header in [
            // An escaped key that spells `size`.
            &br#"{"\u0073ize": 5}"#[..],
            // Not an object, or not a whole one.
            br#"[{"size": 5}]"#,
            br#"{"size": 5"#,
            br#"{"size": 5, "argv": "unterminated}"#,
            br#"{"size": 5} {"size": 6}"#,
            br#"x{"size": 5}"#,
            b"",
        ] {
            assert_eq!(
                scan_in_chunks(header, 1),
                None,
                "{}",
                String::from_utf8_lossy(header)
            );
        }
    }

    #[test]
    fn a_leading_zero_is_refused_like_serde_json_does() {
        assert_eq!(scan_in_chunks(br#"{"size": 0}"#, 1), Some(0));
        assert_eq!(scan_in_chunks(br#"{"size": 01}"#, 1), None);
    }

    mod codec {
        use bytes::BytesMut;
        use serde_json::json;
        use tokio_util::codec::{Decoder, Encoder};

        use crate::wire::{
            HjsonCodec, HjsonFrame, HjsonItem, SkippingHjsonCodec, WireError, MAX_HEADER,
        };

        const MAX: usize = 8 << 20;
        /// The read buffer may stay this small however long the skipped header is.
        const CHUNK: usize = 4096;

        fn raw(header: &[u8], body: &[u8]) -> Vec<u8> {
            let mut v = (header.len() as u32).to_be_bytes().to_vec();
            v.extend_from_slice(header);
            v.extend_from_slice(body);
            v
        }

        fn oversize_header(size: usize) -> Vec<u8> {
            let arg = "x".repeat(4000);
            let argv = vec![arg; 256];
            serde_json::to_vec(&json!({"argv": argv, "size": size})).unwrap()
        }

        /// Feeds `stream` a chunk at a time, as a socket would; the items decoded and
        /// the largest buffer capacity seen.
        fn decode_chunked(
            codec: &mut SkippingHjsonCodec,
            stream: &[u8],
        ) -> (Vec<Result<HjsonItem, String>>, usize) {
            let mut src = BytesMut::with_capacity(CHUNK);
            let mut items = Vec::new();
            let mut peak = 0;
            for piece in stream.chunks(CHUNK) {
                src.extend_from_slice(piece);
                peak = peak.max(src.capacity());
                loop {
                    match codec.decode(&mut src) {
                        Ok(Some(item)) => items.push(Ok(item)),
                        Ok(None) => break,
                        Err(e) => {
                            items.push(Err(e.to_string()));
                            return (items, peak);
                        }
                    }
                }
            }
            match codec.decode_eof(&mut src) {
                Ok(Some(item)) => items.push(Ok(item)),
                Ok(None) => {}
                Err(e) => items.push(Err(e.to_string())),
            }
            (items, peak)
        }

        fn frame(header: serde_json::Value, body: &[u8]) -> Vec<u8> {
            let mut dst = BytesMut::new();
            HjsonCodec::new(MAX)
                .encode(HjsonFrame::new(header, body.to_vec()), &mut dst)
                .unwrap();
            dst.to_vec()
        }

        #[test]
        fn an_oversize_header_and_its_body_are_stepped_over_without_holding_them() {
            let header = oversize_header(3);
            assert!(header.len() > 15 * MAX_HEADER);
            let mut stream = raw(&header, b"abc");
            stream.extend(frame(json!({"argv": ["echo", "next"]}), b"in"));
            let mut codec = SkippingHjsonCodec::new(MAX);
            let (items, peak) = decode_chunked(&mut codec, &stream);
            assert_eq!(items.len(), 2, "{items:?}");
            assert_eq!(
                items[0],
                Ok(HjsonItem::Oversize {
                    header_len: header.len(),
                    body_len: 3
                })
            );
            let Ok(HjsonItem::Frame(next)) = &items[1] else {
                panic!("{:?}", items[1]);
            };
            assert_eq!(next.header["argv"], json!(["echo", "next"]));
            assert_eq!(&next.body[..], b"in");
            assert!(peak <= 4 * CHUNK, "read buffer grew to {peak} bytes");
        }

        #[test]
        fn frames_within_the_limits_decode_as_with_the_plain_codec() {
            let tail = br#""size":2}"#;
            let mut padded = b"{".to_vec();
            padded.resize(MAX_HEADER - tail.len(), b' ');
            padded.extend_from_slice(tail);
            assert_eq!(padded.len(), MAX_HEADER);
            let stream = raw(&padded, b"ok");
            let (items, _) = decode_chunked(&mut SkippingHjsonCodec::new(MAX), &stream);
            let Ok(HjsonItem::Frame(f)) = &items[0] else {
                panic!("{items:?}");
            };
            assert_eq!(&f.body[..], b"ok");
        }

        #[test]
        fn what_cannot_be_stepped_over_still_ends_the_stream_with_a_typed_error() {
            type IsExpected = fn(&WireError) -> bool;
            let cases: Vec<(&str, Vec<u8>, IsExpected)> = vec![
                (
                    "header longer than the body limit",
                    ((MAX + 1) as u32).to_be_bytes().to_vec(),
                    |e| matches!(e, WireError::HeaderTooLarge { .. }),
                ),
                (
                    "no size to find the next frame by",
                    raw(
                        &serde_json::to_vec(&json!({"pad": "p".repeat(1 << 17)})).unwrap(),
                        b"",
                    ),
                    |e| matches!(e, WireError::HeaderTooLarge { .. }),
                ),
                (
                    "size beyond the body limit",
                    raw(&oversize_header(MAX + 1), b""),
                    |e| matches!(e, WireError::FrameTooLarge { .. }),
                ),
            ];
            for (what, stream, expected) in cases {
                let mut codec = SkippingHjsonCodec::new(MAX);
                let mut src = BytesMut::from(&stream[..]);
                let err = match codec.decode(&mut src) {
                    Err(e) => e,
                    Ok(None) => panic!("{what}: no error"),
                    Ok(Some(item)) => panic!("{what}: {item:?}"),
                };
                assert!(expected(&err), "{what}: {err}");
            }
        }

        #[test]
        fn eof_while_skipping_is_truncated_not_a_clean_end() {
            let header = oversize_header(10);
            for cut in [4 + 100, 4 + header.len(), 4 + header.len() + 5] {
                let stream = raw(&header, &[0; 10]);
                let (items, _) = decode_chunked(&mut SkippingHjsonCodec::new(MAX), &stream[..cut]);
                assert_eq!(items.len(), 1, "{items:?}");
                let err = items[0].as_ref().unwrap_err();
                assert!(
                    err.contains("stream ended inside a frame"),
                    "cut at {cut}: {err}"
                );
            }
        }
    }
}
