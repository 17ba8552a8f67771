//! UDP reproducer files: seed, target, faults, the datagrams with their fates, and the
//! failures with expected vs seen. [`replay`] sends exactly those datagrams with
//! exactly those fates again and says whether the failure came back. Writing and
//! reading the file is [`crate::repro_file`], shared with TCP reproducers.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::UdpCheckError;
use super::exchange::{exchange, Params, Request};
use super::fault::DatagramFaults;
use super::judge::{judge, kinds, UdpFailure, UdpOracle};
use super::target::{RunningTarget, UdpTarget};
use crate::repro_file::{self, ReproFile, ReproFileError};

/// Format version of UDP reproducer files.
pub const VERSION: u32 = 1;
/// Bound on one replayed exchange.
const REPLAY_DEADLINE: std::time::Duration = std::time::Duration::from_secs(60);

pub use crate::campaign::payload::Payload;

/// One failing UDP case.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UdpReproducer {
    pub version: u32,
    pub seed: u64,
    pub target: UdpTarget,
    pub oracle: UdpOracle,
    pub faults: DatagramFaults,
    /// The datagrams to send, in order, each with its recorded fate.
    pub datagrams: Vec<Request>,
    /// What failed, expected vs seen.
    pub failures: Vec<UdpFailure>,
    /// How many datagrams the original run sent.
    pub original_datagrams: usize,
    pub window: usize,
    pub reply_timeout_ms: u64,
    pub time_tolerance_s: u64,
    /// The command that runs this file again.
    pub replay: String,
}

/// Why a UDP reproducer could not be written or read: the file errors every reproducer
/// shares (replay errors are [`UdpCheckError`]s).
pub type UdpReproError = ReproFileError;

impl ReproFile for UdpReproducer {
    const KIND: &'static str = "udp reproducer";
    const VERSION: u32 = VERSION;
    fn set_replay(&mut self, command: String) {
        self.replay = command;
    }
}

/// What a replay saw.
#[derive(Debug, Clone)]
pub struct UdpReplayOutcome {
    /// Whether a failure of a recorded kind happened again.
    pub confirmed: bool,
    pub failures: Vec<UdpFailure>,
    pub attempts: usize,
}

impl UdpReproducer {
    pub(crate) fn params(&self) -> Params {
        Params::new(
            self.window,
            &self.faults,
            std::time::Duration::from_millis(self.reply_timeout_ms),
            REPLAY_DEADLINE,
        )
    }

    /// `udp-echo-silent_truncation-s3.json`: what failed, with which seed.
    pub fn file_name(&self) -> String {
        let oracle = serde_json::to_value(self.oracle)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let kind = self
            .failures
            .first()
            .map_or("failure".to_string(), |f| f.kind.to_string());
        format!("udp-{oracle}-{kind}-s{}.json", self.seed)
    }

    /// Writes the file atomically (temp file + rename) into `dir`; returns its path.
    pub fn write_to(&mut self, dir: &Path) -> Result<PathBuf, UdpReproError> {
        let name = self.file_name();
        repro_file::write_to(self, dir, &name)
    }

    pub fn read(path: &Path) -> Result<UdpReproducer, UdpReproError> {
        repro_file::read(path)
    }
}

/// Whether a JSON file is a UDP reproducer (so `chopstick replay` can dispatch on it).
pub fn is_udp_reproducer(json: &serde_json::Value) -> bool {
    json.get("datagrams").is_some() && json.get("oracle").is_some() && json.get("faults").is_some()
}

/// Starts the recorded target and sends the recorded datagrams with their recorded
/// fates, up to `attempts` times, stopping at the first run that fails the same way.
pub async fn replay(r: &UdpReproducer, attempts: usize) -> Result<UdpReplayOutcome, UdpCheckError> {
    let target = RunningTarget::start(&r.target).await?;
    let wanted = kinds(&r.failures);
    let tolerance = std::time::Duration::from_secs(r.time_tolerance_s.max(1));
    let mut outcome = UdpReplayOutcome {
        confirmed: false,
        failures: Vec::new(),
        attempts: 0,
    };
    for attempt in 1..=attempts.max(1) {
        let x = match exchange(target.addr, &r.datagrams, r.params()).await {
            Ok(x) => x,
            Err(e) => {
                target.stop().await;
                return Err(e.into());
            }
        };
        let j = judge(r.oracle, &r.datagrams, &x, tolerance);
        outcome.attempts = attempt;
        outcome.confirmed = kinds(&j.failures).iter().any(|k| wanted.contains(k));
        outcome.failures = j.failures;
        if outcome.confirmed {
            break;
        }
    }
    target.stop().await;
    Ok(outcome)
}
