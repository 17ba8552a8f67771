//! `coalesce`: several frames in one write, sometimes with the start of the next header
//! (`coalesce:max=4:partial=0.5`) — the "sticky packet" fault.
//!
//! Frames are grouped 2..=`max` at a time; with probability `partial` a group also
//! carries the first 1..=header bytes of the frame after it (never the whole frame), so
//! the receiver holds complete frames *and* a partial header after one read. Groups are
//! separate writes, kept apart by the executors' gap (plus `pause_us`, default 0) so a
//! real peer does not merge them further. Without layouts the
//! stream goes out in one to three large writes.
//!
//! A relay can only merge frames it holds. `hold_ms` (default 12) is how long the proxy
//! keeps held frames waiting for the next send: frames a client sends up to about 10 ms
//! apart are merged, up to `max` per write. The price is latency: a frame waits at most
//! `hold_ms` after the last byte that arrived behind it, and never more than
//! `max * hold_ms` in all (48 ms with the defaults); a lone request waits `hold_ms`.
//! `hold_ms=0` turns holding off (only frames that arrive together are merged).

use chopstick_targets::wire::FrameLayout;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::{
    parse_count, parse_pause, parse_probability, random_cuts, Configure, Events, OptError,
};
use crate::chaos::{Fault, Plan};

/// Default of `hold_ms`: merges sends spaced up to ~10 ms, with some slack for a busy
/// sender.
pub const DEFAULT_HOLD_MS: u64 = 12;

/// Longest `hold_ms` accepted (1 s): holding is latency the user pays on every frame.
pub const MAX_HOLD_MS: u64 = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Coalesce {
    /// Most frames per write (at least 1).
    pub max: usize,
    /// Probability that a write also carries the start of the next frame.
    pub partial: f64,
    pub pause_us: u64,
    /// How long a relay holds frames waiting for the next send, in milliseconds.
    pub hold_ms: u64,
}

impl Default for Coalesce {
    fn default() -> Self {
        Coalesce {
            max: 4,
            partial: 0.5,
            pause_us: 0,
            hold_ms: DEFAULT_HOLD_MS,
        }
    }
}

impl Fault for Coalesce {
    fn name(&self) -> &'static str {
        "coalesce"
    }

    fn plan(&self, len: usize, frames: &[FrameLayout], rng: &mut ChaCha8Rng) -> Plan {
        let mut events = Events::new(len);
        if frames.is_empty() {
            let pieces = rng.random_range(0..3);
            for at in random_cuts(len, pieces, rng) {
                events.cut_with_pause(at, self.pause_us);
            }
            return events.into_plan();
        }
        let max = self.max.max(1);
        let mut i = 0;
        // `i` grows by at least one frame per round: at most `frames.len()` rounds.
        while i < frames.len() {
            let group = rng.random_range(max.min(2)..=max);
            i = (i + group).min(frames.len());
            let mut at = frames[i - 1].end;
            if let Some(next) = frames.get(i) {
                if next.len() > 1 && rng.random_bool(self.partial) {
                    let header = next.header().len().clamp(1, next.len() - 1);
                    at += rng.random_range(1..=header);
                }
            }
            events.cut_with_pause(at, self.pause_us);
        }
        events.into_plan()
    }
}

impl Configure for Coalesce {
    fn set(&mut self, key: &str, value: &str) -> Result<(), OptError> {
        match key {
            "max" => self.max = parse_count(value, 1, usize::MAX)?,
            "partial" => self.partial = parse_probability(value)?,
            "pause_us" => self.pause_us = parse_pause(value)?,
            "hold_ms" => self.hold_ms = parse_count(value, 0, MAX_HOLD_MS as usize)? as u64,
            _ => return Err(OptError::UnknownKey),
        }
        Ok(())
    }

    fn options(&self) -> Vec<(&'static str, String)> {
        let d = Coalesce::default();
        let mut out = vec![];
        if self.max != d.max {
            out.push(("max", self.max.to_string()));
        }
        if self.partial != d.partial {
            out.push(("partial", self.partial.to_string()));
        }
        if self.pause_us != d.pause_us {
            out.push(("pause_us", self.pause_us.to_string()));
        }
        if self.hold_ms != d.hold_ms {
            out.push(("hold_ms", self.hold_ms.to_string()));
        }
        out
    }
}
