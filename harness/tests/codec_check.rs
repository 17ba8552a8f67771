//! The codec checker against deliberately broken decoders (each must be caught, with a
//! shrunk proptest counterexample) and against every `chopstick_targets::wire` codec (each must
//! pass 10 000 generated cases).

use std::io;

use bytes::{Buf, Bytes, BytesMut};
use chopstick::chaos::Plan;
use chopstick::codec::strategy::{self, Case};
use chopstick::codec::{check, check_framing, Verdict};
use chopstick_targets::wire::Framing;
use proptest::test_runner::{Config, RngAlgorithm, TestError, TestRng, TestRunner};
use tokio_util::codec::{Decoder, LengthDelimitedCodec};

/// How a broken u32be decoder goes wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flaw {
    /// (a) Takes the body as whatever follows the header now: a short frame when split.
    AssumesWholeFrame,
    /// (b) Consumes a partial header and reads the length from the bytes it had.
    ConsumesPartialHeader,
    /// (c) At EOF returns the incomplete body as a frame.
    ShortFrameAtEof,
    /// (d) At EOF after a complete header (no body yet) ends cleanly.
    SilentAfterHeader,
}

/// A u32be decoder with one flaw; otherwise correct.
#[derive(Debug)]
struct Broken {
    flaw: Flaw,
    /// Body length of a frame whose header is consumed.
    pending: Option<usize>,
}

impl Broken {
    fn new(flaw: Flaw) -> Broken {
        Broken {
            flaw,
            pending: None,
        }
    }
}

impl Decoder for Broken {
    type Item = Bytes;
    type Error = io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> io::Result<Option<Bytes>> {
        if self.pending.is_none() {
            if src.is_empty() {
                return Ok(None);
            }
            if src.len() < 4 && self.flaw != Flaw::ConsumesPartialHeader {
                return Ok(None);
            }
            let n = src.len().min(4);
            let len = src[..n]
                .iter()
                .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
            src.advance(n);
            if self.flaw == Flaw::AssumesWholeFrame {
                let take = len.min(src.len());
                return Ok(Some(src.split_to(take).freeze()));
            }
            self.pending = Some(len);
        }
        let len = self.pending.unwrap_or(0);
        if src.len() < len {
            return Ok(None);
        }
        self.pending = None;
        Ok(Some(src.split_to(len).freeze()))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> io::Result<Option<Bytes>> {
        if let Some(frame) = self.decode(src)? {
            return Ok(Some(frame));
        }
        let truncated = || io::Error::new(io::ErrorKind::UnexpectedEof, "truncated frame");
        match (self.pending, self.flaw) {
            (None, _) if src.is_empty() => Ok(None),
            (None, _) => Err(truncated()),
            (Some(_), Flaw::ShortFrameAtEof) if !src.is_empty() => {
                self.pending = None;
                Ok(Some(src.split().freeze()))
            }
            (Some(_), Flaw::SilentAfterHeader) if src.is_empty() => Ok(None),
            (Some(_), _) => Err(truncated()),
        }
    }
}

fn runner(cases: u32) -> TestRunner {
    let config = Config {
        cases,
        // Tests must not write regression files into the source tree.
        failure_persistence: None,
        ..Config::default()
    };
    TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha))
}

/// Runs proptest over cases for `framing`; returns the shrunk failing case if any.
fn find_failure<F>(framing: Framing, cases: u32, verdict: F) -> Option<(Case, Verdict)>
where
    F: Fn(&Case) -> Verdict,
{
    let result = runner(cases).run(&strategy::case(framing, 32), |case| {
        let v = verdict(&case);
        proptest::prop_assert!(v.is_pass(), "{}", v);
        Ok(())
    });
    match result {
        Ok(()) => None,
        Err(TestError::Fail(_, case)) => {
            let v = verdict(&case);
            Some((case, v))
        }
        Err(e) => panic!("proptest aborted: {e}"),
    }
}

/// Asserts that the checker catches `flaw` and that the shrunk case shows one of `kinds`.
fn assert_caught(flaw: Flaw, kinds: &[&str]) {
    let (case, verdict) = find_failure(Framing::default(), 2000, |case| {
        case.check(|| Broken::new(flaw))
    })
    .unwrap_or_else(|| panic!("{flaw:?} was not caught"));
    eprintln!(
        "{flaw:?}: shrunk to {} message(s), {} payload byte(s), sizes {:?}, faults `{}`, plan `{}`: {verdict}",
        case.messages.len(),
        case.payload_bytes(),
        case.messages.iter().map(Vec::len).collect::<Vec<_>>(),
        case.faults,
        case.plan,
    );
    assert!(
        kinds.contains(&verdict.kind()),
        "{flaw:?}: unexpected verdict {verdict}"
    );
    // The shrunk case must still be a valid counterexample of the expected kind (above);
    // how small it gets depends on how stable its seeded plan is as messages are removed,
    // so only a loose bound is asserted and the size is printed.
    assert!(case.payload_bytes() <= 8 * 32, "{flaw:?}: {case:?}");
}

#[test]
fn catches_a_decoder_that_assumes_the_whole_frame_is_buffered() {
    assert_caught(
        Flaw::AssumesWholeFrame,
        &["corrupted", "phantom_frame", "lost"],
    );
}

#[test]
fn catches_a_decoder_that_consumes_a_partial_header() {
    assert_caught(
        Flaw::ConsumesPartialHeader,
        &["corrupted", "phantom_frame", "lost", "unexpected_error"],
    );
}

#[test]
fn catches_a_decoder_that_returns_a_short_frame_at_eof() {
    assert_caught(Flaw::ShortFrameAtEof, &["truncated_at_eof"]);
}

#[test]
fn catches_a_decoder_that_ends_silently_at_eof_after_a_complete_header() {
    assert_caught(Flaw::SilentAfterHeader, &["missing_error"]);
}

/// 10 000 generated cases (all fault profiles) against the reference codec of `spec`.
fn reference_codec_passes(spec: &str) {
    let framing: Framing = spec.parse().unwrap();
    if let Some((case, verdict)) =
        find_failure(framing, 10_000, |case| case.check(|| framing.codec()))
    {
        panic!("{spec}: {verdict}\n{case:?}");
    }
}

#[test]
fn u8_codec_passes_10000_cases() {
    reference_codec_passes("u8");
}

#[test]
fn u16le_codec_passes_10000_cases() {
    reference_codec_passes("u16le");
}

#[test]
fn u32be_codec_passes_10000_cases() {
    reference_codec_passes("u32be");
}

#[test]
fn i32le_codec_passes_10000_cases() {
    reference_codec_passes("i32le");
}

#[test]
fn u64be_codec_passes_10000_cases() {
    reference_codec_passes("u64be");
}

#[test]
fn line_codec_passes_10000_cases() {
    reference_codec_passes("line");
}

#[test]
fn hjson_codec_passes_10000_cases() {
    reference_codec_passes("hjson");
}

#[test]
fn varint_codec_passes_10000_cases() {
    reference_codec_passes("varint");
}

#[test]
fn varint_codec_with_a_two_byte_prefix_max_passes_10000_cases() {
    // max 200: payloads of 128 and more get a two-byte prefix, so cuts land inside it.
    let framing: Framing = "varint,max=200".parse().unwrap();
    let result = runner(10_000).run(&strategy::case(framing, 200), |case| {
        let v = case.check(|| framing.codec());
        proptest::prop_assert!(v.is_pass(), "{}", v);
        Ok(())
    });
    if let Err(e) = result {
        panic!("varint,max=200: {e}");
    }
}

#[test]
fn netstring_codec_passes_10000_cases() {
    reference_codec_passes("netstring");
}

#[test]
fn offset_and_adjust_codec_passes_10000_cases() {
    reference_codec_passes("u16be,offset=3,adjust=-2");
}

#[test]
fn keep_codec_with_memcacheds_header_passes_10000_cases() {
    // Whole frames: the 8 bytes before the length field travel with the payload.
    reference_codec_passes("u32be,offset=8,adjust=12,keep");
}

#[test]
fn tokio_length_delimited_codec_ends_silently_after_a_complete_header() {
    // tokio-util's codec consumes the header as soon as it has it, and its default
    // decode_eof only complains about bytes left in the buffer: a stream cut right
    // after a header looks like a clean end. chopstick_targets::wire::LengthCodec exists for this.
    let messages = [b"abc"];
    let plan: Plan = "w4 close".parse().unwrap();
    assert_eq!(
        check(LengthDelimitedCodec::new, &messages, &plan),
        Verdict::MissingError { frames: 0 }
    );
    let split: Plan = "w1 w3 w1 w1".parse().unwrap();
    assert_eq!(
        check(LengthDelimitedCodec::new, &messages, &split),
        Verdict::Pass
    );
}

#[test]
fn check_framing_runs_a_foreign_decoder_over_a_known_framing() {
    let framing = Framing::default();
    let messages: [&[u8]; 2] = [b"", b"hello"];
    let plan: Plan = "w2 w2 w2 w2 w2 w2 w2".parse().unwrap();
    assert_eq!(
        check_framing(&framing, LengthDelimitedCodec::new, &messages, &plan),
        Verdict::Pass
    );
}
