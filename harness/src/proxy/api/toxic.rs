//! Toxics as the Toxiproxy API shows them: `{"name", "type", "stream", "toxicity",
//! "attributes"}`, parsed and checked once when created or updated, so a connection
//! never meets a toxic it cannot run.
//!
//! Toxiproxy's types keep Toxiproxy's attributes and units (a missing attribute is 0,
//! as in Toxiproxy; unknown attributes are ignored). chopstick's own faults (`split`,
//! `boundary`, `coalesce`, `disconnect`) take the options of their `--faults` entry as
//! attributes, plus `framing` (a `--framing` spec; without it they cut unframed) and
//! `seed` (the toxic's seed; each connection draws from `conn_rng(seed, conn, dir)`).
//! A toxic shown back always carries its seed, so a run can be replayed.

use std::time::Duration;

use serde_json::{Map, Value};

use super::ApiError;
use crate::chaos::{Direction, FaultSet};
use chopstick_targets::wire::Framing;

/// Longest time attribute accepted (1 h, in ms): every wait a toxic causes is bounded.
pub const MAX_TOXIC_MS: u64 = 3_600_000;

/// What a toxic does, with its attributes checked.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// Each chunk waits `latency ± jitter` after it arrived.
    Latency { latency: Duration, jitter: Duration },
    /// At most `rate` KB (1000 bytes) per second; 0 = no limit.
    Bandwidth { rate: u64 },
    /// The FIN is held back `delay`.
    SlowClose { delay: Duration },
    /// Data is dropped; the connection closes `timeout` after the last chunk (0 = never).
    Timeout { timeout: Duration },
    /// The connection is reset `timeout` after the first chunk that meets it.
    ResetPeer { timeout: Duration },
    /// Chunks cut into slices of about `average_size` bytes, `delay` apart.
    Slicer {
        average_size: usize,
        size_variation: usize,
        delay: Duration,
    },
    /// The connection closes once `bytes` have passed.
    LimitData { bytes: u64 },
    /// One of chopstick's faults, frame-aware with `framing`.
    Chaos {
        faults: FaultSet,
        framing: Option<Framing>,
        seed: u64,
    },
}

/// One toxic of a proxy.
#[derive(Debug, Clone, PartialEq)]
pub struct Toxic {
    pub name: String,
    pub type_name: String,
    pub dir: Direction,
    pub toxicity: f64,
    /// The attributes as shown back (what was given, plus the seed for chopstick's).
    pub attributes: Map<String, Value>,
    pub kind: Kind,
    /// Bumped by every update, so connections know to re-draw the toxicity.
    pub version: u64,
}

/// Toxiproxy's name for a direction: `upstream` is client to server.
pub fn stream_name(dir: Direction) -> &'static str {
    match dir {
        Direction::Up => "upstream",
        Direction::Down => "downstream",
    }
}

impl Toxic {
    /// Parses a `POST /proxies/{name}/toxics` body. `default_seed` seeds chopstick's
    /// toxics that name no seed of their own.
    pub fn from_json(body: &[u8], default_seed: impl Fn(&str) -> u64) -> Result<Toxic, ApiError> {
        let value: Value = serde_json::from_slice(body).map_err(ApiError::bad_body)?;
        let Value::Object(obj) = value else {
            return Err(ApiError::bad_body("expected a JSON object"));
        };
        let text = |key: &str| -> Result<Option<String>, ApiError> {
            match obj.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(ApiError::bad_body(format!("`{key}` must be a string"))),
            }
        };
        let stream = text("stream")?.unwrap_or_else(|| "downstream".into());
        let dir = match stream.to_ascii_lowercase().as_str() {
            "upstream" => Direction::Up,
            "downstream" => Direction::Down,
            _ => return Err(ApiError::invalid_stream()),
        };
        let type_name = text("type")?.unwrap_or_default();
        let name = text("name")?
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| format!("{type_name}_{}", stream_name(dir)));
        let toxicity = match obj.get("toxicity") {
            None | Some(Value::Null) => 1.0,
            Some(v) => toxicity(v)?,
        };
        let attributes = match obj.get("attributes") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(m)) => m.clone(),
            Some(_) => return Err(ApiError::bad_body("`attributes` must be an object")),
        };
        let seed = default_seed(&name);
        let (kind, attributes) = parse_kind(&type_name, attributes, seed)?;
        Ok(Toxic {
            name,
            type_name,
            dir,
            toxicity,
            attributes,
            kind,
            version: 0,
        })
    }

    /// Applies a `POST /proxies/{name}/toxics/{toxic}` body: the attributes it names
    /// replace those of the toxic, the others stay; `toxicity` likewise.
    pub fn updated(&self, body: &[u8]) -> Result<Toxic, ApiError> {
        let value: Value = serde_json::from_slice(body).map_err(ApiError::bad_body)?;
        let Value::Object(obj) = value else {
            return Err(ApiError::bad_body("expected a JSON object"));
        };
        let mut attributes = self.attributes.clone();
        match obj.get("attributes") {
            None | Some(Value::Null) => {}
            Some(Value::Object(m)) => attributes.extend(m.clone()),
            Some(_) => return Err(ApiError::bad_body("`attributes` must be an object")),
        }
        let toxicity = match obj.get("toxicity") {
            None | Some(Value::Null) => self.toxicity,
            Some(v) => toxicity(v)?,
        };
        let seed = match &self.kind {
            Kind::Chaos { seed, .. } => *seed,
            _ => 0,
        };
        let (kind, attributes) = parse_kind(&self.type_name, attributes, seed)?;
        Ok(Toxic {
            toxicity,
            attributes,
            kind,
            version: self.version + 1,
            ..self.clone()
        })
    }

    /// The toxic as the API shows it.
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "name": self.name,
            "type": self.type_name,
            "stream": stream_name(self.dir),
            "toxicity": self.toxicity,
            "attributes": self.attributes,
        })
    }
}

fn toxicity(v: &Value) -> Result<f64, ApiError> {
    match v.as_f64() {
        Some(t) if (0.0..=1.0).contains(&t) => Ok(t),
        _ => Err(ApiError::bad_body(
            "`toxicity` must be a number between 0 and 1",
        )),
    }
}

/// A whole-number attribute: missing or null is 0 (as Toxiproxy's Go structs decode).
fn number(attrs: &Map<String, Value>, key: &str, max: u64) -> Result<u64, ApiError> {
    match attrs.get(key) {
        None | Some(Value::Null) => Ok(0),
        Some(v) => match v.as_u64() {
            Some(n) if n <= max => Ok(n),
            Some(_) => Err(ApiError::bad_body(format!(
                "attribute `{key}` is at most {max}"
            ))),
            None => Err(ApiError::bad_body(format!(
                "attribute `{key}` must be a whole number of at least 0"
            ))),
        },
    }
}

fn millis(attrs: &Map<String, Value>, key: &str) -> Result<Duration, ApiError> {
    number(attrs, key, MAX_TOXIC_MS).map(Duration::from_millis)
}

/// The toxic types chopstick adds, with the `--faults` name each one runs.
const CHAOS_TYPES: [&str; 4] = ["split", "boundary", "coalesce", "disconnect"];

fn parse_kind(
    type_name: &str,
    mut attrs: Map<String, Value>,
    seed: u64,
) -> Result<(Kind, Map<String, Value>), ApiError> {
    let kind = match type_name {
        "latency" => Kind::Latency {
            latency: millis(&attrs, "latency")?,
            jitter: millis(&attrs, "jitter")?,
        },
        "bandwidth" => Kind::Bandwidth {
            rate: number(&attrs, "rate", u64::from(u32::MAX))?,
        },
        "slow_close" => Kind::SlowClose {
            delay: millis(&attrs, "delay")?,
        },
        "timeout" => Kind::Timeout {
            timeout: millis(&attrs, "timeout")?,
        },
        "reset_peer" => Kind::ResetPeer {
            timeout: millis(&attrs, "timeout")?,
        },
        "slicer" => Kind::Slicer {
            average_size: number(&attrs, "average_size", 1 << 24)? as usize,
            size_variation: number(&attrs, "size_variation", 1 << 24)? as usize,
            delay: Duration::from_micros(number(&attrs, "delay", MAX_TOXIC_MS * 1000)?),
        },
        "limit_data" => Kind::LimitData {
            bytes: number(&attrs, "bytes", u64::MAX)?,
        },
        t if CHAOS_TYPES.contains(&t) => {
            let framing = match attrs.get("framing") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(
                    s.parse::<Framing>()
                        .map_err(|e| ApiError::bad_body(format!("attribute `framing`: {e}")))?,
                ),
                Some(_) => return Err(ApiError::bad_body("attribute `framing` must be a string")),
            };
            let seed = match attrs.get("seed") {
                None | Some(Value::Null) => seed,
                Some(v) => v
                    .as_u64()
                    .ok_or_else(|| ApiError::bad_body("attribute `seed` must be a whole number"))?,
            };
            attrs.insert("seed".into(), seed.into());
            let mut spec = t.to_string();
            for (key, value) in &attrs {
                if key == "framing" || key == "seed" {
                    continue;
                }
                let value = match value {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => b.to_string(),
                    _ => {
                        return Err(ApiError::bad_body(format!(
                            "attribute `{key}` must be a string, number or boolean"
                        )))
                    }
                };
                if value.contains([',', ':', '=']) {
                    return Err(ApiError::bad_body(format!(
                        "bad value for attribute `{key}`"
                    )));
                }
                spec.push_str(&format!(":{key}={value}"));
            }
            let faults: FaultSet = spec
                .parse()
                .map_err(|e| ApiError::bad_body(format!("attributes: {e}")))?;
            Kind::Chaos {
                faults,
                framing,
                seed,
            }
        }
        _ => return Err(ApiError::invalid_toxic_type()),
    };
    Ok((kind, attrs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<Toxic, ApiError> {
        Toxic::from_json(body.as_bytes(), |_| 7)
    }

    #[test]
    fn defaults_follow_toxiproxy() {
        let t = parse(r#"{"type": "latency", "attributes": {"latency": 100}}"#).unwrap();
        assert_eq!(t.name, "latency_downstream");
        assert_eq!(t.dir, Direction::Down);
        assert_eq!(t.toxicity, 1.0);
        assert_eq!(
            t.kind,
            Kind::Latency {
                latency: Duration::from_millis(100),
                jitter: Duration::ZERO
            }
        );
        assert_eq!(t.to_json()["stream"], "downstream");
    }

    #[test]
    fn bad_bodies_are_refused_with_toxiproxy_messages() {
        let e = parse(r#"{"type": "latency", "stream": "sideways"}"#).unwrap_err();
        assert_eq!(e.status, 400);
        assert!(e.message.starts_with("stream was invalid"), "{}", e.message);
        let e = parse(r#"{"type": "nope"}"#).unwrap_err();
        assert_eq!((e.status, e.message.as_str()), (400, "invalid toxic type"));
        let e = parse("{").unwrap_err();
        assert!(e.message.starts_with("bad request body"), "{}", e.message);
        let e = parse(r#"{"type": "latency", "attributes": {"latency": -1}}"#).unwrap_err();
        assert_eq!(e.status, 400);
        let e =
            parse(r#"{"type": "timeout", "attributes": {"timeout": 99999999999}}"#).unwrap_err();
        assert_eq!(e.status, 400);
        let e = parse(r#"{"type": "split", "attributes": {"max": 0}}"#).unwrap_err();
        assert!(e.message.contains("split:max"), "{}", e.message);
        let e = parse(r#"{"type": "split", "attributes": {"framing": "u99"}}"#).unwrap_err();
        assert!(e.message.contains("framing"), "{}", e.message);
        let e = parse(r#"{"type": "split", "attributes": {"max": "1,latency"}}"#).unwrap_err();
        assert_eq!(e.status, 400);
    }

    #[test]
    fn chopstick_toxics_take_their_fault_options_and_show_their_seed() {
        let t = parse(
            r#"{"type": "coalesce", "stream": "upstream",
                "attributes": {"framing": "u32be", "max": 3, "hold_ms": 20}}"#,
        )
        .unwrap();
        let Kind::Chaos {
            faults,
            framing,
            seed,
        } = &t.kind
        else {
            panic!("not a chaos toxic: {:?}", t.kind)
        };
        assert_eq!(faults.to_string(), "coalesce:max=3:hold_ms=20");
        assert_eq!(framing.map(|f| f.to_string()).as_deref(), Some("u32be"));
        assert_eq!(*seed, 7);
        assert_eq!(t.to_json()["attributes"]["seed"], 7);
        // An update keeps the seed and the other attributes.
        let u = t.updated(br#"{"attributes": {"max": 2}}"#).unwrap();
        let Kind::Chaos { faults, seed, .. } = &u.kind else {
            panic!()
        };
        assert_eq!(faults.to_string(), "coalesce:max=2:hold_ms=20");
        assert_eq!(*seed, 7);
        assert_eq!(u.version, 1);
    }

    #[test]
    fn an_update_changes_only_what_it_names() {
        let t = parse(
            r#"{"type": "latency", "toxicity": 0.5, "attributes": {"latency": 10, "jitter": 2}}"#,
        )
        .unwrap();
        let u = t.updated(br#"{"attributes": {"latency": 50}}"#).unwrap();
        assert_eq!(u.toxicity, 0.5);
        assert_eq!(
            u.kind,
            Kind::Latency {
                latency: Duration::from_millis(50),
                jitter: Duration::from_millis(2)
            }
        );
        assert!(t.updated(br#"{"toxicity": 2}"#).is_err());
    }
}
