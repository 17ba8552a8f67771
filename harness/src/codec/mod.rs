//! The codec checker: does a Rust `Decoder` survive split, coalesced and cut streams?
//!
//! [`check`] (for a codec that also encodes) and [`check_framing`] (for a decoder of a
//! known [`Framing`], whose exact frame layouts the faults can then aim at) encode the
//! messages into one stream, deliver it to the decoder through a
//! [`ChaosStream`] reader playing a [`Plan`] — splits, pauses, EOF or a connection reset
//! at the plan's cut point — decode it with tokio-util's `FramedRead`, and compare what
//! came out with what was sent. The answer is a typed [`Verdict`].
//!
//! What is expected: every frame that was delivered whole, in order, byte for byte; then
//! a clean end if the stream ended at a frame boundary, or an error if it was cut inside
//! a frame or reset.
//!
//! [`Rules`] relaxes that for protocols such as JSON Lines, where a last line without
//! its terminator is a valid end of stream: [`check_framing_with`] / [`check_with`].
//! [`check_text`] checks a text codec such as tokio-util's `LinesCodec`, whose encoder
//! takes `AsRef<str>` items.
//!
//! [`strategy`] has proptest strategies for messages, plans and whole cases, so a check
//! is a few lines and proptest shrinks failures and stores regression files (a failing
//! [`strategy::Case`] prints on one line with `{case}`):
//!
//! ```
//! use chopstick::codec::strategy;
//! use proptest::prelude::*;
//! use chopstick_targets::wire::Framing;
//!
//! proptest! {
//!     // In a test file: #[test]
//!     fn u32be_codec_survives_chaos(case in strategy::case(Framing::default(), 300)) {
//!         let verdict = case.check(|| Framing::default().codec());
//!         prop_assert!(verdict.is_pass(), "{verdict}\n{case}");
//!     }
//! }
//! # u32be_codec_survives_chaos();
//! ```

mod display;
pub mod strategy;

pub use display::{Compact, Preview, PREVIEW_BYTES};

use std::fmt;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use rand::Rng;
use tokio_util::codec::{Decoder, Encoder, FramedRead};

use crate::chaos::{ChaosStream, Ending, Plan, Step};
use chopstick_targets::wire::Framing;

/// What a decoder made of a chaotic stream. Anything but [`Verdict::Pass`] is a bug in
/// the decoder (or, for [`Verdict::EncodeFailed`], in the messages given to the check).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verdict {
    /// Every delivered frame came out intact and in order, and the end was right.
    Pass,
    /// The stream ended (cleanly) with frames still owed: `got` of `expected` arrived.
    Lost { expected: usize, got: usize },
    /// Frame `index` repeats an earlier message.
    Duplicated { index: usize, of: usize },
    /// Frame `index` is message `of`, which belongs elsewhere in the stream.
    Reordered { index: usize, of: usize },
    /// Frame `index` differs from the message sent there.
    Corrupted {
        index: usize,
        expected_len: usize,
        got_len: usize,
        /// First differing byte, or `None` if one is a prefix of the other.
        first_diff: Option<usize>,
    },
    /// The stream was cut inside frame `index` and the decoder returned its incomplete
    /// bytes as a frame.
    TruncatedAtEof {
        index: usize,
        expected_len: usize,
        got_len: usize,
    },
    /// Frame `index` was never sent.
    PhantomFrame { index: usize, len: usize },
    /// An error where none was due, after `frames` correct frames.
    UnexpectedError { frames: usize, error: String },
    /// The stream was cut inside a frame (after `frames` whole ones) but the decoder
    /// ended cleanly: the caller cannot tell a truncated stream from a complete one.
    MissingError { frames: usize },
    /// The decoder panicked.
    Panicked { message: String },
    /// Message `index` could not be encoded; the check did not run.
    EncodeFailed { index: usize, error: String },
}

impl Verdict {
    pub fn is_pass(&self) -> bool {
        *self == Verdict::Pass
    }

    /// A short stable label (`pass`, `lost`, `missing_error`, ...) for reports.
    pub fn kind(&self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Lost { .. } => "lost",
            Verdict::Duplicated { .. } => "duplicated",
            Verdict::Reordered { .. } => "reordered",
            Verdict::Corrupted { .. } => "corrupted",
            Verdict::TruncatedAtEof { .. } => "truncated_at_eof",
            Verdict::PhantomFrame { .. } => "phantom_frame",
            Verdict::UnexpectedError { .. } => "unexpected_error",
            Verdict::MissingError { .. } => "missing_error",
            Verdict::Panicked { .. } => "panicked",
            Verdict::EncodeFailed { .. } => "encode_failed",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Pass => f.write_str("pass"),
            Verdict::Lost { expected, got } => {
                write!(f, "lost frames: {got} of {expected} arrived")
            }
            Verdict::Duplicated { index, of } => {
                write!(f, "frame {index} duplicates message {of}")
            }
            Verdict::Reordered { index, of } => write!(f, "frame {index} is message {of}"),
            Verdict::Corrupted {
                index,
                expected_len,
                got_len,
                first_diff,
            } => {
                write!(
                    f,
                    "frame {index} corrupted: {got_len} bytes instead of {expected_len}"
                )?;
                match first_diff {
                    Some(at) => write!(f, ", first difference at byte {at}"),
                    None => f.write_str(", one is a prefix of the other"),
                }
            }
            Verdict::TruncatedAtEof {
                index,
                expected_len,
                got_len,
            } => write!(
                f,
                "short frame {index} at EOF: {got_len} of {expected_len} bytes returned as a frame"
            ),
            Verdict::PhantomFrame { index, len } => {
                write!(f, "frame {index} ({len} bytes) was never sent")
            }
            Verdict::UnexpectedError { frames, error } => {
                write!(f, "unexpected error after {frames} frames: {error}")
            }
            Verdict::MissingError { frames } => write!(
                f,
                "stream cut inside frame {frames} but the decoder ended cleanly"
            ),
            Verdict::Panicked { message } => write!(f, "decoder panicked: {message}"),
            Verdict::EncodeFailed { index, error } => {
                write!(f, "message {index} cannot be encoded: {error}")
            }
        }
    }
}

/// What a correct decoder must do at the end of a stream. The default is strict: a
/// stream closed inside a frame must end in an error.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Rules {
    /// A stream closed (FIN, not reset) inside a frame ends with the bytes received of
    /// that frame as one last frame, as JSON Lines allows a last line without its
    /// newline. Only meaningful for framings whose frame is the payload then a
    /// terminator (`line`): the expected last frame is the received prefix of its message.
    pub unterminated_last_frame: bool,
}

impl Rules {
    /// Strict: EOF inside a frame is an error ([`Verdict::TruncatedAtEof`] if the decoder
    /// returns the short frame, [`Verdict::MissingError`] if it ends cleanly).
    pub fn strict() -> Rules {
        Rules::default()
    }

    /// JSON Lines: an unterminated last line is data, see [`Rules::unterminated_last_frame`].
    pub fn json_lines() -> Rules {
        Rules {
            unterminated_last_frame: true,
        }
    }
}

/// Checks a codec that encodes its own messages: `make_codec()` builds a fresh codec for
/// encoding and another for decoding.
///
/// Only whole-frame boundaries are known here (each message's encoding), so plans for it
/// should come from [`strategy::plan_for`] with coarse layouts, or from any fault. For a
/// codec whose encoder takes text (`LinesCodec`), see [`check_text`]; for a decoder of a
/// known [`Framing`], [`check_framing`] aims the faults at its exact layouts.
pub fn check<C, F, M>(make_codec: F, messages: &[M], plan: &Plan) -> Verdict
where
    F: Fn() -> C,
    C: Decoder + Encoder<Bytes>,
    M: AsRef<[u8]>,
    C::Item: AsRef<[u8]>,
    <C as Decoder>::Error: From<io::Error> + fmt::Display,
    <C as Encoder<Bytes>>::Error: fmt::Display,
{
    check_with(make_codec, messages, plan, Rules::strict())
}

/// [`check`] under other end-of-stream [`Rules`].
pub fn check_with<C, F, M>(make_codec: F, messages: &[M], plan: &Plan, rules: Rules) -> Verdict
where
    F: Fn() -> C,
    C: Decoder + Encoder<Bytes>,
    M: AsRef<[u8]>,
    C::Item: AsRef<[u8]>,
    <C as Decoder>::Error: From<io::Error> + fmt::Display,
    <C as Encoder<Bytes>>::Error: fmt::Display,
{
    let encoded = encode_with(&mut make_codec(), messages, |m| {
        Bytes::copy_from_slice(m.as_ref())
    });
    match encoded {
        Ok((stream, ends)) => run(&stream, &ends, make_codec, messages, plan, rules),
        Err(verdict) => verdict,
    }
}

/// Checks a text codec, one whose encoder takes `&str` items (tokio-util's `LinesCodec`,
/// `AnyDelimiterCodec` with text): `make_codec()` builds the encoder and the decoder.
///
/// ```
/// use chopstick::codec::{check_text, Rules, Verdict};
/// use tokio_util::codec::LinesCodec;
///
/// let plan = "w3 w1 w2 close".parse().unwrap();
/// assert_eq!(check_text(LinesCodec::new, &["ab", "cd"], &plan, Rules::strict()), Verdict::Pass);
/// // Cut before the last newline: LinesCodec returns the unterminated line, which JSON
/// // Lines allows and a strict protocol does not.
/// let cut = "w5 close".parse().unwrap();
/// assert_eq!(check_text(LinesCodec::new, &["ab", "cd"], &cut, Rules::json_lines()), Verdict::Pass);
/// assert_eq!(check_text(LinesCodec::new, &["ab", "cd"], &cut, Rules::strict()).kind(), "truncated_at_eof");
/// ```
pub fn check_text<C, F, M>(make_codec: F, messages: &[M], plan: &Plan, rules: Rules) -> Verdict
where
    F: Fn() -> C,
    C: Decoder + for<'a> Encoder<&'a str>,
    M: AsRef<str>,
    C::Item: AsRef<[u8]>,
    <C as Decoder>::Error: From<io::Error> + fmt::Display,
    for<'a> <C as Encoder<&'a str>>::Error: fmt::Display,
{
    let bytes: Vec<&[u8]> = messages.iter().map(|m| m.as_ref().as_bytes()).collect();
    let encoded = encode_with(&mut make_codec(), messages, |m| m.as_ref());
    match encoded {
        Ok((stream, ends)) => run(&stream, &ends, make_codec, &bytes, plan, rules),
        Err(verdict) => verdict,
    }
}

/// Checks a decoder of a known framing: messages are encoded with `framing`.
pub fn check_framing<D, F, M>(
    framing: &Framing,
    make_decoder: F,
    messages: &[M],
    plan: &Plan,
) -> Verdict
where
    F: Fn() -> D,
    D: Decoder,
    M: AsRef<[u8]>,
    D::Item: AsRef<[u8]>,
    D::Error: From<io::Error> + fmt::Display,
{
    check_framing_with(framing, make_decoder, messages, plan, Rules::strict())
}

/// [`check_framing`] under other end-of-stream [`Rules`].
pub fn check_framing_with<D, F, M>(
    framing: &Framing,
    make_decoder: F,
    messages: &[M],
    plan: &Plan,
    rules: Rules,
) -> Verdict
where
    F: Fn() -> D,
    D: Decoder,
    M: AsRef<[u8]>,
    D::Item: AsRef<[u8]>,
    D::Error: From<io::Error> + fmt::Display,
{
    match encode(framing, messages) {
        Ok((stream, ends)) => run(&stream, &ends, make_decoder, messages, plan, rules),
        Err(verdict) => verdict,
    }
}

/// Encodes `messages` with a codec's encoder: the stream and each frame's end offset.
fn encode_with<'m, M, I, E>(
    encoder: &mut E,
    messages: &'m [M],
    item: impl Fn(&'m M) -> I,
) -> Result<(Bytes, Vec<usize>), Verdict>
where
    E: Encoder<I>,
    E::Error: fmt::Display,
{
    let mut stream = BytesMut::new();
    let mut ends = Vec::with_capacity(messages.len());
    for (index, m) in messages.iter().enumerate() {
        encoder
            .encode(item(m), &mut stream)
            .map_err(|e| Verdict::EncodeFailed {
                index,
                error: e.to_string(),
            })?;
        ends.push(stream.len());
    }
    Ok((stream.freeze(), ends))
}

/// Encodes `messages` with `framing`: the stream and each frame's end offset.
fn encode<M: AsRef<[u8]>>(
    framing: &Framing,
    messages: &[M],
) -> Result<(Bytes, Vec<usize>), Verdict> {
    let mut stream = BytesMut::new();
    let mut ends = Vec::with_capacity(messages.len());
    for (index, m) in messages.iter().enumerate() {
        framing
            .encode(m.as_ref(), &mut stream)
            .map_err(|e| Verdict::EncodeFailed {
                index,
                error: e.to_string(),
            })?;
        ends.push(stream.len());
    }
    Ok((stream.freeze(), ends))
}

/// How the decoded stream ended.
enum End {
    Clean,
    Error(String),
}

fn run<D, F, M>(
    stream: &[u8],
    ends: &[usize],
    make_decoder: F,
    messages: &[M],
    plan: &Plan,
    rules: Rules,
) -> Verdict
where
    F: Fn() -> D,
    D: Decoder,
    M: AsRef<[u8]>,
    D::Item: AsRef<[u8]>,
    D::Error: From<io::Error> + fmt::Display,
{
    // An ending beyond the stream is never reached: the reader sees EOF first.
    let (cut, ending) = match reader_ending(plan) {
        Some((how, at)) if at <= stream.len() => (at, Some(how)),
        _ => (stream.len(), None),
    };
    let whole = ends.iter().take_while(|&&end| end <= cut).count();
    let at_boundary = cut == 0 || (whole > 0 && ends[whole - 1] == cut);
    let mut error_due = ending == Some(Ending::Reset) || !at_boundary;
    // Under `unterminated_last_frame` a FIN inside frame `whole` makes its received
    // prefix one more frame that must come out, instead of an error.
    let mut owed: Vec<&[u8]> = messages.iter().map(AsRef::as_ref).collect();
    let mut whole = whole;
    if rules.unterminated_last_frame && ending == Some(Ending::Close) && !at_boundary {
        let start = if whole == 0 { 0 } else { ends[whole - 1] };
        let message = owed[whole];
        owed[whole] = &message[..(cut - start).min(message.len())];
        whole += 1;
        error_due = false;
    }
    let messages = owed.as_slice();

    // A decoder that keeps producing frames out of nothing is cut off here.
    let limit = messages.len() + 2;
    let decoder = make_decoder();
    let decoded = catch_unwind(AssertUnwindSafe(|| {
        futures::executor::block_on(async {
            let reader = ChaosStream::reader(stream, plan.clone());
            let mut framed = FramedRead::new(reader, decoder);
            let mut got: Vec<Vec<u8>> = Vec::new();
            while got.len() < limit {
                match framed.next().await {
                    Some(Ok(frame)) => got.push(frame.as_ref().to_vec()),
                    Some(Err(e)) => return (got, End::Error(e.to_string())),
                    None => return (got, End::Clean),
                }
            }
            (got, End::Clean)
        })
    }));
    let (got, end) = match decoded {
        Ok(out) => out,
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "non-string panic".into());
            return Verdict::Panicked { message };
        }
    };
    judge(messages, whole, error_due, &got, end)
}

/// The first close or reset in a plan played on reads, and how many bytes precede it.
/// `ChaosStream` limits a read by `Read` and `Write` steps alike, so both count (unlike
/// [`Plan::ending`], which counts what a writer plan writes).
fn reader_ending(plan: &Plan) -> Option<(Ending, usize)> {
    let mut at = 0usize;
    for step in &plan.steps {
        match *step {
            Step::Write(n) | Step::Read(n) => at = at.saturating_add(n),
            Step::Close => return Some((Ending::Close, at)),
            Step::Reset => return Some((Ending::Reset, at)),
            Step::Pause(_) | Step::Stall(_) => {}
        }
    }
    None
}

/// Compares decoded frames with the `whole` messages delivered in full.
fn judge<M: AsRef<[u8]>>(
    messages: &[M],
    whole: usize,
    error_due: bool,
    got: &[Vec<u8>],
    end: End,
) -> Verdict {
    let msg = |i: usize| messages[i].as_ref();
    for (index, frame) in got.iter().enumerate() {
        if index < whole && frame.as_slice() == msg(index) {
            continue;
        }
        if index >= whole {
            // Beyond what was delivered whole: a short copy of the cut frame, or invented.
            let cut_frame = index < messages.len() && index == whole;
            // Equal length counts too: a line cut just before its newline.
            return if cut_frame && frame.len() <= msg(index).len() && msg(index).starts_with(frame)
            {
                Verdict::TruncatedAtEof {
                    index,
                    expected_len: msg(index).len(),
                    got_len: frame.len(),
                }
            } else {
                Verdict::PhantomFrame {
                    index,
                    len: frame.len(),
                }
            };
        }
        let expected = msg(index);
        // A short or empty frame is a decoding error, not a copy of a short message
        // elsewhere; equal messages at different indexes are no evidence either.
        let same = |j: usize| {
            !expected.starts_with(frame) && frame.as_slice() == msg(j) && msg(j) != expected
        };
        if let Some(of) = (0..index).find(|&j| same(j)) {
            return Verdict::Duplicated { index, of };
        }
        if let Some(of) = (index + 1..messages.len()).find(|&j| same(j)) {
            let sent_later = got[index + 1..].iter().any(|f| f.as_slice() == msg(index));
            return if sent_later {
                Verdict::Reordered { index, of }
            } else {
                Verdict::Lost {
                    expected: whole,
                    got: got.len(),
                }
            };
        }
        return Verdict::Corrupted {
            index,
            expected_len: expected.len(),
            got_len: frame.len(),
            first_diff: frame.iter().zip(expected).position(|(a, b)| a != b),
        };
    }
    match end {
        End::Error(error) if got.len() < whole || !error_due => Verdict::UnexpectedError {
            frames: got.len(),
            error,
        },
        End::Clean if got.len() < whole => Verdict::Lost {
            expected: whole,
            got: got.len(),
        },
        End::Clean if error_due => Verdict::MissingError { frames: got.len() },
        _ => Verdict::Pass,
    }
}

/// `count` messages of 0..=`max_len` bytes drawn from `rng`, valid for `framing` (no
/// newline in `line` payloads, never above the framing's `max`). The same RNG state
/// gives the same messages.
pub fn seeded_messages<R: Rng>(
    rng: &mut R,
    framing: &Framing,
    count: usize,
    max_len: usize,
) -> Vec<Vec<u8>> {
    let max_len = max_len.min(framing.max());
    let line = matches!(framing, Framing::Line { .. });
    (0..count)
        .map(|_| {
            let len = rng.random_range(0..=max_len);
            let payload = (0..len)
                .map(|_| match rng.random::<u8>() {
                    b'\n' if line => b'n',
                    b => b,
                })
                .collect();
            whole_frame(framing, payload)
        })
        .collect()
}

/// For a framing with `keep` (the payload is the whole frame): `payload` padded with
/// zeros to the shortest frame (the header, and a positive `adjust`) and its length
/// field set to what the encoder writes, so that it decodes as it was sent. For other
/// framings, `payload` as it is.
pub(crate) fn whole_frame(framing: &Framing, mut payload: Vec<u8>) -> Vec<u8> {
    let Framing::Length(spec) = framing else {
        return payload;
    };
    let kept = spec.kept_header_len();
    if kept == 0 {
        return payload;
    }
    let adjust = usize::try_from(spec.adjust.max(0)).unwrap_or(usize::MAX);
    payload.resize(payload.len().max(kept.saturating_add(adjust)), 0);
    match framing.encode_all(&[&payload[..]]) {
        Ok((frame, _)) => frame.to_vec(),
        // Too long for `max`: left as it is, for the encoder to refuse.
        Err(_) => payload,
    }
}

#[cfg(test)]
mod tests;
