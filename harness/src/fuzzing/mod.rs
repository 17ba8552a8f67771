//! Fuzzing through chopstick's chaos model (feature `fuzzing`).
//!
//! - [`decoder`]: [`fuzz_decoder`], the body of a cargo-fuzz target for *your* decoder:
//!   the fuzzer's bytes choose the messages, the chunking, the cut and the end.
//! - this file: the body of chopstick's own target `frame_roundtrip`.
//!
//! `frame_roundtrip`: arbitrary messages under an arbitrary framing, encoded, pushed
//! through [`ChaosStream`]s playing arbitrary plans, and decoded again.
//!
//! It lives here rather than in `chopstick_targets::fuzzing` because it exercises this crate's
//! [`ChaosStream`] and codec checker. It follows the same conventions: the input is a
//! fixed-size header of small integers followed by the raw tail ([`Rest`]), and a corpus
//! file is decoded exactly as libfuzzer-sys decodes it ([`replay`]).
//!
//! Two paths, both of which must give back exactly the messages that were delivered whole:
//!
//! 1. The codec checker ([`codec::check_framing`]) with each plan as its reader plan: the
//!    verdict must be [`Verdict::Pass`](codec::Verdict::Pass).
//! 2. End to end over `tokio::io::duplex`: a `FramedWrite` sends the messages through a
//!    [`ChaosStream`] playing the writer plan, a `FramedRead` decodes them through a
//!    [`ChaosStream`] playing the reader plan. The frames must be the messages whose
//!    frames end at or before the cut, in order, and then the stream must end exactly
//!    as the plans say: clean at a frame boundary, [`WireError::Truncated`] when cut
//!    inside a frame, a connection reset when the reader's plan resets. Never a short
//!    frame, a phantom frame or a hang.

pub mod decoder;

pub use decoder::{decoder_case, decoder_seeds, fuzz_decoder, fuzz_decoder_verdict, DecoderCase};

use std::io;

use arbitrary::Arbitrary;
use bytes::Bytes;
use chopstick_targets::fuzzing::{run_as_libfuzzer, Rest, SpecInput, KINDS};
use chopstick_targets::wire::{Framing, WireError};
use futures::{SinkExt, StreamExt};
use tokio_util::codec::{FramedRead, FramedWrite};

use crate::chaos::{ChaosStream, Ending, Plan, Step};
use crate::codec;

/// Largest `max` a fuzzed framing gets.
const FUZZ_MAX: usize = 64 * 1024;
/// At most this many messages per input.
const MAX_MESSAGES: usize = 64;

/// Up to six plan steps, played `1 + repeat` times over.
///
/// Each step is a little-endian `u16`: the top 3 bits choose the step, the low 13 bits
/// are its argument `n`. 0: none, 1: `Write(n)`, 2: `Read(n)`, 3: `Pause(n)`,
/// 4: `Stall(n)`, 5: `Close`, 6: `Reset`, 7: none. An all-zero plan passes through.
#[derive(Arbitrary, Debug, Clone, Default)]
pub struct PlanInput {
    pub steps: [u16; 6],
    pub repeat: u8,
}

impl PlanInput {
    pub fn plan(&self) -> Plan {
        Plan::new(self.once().steps.repeat(1 + usize::from(self.repeat)))
    }

    /// The steps played once.
    fn once(&self) -> Plan {
        let steps = self.steps.iter().filter_map(|&v| {
            let n = usize::from(v & 0x1fff);
            Some(match v >> 13 {
                1 => Step::Write(n),
                2 => Step::Read(n),
                3 => Step::Pause(n as u64),
                4 => Step::Stall(n as u64),
                5 => Step::Close,
                6 => Step::Reset,
                _ => return None,
            })
        });
        Plan::new(steps.collect())
    }

    /// `[STEPS] xN` (a repeated plan printed whole is too long for a message).
    fn describe(&self) -> String {
        format!("[{}] x{}", self.once(), 1 + usize::from(self.repeat))
    }

    /// One step as its `u16` (for hand-written seeds): `kind` as documented above.
    pub fn step(kind: u16, n: u16) -> u16 {
        kind << 13 | (n & 0x1fff)
    }

    /// The fixed-size header bytes of this value.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b: Vec<u8> = self.steps.iter().flat_map(|s| s.to_le_bytes()).collect();
        b.push(self.repeat);
        b
    }
}

#[derive(Arbitrary, Debug, Clone)]
pub struct FrameRoundtripInput {
    /// The framing, as in `chopstick_targets::fuzzing::frame_decode` (text specs take the tail's
    /// first line).
    pub spec: SpecInput,
    /// Plays on the sender's writes.
    pub writer: PlanInput,
    /// Plays on the receiver's reads.
    pub reader: PlanInput,
    /// Capacity of the duplex pipe between them (0: 64 KiB).
    pub pipe: u8,
    /// The messages, separated by `0xff` (empty: no message). Each is cut to the
    /// framing's `max`, a `line` payload's newlines become `n`, and a payload shorter
    /// than a positive `adjust` is padded with zeros to it (with `keep`: the header is
    /// counted on top of both, and its length field set to what the encoder writes).
    pub data: Rest,
}

impl FrameRoundtripInput {
    /// This input as a file (for hand-written seeds).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = self.spec.to_bytes();
        b.extend(self.writer.to_bytes());
        b.extend(self.reader.to_bytes());
        b.push(self.pipe);
        b.extend_from_slice(&self.data.0);
        b
    }
}

/// The messages in `tail`, made valid for `framing`; `None` if no payload can be encoded.
fn messages(framing: &Framing, tail: &[u8]) -> Option<Vec<Vec<u8>>> {
    // With `keep` a payload is its header and then what `max` and `adjust` bound.
    let kept = framing.kept_header_len();
    let max = framing.max() + kept;
    let min = match framing {
        Framing::Length(l) => usize::try_from(l.adjust.max(0)).unwrap_or(usize::MAX),
        _ => 0,
    }
    .saturating_add(kept);
    if min > max {
        return None;
    }
    let line = matches!(framing, Framing::Line { .. });
    let pieces = (!tail.is_empty()).then(|| tail.split(|&b| b == 0xff));
    let messages = pieces.into_iter().flatten().take(MAX_MESSAGES).map(|m| {
        let mut m = m[..m.len().min(max)].to_vec();
        m.resize(m.len().max(min), 0);
        if line {
            m.iter_mut()
                .filter(|b| **b == b'\n')
                .for_each(|b| *b = b'n');
        }
        // With `keep`: the length field as the encoder writes it, so it decodes as sent.
        crate::codec::whole_frame(framing, m)
    });
    Some(messages.collect())
}

/// How far a plan lets bytes through (its `Write` and `Read` steps: [`ChaosStream`]
/// limits a read by either) before its first ending, if it has one.
fn reach(plan: &Plan) -> Option<(Ending, usize)> {
    let mut at = 0;
    for step in &plan.steps {
        match *step {
            Step::Write(n) | Step::Read(n) => at += n,
            Step::Close => return Some((Ending::Close, at)),
            Step::Reset => return Some((Ending::Reset, at)),
            Step::Pause(_) | Step::Stall(_) => {}
        }
    }
    None
}

/// The fuzz target `frame_roundtrip` (see the module docs).
pub fn frame_roundtrip(input: FrameRoundtripInput) {
    let (spec, tail) = input.spec.split(&input.data.0);
    let Ok(framing) = spec.parse::<Framing>() else {
        return;
    };
    // raw has no boundaries for a cut to be inside of; frame_decode covers it.
    if framing.is_raw() {
        return;
    }
    let framing = framing.with_max(FUZZ_MAX);
    let Some(messages) = messages(&framing, tail) else {
        return;
    };
    let (stream, layouts) = framing
        .encode_all(&messages)
        .unwrap_or_else(|e| panic!("valid messages do not encode with {framing}: {e}"));
    let ends: Vec<usize> = layouts.iter().map(|l| l.end).collect();
    let (writer, reader) = (input.writer.plan(), input.reader.plan());

    // 1. The codec checker, each plan playing on the decoder's reads.
    for plan in [&writer, &reader] {
        let verdict = codec::check_framing(&framing, || framing.codec(), &messages, plan);
        assert!(
            verdict.is_pass(),
            "checker: {verdict} ({framing}, writer plan {}, reader plan {}, {} messages)",
            input.writer.describe(),
            input.reader.describe(),
            messages.len()
        );
    }

    // 2. End to end: FramedWrite -> ChaosStream(writer) -> duplex -> ChaosStream(reader)
    //    -> FramedRead.
    let pipe = if input.pipe == 0 {
        FUZZ_MAX
    } else {
        usize::from(input.pipe)
    };
    let (got, end, wrote, write_ending) = end_to_end(&framing, &messages, &writer, &reader, pipe);

    // Where the receiver's stream stops, and how.
    let written = match reach(&writer) {
        Some((_, at)) if at < stream.len() => at,
        _ => stream.len(),
    };
    let (cut, reset) = match reach(&reader) {
        Some((how, at)) if at <= written => (at, how == Ending::Reset),
        _ => (written, false),
    };
    let whole = ends.iter().take_while(|&&e| e <= cut).count();
    let at_boundary = cut == 0 || ends.contains(&cut);
    let context = format!(
        "{framing}, {} messages ({} bytes encoded), writer plan {}, reader plan {}, pipe {pipe}: \
         cut at {cut}",
        messages.len(),
        stream.len(),
        input.writer.describe(),
        input.reader.describe(),
    );
    assert!(
        got.len() <= whole,
        "frame {} arrived but only {whole} were sent whole ({context})",
        whole
    );
    for (i, frame) in got.iter().enumerate() {
        assert!(
            frame[..] == messages[i][..],
            "frame {i} is {} bytes, message {i} was {} bytes ({context})",
            frame.len(),
            messages[i].len()
        );
    }
    // Never a clean end inside a frame, never a reset swallowed, never a spurious error.
    let expected = if reset {
        Err("reset")
    } else if at_boundary {
        Ok(())
    } else {
        Err("truncated")
    };
    assert_eq!(
        end.as_ref().map_err(|e| e.kind()).copied(),
        expected,
        "after {} of {whole} frames the stream ended {end:?} ({context})",
        got.len()
    );
    assert_eq!(got.len(), whole, "frames lost ({context})");

    // The sender saw its own plan's ending whenever the receiver read up to it, and
    // otherwise succeeded whenever the receiver read everything.
    let writer_cut = reach(&writer).filter(|&(_, at)| at < stream.len());
    if let (Some((how, _)), true) = (writer_cut, cut == written && !reset) {
        assert_eq!(write_ending, Some(how), "({context})");
        let want = match how {
            Ending::Close => io::ErrorKind::BrokenPipe,
            Ending::Reset => io::ErrorKind::ConnectionReset,
        };
        let kind = wrote.as_ref().map_err(io::Error::kind).err();
        assert_eq!(kind, Some(want), "the sender ended {wrote:?} ({context})");
    } else if writer_cut.is_none() && cut == stream.len() && !reset {
        wrote.unwrap_or_else(|e| panic!("the sender failed: {e} ({context})"));
    }
}

/// What the receiver decoded and how its stream ended; what the sender's last operation
/// returned, and the writer plan's ending if it reached it.
type EndToEnd = (
    Vec<Bytes>,
    Result<(), WireError>,
    io::Result<()>,
    Option<Ending>,
);

fn end_to_end(
    framing: &Framing,
    messages: &[Vec<u8>],
    writer: &Plan,
    reader: &Plan,
    pipe: usize,
) -> EndToEnd {
    let (a, b) = tokio::io::duplex(pipe);
    let mut sink = FramedWrite::new(ChaosStream::writer(a, writer.clone()), framing.codec());
    let mut source = FramedRead::new(ChaosStream::reader(b, reader.clone()), framing.codec());
    // A decoder inventing frames out of nothing is cut off here.
    let limit = messages.len() + 2;
    let send = async move {
        let mut result = Ok(());
        for m in messages {
            result = sink.send(Bytes::copy_from_slice(m)).await;
            if result.is_err() {
                break;
            }
        }
        if result.is_ok() {
            result = SinkExt::<Bytes>::close(&mut sink).await;
        }
        let result = result.map_err(|e| match e {
            WireError::Io(e) => e,
            e => panic!("sending failed with a non-I/O error: {e}"),
        });
        (result, sink.get_ref().write_ending())
        // `sink` is dropped here: the receiver sees EOF.
    };
    let receive = async move {
        let mut got = Vec::new();
        while got.len() < limit {
            match source.next().await {
                Some(Ok(frame)) => got.push(frame),
                Some(Err(e)) => return (got, Err(e)),
                None => break,
            }
        }
        (got, Ok(()))
        // `source` is dropped here: a blocked sender gets BrokenPipe.
    };
    let ((wrote, write_ending), (got, end)) =
        futures::executor::block_on(futures::future::join(send, receive));
    (got, end, wrote, write_ending)
}

/// Decodes `data` as libfuzzer-sys would and runs [`frame_roundtrip`]; whether it ran.
pub fn replay(data: &[u8]) -> bool {
    run_as_libfuzzer(data, frame_roundtrip)
}

/// Hand-written seeds for `fuzz/corpus/frame_roundtrip/` as (name, bytes):
/// `tests/fuzz_corpus.rs` checks they are committed as `seed-NAME` (and writes them with
/// `CHOPSTICK_WRITE_SEEDS=1`).
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    let spec = |k: &str| SpecInput {
        kind: KINDS.iter().position(|n| *n == k).expect("known kind") as u8,
        ..SpecInput::default()
    };
    let plan = |steps: &[(u16, u16)], repeat: u8| {
        let mut p = PlanInput {
            repeat,
            ..PlanInput::default()
        };
        for (slot, &(kind, n)) in p.steps.iter_mut().zip(steps) {
            *slot = PlanInput::step(kind, n);
        }
        p
    };
    let (w, r, p, s, close, reset) = (1, 2, 3, 4, 5, 6);
    let seed = |spec, writer, reader, pipe, data: &[u8]| {
        FrameRoundtripInput {
            spec,
            writer,
            reader,
            pipe,
            data: Rest(data.to_vec()),
        }
        .to_bytes()
    };
    let none = PlanInput::default();
    vec![
        (
            "u32be-passthrough",
            seed(
                spec("u32be"),
                none.clone(),
                none.clone(),
                0,
                b"hello\xff\xffx",
            ),
        ),
        (
            "u8-bytewise-writes",
            seed(
                spec("u8"),
                plan(&[(w, 1), (p, 0)], 20),
                none.clone(),
                1,
                b"abc\xffde\xff",
            ),
        ),
        (
            "u16le-close-mid-body",
            seed(
                spec("u16le"),
                plan(&[(w, 4), (w, 5), (close, 0)], 0),
                plan(&[(r, 2)], 3),
                4,
                b"hello\xffworld",
            ),
        ),
        (
            "line-reader-reset-at-boundary",
            seed(
                spec("line"),
                none.clone(),
                plan(&[(r, 1), (s, 0), (r, 3), (reset, 0)], 0),
                0,
                b"one\xfftwo\nthree",
            ),
        ),
        (
            "hjson-writer-reset-mid-header",
            seed(
                spec("hjson"),
                plan(&[(w, 9), (reset, 0)], 0),
                plan(&[(r, 5)], 4),
                1,
                b"body\xff",
            ),
        ),
        (
            "u64be-offset-adjust-reader-close",
            seed(
                SpecInput {
                    flags: 3,
                    offset: 2,
                    adjust: -8,
                    ..spec("u64be")
                },
                plan(&[(w, 3)], 5),
                plan(&[(r, 3), (r, 10), (close, 0)], 0),
                7,
                b"xyz\xff",
            ),
        ),
        (
            // memcached's binary protocol: whole frames, cuts inside the 8 header bytes
            // before the length field and inside the field.
            "u32be-memcached-keep-split-in-header",
            seed(
                SpecInput {
                    flags: 1 | 2 | 8,
                    offset: 8,
                    adjust: 12,
                    ..spec("u32be")
                },
                plan(&[(w, 3), (p, 0), (w, 7)], 6),
                plan(&[(r, 5)], 8),
                2,
                b"\x80\x00\x00\x01\0\0\0\0\0\0\0\x01\0\0\0\x07\0\0\0\0\0\0\0\0k\xff\x80\x0a",
            ),
        ),
        (
            "varint-split-inside-the-prefix",
            seed(
                spec("varint"),
                plan(&[(w, 1), (p, 0)], 40),
                plan(&[(r, 1)], 10),
                3,
                &[&[b'v'; 130][..], b"\xff\xffab"].concat(),
            ),
        ),
        (
            "netstring-close-before-comma",
            seed(
                spec("netstring"),
                plan(&[(w, 7), (close, 0)], 0),
                plan(&[(r, 2)], 4),
                0,
                b"hello\xffx",
            ),
        ),
        (
            "text-spec-over-max",
            seed(
                SpecInput {
                    flags: 0x80,
                    ..SpecInput::default()
                },
                plan(&[(w, 2), (p, 1), (w, 9)], 3),
                plan(&[(r, 7), (close, 0)], 0),
                0,
                b"i32le,adjust=2,max=16\nthis message is longer than sixteen bytes\xff\xffz",
            ),
        ),
    ]
}
