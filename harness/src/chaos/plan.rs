//! Plans: how one direction of one connection delivers its bytes, as plain data.
//!
//! A plan is a list of [`Step`]s. Writer steps say how the byte stream is cut into
//! writes and when the connection ends; reader steps say how much a reader takes per
//! read and when it stalls. Plans serialise with serde (for reproducer files) and
//! print as one line (`w4 p1000 w12 close`), which [`Plan::from_str`] parses back.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// One step of a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// Deliver the next `n` bytes of the stream in one write (`w N`).
    Write(usize),
    /// Wait this many microseconds before the next step (`p N`).
    Pause(u64),
    /// End the connection with a FIN after what was written; later bytes are never sent.
    Close,
    /// End the connection with an RST (SO_LINGER 0), discarding anything unsent.
    Reset,
    /// Reader side: take at most `n` bytes in the next read (`r N`).
    Read(usize),
    /// Reader side: wait this many microseconds before reading again (`s N`).
    Stall(u64),
}

/// How a plan ends the connection, if it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ending {
    Close,
    Reset,
}

/// A sequence of steps for one direction of one connection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Plan {
    pub steps: Vec<Step>,
}

impl Plan {
    pub fn new(steps: Vec<Step>) -> Plan {
        Plan { steps }
    }

    /// This plan for a stream whose messages must each arrive in one piece (`raw`
    /// framing, frames ending at `ends`): one write per frame, each of the plan's
    /// pauses before the frame it fell in, and an ending moved back to the last frame end before it, so
    /// no message is ever split, merged with the next, or cut.
    pub fn whole_frames(&self, ends: &[usize]) -> Plan {
        let mut out = Vec::new();
        let (mut at, mut sent, mut pause) = (0usize, 0usize, 0u64);
        let mut emit = |upto: usize, out: &mut Vec<Step>, pause: &mut u64| {
            // Each turn sends one frame ending at or before `upto`.
            for &end in ends {
                if end <= sent || end > upto {
                    continue;
                }
                if *pause > 0 {
                    out.push(Step::Pause(std::mem::take(pause)));
                }
                out.push(Step::Write(end - sent));
                sent = end;
            }
        };
        for step in &self.steps {
            match *step {
                Step::Write(n) => {
                    at += n;
                    emit(at, &mut out, &mut pause);
                }
                Step::Pause(us) => pause += us,
                Step::Close | Step::Reset => {
                    emit(at, &mut out, &mut pause);
                    out.push(*step);
                    return Plan::new(out);
                }
                Step::Read(_) | Step::Stall(_) => out.push(*step),
            }
        }
        // A short plan is topped up by the executor; here the rest goes frame by frame.
        emit(usize::MAX, &mut out, &mut pause);
        Plan::new(out)
    }

    /// The whole stream in one write: no fault at all.
    pub fn passthrough(len: usize) -> Plan {
        Plan::new(if len == 0 {
            vec![]
        } else {
            vec![Step::Write(len)]
        })
    }

    /// Bytes delivered by the `Write` steps before any close or reset.
    pub fn bytes_written(&self) -> usize {
        self.steps
            .iter()
            .take_while(|s| !matches!(s, Step::Close | Step::Reset))
            .map(|s| if let Step::Write(n) = s { *n } else { 0 })
            .sum()
    }

    /// The first close or reset in the plan, if any, and how many bytes precede it.
    pub fn ending(&self) -> Option<(Ending, usize)> {
        let at = self.bytes_written();
        self.steps.iter().find_map(|s| match s {
            Step::Close => Some((Ending::Close, at)),
            Step::Reset => Some((Ending::Reset, at)),
            _ => None,
        })
    }

    /// Number of `Write` steps.
    pub fn writes(&self) -> usize {
        self.steps
            .iter()
            .filter(|s| matches!(s, Step::Write(_)))
            .count()
    }

    /// Total pause and stall time in microseconds.
    pub fn pause_us(&self) -> u64 {
        self.steps
            .iter()
            .map(|s| match s {
                Step::Pause(us) | Step::Stall(us) => *us,
                _ => 0,
            })
            .sum()
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Write(n) => write!(f, "w{n}"),
            Step::Pause(us) => write!(f, "p{us}"),
            Step::Close => f.write_str("close"),
            Step::Reset => f.write_str("reset"),
            Step::Read(n) => write!(f, "r{n}"),
            Step::Stall(us) => write!(f, "s{us}"),
        }
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, step) in self.steps.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{step}")?;
        }
        Ok(())
    }
}

/// A plan line that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad plan step `{0}` (expected wN, pN, rN, sN, close or reset)")]
pub struct PlanParseError(pub String);

impl FromStr for Step {
    type Err = PlanParseError;

    fn from_str(s: &str) -> Result<Step, PlanParseError> {
        let bad = || PlanParseError(s.to_string());
        match s {
            "close" => return Ok(Step::Close),
            "reset" => return Ok(Step::Reset),
            _ => {}
        }
        let (tag, num) = s.split_at(s.char_indices().nth(1).map_or(s.len(), |(i, _)| i));
        match tag {
            "w" => num.parse().map(Step::Write).map_err(|_| bad()),
            "p" => num.parse().map(Step::Pause).map_err(|_| bad()),
            "r" => num.parse().map(Step::Read).map_err(|_| bad()),
            "s" => num.parse().map(Step::Stall).map_err(|_| bad()),
            _ => Err(bad()),
        }
    }
}

impl FromStr for Plan {
    type Err = PlanParseError;

    fn from_str(s: &str) -> Result<Plan, PlanParseError> {
        s.split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()
            .map(Plan::new)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn whole_frames_never_cuts_or_merges_a_frame_and_keeps_pauses_between_them() {
        let plan: super::Plan = "w1 p5 w4 w2 p7 w3 close".parse().unwrap();
        // Frames end at 3, 6 and 10: the cut at 10 is a boundary, so all three go; a
        // pause inside a frame delays that whole frame.
        let whole = plan.whole_frames(&[3, 6, 10]);
        assert_eq!(whole.to_string(), "p5 w3 w3 p7 w4 close");
        // Cut at 5, inside the second frame: it is moved back to the end of the first.
        let cut: super::Plan = "w5 reset".parse().unwrap();
        assert_eq!(cut.whole_frames(&[3, 6]).to_string(), "w3 reset");
        // A plan that stops early: the rest still goes one frame per write.
        let short: super::Plan = "w1".parse().unwrap();
        assert_eq!(short.whole_frames(&[2, 4]).to_string(), "w2 w2");
    }

    use super::*;

    #[test]
    fn prints_and_parses_one_line() {
        let plan = Plan::new(vec![
            Step::Write(4),
            Step::Pause(1000),
            Step::Write(12),
            Step::Read(3),
            Step::Stall(5),
            Step::Reset,
        ]);
        assert_eq!(plan.to_string(), "w4 p1000 w12 r3 s5 reset");
        assert_eq!(plan.to_string().parse::<Plan>().unwrap(), plan);
        assert!("w4 x9".parse::<Plan>().is_err());
        assert!("w".parse::<Plan>().is_err());
    }

    #[test]
    fn serde_round_trip() {
        let plan: Plan = "w1 p2 close".parse().unwrap();
        let json = serde_json::to_string(&plan).unwrap();
        assert_eq!(json, r#"[{"write":1},{"pause":2},"close"]"#);
        assert_eq!(serde_json::from_str::<Plan>(&json).unwrap(), plan);
    }

    #[test]
    fn counts_bytes_up_to_the_ending() {
        let plan: Plan = "w3 p9 w4 close w100".parse().unwrap();
        assert_eq!(plan.bytes_written(), 7);
        assert_eq!(plan.ending(), Some((Ending::Close, 7)));
        assert_eq!(plan.writes(), 3);
        assert_eq!(Plan::passthrough(5).ending(), None);
    }
}
