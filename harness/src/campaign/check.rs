//! `chopstick check`: one target, one framing, one oracle, each fault in turn.
//!
//! [`check`] starts the target, runs the [pre-flight](super::preflight) and then each
//! profile through [`drive_profile`], the loop `run` shares: every connection of the
//! workload (cheapest first, or one shard's slice of them), judged and
//! liveness-checked; the first failure of each class per profile is shrunk, and
//! failures with the same shrunk case become one [`report::Finding`](crate::report::Finding)
//! with one reproducer. A [`Stop`] ends the loop early: `--fail-fast` after the first
//! confirmed (shrunk) failure, `--budget` at a deadline, a signal at once; the report
//! then says what was covered.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::preflight::{preflight, PreflightError};
use super::repro::Reproducer;
use super::shrink;
use super::{
    draw_case, payload, run_case, CaseConfig, FailureClass, Target, TargetError, TargetSpec,
};
use crate::chaos::FaultSet;
use crate::report::{FailureRecord, Finding, Report, Row};
use crate::workload::Workload;

/// Why `check` could not check the target at all (exit code 2).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckError {
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error(transparent)]
    Preflight(#[from] PreflightError),
}

/// Ends a check early, from anywhere (a signal handler, a deadline, the loop itself
/// for `--fail-fast`); the first reason given is kept.
#[derive(Debug, Default)]
pub struct Stop {
    token: CancellationToken,
    reason: Mutex<Option<String>>,
}

impl Stop {
    pub fn new() -> Stop {
        Stop::default()
    }

    /// Stops the check; `why` is reported (the first call wins).
    pub fn stop(&self, why: impl Into<String>) {
        let mut reason = self.reason.lock().expect("stop lock");
        if reason.is_none() {
            *reason = Some(why.into());
        }
        self.token.cancel();
    }

    pub fn is_stopped(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves once stopped.
    pub async fn stopped(&self) {
        self.token.cancelled().await
    }

    pub fn reason(&self) -> Option<String> {
        self.reason.lock().expect("stop lock").clone()
    }
}

/// Which connections of a profile a run covers: shard `index` (0-based) of `count`
/// takes every connection whose rank in the cheapest-first order is `index` mod `count`,
/// so every shard gets its share of cheap and expensive cases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u64,
    pub count: u64,
}

/// A `--shard K/N` that does not name one of N slices.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad shard `{0}`: expected K/N with 1 <= K <= N")]
pub struct ShardError(pub String);

impl std::str::FromStr for Shard {
    type Err = ShardError;

    fn from_str(s: &str) -> Result<Shard, ShardError> {
        let bad = || ShardError(s.to_string());
        let (k, n) = s.split_once('/').ok_or_else(bad)?;
        let k: u64 = k.trim().parse().map_err(|_| bad())?;
        let n: u64 = n.trim().parse().map_err(|_| bad())?;
        if k == 0 || k > n {
            return Err(bad());
        }
        Ok(Shard {
            index: k - 1,
            count: n,
        })
    }
}

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
    /// Stop at the first confirmed (shrunk) failure.
    pub fail_fast: bool,
    /// Bound on the whole check's wall time.
    pub budget: Option<Duration>,
    /// Run only this slice of each profile's connections.
    pub shard: Option<Shard>,
    /// Also run the [`hostile`](super::hostile) cases, as a last row (not sharded:
    /// shard 1 runs them).
    pub hostile: bool,
}

/// Progress callback: called after every connection.
pub trait Progress: Send {
    fn start(&mut self, _total: u64) {}
    fn tick(&mut self, _row: &Row) {}
    /// A line worth showing the user now (e.g. a finding, or why the check stopped).
    fn note(&mut self, _line: &str) {}
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
    /// Ends the loop early (see [`Stop`]).
    pub stop: Option<&'a Stop>,
    /// Stop (through `stop`) once the first failure is shrunk.
    pub fail_fast: bool,
    pub shard: Option<Shard>,
}

/// Runs the pre-flight, then every profile against the target, filling `report`. A
/// target that cannot be started or fails the pre-flight is a [`CheckError`]. With
/// `stop`, the check ends early when it is stopped; `report.stopped` says why.
pub async fn check(
    config: &CheckConfig,
    progress: &mut dyn Progress,
    report: &mut Report,
) -> Result<(), CheckError> {
    check_until(config, progress, report, &Stop::new()).await
}

/// [`check`] that also ends when `stop` is stopped (a signal, a caller's deadline).
pub async fn check_until(
    config: &CheckConfig,
    progress: &mut dyn Progress,
    report: &mut Report,
    stop: &Stop,
) -> Result<(), CheckError> {
    let mut target = Target::start(&config.target).await?;
    let preflight_result = tokio::select! {
        r = preflight(&mut target, &config.case, config.workload.max_size) => Some(r),
        _ = stop.stopped() => None,
    };
    if let Some(Err(e)) = preflight_result {
        target.kill().await;
        return Err(e.into());
    }
    let per_profile = match config.shard {
        Some(s) => (config.workload.connections as u64).div_ceil(s.count),
        None => config.workload.connections as u64,
    };
    progress.start(config.profiles.len() as u64 * per_profile);
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
        stop: Some(stop),
        fail_fast: config.fail_fast,
        shard: config.shard,
    };
    let profiles = async {
        for profile in &config.profiles {
            if stop.is_stopped() {
                break;
            }
            let row = drive_profile(&mut target, &drive, profile, progress, report).await;
            report.rows.push(row);
        }
        if config.hostile && !stop.is_stopped() && config.shard.is_none_or(|s| s.index == 0) {
            let row = super::hostile::hostile_profile(&mut target, &drive, progress, report).await;
            report.rows.push(row);
        }
    };
    // The budget stops the loop like a signal does: the connection under way ends, its
    // row is kept.
    let budget = async {
        if let Some(b) = config.budget {
            tokio::time::sleep(b).await;
            stop.stop(format!("--budget of {b:?} spent"));
        }
        std::future::pending::<()>().await
    };
    tokio::select! {
        () = profiles => {}
        () = budget => {}
    }
    if let Some(why) = stop.reason() {
        report.stopped = Some(why);
    }
    target.kill().await;
    progress.finish();
    Ok(())
}

/// Connections ordered together: the cheapest of each window runs first. A window
/// keeps the sizing cheap (each connection's messages are drawn once more to weigh
/// them) and the first connection quick to start, however many there are.
pub const ORDER_WINDOW: u64 = 32;

/// The connections of a profile in the order they run: within each window of
/// [`ORDER_WINDOW`], cheapest first (fewest bytes, then fewest messages), so small
/// messages with boundary cuts, a coalesced write and an early cut run before the
/// large bodies. With a shard, only its slice: the connections whose position in this
/// order is the shard's index modulo the shard count.
pub fn connection_order<'a>(
    case: &'a CaseConfig,
    workload: &'a Workload,
    seed: u64,
    shard: Option<Shard>,
) -> impl Iterator<Item = u64> + 'a {
    let total = workload.connections as u64;
    (0..total.div_ceil(ORDER_WINDOW)).flat_map(move |w| {
        let start = w * ORDER_WINDOW;
        let mut conns: Vec<(usize, u64)> = (start..(start + ORDER_WINDOW).min(total))
            .map(|conn| {
                let bytes: usize = case
                    .messages(workload, seed, conn)
                    .iter()
                    .map(|m| m.len())
                    .sum();
                (bytes, conn)
            })
            .collect();
        conns.sort_unstable();
        conns
            .into_iter()
            .enumerate()
            .filter(move |(rank, _)| {
                shard.is_none_or(|s| (start + *rank as u64) % s.count == s.index)
            })
            .map(|(_, (_, conn))| conn)
    })
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
    // Per class in this profile: the finding its first (shrunk) failure joined.
    let mut findings: BTreeMap<FailureClass, usize> = BTreeMap::new();
    let mut unreachable_streak = 0;
    let stopped = || drive.stop.is_some_and(Stop::is_stopped);
    for conn in connection_order(drive.case, drive.workload, drive.seed, drive.shard) {
        // Sizing a window of connections does not yield; a signal is seen here.
        tokio::task::yield_now().await;
        if stopped() {
            break;
        }
        let case = draw_case(
            drive.case,
            drive.workload,
            &profile.faults,
            drive.seed,
            conn,
        );
        let result = match drive.stop {
            Some(stop) => tokio::select! {
                r = run_case(live, drive.case, &case) => r,
                () = stop.stopped() => break,
            },
            None => run_case(live, drive.case, &case).await,
        };
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
        let record = FailureRecord {
            target: drive.name.to_string(),
            fault: profile.name.clone(),
            class: failure.class,
            conn,
            offset,
            detail: failure.detail.clone(),
            reproducer: None,
            finding: None,
        };
        if let Some(&i) = findings.get(&failure.class) {
            // Same profile, same class: counted with the first one's finding.
            let key = report.findings[i].key.clone();
            report.add_failure(drive.seed, key, record);
        } else {
            let (key, record) = confirm(live, drive, profile, case, result, record, report).await;
            let i = report.add_failure(drive.seed, key, record);
            findings.insert(failure.class, i);
            let f = &report.findings[i];
            if f.count == 1 {
                progress.note(&format!(
                    "found: {}/{}: {}: {}",
                    f.target, f.fault, f.class, f.detail
                ));
            }
            if drive.fail_fast {
                if let Some(stop) = drive.stop {
                    stop.stop(format!(
                        "--fail-fast: first failure ({} on {}/{})",
                        failure.class, drive.name, profile.name
                    ));
                }
            }
        }
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

/// The first failure of a class in a profile: shrinks it (bounded, and cut short by a
/// stop) and writes its reproducer, unless a finding with the same shrunk case already
/// has one. Returns the finding key and the record to add.
async fn confirm(
    live: &mut Target,
    drive: &Drive<'_>,
    profile: &Profile,
    case: super::Case,
    result: super::CaseResult,
    mut record: FailureRecord,
    report: &Report,
) -> (String, FailureRecord) {
    let Some(artifacts) = drive.artifacts.as_ref() else {
        return (Finding::unshrunk_key(record.class, &profile.name), record);
    };
    let failure = result.failure.clone().expect("a failed case");
    let original = (case.messages.len(), case.plan.writes());
    let (small, small_result) = match drive.shrink {
        Some((runs, time)) => {
            let shrinking = shrink::shrink(
                live,
                drive.case,
                case.clone(),
                result.clone(),
                failure.class,
                runs,
                time,
            );
            let shrunk = match drive.stop {
                Some(stop) => tokio::select! {
                    r = shrinking => Some(r),
                    () = stop.stopped() => None,
                },
                None => Some(shrinking.await),
            };
            match shrunk {
                Some((c, r, _)) => (c, r),
                None => (case, result),
            }
        }
        None => (case, result),
    };
    let failure = small_result.failure.clone().unwrap_or(failure);
    let sizes: Vec<usize> = small.messages.iter().map(|m| m.len()).collect();
    let key = match drive.shrink {
        Some(_) => Finding::key_of(failure.class, &sizes, &small.plan.to_string()),
        None => Finding::unshrunk_key(failure.class, &profile.name),
    };
    if let Some(f) = report
        .findings
        .iter()
        .find(|f| f.key == key && f.target == record.target)
    {
        record.reproducer = f.reproducer.clone();
        return (key, record);
    }
    let mut repro = Reproducer {
        version: super::repro::VERSION,
        seed: drive.seed,
        conn: record.conn,
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
    (key, record)
}
