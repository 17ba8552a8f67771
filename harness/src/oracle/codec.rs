//! [`Codec`]: any tokio-util `Decoder + Encoder` pair as a campaign's framing, for a
//! protocol no framing spec describes. `Check::codec(Codec::new(MyCodec::new))`.
//!
//! Each connection's messages are encoded by a fresh codec from the factory and its
//! replies decoded by another, so a codec may keep state per stream. Faults cut by
//! frame layout; a custom frame is opaque by default (`split`, `coalesce` and
//! `disconnect` cut anywhere, `boundary` only at frame ends and inside bodies), and
//! [`Codec::header_len`] or [`Codec::layout`] say where each frame's header and body
//! are, so `boundary` also cuts inside the header and right after it:
//!
//! ```text
//!  one encoded frame:  [ header ........ | body .................. | trailer ]
//!  layout(frame) ->                       ^ body.start              ^ body.end
//! ```
//!
//! The codec replaces the oracle's request encoding and reply decoding; what a right
//! reply is stays the oracle's ([`Codec::with_oracle`] does the wrapping). A text codec
//! ([`Codec::text`]) gets printable-ASCII messages, so an `Encoder<String>` never sees
//! bytes it cannot take. Encode and decode errors become [`WireError::Codec`] with the
//! codec's own message; a reply that does not decode is a malformed reply.

use std::fmt::{self, Display};
use std::ops::Range;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use chopstick_targets::wire::{FrameLayout, Framing, WireError};
use serde_json::Value;
use tokio_util::codec::{Decoder, Encoder};

use super::{Baseline, Encoded, Handshake, Oracle, Probe, ReadBack};
use crate::campaign::drive::{BoxDecoder, Fin, ReplyCodec};
use crate::campaign::judge::{Failure, Seen};

/// Printable ASCII: what a text codec's messages are drawn from (no newline, no
/// control byte a line or text protocol would treat specially).
const PRINTABLE: Range<u8> = 0x20..0x7f;

/// Encodes messages into one stream, and the span of each frame in it.
type EncodeFn = dyn Fn(&[Bytes]) -> Result<(Bytes, Vec<Range<usize>>), WireError> + Send + Sync;
/// The body's range inside one encoded frame.
type LayoutFn = dyn Fn(&[u8]) -> Range<usize> + Send + Sync;

/// A codec factory with what a campaign needs around it. Cheap to clone.
#[derive(Clone)]
pub struct Codec {
    name: &'static str,
    encode: Arc<EncodeFn>,
    decoder: Arc<dyn Fn() -> BoxDecoder + Send + Sync>,
    layout: Option<Arc<LayoutFn>>,
    text: bool,
}

impl fmt::Debug for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Codec")
            .field("name", &self.name)
            .field("layout", &self.layout.is_some())
            .field("text", &self.text)
            .finish()
    }
}

impl Codec {
    /// A codec whose encoder takes `Bytes` (like `LengthDelimitedCodec`) and whose
    /// decoder yields anything that becomes `Bytes` (`BytesMut`, `Vec<u8>`, `String`).
    pub fn new<C, F>(make: F) -> Codec
    where
        F: Fn() -> C + Send + Sync + 'static,
        C: Encoder<Bytes> + Decoder + Send + 'static,
        <C as Decoder>::Item: Into<Bytes>,
        <C as Decoder>::Error: Display,
        <C as Encoder<Bytes>>::Error: Display,
    {
        Codec::build(make, |m: &Bytes| Ok(m.clone()), false)
    }

    /// A codec whose encoder takes `String` (like `LinesCodec`); its messages are
    /// printable ASCII.
    pub fn text<C, F>(make: F) -> Codec
    where
        F: Fn() -> C + Send + Sync + 'static,
        C: Encoder<String> + Decoder + Send + 'static,
        <C as Decoder>::Item: Into<Bytes>,
        <C as Decoder>::Error: Display,
        <C as Encoder<String>>::Error: Display,
    {
        let item = |m: &Bytes| {
            String::from_utf8(m.to_vec())
                .map_err(|_| WireError::Codec("a text codec's message is not UTF-8".into()))
        };
        Codec::build(make, item, true)
    }

    fn build<C, I: 'static, F>(
        make: F,
        item: fn(&Bytes) -> Result<I, WireError>,
        text: bool,
    ) -> Codec
    where
        F: Fn() -> C + Send + Sync + 'static,
        C: Encoder<I> + Decoder + Send + 'static,
        <C as Decoder>::Item: Into<Bytes>,
        <C as Decoder>::Error: Display,
        <C as Encoder<I>>::Error: Display,
    {
        let make = Arc::new(make);
        let encoder = make.clone();
        let encode = move |messages: &[Bytes]| {
            let mut codec = encoder();
            let mut dst = BytesMut::new();
            let mut spans = Vec::with_capacity(messages.len());
            for m in messages {
                let start = dst.len();
                codec.encode(item(m)?, &mut dst).map_err(codec_error)?;
                spans.push(start..dst.len());
            }
            Ok((dst.freeze(), spans))
        };
        Codec {
            name: std::any::type_name::<C>(),
            encode: Arc::new(encode),
            decoder: Arc::new(move || Box::new(Items(make())) as BoxDecoder),
            layout: None,
            text,
        }
    }

    /// Each encoded frame starts with a header of `bytes` bytes (a length field, a
    /// tag) and the rest is its body.
    pub fn header_len(self, bytes: usize) -> Codec {
        self.layout(move |frame| bytes.min(frame.len())..frame.len())
    }

    /// Where the body is inside one encoded frame (before it: the header; after it: a
    /// trailer, such as a line's newline). Ranges beyond the frame are clamped.
    pub fn layout(mut self, body: impl Fn(&[u8]) -> Range<usize> + Send + Sync + 'static) -> Codec {
        self.layout = Some(Arc::new(body));
        self
    }

    /// The request stream of `messages`, with each frame's layout.
    pub fn encode(&self, messages: &[Bytes]) -> Result<Encoded, WireError> {
        let (stream, spans) = (self.encode)(messages)?;
        let layouts = spans
            .into_iter()
            .map(|span| {
                let (start, end) = (span.start, span.end);
                let body = match &self.layout {
                    Some(layout) => {
                        let r = layout(&stream[span]);
                        let b_end = r.end.min(end - start);
                        (start + r.start.min(b_end))..(start + b_end)
                    }
                    None => start..end,
                };
                FrameLayout {
                    start,
                    length_field: start..body.start,
                    body,
                    end,
                }
            })
            .collect();
        Ok((stream, layouts))
    }

    /// A fresh decoder of replies.
    pub fn decoder(&self) -> BoxDecoder {
        (self.decoder)()
    }

    /// `oracle` with this codec as its framing: requests encoded and replies decoded
    /// by the codec, everything else (expected replies, judging, probes) the oracle's.
    pub fn with_oracle(&self, oracle: Arc<dyn Oracle>) -> Arc<dyn Oracle> {
        Arc::new(WithCodec {
            oracle,
            codec: self.clone(),
        })
    }
}

fn codec_error(e: impl Display) -> WireError {
    WireError::Codec(e.to_string())
}

/// A user's decoder with its items as bytes and its errors as [`WireError`].
struct Items<C>(C);

impl<C> Decoder for Items<C>
where
    C: Decoder,
    C::Item: Into<Bytes>,
    C::Error: Display,
{
    type Item = Bytes;
    type Error = WireError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, WireError> {
        self.0
            .decode(src)
            .map(|i| i.map(Into::into))
            .map_err(codec_error)
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, WireError> {
        self.0
            .decode_eof(src)
            .map(|i| i.map(Into::into))
            .map_err(codec_error)
    }
}

/// An oracle whose requests and replies go through a [`Codec`].
#[derive(Debug)]
struct WithCodec {
    oracle: Arc<dyn Oracle>,
    codec: Codec,
}

impl Oracle for WithCodec {
    fn name(&self) -> &str {
        self.oracle.name()
    }

    fn expected(&self, conn: u64, messages: &[Bytes]) -> Vec<Bytes> {
        self.oracle.expected(conn, messages)
    }

    fn config(&self) -> Option<Value> {
        self.oracle.config()
    }

    fn messages(&self, payloads: Vec<Bytes>, conn: u64) -> Vec<Bytes> {
        let payloads = if self.codec.text {
            payloads.into_iter().map(|p| printable(&p)).collect()
        } else {
            payloads
        };
        self.oracle.messages(payloads, conn)
    }

    fn encode(&self, _: &Framing, _conn: u64, messages: &[Bytes]) -> Result<Encoded, WireError> {
        self.codec.encode(messages)
    }

    fn reply_codec(&self, _: &Framing) -> ReplyCodec {
        ReplyCodec::Custom(self.codec.decoder())
    }

    fn judge(&self, expected: &[Bytes], seen: &Seen, must_finish: bool) -> Option<Failure> {
        self.oracle.judge(expected, seen, must_finish)
    }

    fn fin(&self) -> Fin {
        self.oracle.fin()
    }

    fn close_aborts(&self) -> bool {
        self.oracle.close_aborts()
    }

    fn probe(&self, session: &[Bytes]) -> Probe {
        self.oracle.probe(session)
    }

    fn baseline(&self) -> Option<&dyn Baseline> {
        self.oracle.baseline()
    }

    fn read_back(&self) -> Option<&dyn ReadBack> {
        self.oracle.read_back()
    }

    fn handshake(&self) -> Option<&dyn Handshake> {
        self.oracle.handshake()
    }
}

/// The same length, each byte mapped into [`PRINTABLE`].
fn printable(payload: &[u8]) -> Bytes {
    let span = PRINTABLE.end - PRINTABLE.start;
    payload
        .iter()
        .map(|b| PRINTABLE.start + b % span)
        .collect::<Vec<u8>>()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_util::codec::{LengthDelimitedCodec, LinesCodec};

    fn msgs(list: &[&'static [u8]]) -> Vec<Bytes> {
        list.iter().map(|m| Bytes::from_static(m)).collect()
    }

    #[test]
    fn an_opaque_frame_is_all_body_and_a_header_len_makes_a_header() {
        let codec = Codec::new(LengthDelimitedCodec::new);
        let (stream, layouts) = codec.encode(&msgs(&[b"abc", b""])).unwrap();
        assert_eq!(stream.len(), 4 + 3 + 4);
        assert_eq!((layouts[0].body.clone(), layouts[0].end), (0..7, 7));
        assert!(layouts[0].length_field.is_empty());
        let (_, layouts) = codec.header_len(4).encode(&msgs(&[b"abc", b""])).unwrap();
        assert_eq!(layouts[0].length_field, 0..4);
        assert_eq!(layouts[0].body, 4..7);
        assert_eq!(layouts[1].body, 11..11);
        assert_eq!(layouts[1].end, 11);
    }

    #[test]
    fn a_layout_beyond_the_frame_is_clamped_inside_it() {
        let codec = Codec::text(LinesCodec::new).layout(|_| 5..50);
        let (_, layouts) = codec.encode(&msgs(&[b"ab"])).unwrap();
        assert_eq!(layouts[0].body, 3..3);
        assert_eq!(layouts[0].end, 3);
    }

    #[test]
    fn replies_decode_to_bytes_and_codec_errors_keep_their_message() {
        let codec = Codec::text(|| LinesCodec::new_with_max_length(4));
        let mut d = codec.decoder();
        let mut buf = BytesMut::from(&b"hi\nlonger than four\n"[..]);
        assert_eq!(d.decode(&mut buf).unwrap(), Some(Bytes::from_static(b"hi")));
        let err = d.decode(&mut buf).unwrap_err();
        assert!(
            matches!(&err, WireError::Codec(m) if m.contains("max line length")),
            "{err}"
        );
        assert_eq!(err.kind(), "codec");
    }

    #[test]
    fn a_text_codec_gets_printable_messages_and_refuses_other_bytes() {
        let oracle = Codec::text(LinesCodec::new).with_oracle(Arc::new(super::super::echo::Echo));
        let m = oracle.messages(vec![Bytes::from_static(b"\n\0\xff a")], 0);
        assert_eq!(m[0].len(), 5);
        assert!(m[0].iter().all(|b| PRINTABLE.contains(b)), "{:?}", m[0]);
        let err = oracle
            .encode(&Framing::default(), 0, &msgs(&[b"\xff"]))
            .unwrap_err();
        assert!(matches!(err, WireError::Codec(_)));
    }
}
