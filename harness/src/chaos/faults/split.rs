//! `split`: random chunk sizes, one write each (`split:max=64`, `split:pause_us=5000`).
//!
//! The plain "one send arrives as many reads" fault. On a real socket the pieces must
//! also reach the peer apart, or the kernel hands them over in one read again: the
//! executors keep a least gap between two writes, which ends early once the peer has
//! read the last piece (see [`crate::chaos::peer_queue`]). `pause_us` (default 0) adds a
//! fixed pause after each piece on top, for a peer that must see slow pieces.
//!
//! Receivers break at frame edges, so that is where the cuts are fine-grained: chunks of
//! 1..=`max` bytes cover each header and the first and last `4 * max` bytes of each body.
//! The middle of a large body is cut into chunks of 1..=`coarse` bytes instead — still
//! split, but a 1 MiB body costs a few dozen paused writes, not 100 000.
//! `coarse=0` cuts everything finely (a byte-exact "reads never exceed max" test wants that).
//!
//! Without frame layouts (no `--framing`, or a stream that does not parse) there are no
//! edges to aim at, and the stream is cut the way a slicer cuts: into pieces of
//! `max / 2 + 1 ..= max` bytes (about `3/4 max` on average), each followed by the pause.
//! `coarse` only applies inside frames.

use chopstick_targets::wire::FrameLayout;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::{parse_count, parse_pause, Configure, Events, OptError};
use crate::chaos::{Fault, Plan};

/// Chunks of 1..=`max` bytes near frame edges (1..=`coarse` inside large bodies),
/// each followed by `pause_us`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Split {
    /// Largest chunk in bytes near frame edges (at least 1).
    pub max: usize,
    /// Largest chunk in the middle of a large body; 0 = `max` everywhere.
    pub coarse: usize,
    /// Extra pause after each chunk in microseconds (0: only the executor's gap).
    pub pause_us: u64,
}

impl Default for Split {
    fn default() -> Self {
        Split {
            max: 16,
            coarse: 64 * 1024,
            pause_us: 0,
        }
    }
}

impl Split {
    /// Cuts `from..to` into chunks of 1..=`chunk` bytes, each followed by a pause.
    fn cut_range(
        &self,
        events: &mut Events,
        from: usize,
        to: usize,
        chunk: usize,
        rng: &mut ChaCha8Rng,
    ) {
        let mut at = from;
        // Each round moves `at` forward by at least one byte: at most `to - from` rounds.
        while at < to {
            at = at
                .saturating_add(rng.random_range(1..=chunk.max(1)))
                .min(to);
            events.cut_with_pause(at, self.pause_us);
        }
    }
}

impl Fault for Split {
    fn name(&self) -> &'static str {
        "split"
    }

    fn plan(&self, len: usize, frames: &[FrameLayout], rng: &mut ChaCha8Rng) -> Plan {
        let mut events = Events::new(len);
        let max = self.max.max(1);
        if frames.is_empty() {
            let mut at = 0;
            // Each round moves `at` forward by at least one byte.
            while at < len {
                at = at
                    .saturating_add(rng.random_range(max / 2 + 1..=max))
                    .min(len);
                events.cut_with_pause(at, self.pause_us);
            }
            return events.into_plan();
        }
        let edge = max.saturating_mul(4);
        let mut at = 0;
        for f in frames.iter().filter(|f| f.end <= len) {
            let fine_until = f.body.start.saturating_add(edge).min(f.end);
            let fine_from = f.body.end.saturating_sub(edge).max(fine_until);
            self.cut_range(&mut events, at, fine_until, max, rng);
            let middle = if self.coarse == 0 {
                max
            } else {
                self.coarse.max(max)
            };
            self.cut_range(&mut events, fine_until, fine_from, middle, rng);
            self.cut_range(&mut events, fine_from, f.end, max, rng);
            at = f.end;
        }
        self.cut_range(&mut events, at, len, max, rng);
        events.into_plan()
    }
}

impl Configure for Split {
    fn set(&mut self, key: &str, value: &str) -> Result<(), OptError> {
        match key {
            "max" => self.max = parse_count(value, 1, usize::MAX)?,
            "coarse" => self.coarse = parse_count(value, 0, usize::MAX)?,
            "pause_us" => self.pause_us = parse_pause(value)?,
            _ => return Err(OptError::UnknownKey),
        }
        Ok(())
    }

    fn options(&self) -> Vec<(&'static str, String)> {
        let d = Split::default();
        let mut out = vec![];
        if self.max != d.max {
            out.push(("max", self.max.to_string()));
        }
        if self.coarse != d.coarse {
            out.push(("coarse", self.coarse.to_string()));
        }
        if self.pause_us != d.pause_us {
            out.push(("pause_us", self.pause_us.to_string()));
        }
        out
    }
}
