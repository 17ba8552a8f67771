//! Shrinking: make a failing case smaller while it still fails the same way.
//!
//! Three moves, tried greedily and re-run against the live target each time:
//! keep only the request the failure was seen at (and the one before it), drop
//! messages (in halves, then one by one — the plan's cuts inside a dropped frame
//! go with it and later cuts shift), merge adjacent writes (a cut removed, with the
//! pauses at it), and drop pauses. A move is kept only if the case still fails with
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

/// Wall time allowed while shrinking one failure: a hang costs a whole reply timeout
/// per run, so the run budget alone does not bound it.
pub const DEFAULT_TIME: std::time::Duration = std::time::Duration::from_secs(20);

/// Longest wait for a reply (and for a fresh connection to be served) while shrinking
/// a hang. The case is known to hang: a candidate only has to show it still does, not
/// to prove it over a whole reply timeout. A candidate that would have answered a
/// little later still fails the same way on replay, which uses the full timeouts.
pub const HANG_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

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
    let config = &wide;
    let mut best = (case, first);
    let mut runs = 0;
    let budget = move |runs: usize| runs < budget && started.elapsed() < time;
    let still_fails = |r: &CaseResult| r.failure.as_ref().is_some_and(|f| f.class == class);

    // 0. Straight to the request the failure was seen at, alone and with the one
    // before it (whose cut or leftover bytes may be what broke it): when that is the
    // cause, one run does what the halving below takes a dozen for.
    if let Some(i) = best.1.failure.as_ref().and_then(|f| f.message) {
        let n = best.0.messages.len();
        for keep in [i..i + 1, i.saturating_sub(1)..i + 1] {
            if !budget(runs) || keep.end > n || keep.len() == n {
                continue;
            }
            let Some(candidate) = keep_only(&best.0, config, keep) else {
                continue;
            };
            runs += 1;
            let r = run_case(target, config, &candidate).await;
            if still_fails(&r) {
                best = (candidate, r);
                break;
            }
        }
    }

    // 1. Fewer messages: try dropping chunks, from half the messages down to one.
    let mut chunk = best.0.messages.len().div_ceil(2);
    while chunk >= 1 && budget(runs) {
        let mut start = 0;
        let mut progressed = false;
        while start < best.0.messages.len() && budget(runs) {
            let end = (start + chunk).min(best.0.messages.len());
            if let Some(candidate) = without(&best.0, config, start..end) {
                runs += 1;
                let r = run_case(target, config, &candidate).await;
                if still_fails(&r) {
                    best = (candidate, r);
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

    // 2. Fewer writes and pauses: drop one cut or pause event at a time.
    let len = config
        .encode(best.0.conn, &best.0.messages)
        .map_or(0, |(s, _)| s.len());
    let mut i = 0;
    while budget(runs) {
        let events = to_events(&best.0.plan);
        if i >= events.len() {
            break;
        }
        if matches!(events[i].1, Event::End(_)) || (events[i].1 == Event::Cut && events[i].0 >= len)
        {
            i += 1;
            continue;
        }
        let mut fewer = events.clone();
        let removed = fewer.remove(i);
        if removed.1 == Event::Cut {
            // Pauses at a removed cut only separated two writes that are now one.
            let at = removed.0;
            fewer.retain(|(pos, ev)| !(*pos == at && matches!(ev, Event::Pause(_))));
        }
        let candidate = Case {
            conn: best.0.conn,
            messages: best.0.messages.clone(),
            plan: from_events(&fewer, len),
        };
        if candidate.plan == best.0.plan {
            i += 1;
            continue;
        }
        runs += 1;
        let r = run_case(target, config, &candidate).await;
        if still_fails(&r) {
            best = (candidate, r);
        } else {
            i += 1;
        }
    }
    (best.0, best.1, runs)
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
