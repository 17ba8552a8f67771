//! Fragmentation profiles: how `chopstick bench` cuts the request stream into writes.
//!
//! `--profiles whole,coalesced,split:64,paced:64` (the default list is [`DEFAULT`]):
//!
//! | profile | writes |
//! |---|---|
//! | `whole` | one write per message (the baseline every ratio is against) |
//! | `coalesced` | every message the in-flight window allows, in one write |
//! | `split:N` | the stream of sendable messages in N-byte pieces, back to back |
//! | `paced:N` | the same pieces, each written only once the server has read the last |
//!
//! Pieces run across message boundaries, as a network cuts them. On loopback,
//! back-to-back pieces merge again in the server's receive queue whenever the server
//! is slower than the writer, so `split:N` mostly measures what the server does with
//! whatever lands; `paced:N` waits until the server's socket has taken every byte
//! (see [`super::drain`]), so every piece is one `recv` and per-read costs show.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The profiles run when `--profiles` is not given.
pub const DEFAULT: &str = "whole,coalesced,split:1460,split:64,split:7,split:1,\
                           paced:1460,paced:64,paced:7,paced:1";

/// Largest piece a profile may name (beyond it a piece is a whole write anyway).
pub const MAX_PIECE: usize = 16 * 1024 * 1024;

/// One way of writing the request stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Profile {
    /// One write per message.
    Whole,
    /// All sendable messages in one write.
    Coalesced,
    /// Pieces of `piece` bytes, back to back.
    Split { piece: usize },
    /// Pieces of `piece` bytes, each after the server has read the previous one.
    Paced { piece: usize },
}

/// A `--profiles` entry chopstick cannot run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProfileError {
    #[error("unknown profile `{0}` (expected whole, coalesced, split:N or paced:N)")]
    Unknown(String),
    #[error("bad piece size in `{0}`: expected 1..={MAX_PIECE} bytes")]
    BadPiece(String),
    #[error("empty --profiles list")]
    Empty,
    #[error("--profiles must include `whole`: every ratio is against it")]
    NoBaseline,
}

impl Profile {
    /// The piece size, for split and paced profiles.
    pub fn piece(self) -> Option<usize> {
        match self {
            Profile::Split { piece } | Profile::Paced { piece } => Some(piece),
            Profile::Whole | Profile::Coalesced => None,
        }
    }

    /// Whether each piece waits until the server has read the previous one.
    pub fn paced(self) -> bool {
        matches!(self, Profile::Paced { .. })
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Profile::Whole => f.write_str("whole"),
            Profile::Coalesced => f.write_str("coalesced"),
            Profile::Split { piece } => write!(f, "split:{piece}"),
            Profile::Paced { piece } => write!(f, "paced:{piece}"),
        }
    }
}

impl FromStr for Profile {
    type Err = ProfileError;

    fn from_str(s: &str) -> Result<Profile, ProfileError> {
        let s = s.trim();
        let piece = |n: &str| match n.parse::<usize>() {
            Ok(p) if (1..=MAX_PIECE).contains(&p) => Ok(p),
            _ => Err(ProfileError::BadPiece(s.to_string())),
        };
        match s.split_once(':') {
            None if s == "whole" => Ok(Profile::Whole),
            None if s == "coalesced" => Ok(Profile::Coalesced),
            Some(("split", n)) => Ok(Profile::Split { piece: piece(n)? }),
            Some(("paced", n)) => Ok(Profile::Paced { piece: piece(n)? }),
            _ => Err(ProfileError::Unknown(s.to_string())),
        }
    }
}

/// Parses a comma-separated list; duplicates are dropped, `whole` is required.
pub fn parse_list(list: &str) -> Result<Vec<Profile>, ProfileError> {
    let mut out: Vec<Profile> = Vec::new();
    for item in list.split(',').filter(|s| !s.trim().is_empty()) {
        let p: Profile = item.parse()?;
        if !out.contains(&p) {
            out.push(p);
        }
    }
    if out.is_empty() {
        return Err(ProfileError::Empty);
    }
    if !out.contains(&Profile::Whole) {
        return Err(ProfileError::NoBaseline);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_list_parses_and_every_profile_prints_as_it_is_spelled() {
        let list = parse_list(DEFAULT).unwrap();
        assert_eq!(list.len(), 10);
        let printed: Vec<String> = list.iter().map(|p| p.to_string()).collect();
        assert_eq!(printed.join(","), DEFAULT.replace(' ', ""));
    }

    #[test]
    fn bad_lists_get_a_typed_error() {
        assert_eq!(parse_list(""), Err(ProfileError::Empty));
        assert_eq!(parse_list("split:64"), Err(ProfileError::NoBaseline));
        assert!(matches!(
            parse_list("whole,split:0"),
            Err(ProfileError::BadPiece(_))
        ));
        assert!(matches!(
            parse_list("whole,chunk:4"),
            Err(ProfileError::Unknown(_))
        ));
        assert_eq!(parse_list("whole,whole").unwrap(), [Profile::Whole]);
    }
}
