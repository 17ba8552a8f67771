//! proptest strategies for codec checks: messages, fault sets, plans and whole cases.
//!
//! Message sizes favour the ones decoders get wrong: 0, 1, the header size and one
//! either side of it, and the largest allowed. Plans come from the real faults
//! ([`FaultSet`]) driven by a generated seed, so a failing case shrinks by its messages
//! (fewer, shorter) while its plan is recomputed from the same seed and fault set, and
//! the fault set itself shrinks towards the simplest profile (plain `split`).

use bytes::BytesMut;
use chopstick_targets::wire::{FrameLayout, Framing};
use proptest::prelude::*;
use proptest::strategy::{NewTree, ValueTree};
use proptest::test_runner::TestRunner;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tokio_util::codec::Decoder;

use super::{check_framing_with, Rules, Verdict};
use crate::chaos::{FaultSet, Plan};

/// The fault profiles [`fault_sets`] picks from, simplest first (shrinking goes there).
pub const PROFILES: &[&str] = &[
    "split:max=1",
    "split",
    "boundary:all=true",
    "boundary",
    "coalesce",
    "coalesce:max=1:partial=1",
    "disconnect",
    "disconnect:mode=reset",
    "disconnect:at=mid-header",
    "disconnect:at=after-header",
    "disconnect:at=mid-body",
    "disconnect:at=boundary",
    "slow:limit=all",
    "bandwidth:rate=4000",
    "latency",
    "split:max=3,disconnect:at=mid-body",
    "boundary,coalesce,disconnect:mode=any:p=0.5",
    "mixed",
    "none",
];

/// The header size of `framing` (hjson: the prefix plus a typical small JSON header).
fn header_len(framing: &Framing) -> usize {
    match framing {
        Framing::Length(l) => l.header_len(),
        Framing::Line { .. } => 1,
        Framing::Hjson { .. } => 4 + r#"{"size":0}"#.len(),
        // Where a varint prefix grows to two bytes: the size one-`recv` readers miss.
        Framing::Varint { .. } => 128,
        // Where the netstring length grows to two digits.
        Framing::Netstring { .. } => 10,
        Framing::Raw { .. } => 1,
    }
}

/// One payload of 0..=`max_len` bytes, sizes biased towards 0, 1, `header`±1 and `max_len`.
pub fn payload(header: usize, max_len: usize, line: bool) -> impl Strategy<Value = Vec<u8>> {
    let byte = any::<u8>().prop_map(move |b| if line && b == b'\n' { b'n' } else { b });
    payload_of(byte, header, max_len)
}

/// One payload of bytes from `byte`, sizes biased as in [`payload`]. A payload drawn at
/// `max_len` shrinks in size (by bisection towards empty), like the others.
pub fn payload_of(
    byte: impl Strategy<Value = u8> + Clone,
    header: usize,
    max_len: usize,
) -> impl Strategy<Value = Vec<u8>> {
    let near_header = header.saturating_sub(1).min(max_len)..=(header + 1).min(max_len);
    prop_oneof![
        4 => prop::collection::vec(byte.clone(), 0..=max_len.min(2 * header + 2)),
        2 => prop::collection::vec(byte.clone(), near_header),
        1 => prop::collection::vec(byte.clone(), 0..=1),
        1 => Largest { byte, len: max_len },
    ]
}

/// Printable ASCII payloads (`' '..='~'`, so no newline), sizes biased as in
/// [`payload`]: for text codecs such as `LinesCodec` that reject bytes that are not UTF-8.
pub fn text_payload(header: usize, max_len: usize) -> impl Strategy<Value = Vec<u8>> {
    payload_of(b' '..=b'~', header, max_len)
}

/// `len` bytes from `byte`, shrinking by length: proptest's `vec(_, n..=n)` cannot get
/// shorter than `n`, so a failure found with a large message would stay large.
#[derive(Debug, Clone)]
struct Largest<S> {
    byte: S,
    len: usize,
}

impl<S: Strategy<Value = u8>> Strategy for Largest<S> {
    type Tree = LargestTree;
    type Value = Vec<u8>;

    fn new_tree(&self, runner: &mut TestRunner) -> NewTree<Self> {
        let bytes = (0..self.len)
            .map(|_| self.byte.new_tree(runner).map(|t| t.current()))
            .collect::<Result<Vec<u8>, _>>()?;
        Ok(LargestTree {
            bytes,
            len: proptest::num::usize::BinarySearch::new(self.len),
        })
    }
}

/// A [`Largest`] value: its bytes, and a length that bisects towards 0 as it shrinks.
#[derive(Debug, Clone)]
struct LargestTree {
    bytes: Vec<u8>,
    len: proptest::num::usize::BinarySearch,
}

impl ValueTree for LargestTree {
    type Value = Vec<u8>;

    fn current(&self) -> Vec<u8> {
        self.bytes[..self.len.current()].to_vec()
    }

    fn simplify(&mut self) -> bool {
        self.len.simplify()
    }

    fn complicate(&mut self) -> bool {
        self.len.complicate()
    }
}

/// 0..=8 payloads valid for `framing`, each at most `max_len` bytes (and the framing's max).
///
/// With `keep` each payload is a whole frame: drawn bytes padded to the header (and a
/// positive `adjust`), with the length field the encoder writes, so it decodes as sent.
pub fn messages_for(framing: &Framing, max_len: usize) -> impl Strategy<Value = Vec<Vec<u8>>> {
    let line = matches!(framing, Framing::Line { .. });
    let max_len = max_len.min(framing.max());
    let framing = *framing;
    prop::collection::vec(payload(header_len(&framing), max_len, line), 0..=8).prop_map(
        move |msgs| {
            msgs.into_iter()
                .map(|m| super::whole_frame(&framing, m))
                .collect()
        },
    )
}

/// 0..=8 payloads of at most `max_len` bytes, for a codec of unknown framing (sizes
/// around a 4-byte header are favoured).
pub fn messages(max_len: usize) -> impl Strategy<Value = Vec<Vec<u8>>> {
    prop::collection::vec(payload(4, max_len, false), 0..=8)
}

/// A fault set from [`PROFILES`].
pub fn fault_sets() -> impl Strategy<Value = FaultSet> {
    let sets: Vec<FaultSet> = PROFILES
        .iter()
        .map(|p| p.parse().expect("every built-in profile parses"))
        .collect();
    (0..sets.len()).prop_map(move |i| sets[i].clone())
}

/// Plans for one stream of `len` bytes with these layouts, drawn by `faults`.
pub fn plan_for(
    faults: FaultSet,
    len: usize,
    frames: Vec<FrameLayout>,
) -> impl Strategy<Value = Plan> {
    any::<u64>()
        .prop_map(move |seed| faults.plan(len, &frames, &mut ChaCha8Rng::seed_from_u64(seed)))
}

/// One generated check: messages, the faults and seed that drew the plan, and the plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Case {
    pub framing: Framing,
    pub messages: Vec<Vec<u8>>,
    pub faults: FaultSet,
    pub seed: u64,
    pub plan: Plan,
}

impl Case {
    /// Draws the case's plan: the messages encoded with `framing`, planned by `faults`.
    pub fn new(framing: Framing, messages: Vec<Vec<u8>>, faults: FaultSet, seed: u64) -> Case {
        let mut stream = BytesMut::new();
        // Messages from these strategies always encode; a failure leaves the frame out
        // of the layouts, and check_framing then reports it as EncodeFailed.
        let frames: Vec<FrameLayout> = messages
            .iter()
            .map_while(|m| framing.encode(m, &mut stream).ok())
            .collect();
        let plan = faults.plan(stream.len(), &frames, &mut ChaCha8Rng::seed_from_u64(seed));
        Case {
            framing,
            messages,
            faults,
            seed,
            plan,
        }
    }

    /// Total payload bytes: the "size" of a (shrunk) case.
    pub fn payload_bytes(&self) -> usize {
        self.messages.iter().map(Vec::len).sum()
    }

    /// Runs [`check_framing`](super::check_framing) on this case with a fresh decoder from `make_decoder`.
    pub fn check<D, F>(&self, make_decoder: F) -> Verdict
    where
        F: Fn() -> D,
        D: Decoder,
        D::Item: AsRef<[u8]>,
        D::Error: From<std::io::Error> + std::fmt::Display,
    {
        self.check_with(make_decoder, Rules::strict())
    }

    /// Runs [`check_framing_with`] on this case under `rules` (e.g. [`Rules::json_lines`]).
    pub fn check_with<D, F>(&self, make_decoder: F, rules: Rules) -> Verdict
    where
        F: Fn() -> D,
        D: Decoder,
        D::Item: AsRef<[u8]>,
        D::Error: From<std::io::Error> + std::fmt::Display,
    {
        check_framing_with(
            &self.framing,
            make_decoder,
            &self.messages,
            &self.plan,
            rules,
        )
    }
}

/// Cases for `framing` with payloads up to `max_len` bytes and faults from [`fault_sets`].
pub fn case(framing: Framing, max_len: usize) -> impl Strategy<Value = Case> {
    case_with(framing, max_len, fault_sets())
}

/// Cases for `framing` with payloads up to `max_len` bytes and faults from `faults`.
pub fn case_with(
    framing: Framing,
    max_len: usize,
    faults: impl Strategy<Value = FaultSet>,
) -> impl Strategy<Value = Case> {
    let messages = messages_for(&framing, max_len);
    case_of(framing, messages, faults)
}

/// Cases for `framing` with 0..=8 payloads from `payload` and faults from
/// [`fault_sets`]: e.g. [`text_payload`] for a text-only codec. The payloads must be
/// valid for `framing` (no newline for `line`, at most its `max`).
///
/// ```
/// use chopstick::codec::{strategy, Rules};
/// use chopstick_targets::wire::Framing;
/// use proptest::prelude::*;
/// use tokio_util::codec::LinesCodec;
///
/// proptest! {
///     // In a test file: #[test]
///     fn lines_codec_survives_chaos(case in strategy::case_with_payload(
///         "line".parse::<Framing>().unwrap(), strategy::text_payload(1, 64))) {
///         // LinesCodec returns an unterminated last line, as JSON Lines allows.
///         let verdict = case.check_with(LinesCodec::new, Rules::json_lines());
///         prop_assert!(verdict.is_pass(), "{verdict}\n{case}");
///     }
/// }
/// # lines_codec_survives_chaos();
/// ```
pub fn case_with_payload(
    framing: Framing,
    payload: impl Strategy<Value = Vec<u8>>,
) -> impl Strategy<Value = Case> {
    case_of(framing, prop::collection::vec(payload, 0..=8), fault_sets())
}

/// Cases for `framing` with message lists from `messages` and faults from `faults`.
pub fn case_of(
    framing: Framing,
    messages: impl Strategy<Value = Vec<Vec<u8>>>,
    faults: impl Strategy<Value = FaultSet>,
) -> impl Strategy<Value = Case> {
    // Tuples shrink element by element and never go back, so the fault set and seed
    // settle first and the messages then shrink under that (simplest failing) plan.
    (faults, any::<u64>(), messages)
        .prop_map(move |(faults, seed, messages)| Case::new(framing, messages, faults, seed))
}
