//! `bandwidth`: a byte rate, as chunks with pauses between them (`bandwidth:rate=64KiB`,
//! default 4 MiB/s so a campaign of large messages still ends in seconds).
//!
//! The stream goes out in chunks of about one millisecond's worth of bytes, each chunk
//! followed by the pause that keeps the average at `rate` bytes per second. No
//! randomness: a rate is a rate.

use chopstick_targets::wire::{parse_size, FrameLayout};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::{Configure, Events, OptError};
use crate::chaos::{Fault, Plan};

/// At most `rate` bytes per second (accepts KiB/MiB/GiB suffixes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Bandwidth {
    pub rate: u64,
}

impl Default for Bandwidth {
    fn default() -> Self {
        Bandwidth {
            rate: 4 * 1024 * 1024,
        }
    }
}

impl Bandwidth {
    /// Chunk size in bytes and the pause after each chunk in microseconds.
    pub fn chunking(&self) -> (usize, u64) {
        let rate = self.rate.max(1);
        let chunk = (rate / 1000).max(1);
        let pause = (u128::from(chunk) * 1_000_000 / u128::from(rate)) as u64;
        (usize::try_from(chunk).unwrap_or(usize::MAX), pause)
    }
}

impl Fault for Bandwidth {
    fn name(&self) -> &'static str {
        "bandwidth"
    }

    fn plan(&self, len: usize, _frames: &[FrameLayout], _rng: &mut ChaCha8Rng) -> Plan {
        let (chunk, pause) = self.chunking();
        let mut events = Events::new(len);
        // Steps of `chunk` >= 1 bytes: at most `len` rounds.
        for at in (chunk..len).step_by(chunk) {
            events.cut_with_pause(at, pause);
        }
        events.into_plan()
    }
}

impl Configure for Bandwidth {
    fn set(&mut self, key: &str, value: &str) -> Result<(), OptError> {
        match key {
            "rate" => {
                let rate = parse_size(value).map_err(OptError::Bad)?;
                if rate == 0 {
                    return Err(OptError::Bad("rate must be at least 1 byte per second"));
                }
                self.rate = rate;
            }
            _ => return Err(OptError::UnknownKey),
        }
        Ok(())
    }

    fn options(&self) -> Vec<(&'static str, String)> {
        if *self == Bandwidth::default() {
            vec![]
        } else {
            vec![("rate", self.rate.to_string())]
        }
    }
}
