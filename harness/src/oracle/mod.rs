//! Oracles: what a correct server answers. One small trait, one file per oracle, and a
//! registry that turns `--oracle` names (and reproducer files) into oracles.
//!
//! - [`echo`]: `echo` (each reply equals its request) and `upper` (ASCII upper-cased).
//! - [`differential`]: replies equal those of unfaulted baseline runs of the same server.
//! - [`exec`]: the exec server: known commands, replies judged by a model of them.
//! - [`file`](mod@file): the file server: puts, and the optional read-back of what was stored.
//! - [`auth`]: the auth server: the optional handshake per connection, then echo inside.
//! - [`codec`]: not an oracle but a wrapper of one: a library user's `Decoder + Encoder`
//!   as the framing of its requests and replies.
//!
//! The driver (`campaign`) knows no oracle by name. For each case it asks the oracle how
//! workload payloads become messages ([`Oracle::messages`]), how messages become the
//! request stream ([`Oracle::encode`]), how replies are decoded ([`Oracle::reply_codec`])
//! and judged ([`Oracle::judge`] against [`Oracle::expected`]), and what a liveness
//! probe is ([`Oracle::probe`]). Three optional capabilities, after toxiproxy's
//! one-method `Toxic` plus optional interfaces, are offered by returning `Some`:
//! [`Baseline`] (the expectation comes from unfaulted runs), [`ReadBack`] (a fresh
//! connection checks what the case left behind) and [`Handshake`] (each connection is
//! opened by a protocol exchange before the requests).
//!
//! What every oracle promises:
//! - It is a value: everything that varies per connection is derived from the
//!   connection index `conn` (and the messages, which come from the seed), never from
//!   state kept in the oracle, so a reproducer (which keeps `conn`) repeats the case.
//! - [`Oracle::expected`] depends only on `conn` and the messages, and for messages
//!   `m[..k]` is a prefix of what it is for `m`: shrinking drops messages.
//! - [`Oracle::name`] plus [`Oracle::config`] rebuild it through [`build`]; a library
//!   user's own oracle (not in the registry) works everywhere but in `replay` of a file.

pub mod auth;
pub mod codec;
pub mod differential;
pub mod echo;
pub mod exec;
pub mod file;

use std::fmt::Debug;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use chopstick_targets::wire::{
    FrameLayout, Framing, HjsonCodec, HjsonFrame, WireError, DEFAULT_MAX,
};
use futures::future::BoxFuture;
use serde_json::Value;
use tokio_util::codec::Encoder;

use crate::campaign::drive::{Fin, ReplyCodec, Timing};
use crate::campaign::judge::{self, Failure, Seen};
use crate::campaign::{Conn, Target};
use crate::chaos::Ending;

/// A request stream and the layout of each frame in it.
pub type Encoded = (Bytes, Vec<FrameLayout>);

/// The connection index of liveness probes (no case has it).
pub const PROBE_CONN: u64 = u64::MAX;

/// The payload of the default liveness probe.
pub const PROBE_MESSAGE: &[u8] = b"chopstick liveness probe";

/// How a campaign knows a reply is right. Only [`name`](Oracle::name) and
/// [`expected`](Oracle::expected) are required; every other method has the default
/// that echo needs.
pub trait Oracle: Send + Sync + Debug {
    /// The registry name: how `--oracle` and reproducer files spell this oracle.
    fn name(&self) -> &str;

    /// The replies a correct server sends, in order, to `messages`: the requests of
    /// connection `conn` that were delivered whole.
    fn expected(&self, conn: u64, messages: &[Bytes]) -> Vec<Bytes>;

    /// Settings [`build`] needs besides the name (`None`: the name alone rebuilds it).
    fn config(&self) -> Option<Value> {
        None
    }

    /// The messages connection `conn` sends, made from the workload's payloads.
    fn messages(&self, payloads: Vec<Bytes>, _conn: u64) -> Vec<Bytes> {
        payloads
    }

    /// The request stream of connection `conn` sending `messages`, with frame layouts
    /// so faults can cut at meaningful offsets. Default: each message framed.
    fn encode(
        &self,
        framing: &Framing,
        _conn: u64,
        messages: &[Bytes],
    ) -> Result<Encoded, WireError> {
        framing.encode_all(messages)
    }

    /// Decodes the reply stream into the byte strings [`expected`](Oracle::expected)
    /// is compared with. Default: the framing's payloads.
    fn reply_codec(&self, framing: &Framing) -> ReplyCodec {
        ReplyCodec::frames(framing)
    }

    /// Compares what came back with what was due. `must_finish`: every expected reply
    /// was due (false when only a prefix can be demanded, e.g. after our own reset).
    fn judge(&self, expected: &[Bytes], seen: &Seen, must_finish: bool) -> Option<Failure> {
        judge::judge(expected, seen, must_finish)
    }

    /// When a half-closing connection sends its FIN. Default: after the last write.
    fn fin(&self) -> Fin {
        Fin::AfterWrite
    }

    /// Whether the server may abandon work in progress when its client closes (exec
    /// kills a running command): then after a close only a prefix of replies is due.
    fn close_aborts(&self) -> bool {
        false
    }

    /// What a fresh connection after a fault sends to prove the server still serves.
    /// `session` is the case's messages. Default: [`PROBE_MESSAGE`], its expected reply.
    fn probe(&self, _session: &[Bytes]) -> Probe {
        let message = Bytes::from_static(PROBE_MESSAGE);
        let reply = self
            .expected(PROBE_CONN, std::slice::from_ref(&message))
            .into_iter()
            .next();
        Probe {
            message,
            reply,
            fin: Fin::Never,
        }
    }

    /// The baseline capability: the expectation comes from unfaulted runs.
    fn baseline(&self) -> Option<&dyn Baseline> {
        None
    }

    /// The read-back capability: a fresh connection checks what the case left behind.
    fn read_back(&self) -> Option<&dyn ReadBack> {
        None
    }

    /// The handshake capability: connections are opened by a protocol exchange.
    fn handshake(&self) -> Option<&dyn Handshake> {
        None
    }
}

/// One liveness probe: a single message on a fresh, unfaulted connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub message: Bytes,
    /// The reply due; `None` accepts any reply.
    pub reply: Option<Bytes>,
    /// When the probe half-closes.
    pub fin: Fin,
}

/// An oracle whose expectation is what the server itself answers on unfaulted
/// connections sending the same requests ("baselines").
pub trait Baseline: Send + Sync {
    /// How many baseline runs go before the faulted run and how many after it (after:
    /// state the faulted run left behind shows up as a difference between baselines).
    fn runs(&self) -> (usize, usize);

    /// Judges the faulted run `seen` against `baselines` (those before, then those
    /// after). Returns the replies to show as expected, and the failure if any.
    fn judge(
        &self,
        baselines: &[Seen],
        seen: &Seen,
        must_finish: bool,
    ) -> (Vec<Bytes>, Option<Failure>);
}

/// What one case delivered, for a [`ReadBack`].
#[derive(Debug, Clone, Copy)]
pub struct Delivered<'a> {
    pub conn: u64,
    /// All the case's messages, including any not delivered whole.
    pub messages: &'a [Bytes],
    /// How many of them were delivered whole.
    pub complete: usize,
    /// Their frames in the request stream.
    pub layouts: &'a [FrameLayout],
    /// How the request stream ended, and at which byte.
    pub ending: Option<(Ending, usize)>,
}

/// An oracle that checks, on a fresh connection after the case, what the case left
/// behind (stored files).
pub trait ReadBack: Send + Sync {
    /// The read-back requests and how many replies are due; `None`: nothing to check.
    fn requests(&self, delivered: &Delivered<'_>) -> Result<Option<(Encoded, usize)>, WireError>;

    /// Judges the read-back replies (decoded by the oracle's reply codec).
    fn judge(&self, delivered: &Delivered<'_>, seen: &Seen) -> Option<Failure>;
}

/// How the handshake capability opened a case's connection.
#[derive(Debug)]
pub enum Opened {
    /// Ready for the requests.
    Stream(Conn),
    /// The handshake was the whole case (one that must be rejected): nothing inner is
    /// driven.
    Settled {
        expected: Vec<Bytes>,
        seen: Vec<Bytes>,
        failure: Option<Failure>,
    },
}

/// An oracle whose connections start with a protocol exchange (auth). Streams come
/// from [`Target::connect`], never from a connect of the oracle's own.
pub trait Handshake: Send + Sync {
    /// Opens the connection of case `conn`, whose request stream is `requests` (a
    /// handshake that must be rejected may send them anyway and check nothing is served).
    fn open<'a>(
        &'a self,
        target: &'a Target,
        conn: u64,
        requests: &'a [u8],
        timing: &'a Timing,
    ) -> BoxFuture<'a, Result<Opened, Failure>>;

    /// Opens a plain, accepted connection (liveness, baselines, read-back).
    fn open_fresh<'a>(
        &'a self,
        target: &'a Target,
        timing: &'a Timing,
    ) -> BoxFuture<'a, Result<Conn, Failure>>;
}

/// Why an oracle name or its settings cannot be turned into an oracle.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OracleError {
    #[error("unknown oracle `{name}` (expected {})", known())]
    Unknown { name: String },
    #[error("oracle `{name}` needs settings: {why}")]
    NeedsConfig { name: String, why: &'static str },
    #[error("oracle `{name}` takes no settings")]
    NoConfig { name: String },
    #[error("oracle `{name}`: bad settings: {source}")]
    BadConfig {
        name: String,
        source: serde_json::Error,
    },
    #[error("an oracle is a name or {{\"name\": settings}}, not {0}")]
    BadForm(String),
}

/// Builds an oracle from its settings (`None`: the name alone).
type Builder = fn(Option<&Value>) -> Result<Arc<dyn Oracle>, OracleError>;

/// Every oracle chopstick knows by name. A new oracle is a file and one line here.
const REGISTRY: &[(&str, Builder)] = &[
    ("echo", echo::Echo::build),
    ("upper", echo::Upper::build),
    ("differential", differential::Differential::build),
    ("exec", exec::Exec::build),
    ("file", file::File::build),
    ("auth", auth::Auth::build),
];

fn known() -> String {
    let names: Vec<&str> = REGISTRY.iter().map(|(n, _)| *n).collect();
    names.join(", ")
}

/// The oracle `name` with `config` (see [`Oracle::config`]).
pub fn build(name: &str, config: Option<&Value>) -> Result<Arc<dyn Oracle>, OracleError> {
    let (_, builder) = REGISTRY
        .iter()
        .find(|(n, _)| *n == name)
        .ok_or_else(|| OracleError::Unknown { name: name.into() })?;
    builder(config)
}

/// Parses an `--oracle` name.
pub fn parse(name: &str) -> Result<Arc<dyn Oracle>, OracleError> {
    build(name.trim(), None)
}

/// For oracles without settings: refuses any.
fn no_config(name: &str, config: Option<&Value>) -> Result<(), OracleError> {
    match config {
        None | Some(Value::Null) => Ok(()),
        Some(_) => Err(OracleError::NoConfig { name: name.into() }),
    }
}

/// An oracle as reproducer files store it: its name (`"echo"`), or with settings a
/// one-key object (`{"auth": {"key": "..."}}`), the forms older files have too.
pub mod serde_form {
    use super::*;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn to_value(oracle: &dyn Oracle) -> Value {
        match oracle.config() {
            None => Value::String(oracle.name().to_string()),
            Some(config) => {
                let mut map = serde_json::Map::new();
                map.insert(oracle.name().to_string(), config);
                Value::Object(map)
            }
        }
    }

    pub fn from_value(value: &Value) -> Result<Arc<dyn Oracle>, OracleError> {
        match value {
            Value::String(name) => build(name, None),
            Value::Object(map) if map.len() == 1 => {
                let (name, config) = map.iter().next().expect("one entry");
                build(name, Some(config))
            }
            other => Err(OracleError::BadForm(other.to_string())),
        }
    }

    pub fn serialize<S: Serializer>(o: &Arc<dyn Oracle>, s: S) -> Result<S::Ok, S::Error> {
        to_value(&**o).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Arc<dyn Oracle>, D::Error> {
        from_value(&Value::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// Encodes hjson request frames, recording each frame's layout like
/// [`Framing::encode_all`] does, so faults can cut inside headers (exec and file).
pub fn encode_hjson(frames: &[HjsonFrame]) -> Result<Encoded, WireError> {
    let mut codec = HjsonCodec::new(DEFAULT_MAX);
    let mut dst = BytesMut::new();
    let mut layouts = Vec::with_capacity(frames.len());
    for frame in frames {
        let start = dst.len();
        codec.encode(frame, &mut dst)?;
        let end = dst.len();
        layouts.push(FrameLayout {
            start,
            length_field: start..start + 4,
            body: end - frame.body.len()..end,
            end,
        });
    }
    Ok((dst.freeze(), layouts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_registered_name_round_trips_through_its_file_form() {
        for (name, _) in REGISTRY {
            let config = (*name == "auth").then(|| serde_json::json!({"key": "k".repeat(32)}));
            let oracle = build(name, config.as_ref()).unwrap();
            assert_eq!(oracle.name(), *name);
            let back = serde_form::from_value(&serde_form::to_value(&*oracle)).unwrap();
            assert_eq!(back.name(), *name);
            assert_eq!(back.config(), oracle.config());
        }
    }

    #[test]
    fn older_reproducer_forms_still_load() {
        for name in ["echo", "upper", "differential", "exec", "file"] {
            let v: Value = serde_json::from_str(&format!("\"{name}\"")).unwrap();
            assert_eq!(serde_form::from_value(&v).unwrap().name(), name);
        }
        let key = "A".repeat(32);
        let v = serde_json::json!({"auth": {"key": key}});
        let auth = serde_form::from_value(&v).unwrap();
        assert_eq!(auth.config(), Some(serde_json::json!({"key": key})));
    }

    #[test]
    fn bad_names_and_settings_get_typed_errors() {
        assert!(matches!(parse("ftp"), Err(OracleError::Unknown { name }) if name == "ftp"));
        assert!(parse("ftp")
            .unwrap_err()
            .to_string()
            .contains("echo, upper"));
        assert!(matches!(
            parse("auth"),
            Err(OracleError::NeedsConfig { .. })
        ));
        assert!(matches!(
            build("echo", Some(&serde_json::json!({"x": 1}))),
            Err(OracleError::NoConfig { .. })
        ));
        assert!(matches!(
            build("auth", Some(&serde_json::json!({"key": "short"}))),
            Err(OracleError::BadConfig { .. })
        ));
        assert!(matches!(
            serde_form::from_value(&serde_json::json!(3)),
            Err(OracleError::BadForm(_))
        ));
        assert_eq!(parse(" upper ").unwrap().name(), "upper");
    }

    #[test]
    fn hjson_layouts_point_at_bodies() {
        let frames = [file::put(0, b"abc"), file::get(0, b"abc")];
        let (stream, layouts) = encode_hjson(&frames).unwrap();
        assert_eq!(&stream[layouts[0].body.clone()], b"abc");
        assert_eq!(layouts[1].end, stream.len());
        assert!(layouts[1].body.is_empty());
    }
}
