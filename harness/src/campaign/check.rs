//! `chopstick check`: one target, one framing, one oracle, each fault in turn.
//!
//! [`check`] starts the target, runs the [pre-flight](super::preflight) and then each
//! profile through [`drive_profile`], the loop `run` shares: every connection of the
//! workload (cheapest first, or one shard's slice of them), judged and
//! liveness-checked; the first failure of each class per profile is shrunk, and
//! failures with the same shrunk case become one [`report::Finding`](crate::report::Finding)
//! with one reproducer, replayed `confirm` times before it is written. After the
//! pre-flight, [`concurrency`](super::concurrency) decides how many connections are in
//! flight at once; results do not depend on it (see [`drive_profile`]). A [`Stop`]
//! ends the loop early: `--fail-fast` after the first confirmed (shrunk) failure (the
//! cheapest [`SCOUT_CASES`] of every profile run first), `--budget` at a deadline, a
//! signal at once; the report then says what was covered.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::stream::{FuturesOrdered, StreamExt};
use tokio_util::sync::CancellationToken;

use super::concurrency::{decide, Concurrency, Decided};
use super::preflight::{preflight, PreflightError};
use super::repro::{self, Reproducer};
use super::shrink;
use super::{
    draw_case, payload, run_case, CaseConfig, FailureClass, Target, TargetError, TargetSpec,
};
use crate::chaos::FaultSet;
use crate::report::{FailureRecord, Finding, Report, Reproduced, Row};
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
    /// Connections in flight at once (`auto`: probed after the pre-flight).
    pub concurrency: Concurrency,
    /// Replays of each shrunk failure before its reproducer is written (0: none); the
    /// finding and the reproducer say how many reproduced it.
    pub confirm: usize,
}

/// Progress callback: called after every connection.
pub trait Progress: Send {
    fn start(&mut self, _total: u64) {}
    fn tick(&mut self, _row: &Row) {}
    /// A line worth showing the user now (e.g. a finding, or why the check stopped).
    fn note(&mut self, _line: &str) {}
    /// A line about how the check runs (e.g. the concurrency the probe chose).
    fn info(&mut self, _line: &str) {}
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
    /// Connections in flight at once (see [`drive_profile`]); 1 runs them in turn.
    pub concurrency: usize,
    /// Replays of each shrunk failure before its reproducer is written.
    pub confirm: usize,
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
    let session = config.case.messages(&config.workload, config.seed, 0);
    let decided = tokio::select! {
        d = decide(&target, &config.case, config.concurrency, &session) => d,
        _ = stop.stopped() => Decided { concurrency: 1, reason: "stopped".into() },
    };
    progress.info(&format!(
        "concurrency {}: {}",
        config.concurrency, decided.reason
    ));
    report.concurrency = Some(decided.concurrency);
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
        concurrency: decided.concurrency,
        confirm: config.confirm,
    };
    let profiles = async {
        let mut runs: Vec<ProfileRun> = config
            .profiles
            .iter()
            .map(|p| ProfileRun::new(&drive, p))
            .collect();
        if config.fail_fast && runs.len() > 1 {
            // A bug that only one fault shows (a cut mid-frame) is found after a few
            // cases, not after every case of the profiles before it; the quickest
            // profiles' scouts go first (a coalesced write before a paced split).
            let mut scouts: Vec<usize> = (0..runs.len()).collect();
            scouts.sort_by_cached_key(|&i| runs[i].next_case_us(&drive));
            for i in scouts {
                if stop.is_stopped() {
                    break;
                }
                runs[i]
                    .advance(&mut target, &drive, Some(SCOUT_CASES), progress, report)
                    .await;
            }
        }
        for run in &mut runs {
            if stop.is_stopped() {
                break;
            }
            if !run.is_done() {
                run.advance(&mut target, &drive, None, progress, report)
                    .await;
            }
        }
        for run in runs.into_iter().filter(|r| r.begun) {
            report.rows.push(run.finish());
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
    // What the check cost beyond its cases (`-v` shows it).
    tracing::info!("the target was restarted {} time(s)", target.restarts);
    target.kill().await;
    progress.finish();
    Ok(())
}

/// With `--fail-fast` and several profiles, the cheapest connections of every profile
/// run first, this many each, before the rest of any profile.
pub const SCOUT_CASES: usize = 2;

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

/// What a profile has gathered so far, across its concurrent and sequential stretches.
struct Tally {
    row: Row,
    /// Per class in this profile: the finding its first (shrunk) failure joined.
    findings: BTreeMap<FailureClass, usize>,
    unreachable_streak: u32,
}

impl Tally {
    /// Counts a driven case in the row (passed or not).
    fn count(&mut self, case: &super::Case, result: &super::CaseResult) {
        self.row.connections += 1;
        self.row.messages += case.messages.len() as u64;
        self.row.bytes += result.bytes as u64;
        self.row
            .latencies_us
            .extend_from_slice(&result.latencies_us);
    }
}

/// How a concurrent stretch of a profile ended.
enum Stretch {
    /// Every connection ran and passed.
    Done,
    /// Stopped (signal, budget, fail-fast elsewhere).
    Stopped,
    /// The first connection in `conns` failed among others with `class`; the others in
    /// flight ran to their end, and `conns` goes on with those that failed too, in
    /// order: each is run again alone.
    Failed(Vec<u64>, FailureClass),
}

/// Drives `live` with one fault profile: every connection of the workload, judged,
/// liveness-checked; the first failure of each class is shrunk and written as a
/// reproducer. Failures go into `report`; the row is returned.
///
/// With `drive.concurrency > 1` (and a server at an address), up to that many
/// connections are in flight at once and their results are taken in case order. The
/// first one that fails ends the stretch: the others in flight run to their end (those
/// that fail too are queued again), the server is restarted if the failure may have
/// left it dead or stuck, and the failed case runs again alone, exactly as a
/// one-at-a-time check would run it; only that run's verdict counts. So failures are
/// judged as at concurrency 1 and the same seed gives the same cases and findings at
/// any concurrency (a case that fails only among others is logged, not reported).
pub async fn drive_profile(
    live: &mut Target,
    drive: &Drive<'_>,
    profile: &Profile,
    progress: &mut dyn Progress,
    report: &mut Report,
) -> Row {
    let mut run = ProfileRun::new(drive, profile);
    run.advance(live, drive, None, progress, report).await;
    run.finish()
}

/// A profile under way: what it has gathered and where it is in its connections, so a
/// check can run the first (cheapest) few of every profile before the rest of any
/// (`--fail-fast`), and still report one row per profile.
pub struct ProfileRun<'a> {
    profile: &'a Profile,
    tally: Tally,
    order: std::iter::Peekable<Box<dyn Iterator<Item = u64> + Send + 'a>>,
    spent: Duration,
    /// The target is gone for good: nothing more to run.
    gave_up: bool,
    /// Whether it has run (or tried to run) a connection: only those get a row.
    begun: bool,
}

impl<'a> ProfileRun<'a> {
    pub fn new(drive: &Drive<'a>, profile: &'a Profile) -> ProfileRun<'a> {
        let order: Box<dyn Iterator<Item = u64> + Send + 'a> = Box::new(connection_order(
            drive.case,
            drive.workload,
            drive.seed,
            drive.shard,
        ));
        ProfileRun {
            profile,
            tally: Tally {
                row: Row::new(drive.name, &profile.name),
                findings: BTreeMap::new(),
                unreachable_streak: 0,
            },
            order: order.peekable(),
            spent: Duration::ZERO,
            gave_up: false,
            begun: false,
        }
    }

    /// What the next connection's writing costs in wall time, in microseconds: its
    /// pauses and stalls, and the least gap between writes (`u64::MAX` when none is
    /// left). The same for a seed at any concurrency.
    pub fn next_case_us(&mut self, drive: &Drive<'_>) -> u64 {
        let Some(&conn) = self.order.peek() else {
            return u64::MAX;
        };
        let case = draw_case(
            drive.case,
            drive.workload,
            &self.profile.faults,
            drive.seed,
            conn,
        );
        let gap = drive.case.timing.min_pause.as_micros() as u64;
        case.plan.pause_us() + case.plan.writes() as u64 * gap
    }

    /// Whether every connection has run (or the target is gone).
    pub fn is_done(&mut self) -> bool {
        self.gave_up || self.order.peek().is_none()
    }

    /// Runs the profile's next connections: `limit` of them, or all that are left;
    /// ends early when the check stops.
    pub async fn advance(
        &mut self,
        live: &mut Target,
        drive: &Drive<'_>,
        limit: Option<usize>,
        progress: &mut dyn Progress,
        report: &mut Report,
    ) {
        let started = Instant::now();
        self.begun = true;
        let stopped = || drive.stop.is_some_and(Stop::is_stopped);
        let lanes = if super::concurrency::supports_lanes(live) {
            drive.concurrency.max(1)
        } else {
            1
        };
        let profile = self.profile;
        let ProfileRun {
            tally,
            order,
            gave_up,
            ..
        } = self;
        let mut order = order.by_ref().take(limit.unwrap_or(usize::MAX));
        while !*gave_up {
            // Sizing a window of connections does not yield; a signal is seen here.
            tokio::task::yield_now().await;
            if stopped() {
                break;
            }
            let conns = if lanes > 1 {
                match stretch(live, drive, profile, lanes, &mut order, tally, progress).await {
                    Stretch::Done | Stretch::Stopped => break,
                    Stretch::Failed(conns, class) => {
                        if super::server_wide(class) || live.exited().is_some() {
                            // Alone, on a server in the state a one-at-a-time check
                            // would have left it: running.
                            super::restart(live).await;
                        }
                        tracing::debug!("{conns:?} failed ({class}) among others; run alone");
                        conns
                    }
                }
            } else {
                match order.next() {
                    Some(conn) => vec![conn],
                    None => break,
                }
            };
            for conn in conns {
                if *gave_up || stopped() {
                    break;
                }
                if alone(live, drive, profile, conn, tally, progress, report)
                    .await
                    .is_break()
                {
                    *gave_up = true;
                }
            }
        }
        self.spent += started.elapsed();
    }

    /// The profile's row.
    pub fn finish(self) -> Row {
        let mut row = self.tally.row;
        row.seconds = self.spent.as_secs_f64();
        row.finish();
        row
    }
}

/// Runs connections `lanes` at a time over their own connections to `live`'s address
/// until one fails, all are done, or the check stops. Passed cases are counted in
/// `tally`; failed ones are left to the caller to run alone. A spawned server that
/// exits ends the stretch at once: every case still in flight is failed and run again
/// alone (waiting them out would cost each a whole liveness deadline of connecting to a
/// server that is gone).
async fn stretch(
    live: &mut Target,
    drive: &Drive<'_>,
    profile: &Profile,
    lanes: usize,
    order: &mut impl Iterator<Item = u64>,
    tally: &mut Tally,
    progress: &mut dyn Progress,
) -> Stretch {
    // Each in-flight case gets a target of its own that only connects: nothing it does
    // restarts or judges the process, which stays with the one-at-a-time rerun.
    let spec = TargetSpec::Connect(live.addr);
    let run = |conn: u64| {
        let case = draw_case(
            drive.case,
            drive.workload,
            &profile.faults,
            drive.seed,
            conn,
        );
        let spec = spec.clone();
        async move {
            let result = match Target::start(&spec).await {
                Ok(mut lane) => run_case(&mut lane, drive.case, &case).await,
                Err(e) => {
                    let mut r = super::CaseResult::new(0);
                    r.failure = Some(super::Failure::new(
                        FailureClass::Refused,
                        None,
                        e.to_string(),
                    ));
                    r
                }
            };
            (case, result)
        }
    };
    let mut inflight = FuturesOrdered::new();
    // The connections of `inflight`, in the same order.
    let mut pending: std::collections::VecDeque<u64> = std::collections::VecDeque::new();
    // Whose failure ends the stretch, once one has failed.
    let mut failed: Option<(Vec<u64>, FailureClass)> = None;
    loop {
        while failed.is_none() && inflight.len() < lanes {
            let Some(conn) = order.next() else {
                break;
            };
            inflight.push_back(run(conn));
            pending.push_back(conn);
        }
        let next = tokio::select! {
            // Results that are in are counted before a stop or a death is noticed.
            biased;
            r = inflight.next() => r,
            () = stopped(drive) => return Stretch::Stopped,
            () = exited(live) => {
                let mut again = failed.map(|(again, _)| again).unwrap_or_default();
                again.extend(pending);
                return Stretch::Failed(again, FailureClass::ServerDied);
            }
        };
        let Some((case, result)) = next else {
            return match failed {
                Some((again, class)) => Stretch::Failed(again, class),
                None => Stretch::Done,
            };
        };
        pending.pop_front();
        match (&result.failure, &mut failed) {
            (None, _) => {
                tally.count(&case, &result);
                if failed.is_none() {
                    tally.unreachable_streak = 0;
                }
                progress.tick(&tally.row);
            }
            // The others in flight finish first (dropping them would cut their streams
            // mid-frame: a fault of our making); those that fail too run again alone
            // after this one, in their order.
            (Some(f), None) => failed = Some((vec![case.conn], f.class)),
            (Some(_), Some((again, _))) => again.push(case.conn),
        }
    }
}

/// Resolves when the check is stopped; never without a stop.
async fn stopped(drive: &Drive<'_>) {
    match drive.stop {
        Some(stop) => stop.stopped().await,
        None => std::future::pending().await,
    }
}

/// `work`'s output, or `None` if the check is stopped first (`work` is dropped).
async fn or_stop<T>(drive: &Drive<'_>, work: impl std::future::Future<Output = T>) -> Option<T> {
    tokio::select! {
        r = work => Some(r),
        () = stopped(drive) => None,
    }
}

/// Resolves once a spawned target has exited (polled: the child is owned by `live`);
/// never for a target chopstick did not start.
async fn exited(live: &mut Target) {
    if !live.is_spawned() {
        return std::future::pending().await;
    }
    while live.exited().is_none() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs connection `conn` on its own against `live` and records it: a failure is
/// counted, and the first of its class in the profile confirmed (shrunk, replayed,
/// written). `Break` when the profile should end (the target is gone for good, or the
/// check stopped during the case).
async fn alone(
    live: &mut Target,
    drive: &Drive<'_>,
    profile: &Profile,
    conn: u64,
    tally: &mut Tally,
    progress: &mut dyn Progress,
    report: &mut Report,
) -> ControlFlow<()> {
    let case = draw_case(
        drive.case,
        drive.workload,
        &profile.faults,
        drive.seed,
        conn,
    );
    let Some(result) = or_stop(drive, run_case(live, drive.case, &case)).await else {
        return ControlFlow::Break(());
    };
    tally.count(&case, &result);
    let Some(failure) = result.failure.clone() else {
        tally.unreachable_streak = 0;
        progress.tick(&tally.row);
        return ControlFlow::Continue(());
    };
    let row = &mut tally.row;
    row.failures += 1;
    *row.classes.entry(failure.class.to_string()).or_default() += 1;
    let unreachable = matches!(
        failure.class,
        FailureClass::Refused | FailureClass::ServerDied
    );
    tally.unreachable_streak = if unreachable {
        tally.unreachable_streak + 1
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
    if let Some(&i) = tally.findings.get(&failure.class) {
        // Same profile, same class: counted with the first one's finding.
        let key = report.findings[i].key.clone();
        report.add_failure(drive.seed, key, record);
    } else {
        let (key, record, reproduced) =
            confirm(live, drive, profile, case, result, record, report).await;
        let i = report.add_failure(drive.seed, key, record);
        tally.findings.insert(failure.class, i);
        let f = &mut report.findings[i];
        if f.reproduced.is_none() {
            f.reproduced = reproduced;
        }
        if f.count == 1 {
            let replayed = f
                .reproduced
                .map(|r| format!(" (replayed: reproduced {r})"))
                .unwrap_or_default();
            progress.note(&format!(
                "found: {}/{}: {}: {}{replayed}",
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
    progress.tick(&tally.row);
    if tally.unreachable_streak >= GIVE_UP_AFTER && !live.is_spawned() {
        report
            .unusable
            .push(format!("{}: unreachable at {}", drive.name, live.addr));
        return ControlFlow::Break(());
    }
    ControlFlow::Continue(())
}

/// The first failure of a class in a profile: shrinks it (bounded, and cut short by a
/// stop), replays the shrunk case `drive.confirm` times as `chopstick replay` would
/// (falling back to the unshrunk case if the shrunk one never fails again), and writes
/// its reproducer, unless a finding with the same shrunk case already has one.
/// Returns the finding key, the record to add and how often the replays reproduced it.
async fn confirm(
    live: &mut Target,
    drive: &Drive<'_>,
    profile: &Profile,
    case: super::Case,
    result: super::CaseResult,
    mut record: FailureRecord,
    report: &Report,
) -> (String, FailureRecord, Option<Reproduced>) {
    let Some(artifacts) = drive.artifacts.as_ref() else {
        return (
            Finding::unshrunk_key(record.class, &profile.name),
            record,
            None,
        );
    };
    let failure = result.failure.clone().expect("a failed case");
    let class = failure.class;
    let original = (case.messages.len(), case.plan.writes());
    let unshrunk = (case.clone(), result.clone());
    let mut shrink_runs = None;
    let (mut small, mut small_result) = match drive.shrink {
        Some((runs, time)) => {
            let shrinking = shrink::shrink(
                live,
                drive.case,
                case.clone(),
                result.clone(),
                class,
                runs,
                time,
            );
            let shrunk = or_stop(drive, shrinking).await;
            match shrunk {
                Some((c, r, runs)) => {
                    tracing::info!("shrunk {} in {runs} run(s)", class);
                    shrink_runs = Some(runs);
                    (c, r)
                }
                None => (case, result),
            }
        }
        None => (case, result),
    };
    let mut reproduced = None;
    if drive.confirm > 0 && !drive.stop.is_some_and(Stop::is_stopped) {
        let mut tries = vec![small.clone()];
        if small != unshrunk.0 {
            tries.push(unshrunk.0.clone());
        }
        for candidate in tries {
            let replay = repro::replay_config(drive.case, drive.case.timing, &candidate);
            let again = repro::run_again(live, &replay, &candidate, class, drive.confirm);
            let Some(again) = or_stop(drive, again).await else {
                break;
            };
            let hits = again.reproduced.hits;
            if candidate != small {
                // The shrunk case never failed again: the unshrunk one stands in if
                // it does better.
                if hits == 0 {
                    break;
                }
                tracing::info!(
                    "shrunk case did not fail again on replay; keeping the unshrunk case"
                );
                small = candidate;
                small_result = unshrunk.1.clone();
            }
            reproduced = Some(again.reproduced);
            if hits > 0 {
                break;
            }
        }
    }
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
        return (key, record, reproduced);
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
        shrink_runs,
        replay: String::new(),
        timeouts: Some(repro::Timeouts::of(drive.case)),
        reproduced,
    };
    let written = (artifacts.prepare)()
        .and_then(|()| repro.write_to(artifacts.dir).map_err(|e| e.to_string()));
    match written {
        Ok(path) => record.reproducer = Some(path),
        Err(e) => tracing::warn!("reproducer not written: {e}"),
    }
    (key, record, reproduced)
}
