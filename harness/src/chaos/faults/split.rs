//! `split`: random chunk sizes with a pause between pieces (`split:max=64:pause_us=1000`).
//!
//! The plain "one send arrives as many reads" fault. The pause matters on real sockets:
//! without it the kernel may hand the pieces to the peer in one read again.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use targets::wire::FrameLayout;

use super::{parse_count, parse_pause, Configure, Events, OptError};
use crate::chaos::{Fault, Plan};

/// Chunks of 1..=`max` bytes, `pause_us` apart. Frame layouts are not needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Split {
    /// Largest chunk in bytes (at least 1).
    pub max: usize,
    /// Pause between chunks in microseconds.
    pub pause_us: u64,
}

impl Default for Split {
    fn default() -> Self {
        Split {
            max: 16,
            pause_us: 1000,
        }
    }
}

impl Fault for Split {
    fn name(&self) -> &'static str {
        "split"
    }

    fn plan(&self, len: usize, _frames: &[FrameLayout], rng: &mut ChaCha8Rng) -> Plan {
        let mut events = Events::new(len);
        let max = self.max.max(1);
        let mut at = 0;
        // Each round moves `at` forward by at least one byte, so this ends within `len` rounds.
        while at < len {
            at = at.saturating_add(rng.random_range(1..=max));
            events.cut_with_pause(at, self.pause_us);
        }
        events.into_plan()
    }
}

impl Configure for Split {
    fn set(&mut self, key: &str, value: &str) -> Result<(), OptError> {
        match key {
            "max" => self.max = parse_count(value, 1, usize::MAX)?,
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
        if self.pause_us != d.pause_us {
            out.push(("pause_us", self.pause_us.to_string()));
        }
        out
    }
}
