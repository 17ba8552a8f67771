//! `slow`: trickle the start of a stream in tiny writes (`slow:max=1:pause_us=2000:limit=64`).
//!
//! A slowloris-style peer: 1..=`max` bytes per write with `pause_us` between, for the
//! first `limit` bytes (`limit=all` for the whole stream); the rest follows in one
//! write. The limit keeps plans for large streams small and their pauses bounded.

use chopstick_targets::wire::FrameLayout;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::{parse_count, parse_pause, Configure, Events, OptError};
use crate::chaos::{Fault, Plan};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Slow {
    /// Largest write in bytes (at least 1).
    pub max: usize,
    pub pause_us: u64,
    /// How many leading bytes are trickled (`usize::MAX` = all).
    pub limit: usize,
}

impl Default for Slow {
    fn default() -> Self {
        Slow {
            max: 1,
            pause_us: 2000,
            limit: 64,
        }
    }
}

impl Fault for Slow {
    fn name(&self) -> &'static str {
        "slow"
    }

    fn plan(&self, len: usize, _frames: &[FrameLayout], rng: &mut ChaCha8Rng) -> Plan {
        let mut events = Events::new(len);
        let stop = len.min(self.limit);
        let max = self.max.max(1);
        let mut at = 0;
        // `at` grows by at least one per round: at most `limit` rounds.
        while at < stop {
            at = at.saturating_add(rng.random_range(1..=max));
            events.cut_with_pause(at.min(stop), self.pause_us);
        }
        events.into_plan()
    }
}

impl Configure for Slow {
    fn set(&mut self, key: &str, value: &str) -> Result<(), OptError> {
        match key {
            "max" => self.max = parse_count(value, 1, usize::MAX)?,
            "pause_us" => self.pause_us = parse_pause(value)?,
            "limit" if value == "all" => self.limit = usize::MAX,
            "limit" => self.limit = parse_count(value, 0, usize::MAX)?,
            _ => return Err(OptError::UnknownKey),
        }
        Ok(())
    }

    fn options(&self) -> Vec<(&'static str, String)> {
        let d = Slow::default();
        let mut out = vec![];
        if self.max != d.max {
            out.push(("max", self.max.to_string()));
        }
        if self.pause_us != d.pause_us {
            out.push(("pause_us", self.pause_us.to_string()));
        }
        if self.limit != d.limit {
            let limit = if self.limit == usize::MAX {
                "all".to_string()
            } else {
                self.limit.to_string()
            };
            out.push(("limit", limit));
        }
        out
    }
}
