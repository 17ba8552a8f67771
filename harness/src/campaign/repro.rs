//! Reproducer files: everything needed to run one failing case again, and
//! `chopstick replay FILE`, which does. Writing and reading the file is
//! [`crate::repro_file`], shared with UDP reproducers.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::payload::{self, Payload};
use super::{run_case, Case, CaseConfig, End, Failure, Target, TargetError, TargetSpec, Timing};
use crate::chaos::Plan;
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
    /// The command that runs this file again.
    pub replay: String,
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
    /// The failure, if any attempt reproduced one.
    pub failure: Option<Failure>,
    pub expected: Vec<bytes::Bytes>,
    pub seen: Vec<bytes::Bytes>,
    pub attempts: usize,
    /// For a reply stream that did not decode: the raw bytes an unfaulted send of the
    /// plan's bytes got back (see [`super::preflight::raw_exchange`]).
    pub raw: Option<super::preflight::Sample>,
}

/// Least gap between writes on replay: the plan's cuts are kept exactly, and wider gaps
/// make them reach the server as separate reads even on a busy machine.
pub const REPLAY_MIN_PAUSE: std::time::Duration = std::time::Duration::from_millis(10);

/// Runs the case again, up to `attempts` times (timing-dependent failures may need a
/// second try); stops at the first failure. Writes are at least [`REPLAY_MIN_PAUSE`] apart.
pub async fn replay(
    r: &Reproducer,
    attempts: usize,
    timing: Timing,
) -> Result<ReplayOutcome, ReproError> {
    let mut target = Target::start(&r.target).await?;
    let mut config = r.config.clone();
    config.timing = timing;
    config.timing.min_pause = config.timing.min_pause.max(REPLAY_MIN_PAUSE);
    let case = r.case();
    let mut last = None;
    for attempt in 1..=attempts.max(1) {
        let result = run_case(&mut target, &config, &case).await;
        let done = result.failure.is_some();
        last = Some((result, attempt));
        if done {
            break;
        }
    }
    let (result, attempts) = last.expect("at least one attempt");
    let malformed = result
        .failure
        .as_ref()
        .is_some_and(|f| f.class == super::FailureClass::MalformedReply);
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
        attempts,
        raw,
    })
}
