//! `chopstick check`: one target, one framing, one oracle, each fault in turn.

use std::path::PathBuf;
use std::time::Instant;

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

/// Runs every profile against the target. Returns the report; a target that cannot be
/// started at all is a `TargetError`.
pub async fn check(
    config: &CheckConfig,
    progress: &mut dyn Progress,
    report: &mut Report,
) -> Result<(), TargetError> {
    let mut target = Target::start(&config.target).await?;
    progress.start(config.profiles.len() as u64 * config.workload.connections as u64);
    for profile in &config.profiles {
        let started = Instant::now();
        let mut row = Row::new(&config.target_name, &profile.name);
        let mut shrunk_classes = std::collections::BTreeSet::new();
        let mut unreachable_streak = 0;
        for conn in 0..config.workload.connections as u64 {
            let case = draw_case(
                &config.workload,
                &config.case.framing,
                &profile.faults,
                config.seed,
                conn,
            );
            let result = run_case(&mut target, &config.case, &case).await;
            row.connections += 1;
            row.messages += case.messages.len() as u64;
            row.bytes += result.bytes as u64;
            row.latencies_us.extend_from_slice(&result.latencies_us);
            if let Some(failure) = result.failure.clone() {
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
                    config
                        .case
                        .framing
                        .encode_all(&case.messages)
                        .ok()
                        .and_then(|(_, l)| l.get(i).map(|l| l.start))
                });
                let mut record = FailureRecord {
                    target: config.target_name.clone(),
                    fault: profile.name.clone(),
                    class: failure.class,
                    conn,
                    offset,
                    detail: failure.detail.clone(),
                    reproducer: None,
                };
                if config.shrink && shrunk_classes.insert(failure.class) {
                    let original = (case.messages.len(), case.plan.writes());
                    let (small, small_result, _runs) = shrink::shrink(
                        &mut target,
                        &config.case,
                        case,
                        result,
                        failure.class,
                        config.shrink_budget,
                        config.shrink_time,
                    )
                    .await;
                    let failure = small_result.failure.clone().unwrap_or(failure);
                    let mut repro = Reproducer {
                        version: super::repro::VERSION,
                        seed: config.seed,
                        conn,
                        target_name: config.target_name.clone(),
                        target: config.target.clone(),
                        fault: profile.name.clone(),
                        config: config.case.clone(),
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
                    if let Some(dir) = &config.artifacts {
                        match repro.write_to(dir) {
                            Ok(path) => record.reproducer = Some(path),
                            Err(e) => tracing::warn!("{e}"),
                        }
                    }
                }
                report.failures.push(record);
                if unreachable_streak >= GIVE_UP_AFTER && !target.is_spawned() {
                    report.unusable.push(format!(
                        "{}: unreachable at {}",
                        config.target_name, target.addr
                    ));
                    break;
                }
            } else {
                unreachable_streak = 0;
            }
            progress.tick(&row);
        }
        row.seconds = started.elapsed().as_secs_f64();
        row.finish();
        report.rows.push(row);
    }
    target.kill().await;
    progress.finish();
    Ok(())
}

/// The default workload of `check` and `run`.
pub fn default_workload(
    connections: usize,
    messages: usize,
    max_size: usize,
    header_width: usize,
) -> Workload {
    Workload {
        connections,
        messages,
        max_size,
        header_width,
    }
}
