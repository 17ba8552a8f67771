//! `chopstick check`: one target, one framing, one oracle, each fault in turn.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::repro::Reproducer;
use super::shrink;
use super::{
    draw_case, payload, run_case, CaseConfig, FailureClass, Target, TargetError, TargetSpec,
};
use crate::chaos::FaultSet;
use crate::report::{FailureRecord, Report, Row};
use crate::workload::Workload;

/// A named fault profile: one row of the report.
#[derive(Debug)]
pub struct Profile {
    pub name: String,
    pub faults: FaultSet,
}

/// Everything `check` needs.
#[derive(Debug)]
pub struct CheckConfig {
    pub target: TargetSpec,
    /// How the target is named in reports.
    pub target_name: String,
    pub case: CaseConfig,
    pub workload: Workload,
    pub profiles: Vec<Profile>,
    pub seed: u64,
    pub artifacts: Option<PathBuf>,
    /// Shrink and write a reproducer for the first failure of each class per profile.
    pub shrink: bool,
    pub shrink_budget: usize,
    /// Wall time allowed for shrinking one failure.
    pub shrink_time: std::time::Duration,
}

/// Progress callback: called after every connection.
pub trait Progress: Send {
    fn start(&mut self, _total: u64) {}
    fn tick(&mut self, _row: &Row) {}
    fn finish(&mut self) {}
}

/// No progress output.
pub struct Quiet;
impl Progress for Quiet {}

/// Stops a profile early when the target is gone for good (e.g. `--connect` to a dead server).
const GIVE_UP_AFTER: u32 = 5;

/// Where a profile's reproducers go, and how they start their target again.
pub struct Artifacts<'a> {
    pub dir: &'a Path,
    /// The target a reproducer starts (`check`: the checked one; `run`: an equivalent
    /// `chopstick serve` of the in-process server).
    pub target: &'a TargetSpec,
    /// Makes what `target` needs on disk (a root directory, a key file).
    pub prepare: &'a (dyn Fn() -> Result<(), String> + Sync),
}

/// One target's settings for [`drive_profile`].
pub struct Drive<'a> {
    /// The target's name in reports.
    pub name: &'a str,
    pub case: &'a CaseConfig,
    pub workload: &'a Workload,
    pub seed: u64,
    /// Shrink budget (runs, wall time); `None` writes unshrunk cases.
    pub shrink: Option<(usize, Duration)>,
    pub artifacts: Option<Artifacts<'a>>,
}

/// Runs every profile against the target. Returns the report; a target that cannot be
/// started at all is a `TargetError`.
pub async fn check(
    config: &CheckConfig,
    progress: &mut dyn Progress,
    report: &mut Report,
) -> Result<(), TargetError> {
    let mut target = Target::start(&config.target).await?;
    progress.start(config.profiles.len() as u64 * config.workload.connections as u64);
    let no_prepare = || Ok(());
    let drive = Drive {
        name: &config.target_name,
        case: &config.case,
        workload: &config.workload,
        seed: config.seed,
        shrink: config
            .shrink
            .then_some((config.shrink_budget, config.shrink_time)),
        artifacts: config.artifacts.as_deref().map(|dir| Artifacts {
            dir,
            target: &config.target,
            prepare: &no_prepare,
        }),
    };
    for profile in &config.profiles {
        let row = drive_profile(&mut target, &drive, profile, progress, report).await;
        report.rows.push(row);
    }
    target.kill().await;
    progress.finish();
    Ok(())
}

/// Drives `live` with one fault profile: every connection of the workload, judged,
/// liveness-checked; the first failure of each class is shrunk and written as a
/// reproducer. Failures go into `report`; the row is returned.
pub async fn drive_profile(
    live: &mut Target,
    drive: &Drive<'_>,
    profile: &Profile,
    progress: &mut dyn Progress,
    report: &mut Report,
) -> Row {
    let started = Instant::now();
    let mut row = Row::new(drive.name, &profile.name);
    let mut shrunk_classes = BTreeSet::new();
    let mut unreachable_streak = 0;
    for conn in 0..drive.workload.connections as u64 {
        let case = draw_case(
            drive.case,
            drive.workload,
            &profile.faults,
            drive.seed,
            conn,
        );
        let result = run_case(live, drive.case, &case).await;
        row.connections += 1;
        row.messages += case.messages.len() as u64;
        row.bytes += result.bytes as u64;
        row.latencies_us.extend_from_slice(&result.latencies_us);
        let Some(failure) = result.failure.clone() else {
            unreachable_streak = 0;
            progress.tick(&row);
            continue;
        };
        row.failures += 1;
        *row.classes.entry(failure.class.to_string()).or_default() += 1;
        let unreachable = matches!(
            failure.class,
            FailureClass::Refused | FailureClass::ServerDied
        );
        unreachable_streak = if unreachable {
            unreachable_streak + 1
        } else {
            0
        };
        let offset = failure.message.and_then(|i| {
            let (_, layouts) = drive.case.encode(conn, &case.messages).ok()?;
            layouts.get(i).map(|l| l.start)
        });
        let mut record = FailureRecord {
            target: drive.name.to_string(),
            fault: profile.name.clone(),
            class: failure.class,
            conn,
            offset,
            detail: failure.detail.clone(),
            reproducer: None,
        };
        if let Some(artifacts) = drive
            .artifacts
            .as_ref()
            .filter(|_| shrunk_classes.insert(failure.class))
        {
            let original = (case.messages.len(), case.plan.writes());
            let (small, small_result) = match drive.shrink {
                Some((runs, time)) => {
                    let (c, r, _) =
                        shrink::shrink(live, drive.case, case, result, failure.class, runs, time)
                            .await;
                    (c, r)
                }
                None => (case, result),
            };
            let failure = small_result.failure.clone().unwrap_or(failure);
            let mut repro = Reproducer {
                version: super::repro::VERSION,
                seed: drive.seed,
                conn,
                target_name: drive.name.to_string(),
                target: artifacts.target.clone(),
                fault: profile.name.clone(),
                config: drive.case.clone(),
                messages: payload::wrap(&small.messages),
                plan_line: small.plan.to_string(),
                plan: small.plan,
                failure,
                expected: payload::wrap(&small_result.expected),
                seen: payload::wrap(&small_result.seen.replies),
                seen_end: small_result.seen.end,
                original_messages: original.0,
                original_writes: original.1,
                replay: String::new(),
            };
            let written = (artifacts.prepare)()
                .and_then(|()| repro.write_to(artifacts.dir).map_err(|e| e.to_string()));
            match written {
                Ok(path) => record.reproducer = Some(path),
                Err(e) => tracing::warn!("reproducer not written: {e}"),
            }
        }
        report.failures.push(record);
        progress.tick(&row);
        if unreachable_streak >= GIVE_UP_AFTER && !live.is_spawned() {
            report
                .unusable
                .push(format!("{}: unreachable at {}", drive.name, live.addr));
            break;
        }
    }
    row.seconds = started.elapsed().as_secs_f64();
    row.finish();
    row
}
