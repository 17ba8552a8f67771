//! `--compare A.json [--max-regression PCT]`: each profile's median throughput now
//! against an earlier bench result, row by row (same profile, same connection count).
//! With a limit, a drop of more than PCT percent is a regression (exit code 1).

use std::fmt;

use super::results::BenchReport;

/// One profile's change.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub profile: String,
    pub connections: usize,
    pub before: f64,
    pub after: f64,
    /// Percent change of msgs/s (negative = slower).
    pub pct: f64,
    pub regression: bool,
}

/// Every profile both results have.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    pub changes: Vec<Change>,
    /// Rows only one side has (or without a valid run), named `profile xN`.
    pub unmatched: Vec<String>,
    pub max_regression: Option<f64>,
}

impl Comparison {
    pub fn regressions(&self) -> impl Iterator<Item = &Change> {
        self.changes.iter().filter(|c| c.regression)
    }

    /// 1 when a limit was given and some profile dropped by more, else 0.
    pub fn exit_code(&self) -> u8 {
        u8::from(self.regressions().next().is_some())
    }
}

/// Compares `now` with `before`; `max_regression` in percent.
pub fn compare(before: &BenchReport, now: &BenchReport, max_regression: Option<f64>) -> Comparison {
    let mut changes = Vec::new();
    let mut unmatched = Vec::new();
    for row in &now.rows {
        let old = before
            .row(&row.profile, row.connections)
            .and_then(|r| r.msgs_per_s);
        match (old, row.msgs_per_s) {
            (Some(o), Some(n)) if o.median > 0.0 => {
                let pct = (n.median / o.median - 1.0) * 100.0;
                changes.push(Change {
                    profile: row.profile.clone(),
                    connections: row.connections,
                    before: o.median,
                    after: n.median,
                    pct,
                    regression: max_regression.is_some_and(|m| pct < -m),
                });
            }
            _ => unmatched.push(format!("{} x{}", row.profile, row.connections)),
        }
    }
    for row in &before.rows {
        if now.row(&row.profile, row.connections).is_none() {
            unmatched.push(format!("{} x{}", row.profile, row.connections));
        }
    }
    Comparison {
        changes,
        unmatched,
        max_regression,
    }
}

impl fmt::Display for Comparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<11} {:>5} {:>12} {:>12} {:>8}",
            "profile", "conns", "before msg/s", "now msg/s", "change"
        )?;
        for c in &self.changes {
            writeln!(
                f,
                "{:<11} {:>5} {:>12.0} {:>12.0} {:>+7.1}%{}",
                c.profile,
                c.connections,
                c.before,
                c.after,
                c.pct,
                if c.regression { "  REGRESSION" } else { "" }
            )?;
        }
        if !self.unmatched.is_empty() {
            writeln!(f, "not compared: {}", self.unmatched.join(", "))?;
        }
        if let Some(m) = self.max_regression {
            let n = self.regressions().count();
            writeln!(
                f,
                "{n} profile(s) dropped by more than {m}% (--max-regression)"
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::results::{Machine, Row, RunFigures};
    use crate::bench::Profile;

    fn report(whole: f64, split: f64) -> BenchReport {
        let fig = |msgs| RunFigures {
            run: 1,
            msgs_per_s: msgs,
            mib_per_s: 0.0,
            p50_us: 0.0,
            p99_us: 0.0,
            p999_us: 0.0,
            server_cpu_s_per_m: None,
            gen_cpu_s_per_m: 0.0,
            gen_busiest: 0.0,
            vs_whole_msgs: None,
            vs_whole_server_cpu: None,
        };
        BenchReport {
            version: 1,
            chopstick: "0".into(),
            target: "t".into(),
            framing: "u32be".into(),
            oracle: "echo".into(),
            size: 64,
            depth: 1,
            warmup_s: 0.0,
            duration_s: 1.0,
            runs: 1,
            seed: 0,
            machine: Machine {
                nproc: 1,
                load_before: [0.0; 3],
                load_after: [0.0; 3],
            },
            rows: vec![
                Row::from_runs(Profile::Whole, 1, vec![fig(whole)]),
                Row::from_runs(Profile::Split { piece: 7 }, 1, vec![fig(split)]),
            ],
            invalid: vec![],
            warnings: vec![],
        }
    }

    #[test]
    fn a_drop_beyond_the_limit_is_a_regression_and_a_smaller_one_is_not() {
        let c = compare(&report(1000.0, 100.0), &report(950.0, 50.0), Some(10.0));
        assert_eq!(c.changes.len(), 2);
        assert!(!c.changes[0].regression, "-5% is within 10%");
        assert!(c.changes[1].regression, "-50% is beyond 10%");
        assert_eq!(c.exit_code(), 1);
        assert!(c.to_string().contains("REGRESSION"));
        let no_limit = compare(&report(1000.0, 100.0), &report(950.0, 50.0), None);
        assert_eq!(no_limit.exit_code(), 0);
    }
}
