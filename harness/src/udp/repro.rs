//! UDP reproducer files: seed, target, faults, the datagrams with their fates, and the
//! failures with expected vs seen. [`replay`] sends exactly those datagrams with
//! exactly those fates again and says whether the failure came back.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::check::{
    exchange, judge, params, FailureKind, Params, Request, UdpCheckConfig, UdpCheckError,
    UdpFailure, UdpOracle,
};
use super::fault::DatagramFaults;
use super::target::{RunningTarget, UdpTarget};

/// Format version of UDP reproducer files.
pub const VERSION: u32 = 1;
/// At most this many failing datagrams go into a shrunk reproducer.
const MAX_SHRUNK: usize = 16;

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

/// Why a reproducer could not be written or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UdpReproError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a chopstick udp reproducer: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path} has format version {found}; this chopstick reads version {VERSION}")]
    Version { path: PathBuf, found: u32 },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What a replay saw.
#[derive(Debug, Clone)]
pub struct UdpReplayOutcome {
    /// Whether a failure of a recorded kind happened again.
    pub confirmed: bool,
    pub failures: Vec<UdpFailure>,
    pub attempts: usize,
}

fn kinds(f: &[UdpFailure]) -> Vec<FailureKind> {
    let mut k: Vec<FailureKind> = f.iter().map(|f| f.kind).collect();
    k.sort();
    k.dedup();
    k
}

impl UdpReproducer {
    fn params(&self) -> Params {
        // Same rule as the check: the window lets a held datagram's passers-by through.
        let reorder = self.faults.reorder.map_or(0, |(w, _)| w as usize);
        Params {
            window: self.window.max(reorder + 1),
            reply_timeout: std::time::Duration::from_millis(self.reply_timeout_ms),
            deadline: std::time::Duration::from_secs(60),
        }
    }

    /// A reproducer for a failed run: only the failing datagrams when they alone fail
    /// the same way against `target` again, otherwise every datagram of the run.
    pub(crate) async fn shrunk(
        config: &UdpCheckConfig,
        requests: &[Request],
        failures: &[UdpFailure],
        target: &RunningTarget,
    ) -> Result<UdpReproducer, UdpCheckError> {
        let mut seqs: Vec<u64> = failures.iter().filter_map(|f| f.seq).collect();
        seqs.sort_unstable();
        seqs.dedup();
        seqs.truncate(MAX_SHRUNK);
        let mut r = UdpReproducer {
            version: VERSION,
            seed: config.seed,
            target: config.target.clone(),
            oracle: config.oracle,
            faults: config.faults,
            datagrams: requests.to_vec(),
            failures: failures.to_vec(),
            original_datagrams: requests.len(),
            window: config.window,
            reply_timeout_ms: u64::try_from(config.reply_timeout.as_millis()).unwrap_or(u64::MAX),
            time_tolerance_s: config.time_tolerance.as_secs(),
            replay: String::new(),
        };
        if seqs.is_empty() || seqs.len() == requests.len() {
            return Ok(r);
        }
        let small: Vec<Request> = requests
            .iter()
            .filter(|q| seqs.contains(&q.seq))
            .cloned()
            .collect();
        let x = exchange(target.addr, &small, params(config)).await?;
        let j = judge(config.oracle, &small, &x, config.time_tolerance);
        let wanted = kinds(failures);
        if kinds(&j.failures).iter().any(|k| wanted.contains(k)) {
            r.datagrams = small;
            r.failures = j.failures;
        }
        Ok(r)
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
        let path = dir.join(self.file_name());
        self.replay = format!("chopstick replay {}", path.display());
        let wrap = |source| UdpReproError::Write {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(wrap)?;
        let tmp = dir.join(format!(".{}.tmp", self.file_name()));
        let json = serde_json::to_vec_pretty(self).map_err(|e| wrap(std::io::Error::other(e)))?;
        std::fs::write(&tmp, json).map_err(wrap)?;
        std::fs::rename(&tmp, &path).map_err(wrap)?;
        Ok(path)
    }

    pub fn read(path: &Path) -> Result<UdpReproducer, UdpReproError> {
        let text = std::fs::read(path).map_err(|source| UdpReproError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let r: UdpReproducer =
            serde_json::from_slice(&text).map_err(|source| UdpReproError::Parse {
                path: path.to_path_buf(),
                source,
            })?;
        if r.version != VERSION {
            return Err(UdpReproError::Version {
                path: path.to_path_buf(),
                found: r.version,
            });
        }
        Ok(r)
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
