//! Shrinking: make a failing case smaller while it still fails the same way.
//!
//! Three moves, tried greedily and re-run against the live target each time:
//! keep only the request the failure was seen at (and the one before it), drop
//! messages (in halves, then one by one — the plan's cuts inside a dropped frame
//! go with it and later cuts shift), merge adjacent writes (a cut removed, with the
//! pauses at it) and drop pauses, all cuts and pauses at once first, then in halves.
//! A move is kept only if the case still fails with
//! the same class. Everything is bounded by a run budget and a wall-time budget
//! ([`DEFAULT_TIME`] unless the caller says otherwise).

use bytes::Bytes;

use super::{run_case, Case, CaseConfig, CaseResult, FailureClass, Target};
use crate::chaos::{Ending, Plan, Step};

/// Runs allowed while shrinking one failure.
pub const DEFAULT_BUDGET: usize = 80;
/// Least gap between writes while shrinking. A candidate that passes only because a
/// busy machine merged two writes on the reader's side would stop the shrink early;
/// wider gaps keep the same cuts but make them reliably visible.
pub const SHRINK_MIN_PAUSE: std::time::Duration = std::time::Duration::from_millis(5);

/// Replays of a shrunk failure before its reproducer is written (`check --confirm`):
/// enough to tell a steady failure from a flaky one without costing much.
pub const DEFAULT_CONFIRM: usize = 3;
/// Replays with `--fail-fast`, where the first bug is wanted in seconds: one replay
/// still shows the shrunk case fails on its own, as `chopstick replay` will run it.
pub const FAIL_FAST_CONFIRM: usize = 1;

/// Wall time allowed while shrinking one failure: a hang costs a whole reply timeout
/// per run, so the run budget alone does not bound it.
pub const DEFAULT_TIME: std::time::Duration = std::time::Duration::from_secs(20);

/// Longest wait for a reply (and for a fresh connection to be served) while shrinking
/// a hang. The case is known to hang: a candidate only has to show it still does, not
/// to prove it over a whole reply timeout. A candidate that would have answered a
/// little later still fails the same way on replay, which uses the full timeouts.
pub const HANG_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// How long a shrink run listens for replies beyond those due, for classes that only
/// the due replies decide (the check's own grace is 200 ms).
pub const SHRINK_GRACE: std::time::Duration = std::time::Duration::from_millis(20);

/// A plan as events at stream offsets: easier to cut and splice than steps.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    /// A write boundary.
    Cut,
    Pause(u64),
    End(Ending),
}

fn to_events(plan: &Plan) -> Vec<(usize, Event)> {
    let mut at = 0;
    let mut out = Vec::new();
    for step in &plan.steps {
        match *step {
            Step::Write(n) => {
                at += n;
                out.push((at, Event::Cut));
            }
            Step::Pause(us) => out.push((at, Event::Pause(us))),
            Step::Close => {
                out.push((at, Event::End(Ending::Close)));
                break;
            }
            Step::Reset => {
                out.push((at, Event::End(Ending::Reset)));
                break;
            }
            Step::Read(_) | Step::Stall(_) => {}
        }
    }
    out
}

fn from_events(events: &[(usize, Event)], len: usize) -> Plan {
    let mut steps = Vec::new();
    let mut at = 0;
    for (pos, ev) in events {
        let pos = (*pos).min(len);
        if pos > at {
            steps.push(Step::Write(pos - at));
            at = pos;
        }
        match ev {
            Event::Cut => {}
            Event::Pause(us) => steps.push(Step::Pause(*us)),
            Event::End(Ending::Close) => {
                steps.push(Step::Close);
                return Plan::new(steps);
            }
            Event::End(Ending::Reset) => {
                steps.push(Step::Reset);
                return Plan::new(steps);
            }
        }
    }
    if at < len {
        steps.push(Step::Write(len - at));
    }
    Plan::new(steps)
}

/// The plan for the stream with bytes `range` removed; `None` if the plan's ending
/// fell inside the removed bytes (the candidate would not be the same failure).
fn remove_range(plan: &Plan, range: std::ops::Range<usize>, len: usize) -> Option<Plan> {
    let width = range.end - range.start;
    let mut out = Vec::new();
    for (at, ev) in to_events(plan) {
        if at > range.start && at < range.end {
            if matches!(ev, Event::End(_)) {
                return None;
            }
            continue;
        }
        out.push((if at >= range.end { at - width } else { at }, ev));
    }
    Some(from_events(&out, len - width))
}

/// `case` without the messages whose indexes are in `drop`, or `None` if not expressible.
fn without(case: &Case, config: &CaseConfig, drop: std::ops::Range<usize>) -> Option<Case> {
    let (_, layouts) = config.encode(case.conn, &case.messages).ok()?;
    let len = layouts.last().map_or(0, |l| l.end);
    let range = layouts.get(drop.start)?.start..layouts.get(drop.end - 1)?.end;
    let plan = remove_range(&case.plan, range, len)?;
    let messages: Vec<Bytes> = case
        .messages
        .iter()
        .enumerate()
        .filter(|(i, _)| !drop.contains(i))
        .map(|(_, m)| m.clone())
        .collect();
    Some(Case {
        conn: case.conn,
        messages,
        plan,
    })
}

/// `case` with only the messages in `keep`, or `None` if not expressible.
fn keep_only(case: &Case, config: &CaseConfig, keep: std::ops::Range<usize>) -> Option<Case> {
    let n = case.messages.len();
    let mut out = case.clone();
    if keep.end < n {
        out = without(&out, config, keep.end..n)?;
    }
    if keep.start > 0 {
        out = without(&out, config, 0..keep.start)?;
    }
    Some(out)
}

/// `events` without those at the indexes `gone`, and without the pauses at a removed
/// cut: they only separated two writes that are now one.
fn without_events(events: &[(usize, Event)], gone: &[usize]) -> Vec<(usize, Event)> {
    let cuts_gone: Vec<usize> = gone
        .iter()
        .filter(|&&i| events[i].1 == Event::Cut)
        .map(|&i| events[i].0)
        .collect();
    events
        .iter()
        .enumerate()
        .filter(|(i, (pos, ev))| {
            let paused_at_a_gone_cut = matches!(ev, Event::Pause(_)) && cuts_gone.contains(pos);
            !(gone.contains(i) || paused_at_a_gone_cut)
        })
        .map(|(_, e)| e.clone())
        .collect()
}

/// The message the plan's ending (close or reset) falls in, if it ends inside one.
fn cut_in(case: &Case, config: &CaseConfig) -> Option<usize> {
    let (_, layouts) = config.encode(case.conn, &case.messages).ok()?;
    let at = to_events(&case.plan)
        .into_iter()
        .find_map(|(at, ev)| matches!(ev, Event::End(_)).then_some(at))?;
    layouts.iter().position(|l| l.start < at && at < l.end)
}

/// Shrinks `case` (which failed with `class`); returns the smallest failing case found,
/// its result, and the number of runs spent.
pub async fn shrink(
    target: &mut Target,
    config: &CaseConfig,
    case: Case,
    first: CaseResult,
    class: FailureClass,
    budget: usize,
    time: std::time::Duration,
) -> (Case, CaseResult, usize) {
    let started = std::time::Instant::now();
    let mut wide = config.clone();
    wide.timing.min_pause = wide.timing.min_pause.max(SHRINK_MIN_PAUSE);
    if class == FailureClass::Hang {
        wide.timing.reply_timeout = wide.timing.reply_timeout.min(HANG_WAIT);
        wide.liveness = wide.liveness.min(HANG_WAIT);
    }
    if matches!(
        class,
        FailureClass::Corrupted | FailureClass::Truncated | FailureClass::Lost | FailureClass::Hang
    ) {
        // Decided by the replies that were due: listening on for extra ones cannot make
        // a candidate fail this way, only slower (a server that misparsed a length
        // holds the connection open for the whole grace).
        wide.timing.grace = wide.timing.grace.min(SHRINK_GRACE);
    }
    let config = &wide;
    let mut run = Runner {
        target,
        config,
        class,
        runs: 0,
        budget,
        until: started + time,
    };
    let mut best = (case, first);

    // 0. Straight to the request the failure was seen at (or, for a failure seen at no
    // request, such as a hang after a disconnect, the one the connection was cut in),
    // alone and with the one before it (whose cut or leftover bytes may be what broke
    // it): when that is the cause, one run does what the halving below takes a dozen
    // for (each of them a liveness deadline and a restart, for a hang).
    let seen_at = best.1.failure.as_ref().and_then(|f| f.message);
    if let Some(i) = seen_at.or_else(|| cut_in(&best.0, config)) {
        let n = best.0.messages.len();
        for keep in [i..i + 1, i.saturating_sub(1)..i + 1] {
            if !run.has_budget() || keep.end > n || keep.len() == n {
                continue;
            }
            let Some(candidate) = keep_only(&best.0, config, keep) else {
                continue;
            };
            if let Some(r) = run.fails(&candidate).await {
                best = (candidate, r);
                break;
            }
        }
    }

    // 1. Fewer messages: drop chunks of them, from half the messages down to one.
    let first_chunk = best.0.messages.len().div_ceil(2);
    drop_chunks(
        &mut run,
        &mut best,
        first_chunk,
        |case| case.messages.len(),
        |case, range| without(case, config, range),
    )
    .await;

    // 2. Fewer writes and pauses: drop cut and pause events, all of them first, then
    // halves, down to one at a time (a bug that needs one cut of a large body's hundred
    // is found in a few runs, each cheaper than the last, instead of a hundred runs at
    // full length).
    let len = config
        .encode(best.0.conn, &best.0.messages)
        .map_or(0, |(s, _)| s.len());
    let removable = |events: &[(usize, Event)]| -> Vec<usize> {
        (0..events.len())
            .filter(|&i| match events[i].1 {
                Event::End(_) => false,
                Event::Cut => events[i].0 < len,
                Event::Pause(_) => true,
            })
            .collect()
    };
    let first_chunk = removable(&to_events(&best.0.plan)).len();
    drop_chunks(
        &mut run,
        &mut best,
        first_chunk,
        |case| removable(&to_events(&case.plan)).len(),
        |case, range| {
            let events = to_events(&case.plan);
            let gone = &removable(&events)[range];
            let plan = from_events(&without_events(&events, gone), len);
            (plan != case.plan).then(|| Case {
                conn: case.conn,
                messages: case.messages.clone(),
                plan,
            })
        },
    )
    .await;
    (best.0, best.1, run.runs)
}

/// Runs candidates against the target within the shrink's budgets.
struct Runner<'a> {
    target: &'a mut Target,
    config: &'a CaseConfig,
    class: FailureClass,
    runs: usize,
    budget: usize,
    until: std::time::Instant,
}

impl Runner<'_> {
    fn has_budget(&self) -> bool {
        self.runs < self.budget && std::time::Instant::now() < self.until
    }

    /// Runs `candidate` once (logged, `-vv`); its result if it fails the same way.
    async fn fails(&mut self, candidate: &Case) -> Option<CaseResult> {
        self.runs += 1;
        let started = std::time::Instant::now();
        let r = run_case(self.target, self.config, candidate).await;
        tracing::debug!(
            "shrink: {} message(s), {} write(s): {} in {:?}",
            candidate.messages.len(),
            candidate.plan.writes(),
            r.failure
                .as_ref()
                .map_or("passed".to_string(), |f| f.class.to_string()),
            started.elapsed()
        );
        r.failure
            .as_ref()
            .is_some_and(|f| f.class == self.class)
            .then_some(r)
    }
}

/// Removes chunks of the `count(case)` items of the best case (messages, or plan
/// events) with `remove`, which gives the candidate without the items in a range (or
/// `None` if there is no such case): chunks of `first` items, then halves, down to one;
/// a candidate that still fails is kept and the next chunk tried at the same place.
async fn drop_chunks(
    run: &mut Runner<'_>,
    best: &mut (Case, CaseResult),
    first: usize,
    count: impl Fn(&Case) -> usize,
    remove: impl Fn(&Case, std::ops::Range<usize>) -> Option<Case>,
) {
    let mut chunk = first;
    while chunk >= 1 && run.has_budget() {
        let mut start = 0;
        let mut progressed = false;
        while start < count(&best.0) && run.has_budget() {
            let end = (start + chunk).min(count(&best.0));
            if let Some(candidate) = remove(&best.0, start..end) {
                if let Some(r) = run.fails(&candidate).await {
                    *best = (candidate, r);
                    progressed = true;
                    continue; // same start: the next chunk slid into place
                }
            }
            start = end;
        }
        if !progressed {
            chunk /= 2;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_and_trailing_bytes_are_written() {
        let plan: Plan = "p5 w3 p1000 w4 close".parse().unwrap();
        assert_eq!(from_events(&to_events(&plan), 20), plan);
        let open: Plan = "w3 p10 w4".parse().unwrap();
        assert_eq!(
            from_events(&to_events(&open), 10).to_string(),
            "w3 p10 w4 w3"
        );
    }

    #[test]
    fn removing_a_chunk_of_cuts_takes_their_pauses_and_keeps_the_rest() {
        let plan: Plan = "w2 p1 w5 p3 w5 p1 w1 close".parse().unwrap();
        let events = to_events(&plan);
        // Events: cut@2 p1@2 cut@7 p3@7 cut@12 p1@12 end@13. All cuts at once:
        let cuts: Vec<usize> = (0..events.len())
            .filter(|&i| events[i].1 == Event::Cut)
            .collect();
        let one_write = from_events(&without_events(&events, &cuts), 13);
        assert_eq!(one_write.to_string(), "w13 close");
        // The first half of them: the second write boundary's pause survives.
        let half = from_events(&without_events(&events, &cuts[..2]), 13);
        assert_eq!(half.to_string(), "w12 p1 w1 close");
        // A pause alone, its cut kept.
        let no_pause = from_events(&without_events(&events, &[3]), 13);
        assert_eq!(no_pause.to_string(), "w2 p1 w5 w5 p1 w1 close");
    }

    #[test]
    fn a_plan_ending_inside_a_message_names_that_message() {
        let config = CaseConfig {
            framing: "u32be".parse().unwrap(),
            reply_framing: None,
            oracle: crate::oracle::parse("echo").unwrap(),
            mode: crate::workload::Mode::Pipelined,
            half_close: true,
            timing: crate::campaign::Timing::default(),
            liveness: std::time::Duration::from_secs(1),
        };
        let messages: Vec<Bytes> = [&b"ab"[..], b"cdef", b"g"]
            .into_iter()
            .map(Bytes::from_static)
            .collect();
        // u32be frames: [0,6) [6,14) [14,19).
        let cut = |plan: &str| {
            let case = Case {
                conn: 0,
                messages: messages.clone(),
                plan: plan.parse().unwrap(),
            };
            cut_in(&case, &config)
        };
        assert_eq!(cut("w9 close"), Some(1));
        assert_eq!(cut("w2 reset"), Some(0));
        // At a frame edge, or with no ending: no message was cut.
        assert_eq!(cut("w6 close"), None);
        assert_eq!(cut("w19"), None);
    }

    #[test]
    fn removing_a_frame_drops_its_cuts_and_shifts_later_ones() {
        // Frames [0,5) [5,10) [10,15); cuts at 2, 7, 12; close at 13.
        let plan: Plan = "w2 p1 w5 p1 w5 p1 w1 close".parse().unwrap();
        let shrunk = remove_range(&plan, 5..10, 15).unwrap();
        assert_eq!(shrunk.to_string(), "w2 p1 w5 p1 w1 close");
        assert_eq!(shrunk.bytes_written(), 8);
        // A cut that ended the connection inside the removed frame: not the same case.
        assert!(remove_range(&"w7 reset".parse().unwrap(), 5..10, 15).is_none());
    }
}
