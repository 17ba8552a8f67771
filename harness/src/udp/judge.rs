//! Judging one UDP exchange: the oracles (what a right reply is), the request tags that
//! match replies to requests, and the failure kinds, told apart from the faults the
//! check injected itself (see [`super::check`] for the rules). No I/O: shared by the
//! check ([`super::check`]) and replays ([`super::repro`]).

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub use super::exchange::FaultCounts;
use super::exchange::{Exchange, Request};
use crate::campaign::payload::Payload;
use chopstick_targets::udp::strftime::{self, UtcTime};
use chopstick_targets::udp::{MAX_UDP_PAYLOAD, TRUNCATED_PREFIX};

/// Length of the `#xxxxxxxx#` tag that starts every request.
pub const TAG_LEN: usize = 10;

/// What a correct reply is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum UdpOracle {
    /// The same bytes.
    Echo,
    /// The ASCII upper-case of the request.
    Upper,
    /// The request is a format; the reply is the current UTC time in it.
    Time,
}

/// An `--oracle` that the UDP check does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown udp oracle `{0}` (expected echo, upper or time)")]
pub struct OracleParseError(pub String);

impl FromStr for UdpOracle {
    type Err = OracleParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "echo" => Ok(UdpOracle::Echo),
            "upper" => Ok(UdpOracle::Upper),
            "time" => Ok(UdpOracle::Time),
            _ => Err(OracleParseError(s.into())),
        }
    }
}

/// What went wrong with one reply or request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FailureKind {
    /// A reply that is a strict prefix of the right answer: a cut datagram served as whole.
    SilentTruncation,
    /// A reply that answers no request.
    Corrupted,
    /// A request the target received and never answered.
    Lost,
    /// More answers than copies the target received.
    Duplicated,
    /// A time reply not in the requested format near the current time.
    WrongTime,
}

impl std::fmt::Display for FailureKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = serde_json::to_value(self).ok();
        f.write_str(s.as_ref().and_then(|v| v.as_str()).unwrap_or("failure"))
    }
}

/// One failure, with expected vs seen where they exist.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct UdpFailure {
    pub kind: FailureKind,
    pub seq: Option<u64>,
    pub detail: String,
    // A payload is a string, or `{"hex": "..."}` when it is not UTF-8.
    #[cfg_attr(feature = "schema", schemars(with = "Option<serde_json::Value>"))]
    pub expected: Option<Payload>,
    #[cfg_attr(feature = "schema", schemars(with = "Option<serde_json::Value>"))]
    pub seen: Option<Payload>,
}

pub(crate) fn tag(seq: u64) -> String {
    format!("#{seq:08x}#")
}

/// The sequence number in a reply's leading tag (hex of either case).
pub fn parse_tag(bytes: &[u8]) -> Option<u64> {
    let t = bytes.get(..TAG_LEN)?;
    if t[0] != b'#' || t[TAG_LEN - 1] != b'#' {
        return None;
    }
    let hex = std::str::from_utf8(&t[1..TAG_LEN - 1]).ok()?;
    u64::from_str_radix(hex, 16).ok()
}

enum Verdict {
    Ok,
    Prefix(Bytes),
    Mismatch(Option<Bytes>),
}

fn verdict(oracle: UdpOracle, delivered: &Bytes, reply: &[u8], window: (i64, i64)) -> Verdict {
    let expected = match oracle {
        UdpOracle::Echo => delivered.clone(),
        UdpOracle::Upper => Bytes::from(delivered.to_ascii_uppercase()),
        UdpOracle::Time => {
            let format: &[u8] = if delivered.is_empty() {
                strftime::DEFAULT_FORMAT.as_bytes()
            } else {
                delivered
            };
            // Near now = equal to the format applied to some second in the window.
            let (lo, hi) = window;
            let hi = hi.min(lo.saturating_add(600));
            let mut nearest = None;
            for t in lo..=hi {
                if let Ok(e) = strftime::format(format, &UtcTime::from_unix(t), MAX_UDP_PAYLOAD) {
                    if e == reply {
                        return Verdict::Ok;
                    }
                    nearest.get_or_insert(Bytes::from(e));
                }
            }
            return Verdict::Mismatch(nearest);
        }
    };
    if expected == reply {
        Verdict::Ok
    } else if reply.len() < expected.len() && expected.starts_with(reply) {
        Verdict::Prefix(expected)
    } else {
        Verdict::Mismatch(Some(expected))
    }
}

/// The judgement of one exchange.
#[derive(Debug, Default)]
pub(crate) struct Judgement {
    pub observed: FaultCounts,
    pub truncation_reported: u64,
    pub failures: Vec<UdpFailure>,
}

fn payload(b: &[u8]) -> Option<Payload> {
    Some(Payload(Bytes::copy_from_slice(b)))
}

/// Judges the replies of `x` to `requests` with `oracle`.
pub(crate) fn judge(
    oracle: UdpOracle,
    requests: &[Request],
    x: &Exchange,
    tolerance: Duration,
) -> Judgement {
    let tol = i64::try_from(tolerance.as_secs())
        .unwrap_or(i64::MAX / 4)
        .max(1);
    let index: HashMap<u64, usize> = requests
        .iter()
        .enumerate()
        .map(|(i, r)| (r.seq, i))
        .collect();
    let mut answers = vec![0u32; requests.len()];
    let mut j = Judgement::default();
    let mut highest_first: Option<u64> = None;
    for (reply, at) in &x.replies {
        if reply.starts_with(TRUNCATED_PREFIX) {
            j.truncation_reported += 1;
            // The report quotes the request's first bytes; credit that request.
            let head = reply
                .windows(5)
                .position(|w| w == b"head=")
                .map(|p| &reply[p + 5..]);
            if let Some(i) = head.and_then(parse_tag).and_then(|s| index.get(&s)) {
                answers[*i] += 1;
            }
            continue;
        }
        // Candidates: the tagged request, or (tag cut off in transit) any request whose
        // delivered bytes lost their tag.
        let candidates: Vec<usize> = match parse_tag(reply).and_then(|s| index.get(&s)) {
            Some(i) if x.delivered[*i].is_some() => vec![*i],
            Some(_) => vec![],
            None => (0..requests.len())
                .filter(|i| x.delivered[*i].as_ref().is_some_and(|d| d.len() < TAG_LEN))
                .collect(),
        };
        let mut matched = None;
        let mut prefix = None;
        let mut mismatch = None;
        for &i in &candidates {
            let Some(d) = &x.delivered[i] else { continue };
            let window = (x.sent_unix[i].unwrap_or(*at) - tol, at + tol);
            match verdict(oracle, d, reply, window) {
                Verdict::Ok => {
                    // Among equal candidates, credit one still owed an answer.
                    if matched.is_none() || answers[i] < x.copies[i] {
                        matched = Some(i);
                    }
                    if answers[i] < x.copies[i] {
                        break;
                    }
                }
                Verdict::Prefix(e) => prefix = Some((i, e)),
                Verdict::Mismatch(e) => mismatch = Some((i, e)),
            }
        }
        if let Some(i) = matched {
            answers[i] += 1;
            let seq = requests[i].seq;
            if answers[i] == 1 {
                if highest_first.is_some_and(|h| seq < h) {
                    j.observed.reordered += 1;
                }
                highest_first = Some(highest_first.map_or(seq, |h| h.max(seq)));
            }
            if reply.len() < requests[i].request.0.len() && oracle != UdpOracle::Time {
                j.observed.truncated += 1; // cut in transit by the truncate fault: expected
            }
        } else if let Some((i, expected)) = prefix {
            answers[i] += 1;
            j.observed.truncated += 1;
            j.failures.push(UdpFailure {
                kind: FailureKind::SilentTruncation,
                seq: Some(requests[i].seq),
                detail: format!(
                    "reply has {} of the {} bytes expected and no truncation report: a cut datagram was served as whole",
                    reply.len(),
                    expected.len()
                ),
                expected: Some(Payload(expected)),
                seen: payload(reply),
            });
        } else {
            j.observed.corrupted += 1;
            let (seq, expected) = match mismatch {
                Some((i, e)) => {
                    answers[i] += 1;
                    (Some(requests[i].seq), e.map(Payload))
                }
                None => (None, None),
            };
            let kind = if oracle == UdpOracle::Time && seq.is_some() {
                FailureKind::WrongTime
            } else {
                FailureKind::Corrupted
            };
            j.failures.push(UdpFailure {
                kind,
                seq,
                detail: match (kind, seq) {
                    (FailureKind::WrongTime, _) => format!(
                        "reply is not the requested format at any second within {tol} s of the exchange"
                    ),
                    (_, Some(_)) => "reply carries a request's tag but not its answer".into(),
                    _ => "reply matches no request sent".into(),
                },
                expected,
                seen: payload(reply),
            });
        }
    }
    for (i, r) in requests.iter().enumerate() {
        let (copies, got) = (x.copies[i], answers[i]);
        if got == 0 {
            j.observed.lost += 1;
            if copies > 0 {
                j.failures.push(UdpFailure {
                    kind: FailureKind::Lost,
                    seq: Some(r.seq),
                    detail: format!("target received {copies} cop(ies) and never answered"),
                    expected: x.delivered[i].as_deref().and_then(payload),
                    seen: None,
                });
            }
        }
        j.observed.duplicated += u64::from(got.saturating_sub(1));
        if got > copies && copies > 0 {
            j.failures.push(UdpFailure {
                kind: FailureKind::Duplicated,
                seq: Some(r.seq),
                detail: format!("{got} answers to {copies} cop(ies) received"),
                expected: None,
                seen: None,
            });
        }
    }
    j
}

/// The distinct kinds among `f`, sorted: what a replay must see again.
pub(crate) fn kinds(f: &[UdpFailure]) -> Vec<FailureKind> {
    let mut k: Vec<FailureKind> = f.iter().map(|f| f.kind).collect();
    k.sort();
    k.dedup();
    k
}
