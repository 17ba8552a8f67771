//! `latency`: a pause before the stream's first write (`latency:us=20000:jitter_us=5000`).
//!
//! Models a slow path rather than fragmentation: the bytes arrive whole, late. Composed
//! with a cutting fault the delay stays at offset 0 (see the composition rules).

use chopstick_targets::wire::FrameLayout;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::{parse_pause, Configure, Events, OptError};
use crate::chaos::{Fault, Plan};

/// Waits `us` plus a random 0..=`jitter_us` before writing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Latency {
    pub us: u64,
    pub jitter_us: u64,
}

impl Default for Latency {
    fn default() -> Self {
        Latency {
            us: 10_000,
            jitter_us: 0,
        }
    }
}

impl Fault for Latency {
    fn name(&self) -> &'static str {
        "latency"
    }

    fn plan(&self, len: usize, _frames: &[FrameLayout], rng: &mut ChaCha8Rng) -> Plan {
        let jitter = if self.jitter_us > 0 {
            rng.random_range(0..=self.jitter_us)
        } else {
            0
        };
        let mut events = Events::new(len);
        events.pause(0, self.us.saturating_add(jitter));
        events.into_plan()
    }
}

impl Configure for Latency {
    fn set(&mut self, key: &str, value: &str) -> Result<(), OptError> {
        match key {
            "us" => self.us = parse_pause(value)?,
            "jitter_us" => self.jitter_us = parse_pause(value)?,
            _ => return Err(OptError::UnknownKey),
        }
        Ok(())
    }

    fn options(&self) -> Vec<(&'static str, String)> {
        let d = Latency::default();
        let mut out = vec![];
        if self.us != d.us {
            out.push(("us", self.us.to_string()));
        }
        if self.jitter_us != d.jitter_us {
            out.push(("jitter_us", self.jitter_us.to_string()));
        }
        out
    }
}
