//! `differential` (`--oracle differential`, `--unordered` for `{"differential":
//! {"unordered": true}}`): a server is judged against itself, with the noise filtered
//! out, after Twitter's Diffy. For servers whose replies chopstick cannot predict.
//!
//! For each case, two unfaulted baseline runs on fresh connections send the requests
//! the faulted run delivers whole: one before the faulted run, one after it.
//!
//! ```text
//! baseline A   "t=1700000001 id=7f3a ok"      same length: the bytes that differ
//! baseline B   "t=1700000002 id=c410 ok"      (timestamp, id) are masked
//! mask         "...........?.???.?....."      '?' = compared by position only
//! reply        different lengths in A and B:  compared by presence only
//! ```
//!
//! The faulted run must then give, in order (or as a multiset with `unordered`):
//! - every baseline reply, masked, when no cut ended the request stream;
//! - after a cut, a prefix of them (a server may drop work when its client goes);
//! - never more replies than a baseline got: a reply beyond them answers a request
//!   that was never completed. A server that closes after k replies (one request per
//!   connection) shows k replies in its baselines, and that is what is due.
//!
//! When the baselines disagree on how many replies come, the fewer are due and the
//! rest may come or not. A baseline that did not end in a clean close (a reset, half
//! a frame) bounds nothing: a server
//! that closes with requests unread resets, and the reset may discard replies it sent.
//!
//! Stateful servers: the second baseline runs after the faulted case, so replies that
//! change because of what earlier connections did (a counter, a stored key) differ
//! between the baselines and are masked, not blamed. What the masks cannot absorb is a
//! reply whose *shape* depends on history (a "not found" that later reads "found").
//! For such servers make each session self-contained: let it create what it reads,
//! under names unique to the session (e.g. derived from its connection index), or
//! reset the server between cases (`check --spawn` restarts it after a failure only).

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Baseline, Oracle, OracleError, Probe};
use crate::campaign::drive::Fin;
use crate::campaign::judge::{self, Failure, FailureClass, Seen};
use crate::campaign::payload::preview;

/// The differential oracle.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Differential {
    /// Replies may come in any order (matched as a multiset): for servers that answer
    /// pipelined requests out of order.
    #[serde(default)]
    pub unordered: bool,
}

impl Differential {
    pub fn build(config: Option<&Value>) -> Result<Arc<dyn Oracle>, OracleError> {
        let oracle = match config {
            None | Some(Value::Null) => Differential::default(),
            Some(v) => {
                serde_json::from_value(v.clone()).map_err(|source| OracleError::BadConfig {
                    name: "differential".into(),
                    source,
                })?
            }
        };
        Ok(Arc::new(oracle))
    }
}

impl Oracle for Differential {
    fn name(&self) -> &str {
        "differential"
    }

    /// Only the baselines know; the campaign asks [`Baseline::judge`] instead.
    fn expected(&self, _conn: u64, _messages: &[Bytes]) -> Vec<Bytes> {
        Vec::new()
    }

    // The default form stays the plain name, as in older reproducer files.
    fn config(&self) -> Option<Value> {
        self.unordered
            .then(|| serde_json::to_value(self).expect("serialises"))
    }

    // A server may drop pending work when its client goes: a prefix is due after a cut.
    fn close_aborts(&self) -> bool {
        true
    }

    // A real request (the session's first) is what a real server can answer; any reply
    // proves it still serves, since what it should be is the baselines' business.
    fn probe(&self, session: &[Bytes]) -> Probe {
        Probe {
            message: session
                .first()
                .cloned()
                .unwrap_or_else(|| Bytes::from_static(super::PROBE_MESSAGE)),
            reply: None,
            fin: Fin::Never,
        }
    }

    fn baseline(&self) -> Option<&dyn Baseline> {
        Some(self)
    }
}

/// What one reply position demands, learnt from two baselines (also what `bench
/// --traffic` holds each reply to).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Slot {
    /// Same length in both baselines: equal bytes where `noise` is false.
    Masked { reply: Bytes, noise: Vec<bool> },
    /// Different lengths: any reply will do.
    Presence { reply: Bytes },
}

impl Slot {
    /// Exactly these bytes (a reply chopstick can predict).
    pub fn exact(reply: Bytes) -> Slot {
        let noise = vec![false; reply.len()];
        Slot::Masked { reply, noise }
    }

    /// The slot two baseline replies to the same request agree on.
    pub fn learn(a: &Bytes, b: &Bytes) -> Slot {
        if a.len() == b.len() {
            Slot::Masked {
                reply: a.clone(),
                noise: widen(a, a.iter().zip(b.iter()).map(|(x, y)| x != y).collect()),
            }
        } else {
            Slot::Presence { reply: a.clone() }
        }
    }

    /// The first baseline's reply (what a report shows as expected).
    pub fn reply(&self) -> &Bytes {
        match self {
            Slot::Masked { reply, .. } | Slot::Presence { reply } => reply,
        }
    }

    /// Whether `got` is this reply, noise aside.
    pub fn matches(&self, got: &[u8]) -> bool {
        match self {
            Slot::Presence { .. } => true,
            Slot::Masked { reply, noise } => {
                got.len() == reply.len()
                    && got
                        .iter()
                        .zip(reply.iter())
                        .zip(noise)
                        .all(|((g, r), n)| *n || g == r)
            }
        }
    }
}

/// Width of the binary fields a differing non-text byte masks (see [`widen`]).
const BINARY_FIELD: usize = 8;

/// A differing byte masks the whole word it is in (a run of ASCII letters and digits):
/// a timestamp or id that differs in one digit between the baselines may differ in any
/// other digit next time (B1 = 1203 and B2 = 1303 agree on the last digit; 1250 does not).
///
/// A differing byte outside any word belongs to a binary field (a counter, memcached's
/// CAS, an id): a counter whose low byte differs between the baselines carries into the
/// bytes above it later, so the aligned [`BINARY_FIELD`]-byte block it lies in is masked
/// (aligned u16/u32/u64 fields, either byte order). Found on memcached: CAS 5 and 8 in the
/// baselines, 0x0124 under load.
fn widen(reply: &[u8], mut noise: Vec<bool>) -> Vec<bool> {
    let word = |i: usize| reply[i].is_ascii_alphanumeric();
    let binary: Vec<usize> = (0..reply.len()).filter(|&i| noise[i] && !word(i)).collect();
    for i in binary {
        let start = i - i % BINARY_FIELD;
        let end = (start + BINARY_FIELD).min(reply.len());
        noise[start..end].iter_mut().for_each(|n| *n = true);
    }
    let mut i = 0;
    // Each round moves `i` past one word (or one byte that is not in a word).
    while i < reply.len() {
        if !word(i) {
            i += 1;
            continue;
        }
        let start = i;
        while i < reply.len() && word(i) {
            i += 1;
        }
        if noise[start..i].iter().any(|n| *n) {
            noise[start..i].iter_mut().for_each(|n| *n = true);
        }
    }
    noise
}

/// The replies due (`slots[..due]`) and allowed (`slots`), learnt from the baselines.
#[derive(Debug)]
struct Model {
    slots: Vec<Slot>,
    due: usize,
}

impl Model {
    fn learn(a: &[Bytes], b: &[Bytes], unordered: bool) -> Model {
        let due = a.len().min(b.len());
        let (long, short) = if a.len() >= b.len() { (a, b) } else { (b, a) };
        let pair: Vec<Option<usize>> = if unordered {
            pair_unordered(long, short)
        } else {
            (0..long.len())
                .map(|i| (i < short.len()).then_some(i))
                .collect()
        };
        let slots = long
            .iter()
            .zip(&pair)
            .map(|(l, p)| match p {
                Some(j) => Slot::learn(l, &short[*j]),
                None => Slot::Presence { reply: l.clone() },
            })
            .collect();
        Model { slots, due }
    }
}

/// Pairs each of `long`'s replies with one of `short`'s: an equal one first, else the
/// closest of the same length (fewest differing bytes); unpaired ones become
/// presence-only slots.
fn pair_unordered(long: &[Bytes], short: &[Bytes]) -> Vec<Option<usize>> {
    let mut used = vec![false; short.len()];
    let mut pair = vec![None; long.len()];
    for (i, l) in long.iter().enumerate() {
        if let Some(j) = (0..short.len()).find(|&j| !used[j] && short[j] == *l) {
            used[j] = true;
            pair[i] = Some(j);
        }
    }
    let distance = |x: &Bytes, y: &Bytes| x.iter().zip(y.iter()).filter(|(a, b)| a != b).count();
    for (i, l) in long.iter().enumerate() {
        if pair[i].is_some() {
            continue;
        }
        let closest = (0..short.len())
            .filter(|&j| !used[j] && short[j].len() == l.len())
            .min_by_key(|&j| distance(l, &short[j]));
        if let Some(j) = closest {
            used[j] = true;
            pair[i] = Some(j);
        }
    }
    pair
}

impl Differential {
    /// In order: each reply is replaced by the baseline reply it matches (its own
    /// slot's, or another's, so `judge` can tell a reordered or repeated reply from a
    /// corrupted one), then judged exactly.
    fn judge_ordered(&self, model: &Model, seen: &Seen, must_finish: bool) -> Option<Failure> {
        let replies = seen
            .replies
            .iter()
            .enumerate()
            .map(|(i, got)| {
                let own = model.slots.get(i).filter(|s| s.matches(got));
                let other = || {
                    model
                        .slots
                        .iter()
                        .find(|s| !s.matches_any() && s.matches(got))
                };
                own.or_else(other)
                    .map_or_else(|| got.clone(), |s| s.reply().clone())
            })
            .collect();
        let normal = Seen {
            replies,
            end: seen.end.clone(),
        };
        // Replies past `due` may come or not: demand only as many as came, or `due`.
        let demanded = normal.replies.len().max(model.due).min(model.slots.len());
        let expected: Vec<Bytes> = model.slots[..demanded]
            .iter()
            .map(|s| s.reply().clone())
            .collect();
        judge::judge(&expected, &normal, must_finish)
    }

    /// As a multiset: each reply takes an unused slot it matches.
    fn judge_unordered(&self, model: &Model, seen: &Seen, must_finish: bool) -> Option<Failure> {
        let mut used = vec![false; model.slots.len()];
        for (i, got) in seen.replies.iter().enumerate() {
            if i >= model.slots.len() {
                return Some(Failure::new(
                    FailureClass::Phantom,
                    None,
                    format!(
                        "reply #{i} {} answers no complete request (the baselines got {})",
                        preview(got),
                        model.slots.len()
                    ),
                ));
            }
            // Exact slots first, so a presence-only slot does not take another's reply.
            let free = |exact: bool| {
                (0..model.slots.len()).find(|&j| {
                    !used[j] && model.slots[j].matches_any() != exact && model.slots[j].matches(got)
                })
            };
            match free(true).or_else(|| free(false)) {
                Some(j) => used[j] = true,
                None => {
                    let again = model.slots.iter().any(|s| s.matches(got));
                    let (class, how) = if again {
                        (FailureClass::Duplicated, "repeats a reply already given")
                    } else {
                        (FailureClass::Corrupted, "matches no baseline reply")
                    };
                    return Some(Failure::new(
                        class,
                        Some(i),
                        format!("reply #{i} {} {how}", preview(got)),
                    ));
                }
            }
        }
        if let judge::End::Malformed(why) = &seen.end {
            return Some(Failure::new(
                FailureClass::MalformedReply,
                Some(seen.replies.len()),
                format!("after {} good replies: {why}", seen.replies.len()),
            ));
        }
        if must_finish && seen.replies.len() < model.due {
            let class = if seen.end == judge::End::Timeout {
                FailureClass::Hang
            } else {
                FailureClass::Lost
            };
            return Some(Failure::new(
                class,
                None,
                format!(
                    "{} of {} replies came ({:?})",
                    seen.replies.len(),
                    model.due,
                    seen.end
                ),
            ));
        }
        None
    }
}

impl Slot {
    fn matches_any(&self) -> bool {
        matches!(self, Slot::Presence { .. })
    }
}

impl Baseline for Differential {
    fn runs(&self) -> (usize, usize) {
        (1, 1)
    }

    fn judge(
        &self,
        baselines: &[Seen],
        seen: &Seen,
        must_finish: bool,
    ) -> (Vec<Bytes>, Option<Failure>) {
        let a = baselines.first().map_or(&[][..], |b| &b.replies[..]);
        let b = baselines.get(1).map_or(a, |b| &b.replies[..]);
        let model = Model::learn(a, b, self.unordered);
        let expected = model.slots.iter().map(|s| s.reply().clone()).collect();
        // A baseline that did not end in a clean close may have lost replies the server
        // sent (a server closing with unread requests resets, and the reset discards
        // what was not yet read, whole or half a frame): its count is no upper bound,
        // so replies beyond the slots go unjudged.
        let open_ended = baselines.iter().any(|b| b.end != judge::End::Eof);
        let mut seen = seen.clone();
        if open_ended {
            seen.replies.truncate(model.slots.len());
        }
        let seen = &seen;
        let failure = if self.unordered {
            self.judge_unordered(&model, seen, must_finish)
        } else {
            self.judge_ordered(&model, seen, must_finish)
        };
        (expected, failure)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::campaign::judge::End;

    fn b(v: &[&str]) -> Vec<Bytes> {
        v.iter()
            .map(|s| Bytes::copy_from_slice(s.as_bytes()))
            .collect()
    }

    fn seen(v: &[&str], end: End) -> Seen {
        Seen { replies: b(v), end }
    }

    fn verdict(
        oracle: Differential,
        a: &[&str],
        bb: &[&str],
        got: &[&str],
        must_finish: bool,
    ) -> Option<FailureClass> {
        let baselines = [seen(a, End::Eof), seen(bb, End::Eof)];
        Baseline::judge(&oracle, &baselines, &seen(got, End::Eof), must_finish)
            .1
            .map(|f| f.class)
    }

    const ORDERED: Differential = Differential { unordered: false };
    const UNORDERED: Differential = Differential { unordered: true };

    #[test]
    fn bytes_that_differ_between_baselines_are_masked_and_the_rest_compared() {
        let a = ["t=1 id=aa ok", "v"];
        let bb = ["t=2 id=bb ok", "v"];
        assert_eq!(
            verdict(ORDERED, &a, &bb, &["t=9 id=zz ok", "v"], true),
            None
        );
        assert_eq!(
            verdict(ORDERED, &a, &bb, &["t=9 id=zz OK", "v"], true),
            Some(FailureClass::Corrupted)
        );
        assert_eq!(
            verdict(ORDERED, &a, &bb, &["t=9 id=zz o", "v"], true),
            Some(FailureClass::Corrupted)
        );
        assert_eq!(
            verdict(ORDERED, &a, &bb, &["t=9 id=zz ok"], true),
            Some(FailureClass::Lost)
        );
        assert_eq!(
            verdict(ORDERED, &a, &bb, &["t=9 id=zz ok", "v", "x"], true),
            Some(FailureClass::Phantom)
        );
        assert_eq!(
            verdict(ORDERED, &a, &bb, &["v", "t=9 id=zz ok"], true),
            Some(FailureClass::Reordered)
        );
    }

    #[test]
    fn a_number_that_differs_in_one_digit_is_masked_whole() {
        let (a, bb) = (["t=1203 ok"], ["t=1303 ok"]);
        assert_eq!(verdict(ORDERED, &a, &bb, &["t=1250 ok"], true), None);
        assert_eq!(
            verdict(ORDERED, &a, &bb, &["t=1250 no"], true),
            Some(FailureClass::Corrupted)
        );
    }

    #[test]
    fn a_binary_counter_that_differs_in_its_low_byte_is_masked_as_a_whole_field() {
        // memcached's set reply: 16 header bytes, then an 8-byte big-endian CAS.
        let reply = |cas: u64, status: u8| {
            let mut r = vec![0x81, 0x01, 0, 0, 0, 0, 0, status, 0, 0, 0, 0, 0, 0, 0, 0];
            r.extend_from_slice(&cas.to_be_bytes());
            Bytes::from(r)
        };
        let slot = Slot::learn(&reply(5, 0), &reply(8, 0));
        assert!(
            slot.matches(&reply(0x0124, 0)),
            "a CAS that carried is noise"
        );
        assert!(
            !slot.matches(&reply(0x0124, 1)),
            "the status byte is still compared"
        );
    }

    #[test]
    fn a_reply_whose_length_varies_is_compared_by_presence_only() {
        let a = ["short", "x"];
        let bb = ["much longer", "x"];
        assert_eq!(
            verdict(ORDERED, &a, &bb, &["anything at all", "x"], true),
            None
        );
        assert_eq!(
            verdict(ORDERED, &a, &bb, &["anything", "y"], true),
            Some(FailureClass::Corrupted)
        );
    }

    #[test]
    fn after_a_cut_a_prefix_is_enough_but_never_more_than_the_baselines_got() {
        let a = ["r0", "r1", "r2"];
        assert_eq!(verdict(ORDERED, &a, &a, &["r0"], false), None);
        assert_eq!(verdict(ORDERED, &a, &a, &[], false), None);
        assert_eq!(
            verdict(ORDERED, &a, &a, &["r0", "r1"], true),
            Some(FailureClass::Lost)
        );
        assert_eq!(
            verdict(ORDERED, &a, &a, &["r0", "r1", "r2", "r3"], false),
            Some(FailureClass::Phantom)
        );
    }

    #[test]
    fn a_server_that_closes_after_one_reply_is_held_to_one_reply() {
        // One request per connection: the baselines show one reply, then a close.
        assert_eq!(verdict(ORDERED, &["r0"], &["r0"], &["r0"], true), None);
        assert_eq!(
            verdict(ORDERED, &["r0"], &["r0"], &["r0", "r1"], true),
            Some(FailureClass::Phantom)
        );
        assert_eq!(
            verdict(ORDERED, &["r0"], &["r0"], &[], true),
            Some(FailureClass::Lost)
        );
    }

    #[test]
    fn a_baseline_the_server_reset_bounds_nothing() {
        let baselines = [seen(&[], End::Reset), seen(&["r0"], End::Eof)];
        let got = seen(&["r0", "r1"], End::Eof);
        assert_eq!(Baseline::judge(&ORDERED, &baselines, &got, true).1, None);
        let calm = [seen(&[], End::Eof), seen(&["r0"], End::Eof)];
        assert!(Baseline::judge(&ORDERED, &calm, &got, true).1.is_some());
    }

    #[test]
    fn baselines_that_disagree_on_the_count_demand_the_fewer() {
        let a = ["r0", "r1"];
        let bb = ["r0"];
        assert_eq!(verdict(ORDERED, &a, &bb, &["r0"], true), None);
        assert_eq!(verdict(ORDERED, &a, &bb, &["r0", "whatever"], true), None);
        assert_eq!(
            verdict(ORDERED, &a, &bb, &["r0", "r1", "r2"], true),
            Some(FailureClass::Phantom)
        );
    }

    #[test]
    fn unordered_matches_replies_as_a_multiset() {
        let a = ["id=1 a", "id=2 b", "c"];
        let bb = ["c", "id=9 b", "id=8 a"];
        assert_eq!(
            verdict(UNORDERED, &a, &bb, &["c", "id=5 a", "id=6 b"], true),
            None
        );
        assert!(verdict(ORDERED, &a, &a, &["c", "id=1 a", "id=2 b"], true).is_some());
        // Paired by likeness: the letter that tells the replies apart stays compared.
        assert_eq!(
            verdict(UNORDERED, &a, &bb, &["c", "id=5 a", "id=6 a"], true),
            Some(FailureClass::Duplicated)
        );
        assert_eq!(
            verdict(UNORDERED, &a, &bb, &["c", "c", "id=6 b"], true),
            Some(FailureClass::Duplicated)
        );
        assert_eq!(
            verdict(UNORDERED, &a, &bb, &["c", "zzzzzz"], true),
            Some(FailureClass::Corrupted)
        );
        assert_eq!(verdict(UNORDERED, &a, &bb, &["c"], false), None);
        assert_eq!(
            verdict(UNORDERED, &a, &bb, &["c"], true),
            Some(FailureClass::Lost)
        );
    }

    #[test]
    fn the_plain_form_stays_the_name_and_unordered_round_trips() {
        assert_eq!(ORDERED.config(), None);
        let v = UNORDERED.config().unwrap();
        assert_eq!(v, serde_json::json!({"unordered": true}));
        let back = Differential::build(Some(&v)).unwrap();
        assert_eq!(back.config(), Some(v));
        assert!(Differential::build(Some(&serde_json::json!({"x": 1}))).is_err());
    }
}
