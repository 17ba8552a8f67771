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

/// Compares `seen` with `expected`. `must_finish`: every expected reply was due (false
/// when we reset the connection ourselves, so only a prefix can be checked).
pub fn judge(expected: &[Bytes], seen: &Seen, must_finish: bool) -> Option<Failure> {
    for (i, got) in seen.replies.iter().enumerate() {
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
        } else if i > 0 && *got == expected[i - 1] {
            (
                FailureClass::Duplicated,
                format!("reply #{i} repeats reply #{}", i - 1),
            )
        } else if let Some(j) = expected[i + 1..].iter().position(|e| e == got) {
            if expected[..i].contains(&expected[i + 1 + j]) || seen.replies[i + 1..].contains(want)
            {
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
    if let End::Malformed(why) = &seen.end {
        return Some(Failure::new(
            FailureClass::MalformedReply,
            Some(seen.replies.len()),
            format!("after {} good replies: {why}", seen.replies.len()),
        ));
    }
    if must_finish && seen.replies.len() < expected.len() {
        let i = seen.replies.len();
        let (class, how) = match seen.end {
            End::Timeout => (FailureClass::Hang, "no reply within the deadline"),
            End::Reset => (FailureClass::Lost, "connection reset before the reply"),
            _ => (FailureClass::Lost, "connection closed before the reply"),
        };
        return Some(Failure::new(
            class,
            Some(i),
            format!(
                "message #{i} {}: {how} ({i} of {} replies came)",
                preview(&expected[i]),
                expected.len()
            ),
        ));
    }
    None
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
    fn a_reset_we_caused_only_checks_the_prefix() {
        assert_eq!(
            judge(&b(&["a", "b"]), &seen(&["a"], End::Reset), false),
            None
        );
        assert!(judge(&b(&["a", "b"]), &seen(&["x"], End::Reset), false).is_some());
    }
}
