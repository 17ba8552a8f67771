//! Real traffic: recordings of a real client's connections (`chopstick proxy --record`)
//! and plain request corpora (`check --requests`), turned into the session templates a
//! campaign replays under faults (`check --traffic`).
//!
//! - `file.rs`: the traffic file ([`TrafficFile`]) on disk, [`TrafficError`];
//! - `record.rs`: capture inside the proxy ([`Recorder`], [`ConnRecorder`]);
//! - `corpus.rs`: the plain request corpus ([`load_requests`], [`CorpusError`]).
//!
//! # The traffic file (format version 1)
//!
//! Pretty JSON, one object. Every payload is an object holding exactly one of `text`
//! (the payload is UTF-8 without control characters other than tab, CR and LF) or
//! `hex` (anything else, lowercase): readable where it can be, diffable always.
//!
//! ```text
//! {
//!   "format": "chopstick-traffic",        always this string
//!   "version": 1,                         a newer version is refused, by name
//!   "framing": "varint",                  how requests were decoded (--framing)
//!   "reply_framing": "varint",            how replies were decoded
//!   "upstream": "127.0.0.1:7001",
//!   "complete": true,                     false until the last write at shutdown
//!   "truncated": false,                   true once --record-max was reached: frames
//!                                         after that are not in the file
//!   "connections": [                      in accept order
//!     {
//!       "conn": 0,                        the proxy's connection number
//!       "peer": "127.0.0.1:50312",
//!       "requests": [                     client -> server frames, in order
//!         {"text": "GET a"},
//!         {"hex": "00ff"}
//!       ],
//!       "replies": [                      server -> client frames, in order
//!         {"after": 1, "text": "ok"}      `after`: requests decoded when it arrived
//!       ],
//!       "errors": [                       a stream the framing could not decode
//!         {"dir": "reply", "after": 2,    (recording of that direction stops there)
//!          "kind": "truncated",           chopstick_targets::wire::WireError::kind
//!          "message": "stream ended inside a frame: ..."}
//!       ],
//!       "ended": {"up": "eof",            how each direction ended (eof, reset,
//!                 "down": "eof"}          fault_close, fault_reset, dest_gone,
//!     }                                   stalled, idle, bad_plan; torn_down: cut
//!                                         by the other's end); null while open
//!   ]
//! }
//! ```
//!
//! `after` is counted over this connection's requests at the moment the reply frame
//! was complete at the proxy: `after: 0` is a greeting sent before any request,
//! `after: 3` came once the third request had passed. A frame that cannot be decoded
//! is never dropped silently: it ends that direction's recording with an `errors`
//! entry (the bytes keep being relayed).
//!
//! # Session templates
//!
//! [`load_traffic`] makes each recorded connection one template: its requests in
//! order (connections without a request are left out). [`load_requests`] makes each
//! corpus line one template (see `corpus.rs` for the format, and for lines that hold a
//! whole session). A campaign draws each connection's session from the templates with
//! its seed.

mod corpus;
mod file;
mod record;

use std::path::Path;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub use corpus::{load_requests, parse_requests, CorpusError};
pub use file::{
    read, write, Connection, Ended, RecordedError, Reply, TrafficError, TrafficFile, FORMAT,
    VERSION,
};
pub use record::{ConnRecorder, RecordConfig, Recorder, DEFAULT_RECORD_MAX, FLUSH_INTERVAL};

/// A session template: the requests of one session, in order.
pub type Template = Vec<Bytes>;

/// One payload as the files spell it: `{"text": "..."}` or `{"hex": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Payload {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hex: Option<String>,
}

impl Payload {
    /// `text` when the bytes read well as text, `hex` otherwise.
    pub fn new(bytes: &[u8]) -> Payload {
        match std::str::from_utf8(bytes) {
            Ok(s)
                if s.chars()
                    .all(|c| !c.is_control() || matches!(c, '\t' | '\r' | '\n')) =>
            {
                Payload {
                    text: Some(s.to_string()),
                    hex: None,
                }
            }
            _ => Payload {
                text: None,
                hex: Some(hex::encode(bytes)),
            },
        }
    }

    /// The payload's bytes; `Err` says why it has none (both or neither field, bad hex).
    pub fn bytes(&self) -> Result<Bytes, &'static str> {
        match (&self.text, &self.hex) {
            (Some(t), None) => Ok(Bytes::copy_from_slice(t.as_bytes())),
            (None, Some(h)) => hex::decode(h)
                .map(Bytes::from)
                .map_err(|_| "`hex` is not an even number of hex digits"),
            (Some(_), Some(_)) => Err("a payload has both `text` and `hex`"),
            (None, None) => Err("a payload needs `text` or `hex`"),
        }
    }

    /// Bytes this payload takes in the file, roughly (for `--record-max`).
    fn file_len(&self) -> usize {
        // Field name, quotes, braces, indentation.
        const OVERHEAD: usize = 32;
        OVERHEAD
            + self
                .text
                .as_ref()
                .or(self.hex.as_ref())
                .map_or(0, String::len)
    }
}

/// The session templates of a traffic file: one per recorded connection that sent a
/// request, its requests in order.
pub fn load_traffic(path: &Path) -> Result<Vec<Template>, TrafficError> {
    read(path)?.templates(path)
}
