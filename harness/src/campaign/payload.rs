//! Byte payloads in reproducer and report files: text when it is UTF-8, hex otherwise,
//! so a reproducer stays readable and still round-trips any byte.

use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A message or reply as stored in JSON files.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Payload(pub Bytes);

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Repr {
    Text(String),
    Hex { hex: String },
}

impl Serialize for Payload {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(&self.0) {
            Ok(text) => Repr::Text(text.to_string()),
            Err(_) => Repr::Hex {
                hex: hex::encode(&self.0),
            },
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Payload, D::Error> {
        Ok(Payload(match Repr::deserialize(d)? {
            Repr::Text(t) => Bytes::from(t),
            Repr::Hex { hex } => Bytes::from(hex::decode(hex).map_err(serde::de::Error::custom)?),
        }))
    }
}

pub fn wrap(v: &[Bytes]) -> Vec<Payload> {
    v.iter().cloned().map(Payload).collect()
}

pub fn unwrap(v: &[Payload]) -> Vec<Bytes> {
    v.iter().map(|p| p.0.clone()).collect()
}

/// A short printable preview of a payload for terminal output.
pub fn preview(b: &[u8]) -> String {
    const MAX: usize = 40;
    let shown: String = String::from_utf8_lossy(&b[..b.len().min(MAX)])
        .escape_debug()
        .collect();
    if b.len() > MAX {
        format!("\"{shown}\"... ({} bytes)", b.len())
    } else {
        format!("\"{shown}\"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_binary_round_trip() {
        let v = vec![
            Payload(Bytes::from("hi")),
            Payload(Bytes::from(vec![0xff, 0, 1])),
        ];
        let json = serde_json::to_string(&v).unwrap();
        assert_eq!(json, r#"["hi",{"hex":"ff0001"}]"#);
        assert_eq!(serde_json::from_str::<Vec<Payload>>(&json).unwrap(), v);
    }
}
