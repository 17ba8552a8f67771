//! Reproducer files: everything needed to run one failing case again, and
//! `chopstick replay FILE`, which does. Writing and reading the file is
//! [`crate::repro_file`], shared with UDP reproducers.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::payload::{self, Payload};
use super::{
    run_case, Case, CaseConfig, CaseResult, End, Failure, FailureClass, Target, TargetError,
    TargetSpec, Timing,
};
use crate::chaos::Plan;
use crate::report::Reproduced;
use crate::repro_file::{self, ReproFile, ReproFileError};

/// Format version of reproducer files.
pub const VERSION: u32 = 1;

/// One shrunk failing case, as written to the artifacts directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reproducer {
    pub version: u32,
    pub seed: u64,
    /// The connection index within the campaign (its plan seed is derived from it).
    pub conn: u64,
    pub target_name: String,
    pub target: TargetSpec,
    pub fault: String,
    #[serde(flatten)]
    pub config: CaseConfig,
    pub messages: Vec<Payload>,
    /// The request stream's plan, also as one line in `plan_line`.
    pub plan: Plan,
    pub plan_line: String,
    pub failure: Failure,
    pub expected: Vec<Payload>,
    pub seen: Vec<Payload>,
    pub seen_end: End,
    /// Size before shrinking: messages and writes.
    pub original_messages: usize,
    pub original_writes: usize,
    /// Runs the shrinker spent getting from there to here (absent: not shrunk).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shrink_runs: Option<usize>,
    /// The command that runs this file again.
    pub replay: String,
    /// The check's patience, which replay keeps (absent: the defaults).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<Timeouts>,
    /// How often the case failed the same way when replayed before it was written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reproduced: Option<Reproduced>,
}

/// The waits a case was judged with: a hang is only a hang against a deadline, so a
/// replay waits as long as the check did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timeouts {
    pub reply_timeout_ms: u64,
    pub liveness_ms: u64,
}

impl Timeouts {
    pub fn of(config: &CaseConfig) -> Timeouts {
        Timeouts {
            reply_timeout_ms: config.timing.reply_timeout.as_millis() as u64,
            liveness_ms: config.liveness.as_millis() as u64,
        }
    }
}

/// Why a reproducer could not be written, read or replayed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReproError {
    /// Writing or reading the file.
    #[error(transparent)]
    File(#[from] ReproFileError),
    /// Starting the recorded target for a replay.
    #[error(transparent)]
    Target(#[from] TargetError),
}

impl ReproFile for Reproducer {
    const KIND: &'static str = "reproducer";
    const VERSION: u32 = VERSION;
    fn set_replay(&mut self, command: String) {
        self.replay = command;
    }
}

impl Reproducer {
    pub fn case(&self) -> Case {
        Case {
            conn: self.conn,
            messages: payload::unwrap(&self.messages),
            plan: self.plan.clone(),
        }
    }

    /// A file name that says what failed where: `echo-split-truncated-c3.json`.
    pub fn file_name(&self) -> String {
        let clean = |s: &str| {
            s.chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect::<String>()
        };
        format!(
            "{}-{}-{}-s{}-c{}.json",
            clean(&self.target_name),
            clean(&self.fault),
            self.failure.class,
            self.seed,
            self.conn
        )
    }

    /// Writes the file atomically (temp file + rename) into `dir`; returns its path.
    pub fn write_to(&mut self, dir: &Path) -> Result<PathBuf, ReproError> {
        let name = self.file_name();
        Ok(repro_file::write_to(self, dir, &name)?)
    }

    pub fn read(path: &Path) -> Result<Reproducer, ReproError> {
        Ok(repro_file::read(path)?)
    }
}

/// What a replay saw.
#[derive(Debug)]
pub struct ReplayOutcome {
    /// The first failure an attempt saw (of any class), if any.
    pub failure: Option<Failure>,
    pub expected: Vec<bytes::Bytes>,
    pub seen: Vec<bytes::Bytes>,
    /// Attempts that failed with the recorded class, of all attempts.
    pub reproduced: Reproduced,
    /// Attempts that failed with another class.
    pub other: u32,
    /// For a reply stream that did not decode: the raw bytes an unfaulted send of the
    /// plan's bytes got back (see [`super::preflight::raw_exchange`]).
    pub raw: Option<super::preflight::Sample>,
}

/// Least gap between writes on replay: the plan's cuts are kept exactly, and wider gaps
/// make them reach the server as separate reads even on a busy machine.
pub const REPLAY_MIN_PAUSE: std::time::Duration = std::time::Duration::from_millis(10);
/// Widest gap between writes on replay.
pub const REPLAY_MAX_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);
/// Gaps a replay may add up to (at most a quarter of the reply timeout): a shrunk case
/// has a handful of writes, and a server that is not scheduled for a few milliseconds
/// on a busy machine would read two of them as one.
pub const REPLAY_PAUSE_BUDGET: std::time::Duration = std::time::Duration::from_secs(1);

/// How a reproducer's case is run again: `config` with `timing`, writes apart by
/// [`REPLAY_PAUSE_BUDGET`] spread over the plan's writes, within [`REPLAY_MIN_PAUSE`]
/// and [`REPLAY_MAX_PAUSE`].
pub fn replay_config(config: &CaseConfig, timing: Timing, case: &Case) -> CaseConfig {
    let mut config = config.clone();
    config.timing = timing;
    let writes = u32::try_from(case.plan.writes().max(1)).unwrap_or(u32::MAX);
    let gap = (REPLAY_PAUSE_BUDGET.min(timing.reply_timeout / 4) / writes)
        .clamp(REPLAY_MIN_PAUSE, REPLAY_MAX_PAUSE);
    config.timing.min_pause = config.timing.min_pause.max(gap);
    config
}

/// What [`run_again`] saw over its attempts.
#[derive(Debug)]
pub struct Attempts {
    /// Runs that failed with the class asked about.
    pub reproduced: Reproduced,
    /// Runs that failed with another class.
    pub other: u32,
    /// The first failing run's result, else the last run's.
    pub result: CaseResult,
}

/// Runs `case` `attempts` times (at least once) against `target` and counts the runs
/// that fail with `class`. Bounded: each run is bounded by the case's timeouts.
pub async fn run_again(
    target: &mut Target,
    config: &CaseConfig,
    case: &Case,
    class: FailureClass,
    attempts: usize,
) -> Attempts {
    let attempts = attempts.max(1);
    let (mut hits, mut other) = (0u32, 0u32);
    let mut kept: Option<CaseResult> = None;
    for _ in 0..attempts {
        let result = run_case(target, config, case).await;
        match result.failure.as_ref().map(|f| f.class) {
            Some(c) if c == class => hits += 1,
            Some(_) => other += 1,
            None => {}
        }
        if kept.as_ref().is_none_or(|k| k.failure.is_none()) {
            kept = Some(result);
        }
    }
    Attempts {
        reproduced: Reproduced {
            hits,
            attempts: attempts as u32,
        },
        other,
        result: kept.expect("at least one attempt"),
    }
}

/// The timing a reproducer was judged with: the check's timeouts when the file has
/// them, else the defaults; and the case config with its liveness deadline.
pub fn recorded_timing(r: &Reproducer) -> (CaseConfig, Timing) {
    let mut config = r.config.clone();
    let timing = match r.timeouts {
        Some(t) => {
            config.liveness = std::time::Duration::from_millis(t.liveness_ms);
            Timing {
                reply_timeout: std::time::Duration::from_millis(t.reply_timeout_ms),
                ..Timing::default()
            }
        }
        None => Timing::default(),
    };
    (config, timing)
}

/// Runs the case again `attempts` times (at least once) with `timing` and counts how
/// often it fails as recorded (see [`recorded_timing`] for the check's own timeouts).
pub async fn replay(
    r: &Reproducer,
    attempts: usize,
    timing: Timing,
) -> Result<ReplayOutcome, ReproError> {
    let mut target = Target::start(&r.target).await?;
    let (config, _) = recorded_timing(r);
    let case = r.case();
    let config = replay_config(&config, timing, &case);
    let Attempts {
        reproduced,
        other,
        result,
    } = run_again(&mut target, &config, &case, r.failure.class, attempts).await;
    let malformed = result
        .failure
        .as_ref()
        .is_some_and(|f| f.class == FailureClass::MalformedReply);
    let raw = match config.encode(case.conn, &case.messages) {
        Ok((stream, _)) if malformed => {
            let sent = case.plan.bytes_written().min(stream.len());
            Some(
                super::preflight::raw_exchange(&target, &config, &stream[..sent], usize::MAX).await,
            )
        }
        _ => None,
    };
    target.kill().await;
    Ok(ReplayOutcome {
        failure: result.failure,
        expected: result.expected,
        seen: result.seen.replies,
        reproduced,
        other,
        raw,
    })
}
