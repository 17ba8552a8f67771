//! The traffic file on disk (format in the module docs of [`super`]): its types, an
//! atomic write, and a read that refuses other formats and newer versions by name.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Payload, Template};
use crate::repro_file::write_atomic;

/// The `format` field of every traffic file.
pub const FORMAT: &str = "chopstick-traffic";
/// The format version this build writes and reads.
pub const VERSION: u32 = 1;

/// A whole traffic file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrafficFile {
    pub format: String,
    pub version: u32,
    pub framing: String,
    pub reply_framing: String,
    #[serde(default)]
    pub upstream: String,
    /// Written at shutdown; a file left by a crash or `kill -9` says `false`.
    #[serde(default)]
    pub complete: bool,
    /// `--record-max` was reached: later frames are missing.
    #[serde(default)]
    pub truncated: bool,
    #[serde(default)]
    pub connections: Vec<Connection>,
}

/// One recorded connection.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Connection {
    pub conn: u64,
    #[serde(default)]
    pub peer: String,
    #[serde(default)]
    pub requests: Vec<Payload>,
    #[serde(default)]
    pub replies: Vec<Reply>,
    #[serde(default)]
    pub errors: Vec<RecordedError>,
    /// `None` while the connection is open.
    #[serde(default)]
    pub ended: Option<Ended>,
}

/// A reply frame and the number of requests that had arrived before it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    pub after: u64,
    #[serde(flatten)]
    pub payload: Payload,
}

/// A direction whose stream did not decode: recording of it stopped here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedError {
    /// `request` or `reply`.
    pub dir: String,
    /// Frames of that direction recorded before the error.
    pub after: u64,
    /// [`chopstick_targets::wire::WireError::kind`].
    pub kind: String,
    pub message: String,
}

/// How each direction of a connection ended.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Ended {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub up: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub down: Option<String>,
}

/// Why a traffic file could not be written, read or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrafficError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Not JSON, or not a traffic file's fields.
    #[error("{path} is not a chopstick traffic file: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    /// JSON with another `format` (a reproducer, a report, ...).
    #[error(
        "{path} is not a chopstick traffic file (its format is {found:?}, expected {FORMAT:?})"
    )]
    NotTraffic { path: PathBuf, found: String },
    #[error("{path} is traffic format version {found}, written by a newer chopstick; this one reads version {VERSION} (upgrade chopstick, or record the traffic again)")]
    FutureVersion { path: PathBuf, found: u32 },
    #[error("{path} is traffic format version {found}, which this chopstick does not read (it reads version {VERSION})")]
    OldVersion { path: PathBuf, found: u32 },
    #[error("{path}: connection {conn}, request {index}: {reason}")]
    BadPayload {
        path: PathBuf,
        conn: u64,
        index: usize,
        reason: &'static str,
    },
}

impl TrafficError {
    /// A short, stable label for reports and tests.
    pub fn kind(&self) -> &'static str {
        match self {
            TrafficError::Read { .. } => "read",
            TrafficError::Write { .. } => "write",
            TrafficError::Parse { .. } => "parse",
            TrafficError::NotTraffic { .. } => "not_traffic",
            TrafficError::FutureVersion { .. } => "future_version",
            TrafficError::OldVersion { .. } => "old_version",
            TrafficError::BadPayload { .. } => "bad_payload",
        }
    }
}

impl TrafficFile {
    /// An empty recording in the current format.
    pub fn new(framing: String, reply_framing: String, upstream: String) -> TrafficFile {
        TrafficFile {
            format: FORMAT.to_string(),
            version: VERSION,
            framing,
            reply_framing,
            upstream,
            complete: false,
            truncated: false,
            connections: Vec::new(),
        }
    }

    /// One template per connection that sent a request: its requests in order.
    pub fn templates(&self, path: &Path) -> Result<Vec<Template>, TrafficError> {
        let mut out = Vec::new();
        for c in self.connections.iter().filter(|c| !c.requests.is_empty()) {
            let requests = c.requests.iter().enumerate().map(|(index, p)| {
                p.bytes().map_err(|reason| TrafficError::BadPayload {
                    path: path.to_path_buf(),
                    conn: c.conn,
                    index,
                    reason,
                })
            });
            out.push(requests.collect::<Result<_, _>>()?);
        }
        Ok(out)
    }
}

/// Writes `file` to `path` atomically (see [`write_atomic`]): a crash leaves the
/// previous complete write.
pub fn write(path: &Path, file: &TrafficFile) -> Result<(), TrafficError> {
    let wrap = |source| TrafficError::Write {
        path: path.to_path_buf(),
        source,
    };
    let json = serde_json::to_vec_pretty(file).map_err(|e| wrap(std::io::Error::other(e)))?;
    write_atomic(path, &json).map_err(wrap)
}

/// The two fields that decide whether the rest can be read at all.
#[derive(Deserialize)]
struct Header {
    #[serde(default)]
    format: Option<String>,
    #[serde(default)]
    version: Option<u32>,
}

/// Reads a traffic file, refusing other formats and versions before anything else, so
/// that a newer file says so instead of failing on a field it does not know.
pub fn read(path: &Path) -> Result<TrafficFile, TrafficError> {
    let text = std::fs::read(path).map_err(|source| TrafficError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let parse = |source| TrafficError::Parse {
        path: path.to_path_buf(),
        source,
    };
    let header: Header = serde_json::from_slice(&text).map_err(parse)?;
    match header.format.as_deref() {
        Some(FORMAT) => {}
        other => {
            return Err(TrafficError::NotTraffic {
                path: path.to_path_buf(),
                found: other.unwrap_or("none").to_string(),
            })
        }
    }
    match header.version {
        Some(VERSION) => {}
        Some(found) if found > VERSION => {
            return Err(TrafficError::FutureVersion {
                path: path.to_path_buf(),
                found,
            })
        }
        found => {
            return Err(TrafficError::OldVersion {
                path: path.to_path_buf(),
                found: found.unwrap_or(0),
            })
        }
    }
    serde_json::from_slice(&text).map_err(parse)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> TrafficFile {
        let mut f = TrafficFile::new("varint".into(), "varint".into(), "127.0.0.1:1".into());
        f.connections.push(Connection {
            conn: 0,
            requests: vec![Payload::new(b"GET a"), Payload::new(&[0, 0xff])],
            replies: vec![Reply {
                after: 1,
                payload: Payload::new(b"ok\r\n"),
            }],
            ..Connection::default()
        });
        f.connections.push(Connection {
            conn: 1,
            ..Connection::default()
        });
        f
    }

    #[test]
    fn a_written_file_reads_back_and_gives_one_template_per_speaking_connection() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.json");
        write(&path, &sample()).unwrap();
        assert_eq!(read(&path).unwrap(), sample());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(r#""text": "GET a""#), "{text}");
        assert!(text.contains(r#""hex": "00ff""#), "{text}");
        assert!(text.contains(r#""after": 1"#), "{text}");
        let templates = super::super::load_traffic(&path).unwrap();
        assert_eq!(templates, vec![vec![&b"GET a"[..], &[0, 0xff][..]]]);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_future_version_another_format_and_a_bad_payload_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.json");
        let mut future = serde_json::to_value(sample()).unwrap();
        future["version"] = 2.into();
        future["connections"] = serde_json::json!({"a new": "shape"});
        std::fs::write(&path, future.to_string()).unwrap();
        let e = read(&path).unwrap_err();
        assert_eq!(e.kind(), "future_version", "{e}");
        assert!(
            e.to_string().contains("written by a newer chopstick"),
            "{e}"
        );

        std::fs::write(&path, br#"{"version": 1, "seed": 3}"#).unwrap();
        assert_eq!(read(&path).unwrap_err().kind(), "not_traffic");
        std::fs::write(&path, b"{").unwrap();
        assert_eq!(read(&path).unwrap_err().kind(), "parse");

        let mut bad = sample();
        bad.connections[0].requests[1].hex = Some("abc".into());
        write(&path, &bad).unwrap();
        let e = super::super::load_traffic(&path).unwrap_err();
        assert_eq!(e.kind(), "bad_payload", "{e}");
        assert!(e.to_string().contains("connection 0, request 1"), "{e}");
    }
}
