//! The one-line form of a [`Case`] for failure messages: the plan run-length encoded and
//! each payload as its size and a hex preview.
//!
//! A `split:max=1` plan over a 1000-byte stream is a thousand `w1 p1000` pairs; printed
//! as `(w1 p1000)x1000` it fits a line, and a payload prints as `300B 00010203040506…`
//! instead of 300 decimal numbers. `{case:?}` still prints everything.
//!
//! ```text
//! u32be; 2 messages [0B, 300B 0001020304050607…]; faults `split:max=1`; seed 7; plan w4 (w1 p1000)x300 close
//! ```

use std::fmt;

use super::strategy::Case;
use crate::chaos::{Plan, Step};

/// Payload bytes shown before the preview is cut with `…`.
pub const PREVIEW_BYTES: usize = 8;

/// Longest group of steps that run-length encoding looks for (`w1 p1000` is 2).
const MAX_PERIOD: usize = 4;

impl fmt::Display for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.messages.len();
        write!(
            f,
            "{}; {n} message{} [",
            self.framing,
            if n == 1 { "" } else { "s" }
        )?;
        for (i, m) in self.messages.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{}", Preview(m))?;
        }
        write!(
            f,
            "]; faults `{}`; seed {}; plan {}",
            self.faults,
            self.seed,
            Compact(&self.plan)
        )
    }
}

/// A payload as `LENB HEX…`: its size and its first [`PREVIEW_BYTES`] bytes in hex.
pub struct Preview<'a>(pub &'a [u8]);

impl fmt::Display for Preview<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}B", self.0.len())?;
        if self.0.is_empty() {
            return Ok(());
        }
        f.write_str(" ")?;
        for b in self.0.iter().take(PREVIEW_BYTES) {
            write!(f, "{b:02x}")?;
        }
        if self.0.len() > PREVIEW_BYTES {
            f.write_str("…")?;
        }
        Ok(())
    }
}

/// A plan with repeated steps run-length encoded: `w1x16`, `(w1 p1000)x300`.
pub struct Compact<'a>(pub &'a Plan);

impl fmt::Display for Compact<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let steps = &self.0.steps;
        let mut i = 0;
        let mut first = true;
        // Each round prints at least one step and moves `i` past it.
        while i < steps.len() {
            if !first {
                f.write_str(" ")?;
            }
            first = false;
            let (period, times) = best_run(&steps[i..]);
            if times < 2 {
                write!(f, "{}", steps[i])?;
                i += 1;
                continue;
            }
            if period == 1 {
                write!(f, "{}x{times}", steps[i])?;
            } else {
                f.write_str("(")?;
                for (k, step) in steps[i..i + period].iter().enumerate() {
                    if k > 0 {
                        f.write_str(" ")?;
                    }
                    write!(f, "{step}")?;
                }
                write!(f, ")x{times}")?;
            }
            i += period * times;
        }
        Ok(())
    }
}

/// The group length and repeat count at the start of `steps` that covers the most steps
/// (shorter groups win ties, so `w1 w1 w1 w1` is `w1x4`, not `(w1 w1)x2`).
fn best_run(steps: &[Step]) -> (usize, usize) {
    let mut best = (1, 1);
    for period in 1..=MAX_PERIOD.min(steps.len() / 2) {
        let group = &steps[..period];
        let times = steps
            .chunks_exact(period)
            .take_while(|chunk| *chunk == group)
            .count();
        if times >= 2 && period * times > best.0 * best.1 {
            best = (period, times);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compact(plan: &str) -> String {
        Compact(&plan.parse().unwrap()).to_string()
    }

    #[test]
    fn single_steps_repeated_print_with_a_count() {
        assert_eq!(compact("w4 w1 w1 w1 close"), "w4 w1x3 close");
        assert_eq!(compact("w1 w1 w1 w1"), "w1x4");
    }

    #[test]
    fn repeated_groups_print_in_parentheses_with_a_count() {
        assert_eq!(
            compact("w4 w1 p1000 w1 p1000 w1 p1000 w12 close"),
            "w4 (w1 p1000)x3 w12 close"
        );
    }

    #[test]
    fn a_plan_without_repeats_prints_as_it_parses() {
        assert_eq!(compact("w4 p1000 w12 close"), "w4 p1000 w12 close");
        assert_eq!(compact(""), "");
    }

    #[test]
    fn payloads_show_their_size_and_a_hex_preview() {
        assert_eq!(Preview(b"").to_string(), "0B");
        assert_eq!(Preview(b"hello").to_string(), "5B 68656c6c6f");
        assert_eq!(Preview(&[0u8; 300]).to_string(), "300B 0000000000000000…");
    }

    #[test]
    fn a_case_with_a_thousand_steps_prints_on_one_short_line() {
        let framing = chopstick_targets::wire::Framing::default();
        let faults = "split:max=1:coarse=0".parse().unwrap();
        let case = Case::new(framing, vec![vec![], vec![7; 300]], faults, 7);
        let line = case.to_string();
        assert!(case.plan.steps.len() > 300, "{}", case.plan);
        assert!(line.len() < 200, "{line}");
        let head = "u32be; 2 messages [0B, 300B 0707070707070707…]; faults `split:max=1:coarse=0`";
        assert!(line.starts_with(head), "{line}");
        assert!(!line.contains('\n'));
    }
}
