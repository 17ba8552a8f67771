//! [`fuzz_decoder`]: fuzz *your* `tokio_util::codec::Decoder` through the chaos model.
//!
//! The fuzzer's bytes are read as a plan and a list of messages; the messages are encoded
//! with a chopstick [`Framing`], delivered to a fresh decoder through a
//! [`ChaosStream`](crate::chaos::ChaosStream) playing the plan (chunking, `Pending`,
//! a FIN or a reset at the cut) and judged by the codec checker
//! ([`check_framing`](crate::codec::check_framing)). Anything but
//! [`Verdict::Pass`] panics with a one-line description, which libFuzzer records as a
//! crash; a panic inside the decoder is caught and reported the same way.
//!
//! ```text
//!  byte 0   bytes 1..=k             the rest
//! +-------+----------------------+---------------------------------------------+
//! |   k   |  k plan bytes        |  messages, separated by 0xff                |
//! +-------+----------------------+---------------------------------------------+
//!
//! plan byte   0b00nnnnnn  write n+1 bytes
//!             0b01nnnnnn  write n+1 bytes, then return Pending once
//!             0b10nnnnnn  write 64 x (n+1) bytes (large bodies in few steps)
//!             0b11xxxxx0  FIN here (the plan ends)     0b11xxxxx1  reset here
//! ```
//!
//! The write steps repeat until they cover the stream, so one plan byte `0x00` delivers
//! everything one byte at a time; `k = 0` delivers it in one read. Messages are cut to
//! the framing's `max` (at most 64 of them), a `line` payload's newlines become `n`, and
//! a payload shorter than a positive `adjust` is padded with zeros. A committed seed
//! corpus for any framing is [`decoder_seeds`]; `cargo test` can replay it on stable
//! (`harness/tests/fuzz_decoder.rs` does, and catches a planted bug with it).
//!
//! ```ignore
//! // fuzz/fuzz_targets/my_decoder.rs, after #![no_main] (needs libfuzzer-sys; the
//! // compiled copy is fuzz/fuzz_targets/fuzz_decoder.rs)
//! use std::sync::LazyLock;
//! use chopstick::fuzzing::fuzz_decoder;
//! use chopstick_targets::wire::Framing;
//!
//! static FRAMING: LazyLock<Framing> = LazyLock::new(|| "u16be".parse().unwrap());
//!
//! libfuzzer_sys::fuzz_target!(|data: &[u8]| fuzz_decoder(data, || FRAMING.codec(), &FRAMING));
//! ```

use std::fmt;
use std::io;

use chopstick_targets::wire::Framing;
use tokio_util::codec::Decoder;

use super::messages;
use crate::chaos::{Plan, Step};
use crate::codec::{check_framing_with, Compact, Preview, Rules, Verdict};

/// Bytes of one coarse write step (`0b10nnnnnn`) per unit of `n + 1`.
const COARSE_UNIT: usize = 64;
/// A plan byte's argument: its low 6 bits.
const ARG_MASK: u8 = 0x3f;

/// The messages and plan one fuzzer input stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecoderCase {
    pub messages: Vec<Vec<u8>>,
    pub plan: Plan,
}

impl DecoderCase {
    /// The codec checker's verdict on a fresh decoder from `make_decoder`.
    pub fn check<D, F>(&self, framing: &Framing, make_decoder: F, rules: Rules) -> Verdict
    where
        F: Fn() -> D,
        D: Decoder,
        D::Item: AsRef<[u8]>,
        D::Error: From<io::Error> + fmt::Display,
    {
        check_framing_with(framing, make_decoder, &self.messages, &self.plan, rules)
    }
}

impl fmt::Display for DecoderCase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} messages [", self.messages.len())?;
        for (i, m) in self.messages.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{}", Preview(m))?;
        }
        write!(f, "]; plan {}", Compact(&self.plan))
    }
}

/// Reads `data` as documented in the module docs; `None` if no message can be valid for
/// `framing` (a positive `adjust` above its `max`).
pub fn decoder_case(data: &[u8], framing: &Framing) -> Option<DecoderCase> {
    let (k, rest) = match data.split_first() {
        Some((&k, rest)) => (usize::from(k).min(rest.len()), rest),
        None => (0, data),
    };
    let (plan_bytes, tail) = rest.split_at(k);
    let messages = messages(framing, tail)?;
    let len = framing.encode_all(&messages).map(|(s, _)| s.len()).ok()?;
    Some(DecoderCase {
        plan: plan(plan_bytes, len),
        messages,
    })
}

/// The plan `bytes` stand for over a stream of `len` bytes.
fn plan(bytes: &[u8], len: usize) -> Plan {
    let mut steps = Vec::new();
    if bytes.is_empty() {
        return Plan::passthrough(len);
    }
    let mut covered = 0usize;
    // Every round through `bytes` either ends the plan or writes at least one byte per
    // write step; a plan without write steps ends after one round.
    'rounds: while covered < len {
        let mut wrote = false;
        for &b in bytes {
            let n = usize::from(b & ARG_MASK) + 1;
            let n = match b >> 6 {
                0 => {
                    steps.push(Step::Write(n));
                    n
                }
                1 => {
                    steps.extend([Step::Write(n), Step::Pause(0)]);
                    n
                }
                2 => {
                    steps.push(Step::Write(n * COARSE_UNIT));
                    n * COARSE_UNIT
                }
                _ => {
                    steps.push(if b & 1 == 0 { Step::Close } else { Step::Reset });
                    break 'rounds;
                }
            };
            wrote = true;
            covered += n;
            if covered >= len {
                break 'rounds;
            }
        }
        if !wrote {
            break;
        }
    }
    Plan::new(steps)
}

/// The verdict of the codec checker on the case `data` stands for; [`Verdict::Pass`] for
/// an input that stands for no valid case (libFuzzer moves on).
pub fn fuzz_decoder_verdict<D, F>(data: &[u8], make_decoder: F, framing: &Framing) -> Verdict
where
    F: Fn() -> D,
    D: Decoder,
    D::Item: AsRef<[u8]>,
    D::Error: From<io::Error> + fmt::Display,
{
    match decoder_case(data, framing) {
        Some(case) => case.check(framing, make_decoder, Rules::strict()),
        None => Verdict::Pass,
    }
}

/// The body of a cargo-fuzz target for your decoder (module docs): panics with the
/// verdict and the case on one line unless the decoder passes.
pub fn fuzz_decoder<D, F>(data: &[u8], make_decoder: F, framing: &Framing)
where
    F: Fn() -> D,
    D: Decoder,
    D::Item: AsRef<[u8]>,
    D::Error: From<io::Error> + fmt::Display,
{
    let Some(case) = decoder_case(data, framing) else {
        return;
    };
    let verdict = case.check(framing, make_decoder, Rules::strict());
    assert!(verdict.is_pass(), "{verdict} ({framing}; {case})");
}

/// Seeds for a `fuzz_decoder` target's corpus, as (name, bytes), for any framing: one
/// read, bytewise, bytewise with `Pending`, uneven chunks, coarse chunks, a FIN and a
/// reset mid-stream. `harness/tests/fuzz_decoder.rs` checks they are committed in
/// `fuzz/corpus/fuzz_decoder/seed-NAME`.
pub fn decoder_seeds() -> Vec<(&'static str, Vec<u8>)> {
    const SEP: u8 = 0xff;
    let input = |plan: &[u8], messages: &[&[u8]]| {
        let mut b = vec![plan.len() as u8];
        b.extend_from_slice(plan);
        b.extend(messages.join(&SEP));
        b
    };
    let large = [b'x'; 300];
    vec![
        ("one-read", input(&[], &[b"hello", b"", b"world"])),
        ("bytewise", input(&[0x00], &[b"hello", b"", b"w"])),
        ("bytewise-pending", input(&[0x40], &[b"ab", b"cde"])),
        (
            "uneven",
            input(&[0x01, 0x02, 0x40], &[b"hello", b"world", b"!"]),
        ),
        ("coarse", input(&[0x80, 0x02], &[&large, b"tail"])),
        (
            "fin-mid-stream",
            input(&[0x08, 0xc0], &[b"hello world", b"x"]),
        ),
        (
            "reset-mid-stream",
            input(&[0x03, 0x41, 0xc1], &[b"abc", b"defgh"]),
        ),
        ("fin-at-start", input(&[0xc0], &[b"abc"])),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framing() -> Framing {
        "u16be".parse().unwrap()
    }

    #[test]
    fn the_plan_bytes_repeat_until_they_cover_the_stream() {
        let case = decoder_case(&[1, 0x00, b'a', b'b', 0xff, b'c'], &framing()).unwrap();
        assert_eq!(case.messages, vec![b"ab".to_vec(), b"c".to_vec()]);
        assert_eq!(case.plan.to_string(), "w1 w1 w1 w1 w1 w1 w1");
    }

    #[test]
    fn an_end_byte_stops_the_plan_with_a_fin_or_a_reset() {
        let fin = decoder_case(&[2, 0x02, 0xc0, b'a', b'b'], &framing()).unwrap();
        assert_eq!(fin.plan.to_string(), "w3 close");
        let reset = decoder_case(&[2, 0x41, 0xc1, b'a', b'b'], &framing()).unwrap();
        assert_eq!(reset.plan.to_string(), "w2 p0 reset");
        let coarse = decoder_case(&[1, 0x81, b'a'], &framing()).unwrap();
        assert_eq!(coarse.plan.to_string(), "w128");
    }

    #[test]
    fn a_short_or_empty_input_is_still_a_case() {
        assert_eq!(
            decoder_case(&[], &framing()).unwrap(),
            DecoderCase {
                messages: vec![],
                plan: Plan::default()
            }
        );
        // k larger than what follows: every remaining byte is a plan byte.
        let case = decoder_case(&[200, 0x00], &framing()).unwrap();
        assert!(case.messages.is_empty());
    }

    #[test]
    fn the_reference_codec_passes_every_seed() {
        let framing = framing();
        for (name, data) in decoder_seeds() {
            let verdict = fuzz_decoder_verdict(&data, || framing.codec(), &framing);
            assert_eq!(verdict, Verdict::Pass, "seed {name}");
        }
    }
}
