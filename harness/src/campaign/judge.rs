//! The oracle's verdict on one connection: expected replies versus what came back.

use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::payload::preview;

/// What kind of wrong a server did. Stable names: they appear in reports and JUnit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FailureClass {
    /// A reply never came: the connection ended without it.
    Lost,
    /// A reply came twice.
    Duplicated,
    /// Replies came in another order.
    Reordered,
    /// A reply's bytes differ from what was due.
    Corrupted,
    /// A reply is a strict prefix of what was due (a short message).
    Truncated,
    /// A reply that no complete request asked for (e.g. to a frame cut mid-way).
    Phantom,
    /// The server stopped answering: no reply and no close within the deadline (on the
    /// faulted connection, or on a fresh one after the fault).
    Hang,
    /// The reply stream does not decode in the framing.
    MalformedReply,
    /// The server process exited.
    ServerDied,
    /// A fresh connection was refused after a fault (liveness).
    Refused,
    /// A fresh connection after a fault got a wrong reply (liveness).
    Liveness,
    /// auth accepted a digest it must reject (wrong key, replayed), or served a
    /// connection it had rejected.
    AuthBypass,
    /// auth rejected the right digest (e.g. one that arrived in pieces).
    AuthRejected,
    /// file: a put interrupted by a disconnect left a partly written file.
    NotAtomic,
    /// `check --client`: the client exited with an error after a clean end of the
    /// connection, or before delivering what was due.
    ClientCrashed,
}

impl FailureClass {
    pub fn name(self) -> &'static str {
        match self {
            FailureClass::Lost => "lost",
            FailureClass::Duplicated => "duplicated",
            FailureClass::Reordered => "reordered",
            FailureClass::Corrupted => "corrupted",
            FailureClass::Truncated => "truncated",
            FailureClass::Phantom => "phantom",
            FailureClass::Hang => "hang",
            FailureClass::MalformedReply => "malformed_reply",
            FailureClass::ServerDied => "server_died",
            FailureClass::Refused => "refused",
            FailureClass::Liveness => "liveness",
            FailureClass::AuthBypass => "auth_bypass",
            FailureClass::AuthRejected => "auth_rejected",
            FailureClass::NotAtomic => "not_atomic",
            FailureClass::ClientCrashed => "client_crashed",
        }
    }
}

impl fmt::Display for FailureClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How the reply stream ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum End {
    /// The server closed (FIN) at a frame boundary.
    Eof,
    /// The connection was reset, or we reset it ourselves.
    Reset,
    /// Nothing more arrived within the deadline.
    Timeout,
    /// The reply stream did not decode (the message says why).
    Malformed(String),
}

/// What came back on one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub replies: Vec<Bytes>,
    pub end: End,
}

/// One failed check, with the request index it concerns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub class: FailureClass,
    /// The request (0-based) whose reply was wrong or missing, if one is to blame.
    pub message: Option<usize>,
    pub detail: String,
}

impl Failure {
    pub fn new(class: FailureClass, message: Option<usize>, detail: impl Into<String>) -> Failure {
        Failure {
            class,
            message,
            detail: detail.into(),
        }
    }
}

/// One step of the alignment of seen replies against expected ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Expected reply `e` came as seen reply `s`.
    Match { e: usize, s: usize },
    /// Expected reply `e` has no counterpart.
    Missing(usize),
    /// Seen reply `s` answers no expected reply at its place.
    Extra(usize),
}

/// Most cells of the alignment table; beyond it (thousands of replies on one
/// connection) replies are aligned position by position instead.
const MAX_ALIGN_CELLS: usize = 1 << 22;

/// Aligns `seen` against `expected` by a longest common subsequence, so a reply that
/// went missing is one `Missing` even when payloads repeat (`[c, "", c]` seen as
/// `[c, c]` is one lost empty reply, not a duplicate). Ties keep matches early, so what
/// is left over sits at the end: a missing tail is a hang or a close, not a loss.
fn align(expected: &[Bytes], seen: &[Bytes]) -> Vec<Step> {
    let (n, m) = (expected.len(), seen.len());
    if (n + 1).saturating_mul(m + 1) > MAX_ALIGN_CELLS {
        let mut out = Vec::with_capacity(n.max(m));
        for i in 0..n.max(m) {
            match (expected.get(i), seen.get(i)) {
                (Some(a), Some(b)) if a == b => out.push(Step::Match { e: i, s: i }),
                (Some(_), Some(_)) => {
                    out.push(Step::Missing(i));
                    out.push(Step::Extra(i));
                }
                (Some(_), None) => out.push(Step::Missing(i)),
                (None, _) => out.push(Step::Extra(i)),
            }
        }
        return out;
    }
    // Payloads as small ids, so the table compares integers, not megabytes.
    let mut ids = std::collections::HashMap::<&[u8], u32>::new();
    let mut e = Vec::with_capacity(n);
    for b in expected {
        let next = ids.len() as u32;
        e.push(*ids.entry(b.as_ref()).or_insert(next));
    }
    let mut s = Vec::with_capacity(m);
    for b in seen {
        let next = ids.len() as u32;
        s.push(*ids.entry(b.as_ref()).or_insert(next));
    }
    // lcs[i][j]: the longest common subsequence of e[i..] and s[j..].
    let w = m + 1;
    let mut lcs = vec![0u32; (n + 1) * w];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i * w + j] = if e[i] == s[j] {
                lcs[(i + 1) * w + j + 1] + 1
            } else {
                lcs[(i + 1) * w + j].max(lcs[i * w + j + 1])
            };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::with_capacity(n.max(m));
    while i < n || j < m {
        if i < n && j < m && e[i] == s[j] {
            out.push(Step::Match { e: i, s: j });
            i += 1;
            j += 1;
        } else if j == m || (i < n && lcs[(i + 1) * w + j] >= lcs[i * w + j + 1]) {
            out.push(Step::Missing(i));
            i += 1;
        } else {
            out.push(Step::Extra(j));
            j += 1;
        }
    }
    out
}

/// Compares `seen` with `expected`. `must_finish`: every expected reply was due (false
/// when we reset the connection ourselves, so only a prefix can be checked).
///
/// The replies are aligned first (`align`); the first stretch where they disagree is
/// named, with what the whole alignment knows: a missing reply that came elsewhere is
/// `reordered`, a reply seen more often than asked for is `duplicated`, a short one is
/// `truncated`, one in place of a missing one is `corrupted`, one answering nothing is
/// `phantom`, a gap followed by later replies is `lost`.
pub fn judge(expected: &[Bytes], seen: &Seen, must_finish: bool) -> Option<Failure> {
    let steps = align(expected, &seen.replies);
    let missing: Vec<usize> = steps
        .iter()
        .filter_map(|s| match s {
            Step::Missing(e) => Some(*e),
            _ => None,
        })
        .collect();
    let extra: Vec<usize> = steps
        .iter()
        .filter_map(|s| match s {
            Step::Extra(j) => Some(*j),
            _ => None,
        })
        .collect();
    // Stretches of disagreement, a missing tail aside (the end of the stream judges it).
    let mut stretches = Vec::new();
    let mut at = 0;
    while at < steps.len() {
        if matches!(steps[at], Step::Match { .. }) {
            at += 1;
            continue;
        }
        let len = steps[at..]
            .iter()
            .take_while(|s| !matches!(s, Step::Match { .. }))
            .count();
        let tail = at + len == steps.len();
        let only_missing = steps[at..at + len]
            .iter()
            .all(|s| matches!(s, Step::Missing(_)));
        if !(tail && only_missing) {
            stretches.push(at..at + len);
        }
        at += len;
    }
    if stretches.len() > 1 {
        // One gap does not explain the replies: the stream is garbled (a receiver that
        // lost a frame boundary), so name the first reply that is wrong where it stands.
        if let Some(f) = judge_by_position(expected, &seen.replies) {
            return Some(f);
        }
    } else if let Some(range) = stretches.first() {
        let stretch = &steps[range.clone()];
        let m = stretch.iter().find_map(|s| match s {
            Step::Missing(e) => Some(*e),
            _ => None,
        });
        let x = stretch.iter().find_map(|s| match s {
            Step::Extra(j) => Some(*j),
            _ => None,
        });
        if let Some(f) = name_stretch(expected, &seen.replies, m, x, &missing, &extra, false) {
            return Some(f);
        }
    }
    if let End::Malformed(why) = &seen.end {
        return Some(Failure::new(
            FailureClass::MalformedReply,
            Some(seen.replies.len()),
            format!("after {} good replies: {why}", seen.replies.len()),
        ));
    }
    if must_finish {
        if let Some(&i) = missing.first() {
            let (class, how) = match seen.end {
                End::Timeout => (FailureClass::Hang, "no reply within the deadline"),
                End::Reset => (FailureClass::Lost, "connection reset before the reply"),
                _ => (FailureClass::Lost, "connection closed before the reply"),
            };
            return Some(Failure::new(
                class,
                Some(i),
                format!(
                    "message #{i} {}: {how} ({} of {} replies came)",
                    preview(&expected[i]),
                    seen.replies.len(),
                    expected.len()
                ),
            ));
        }
    }
    None
}

/// Names the first reply that differs from the one due at its position (for replies
/// no single gap explains). A repeat counts as duplicated only when the payload came
/// more often than it was asked for.
fn judge_by_position(expected: &[Bytes], seen: &[Bytes]) -> Option<Failure> {
    let count = |v: &[Bytes], b: &Bytes| v.iter().filter(|o| *o == b).count();
    for (i, got) in seen.iter().enumerate() {
        let Some(want) = expected.get(i) else {
            return Some(Failure::new(
                FailureClass::Phantom,
                None,
                format!(
                    "reply #{i} {} answers no complete request ({} were due)",
                    preview(got),
                    expected.len()
                ),
            ));
        };
        if got == want {
            continue;
        }
        let (class, detail) = if got.len() < want.len() && want.starts_with(got) {
            (
                FailureClass::Truncated,
                format!("reply #{i} has {} of {} bytes", got.len(), want.len()),
            )
        } else if i > 0 && *got == expected[i - 1] && count(seen, got) > count(expected, got) {
            (
                FailureClass::Duplicated,
                format!("reply #{i} repeats reply #{}", i - 1),
            )
        } else if let Some(j) = expected[i + 1..].iter().position(|e| e == got) {
            if expected[..i].contains(&expected[i + 1 + j]) || seen[i + 1..].contains(want) {
                (
                    FailureClass::Reordered,
                    format!("reply #{i} is the reply due for #{}", i + 1 + j),
                )
            } else {
                (
                    FailureClass::Lost,
                    format!(
                        "no reply to message #{i} {}; next reply answers #{}",
                        preview(want),
                        i + 1 + j
                    ),
                )
            }
        } else {
            (
                FailureClass::Corrupted,
                format!(
                    "reply #{i}: expected {}, got {}",
                    preview(want),
                    preview(got)
                ),
            )
        };
        return Some(Failure::new(class, Some(i), detail));
    }
    None
}

/// Names the first disagreement: `m` is its first missing expected reply, `x` its
/// first extra seen reply; `missing`/`extra` are all of them. `None` for a stretch of
/// missing replies at the very end, which the caller judges by how the stream ended.
fn name_stretch(
    expected: &[Bytes],
    seen: &[Bytes],
    m: Option<usize>,
    x: Option<usize>,
    missing: &[usize],
    extra: &[usize],
    at_tail: bool,
) -> Option<Failure> {
    let count = |v: &[Bytes], b: &Bytes| v.iter().filter(|o| *o == b).count();
    if let Some(j) = x {
        let got = &seen[j];
        if let Some(i) =
            m.filter(|&i| got.len() < expected[i].len() && expected[i].starts_with(got))
        {
            return Some(Failure::new(
                FailureClass::Truncated,
                Some(i),
                format!(
                    "reply #{j} has {} of {} bytes",
                    got.len(),
                    expected[i].len()
                ),
            ));
        }
        if let Some(&i) = missing.iter().find(|&&i| expected[i] == *got) {
            return Some(Failure::new(
                FailureClass::Reordered,
                Some(i),
                format!("reply #{j} is the reply due for #{i}"),
            ));
        }
    }
    if let Some(i) = m {
        if let Some(&j) = extra.iter().find(|&&j| seen[j] == expected[i]) {
            return Some(Failure::new(
                FailureClass::Reordered,
                Some(i),
                format!("the reply due for #{i} came later, as reply #{j}"),
            ));
        }
    }
    if let Some(j) = x {
        let got = &seen[j];
        let asked = count(expected, got);
        if asked > 0 && count(seen, got) > asked {
            let first = seen.iter().position(|o| o == got).unwrap_or(j);
            let i = expected.iter().position(|o| o == got);
            return Some(Failure::new(
                FailureClass::Duplicated,
                i,
                format!("reply #{j} repeats reply #{first} {}", preview(got)),
            ));
        }
        return Some(match m {
            Some(i) => Failure::new(
                FailureClass::Corrupted,
                Some(i),
                format!(
                    "reply #{j}: expected {}, got {}",
                    preview(&expected[i]),
                    preview(got)
                ),
            ),
            None => Failure::new(
                FailureClass::Phantom,
                None,
                format!(
                    "reply #{j} {} answers no complete request ({} were due)",
                    preview(got),
                    expected.len()
                ),
            ),
        });
    }
    let i = m?;
    if at_tail {
        return None;
    }
    Some(Failure::new(
        FailureClass::Lost,
        Some(i),
        format!(
            "no reply to message #{i} {}; later replies came",
            preview(&expected[i])
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(v: &[&str]) -> Vec<Bytes> {
        v.iter()
            .map(|s| Bytes::copy_from_slice(s.as_bytes()))
            .collect()
    }

    fn seen(v: &[&str], end: End) -> Seen {
        Seen { replies: b(v), end }
    }

    fn class(expected: &[&str], got: &[&str], end: End) -> Option<FailureClass> {
        judge(&b(expected), &seen(got, end), true).map(|f| f.class)
    }

    #[test]
    fn each_class_is_named_right() {
        let e = ["a", "bb", "ccc"];
        assert_eq!(class(&e, &["a", "bb", "ccc"], End::Eof), None);
        assert_eq!(
            class(&e, &["a", "b", "ccc"], End::Eof),
            Some(FailureClass::Truncated)
        );
        assert_eq!(class(&e, &["a", "ccc"], End::Eof), Some(FailureClass::Lost));
        assert_eq!(
            class(&e, &["a", "a", "bb"], End::Eof),
            Some(FailureClass::Duplicated)
        );
        assert_eq!(
            class(&e, &["a", "ccc", "bb"], End::Eof),
            Some(FailureClass::Reordered)
        );
        assert_eq!(
            class(&e, &["a", "xx", "ccc"], End::Eof),
            Some(FailureClass::Corrupted)
        );
        assert_eq!(
            class(&e, &["a", "bb", "ccc", ""], End::Eof),
            Some(FailureClass::Phantom)
        );
        assert_eq!(class(&e, &["a"], End::Timeout), Some(FailureClass::Hang));
        assert_eq!(class(&e, &["a"], End::Eof), Some(FailureClass::Lost));
        assert_eq!(
            class(&e, &["a"], End::Malformed("x".into())),
            Some(FailureClass::MalformedReply)
        );
    }

    #[test]
    fn a_lost_reply_among_repeated_payloads_is_lost_not_duplicated() {
        // Issue 14: a dropped empty message between two equal replies.
        assert_eq!(
            class(&["c", "", "c"], &["c", "c"], End::Eof),
            Some(FailureClass::Lost)
        );
        let f = judge(&b(&["c", "", "c"]), &seen(&["c", "c"], End::Eof), true).unwrap();
        assert_eq!(f.message, Some(1), "{f:?}");
    }

    #[test]
    fn a_lost_reply_before_a_repeat_is_lost_not_reordered() {
        // Issue 14: `["c","c5m","","c"]` seen as `["c","c5m","c"]`.
        assert_eq!(
            class(&["c", "c5m", "", "c"], &["c", "c5m", "c"], End::Eof),
            Some(FailureClass::Lost)
        );
    }

    #[test]
    fn a_reply_seen_more_often_than_asked_is_duplicated_and_a_swap_reordered() {
        assert_eq!(
            class(&["a", "b"], &["a", "a", "b"], End::Eof),
            Some(FailureClass::Duplicated)
        );
        assert_eq!(
            class(&["a"], &["a", "a"], End::Eof),
            Some(FailureClass::Duplicated)
        );
        assert_eq!(
            class(&["a", "b", "c", "d"], &["a", "c", "b", "d"], End::Eof),
            Some(FailureClass::Reordered)
        );
        assert_eq!(
            class(&["x", "", "x", ""], &["x", "x", "", ""], End::Eof),
            Some(FailureClass::Reordered)
        );
        // A lost tail with a repeat before it: the gap is what is named.
        assert_eq!(
            class(&["a", "", "a", "b"], &["a", "a"], End::Timeout),
            Some(FailureClass::Lost)
        );
    }

    #[test]
    fn a_garbled_stream_is_named_where_it_first_goes_wrong() {
        // A receiver that lost a frame boundary: an empty reply where a long one was
        // due, then garbage. No single gap explains it, so it is not "lost".
        assert_eq!(
            class(
                &["aaaa", "", "bbbb", "", "cccc", "dddd"],
                &["aaaa", "", "", "xbbb"],
                End::Eof
            ),
            Some(FailureClass::Truncated)
        );
    }

    #[test]
    fn alignment_keeps_leftovers_at_the_end() {
        assert_eq!(
            align(&b(&["a", "a"]), &b(&["a"])),
            [Step::Match { e: 0, s: 0 }, Step::Missing(1)]
        );
        assert_eq!(
            align(&b(&["a"]), &b(&["a", "x"])),
            [Step::Match { e: 0, s: 0 }, Step::Extra(1)]
        );
    }

    #[test]
    fn a_reset_we_caused_only_checks_the_prefix() {
        assert_eq!(
            judge(&b(&["a", "b"]), &seen(&["a"], End::Reset), false),
            None
        );
        assert!(judge(&b(&["a", "b"]), &seen(&["x"], End::Reset), false).is_some());
    }
}
