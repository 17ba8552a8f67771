//! `file` (`--oracle file`): the file server, hjson both ways. Each message is the body
//! of a put under a name derived from it and its connection ([`name`]); after the case,
//! the read-back capability gets every file back on a fresh connection. A put cut by a
//! disconnect must have left the old file or none, never part of the new one.
//!
//! Names come from the content, so shrinking (which drops messages) never renames the
//! remaining ones.

use std::sync::Arc;

use bytes::Bytes;
use chopstick_targets::wire::{Framing, HjsonCodec, HjsonFrame, WireError, DEFAULT_MAX};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::{encode_hjson, no_config, Delivered, Encoded, Oracle, OracleError, Probe, ReadBack};
use crate::campaign::drive::{Fin, ReplyCodec};
use crate::campaign::judge::{End, Failure, FailureClass, Seen};
use crate::campaign::payload::preview;
use crate::chaos::Ending;

/// The file oracle.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct File;

impl File {
    pub fn build(config: Option<&Value>) -> Result<Arc<dyn Oracle>, OracleError> {
        no_config("file", config)?;
        Ok(Arc::new(File))
    }
}

impl Oracle for File {
    fn name(&self) -> &str {
        "file"
    }

    fn expected(&self, _conn: u64, messages: &[Bytes]) -> Vec<Bytes> {
        messages.iter().map(|m| put_expected(m)).collect()
    }

    fn encode(&self, _: &Framing, conn: u64, messages: &[Bytes]) -> Result<Encoded, WireError> {
        encode_hjson(&messages.iter().map(|m| put(conn, m)).collect::<Vec<_>>())
    }

    fn reply_codec(&self, _: &Framing) -> ReplyCodec {
        ReplyCodec::Hjson(HjsonCodec::new(DEFAULT_MAX), canonical)
    }

    fn probe(&self, _session: &[Bytes]) -> Probe {
        let message = Bytes::from_static(super::PROBE_MESSAGE);
        Probe {
            reply: Some(put_expected(&message)),
            message,
            fin: Fin::AfterReplies,
        }
    }

    fn read_back(&self) -> Option<&dyn ReadBack> {
        Some(self)
    }
}

/// The put a cut interrupted, if any: its index and the stream byte of the cut.
fn cut(d: &Delivered<'_>) -> Option<(usize, usize)> {
    d.ending.and_then(|(_, at)| {
        d.layouts
            .get(d.complete)
            .filter(|l| at > l.start)
            .map(|_| (d.complete, at))
    })
}

/// How many puts are read back: every one sent whole, and the one a cut interrupted.
fn read_count(d: &Delivered<'_>) -> usize {
    (d.complete + usize::from(cut(d).is_some())).min(d.messages.len())
}

/// After the driven connection, a fresh connection gets every file whose put was sent
/// whole, and the one a cut interrupted. A put that was acknowledged must read back
/// exactly; one that was cut (or sent just before our own RST, which may discard it
/// unread) must read back whole or not at all, never partly written.
impl ReadBack for File {
    fn requests(&self, d: &Delivered<'_>) -> Result<Option<(Encoded, usize)>, WireError> {
        let n = read_count(d);
        if n == 0 {
            return Ok(None);
        }
        let gets: Vec<_> = d.messages[..n].iter().map(|m| get(d.conn, m)).collect();
        Ok(Some((encode_hjson(&gets)?, n)))
    }

    fn judge(&self, d: &Delivered<'_>, seen: &Seen) -> Option<Failure> {
        let cut = cut(d);
        let reset = matches!(d.ending, Some((Ending::Reset, _)));
        for (i, message) in d.messages[..read_count(d)].iter().enumerate() {
            let want = get_expected(message);
            let name = name(d.conn, message);
            let whole_due = i < d.complete && !reset;
            let Some(got) = seen.replies.get(i) else {
                let class = if seen.end == End::Timeout {
                    FailureClass::Hang
                } else {
                    FailureClass::Lost
                };
                return Some(Failure::new(
                    class,
                    Some(i),
                    format!(
                        "reading back `{name}` (put #{i}) got no reply ({:?})",
                        seen.end
                    ),
                ));
            };
            if *got == want || (!whole_due && absent(got)) {
                continue;
            }
            let failure = if !whole_due {
                let how = match cut {
                    Some((j, at)) if j == i => format!("was cut at stream byte {at}"),
                    _ => "was sent just before a reset".to_string(),
                };
                Failure::new(
                    FailureClass::NotAtomic,
                    Some(i),
                    format!(
                        "put #{i} of `{name}` {how}; a fresh get must find the whole file or none, got {} (whole: {})",
                        preview(got),
                        preview(&want)
                    ),
                )
            } else if absent(got) {
                Failure::new(
                    FailureClass::Lost,
                    Some(i),
                    format!("put #{i} of `{name}` was acknowledged, but a fresh get finds no file"),
                )
            } else {
                Failure::new(
                    FailureClass::Corrupted,
                    Some(i),
                    format!(
                        "reading back `{name}` (put #{i}): expected {}, got {}",
                        preview(&want),
                        preview(got)
                    ),
                )
            };
            return Some(failure);
        }
        None
    }
}

fn hex16(data: &[u8]) -> String {
    hex::encode(&Sha256::digest(data)[..8])
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// The name a file body is stored under: per connection, derived from the content, so
/// it is unique per message (workload payloads carry their connection and index) and
/// stays the same when shrinking drops other messages.
pub fn name(conn: u64, body: &[u8]) -> String {
    format!("run/c{conn}-{}", hex16(body))
}

/// The put frame storing `body`.
pub fn put(conn: u64, body: &[u8]) -> HjsonFrame {
    HjsonFrame::new(
        json!({"op": "put", "name": name(conn, body), "sha256": sha256_hex(body)}),
        Bytes::copy_from_slice(body),
    )
}

/// The get frame reading back what `put(conn, body)` stored.
pub fn get(conn: u64, body: &[u8]) -> HjsonFrame {
    HjsonFrame::new(json!({"op": "get", "name": name(conn, body)}), Bytes::new())
}

/// A file reply as comparable bytes: `ok bytes=N sha=H body=B` (H the header's
/// sha256, B the body's, both shortened to 16 hex digits), or `error: TEXT`.
pub fn canonical(reply: HjsonFrame) -> Bytes {
    let h = &reply.header;
    match h.get("ok") {
        Some(Value::Bool(true)) => {
            let sha = h.get("sha256").and_then(Value::as_str).unwrap_or("-");
            format!(
                "ok bytes={} sha={} body={}",
                reply.body.len(),
                &sha[..sha.len().min(16)],
                hex16(&reply.body)
            )
            .into()
        }
        _ => match h.get("error").and_then(Value::as_str) {
            Some(e) => format!("error: {e}").into(),
            None => format!("malformed file reply header {}", Value::Object(h.clone())).into(),
        },
    }
}

/// The reply due to a put of `body`.
pub fn put_expected(body: &[u8]) -> Bytes {
    format!("ok bytes=0 sha={} body={}", hex16(body), hex16(b"")).into()
}

/// The reply due to a get of a file holding `body`.
pub fn get_expected(body: &[u8]) -> Bytes {
    format!(
        "ok bytes={} sha={} body={}",
        body.len(),
        hex16(body),
        hex16(body)
    )
    .into()
}

/// Whether a canonical get reply says the file does not exist.
pub fn absent(canonical: &[u8]) -> bool {
    canonical.starts_with(b"error: no such file")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_replies_and_names() {
        assert_eq!(name(3, b"x"), name(3, b"x"));
        assert_ne!(name(3, b"x"), name(4, b"x"));
        assert!(chopstick_targets::file::validate(&name(3, b"")).is_ok());
        let put = HjsonFrame::new(
            json!({"ok": true, "sha256": sha256_hex(b"hi")}),
            Bytes::new(),
        );
        assert_eq!(canonical(put), put_expected(b"hi"));
        let get = HjsonFrame::new(json!({"ok": true, "sha256": sha256_hex(b"hi")}), "hi");
        assert_eq!(canonical(get), get_expected(b"hi"));
        let missing = HjsonFrame::new(json!({"ok": false, "error": "no such file: 'a'"}), "");
        assert!(absent(&canonical(missing)));
    }
}
