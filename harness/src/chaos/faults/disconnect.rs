//! `disconnect`: end the connection with a close (FIN) or reset (RST) at a chosen region
//! (`disconnect:mode=reset:at=mid-body`, `disconnect:at=17`).
//!
//! Regions (`at=`): `mid-header` (strictly inside a header), `after-header` (header
//! complete, no body byte yet), `mid-body` (at least one body byte, frame incomplete),
//! `boundary` (between frames, including before the first and after the last), `any`
//! (any offset, the default) or a byte offset (clamped to the stream's end). A random
//! frame that has the region is chosen, then a random offset in it. When no frame has
//! the region (a `u8` header has no middle; unknown framing) the offset is random.
//! `mode=` is `close` (default), `reset` or `any`. Everything before the offset is
//! delivered in one write.

use std::fmt;
use std::ops::Range;

use chopstick_targets::wire::FrameLayout;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::{Configure, Events, OptError};
use crate::chaos::{Ending, Fault, Plan};

/// How the connection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DisconnectMode {
    #[default]
    Close,
    Reset,
    /// Close or reset, at random.
    Any,
}

/// Where the connection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DisconnectAt {
    #[default]
    Any,
    MidHeader,
    AfterHeader,
    MidBody,
    Boundary,
    /// After exactly this many bytes.
    Offset(usize),
}

impl fmt::Display for DisconnectAt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DisconnectAt::Any => f.write_str("any"),
            DisconnectAt::MidHeader => f.write_str("mid-header"),
            DisconnectAt::AfterHeader => f.write_str("after-header"),
            DisconnectAt::MidBody => f.write_str("mid-body"),
            DisconnectAt::Boundary => f.write_str("boundary"),
            DisconnectAt::Offset(n) => write!(f, "{n}"),
        }
    }
}

impl DisconnectAt {
    fn parse(s: &str) -> Result<DisconnectAt, OptError> {
        Ok(match s {
            "any" => DisconnectAt::Any,
            "mid-header" => DisconnectAt::MidHeader,
            "after-header" => DisconnectAt::AfterHeader,
            "mid-body" => DisconnectAt::MidBody,
            "boundary" => DisconnectAt::Boundary,
            n => DisconnectAt::Offset(n.parse().map_err(|_| {
                OptError::Bad(
                    "expected mid-header, after-header, mid-body, boundary, any or a byte offset",
                )
            })?),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Disconnect {
    pub mode: DisconnectMode,
    pub at: DisconnectAt,
}

impl Disconnect {
    /// The offsets (as a range) where frame `f` is in the region, if any.
    fn region(at: DisconnectAt, f: &FrameLayout, first: bool) -> Option<Range<usize>> {
        let r = match at {
            DisconnectAt::MidHeader => f.start + 1..f.body.start,
            // A header-less frame (line) has no "after the header" distinct from its start.
            DisconnectAt::AfterHeader if f.body.start > f.start => f.body.start..f.body.start + 1,
            DisconnectAt::MidBody => f.body.start + 1..f.end,
            DisconnectAt::Boundary if first => f.start..f.start + 1,
            DisconnectAt::Boundary => f.end..f.end + 1,
            _ => return None,
        };
        (!r.is_empty()).then_some(r)
    }

    /// The byte offset where this plan ends the connection.
    pub fn offset(&self, len: usize, frames: &[FrameLayout], rng: &mut ChaCha8Rng) -> usize {
        if let DisconnectAt::Offset(n) = self.at {
            return n.min(len);
        }
        let mut regions: Vec<Range<usize>> = frames
            .iter()
            .filter_map(|f| Disconnect::region(self.at, f, false))
            .collect();
        if self.at == DisconnectAt::Boundary {
            if let Some(first) = frames
                .first()
                .and_then(|f| Disconnect::region(self.at, f, true))
            {
                regions.push(first);
            }
        }
        regions.retain(|r| r.end <= len + 1 && r.start <= len);
        if regions.is_empty() {
            return rng.random_range(0..=len);
        }
        let r = regions[rng.random_range(0..regions.len())].clone();
        rng.random_range(r).min(len)
    }
}

impl Fault for Disconnect {
    fn name(&self) -> &'static str {
        "disconnect"
    }

    fn plan(&self, len: usize, frames: &[FrameLayout], rng: &mut ChaCha8Rng) -> Plan {
        let how = match self.mode {
            DisconnectMode::Close => Ending::Close,
            DisconnectMode::Reset => Ending::Reset,
            DisconnectMode::Any if rng.random_bool(0.5) => Ending::Reset,
            DisconnectMode::Any => Ending::Close,
        };
        let at = self.offset(len, frames, rng);
        let mut events = Events::new(len);
        events.end(at, how);
        events.into_plan()
    }
}

impl Configure for Disconnect {
    fn set(&mut self, key: &str, value: &str) -> Result<(), OptError> {
        match key {
            "mode" => {
                self.mode = match value {
                    "close" => DisconnectMode::Close,
                    "reset" => DisconnectMode::Reset,
                    "any" => DisconnectMode::Any,
                    _ => return Err(OptError::Bad("expected close, reset or any")),
                }
            }
            "at" => self.at = DisconnectAt::parse(value)?,
            _ => return Err(OptError::UnknownKey),
        }
        Ok(())
    }

    fn options(&self) -> Vec<(&'static str, String)> {
        let mut out = vec![];
        match self.mode {
            DisconnectMode::Close => {}
            DisconnectMode::Reset => out.push(("mode", "reset".to_string())),
            DisconnectMode::Any => out.push(("mode", "any".to_string())),
        }
        if self.at != DisconnectAt::Any {
            out.push(("at", self.at.to_string()));
        }
        out
    }
}
