//! Reports: the terminal summary table, `--json FILE`, `--junit FILE`.
//!
//! One [`Row`] per target x fault; one [`FailureRecord`] per failed connection. The
//! JSON file is this module's types serialised (schema in the README); the JUnit file
//! has one test case per row, failed when the row has failures.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::campaign::FailureClass;

/// Version of the `--json` layout of [`Report`]: raised when a field changes meaning or
/// goes away (a new field does not raise it).
pub const REPORT_FORMAT: u32 = 1;

/// One target x fault line of the summary.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Row {
    pub target: String,
    pub fault: String,
    pub connections: u64,
    pub messages: u64,
    pub bytes: u64,
    pub failures: u64,
    pub p50_us: Option<u64>,
    pub p99_us: Option<u64>,
    /// Failed connections by class.
    pub classes: BTreeMap<String, u64>,
    pub seconds: f64,
    #[serde(skip)]
    pub latencies_us: Vec<u64>,
}

impl Row {
    pub fn new(target: &str, fault: &str) -> Row {
        Row {
            target: target.into(),
            fault: fault.into(),
            ..Row::default()
        }
    }

    /// Fills p50/p99 from the collected latencies.
    pub fn finish(&mut self) {
        let mut l = std::mem::take(&mut self.latencies_us);
        l.sort_unstable();
        let pick = |q: f64| {
            l.get(((l.len() as f64 - 1.0) * q).round() as usize)
                .copied()
        };
        self.p50_us = pick(0.50);
        self.p99_us = pick(0.99);
    }
}

/// One failed connection.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct FailureRecord {
    pub target: String,
    pub fault: String,
    // A snake_case label (`truncated`, `lost`, ...): see the README's failure classes.
    #[cfg_attr(feature = "schema", schemars(with = "String"))]
    pub class: FailureClass,
    pub conn: u64,
    /// Byte offset in the request stream where the blamed message starts, if known.
    pub offset: Option<usize>,
    pub detail: String,
    pub reproducer: Option<PathBuf>,
}

/// A whole run or check.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Report {
    /// The version of this JSON layout (`REPORT_FORMAT`, published as
    /// `harness/schemas/report.schema.json`); 0 in files written before the field.
    #[serde(default)]
    pub format: u32,
    pub chopstick: String,
    pub seed: u64,
    pub rows: Vec<Row>,
    pub failures: Vec<FailureRecord>,
    /// Targets that could not be used at all (exit code 2).
    pub unusable: Vec<String>,
}

impl Report {
    pub fn new(seed: u64) -> Report {
        Report {
            format: REPORT_FORMAT,
            chopstick: env!("CARGO_PKG_VERSION").into(),
            seed,
            ..Report::default()
        }
    }

    pub fn total_failures(&self) -> u64 {
        self.rows.iter().map(|r| r.failures).sum()
    }

    /// 0 = no failure, 1 = failures found, 2 = a target was unusable.
    pub fn exit_code(&self) -> u8 {
        if !self.unusable.is_empty() {
            2
        } else if self.total_failures() > 0 {
            1
        } else {
            0
        }
    }

    /// The summary table, then one line per failure class and row.
    pub fn table(&self) -> String {
        let us =
            |v: Option<u64>| v.map_or("-".to_string(), |v| format!("{:.2}ms", v as f64 / 1000.0));
        let header = [
            "target", "fault", "conns", "messages", "bytes", "failures", "p50", "p99",
        ];
        let rows: Vec<[String; 8]> = self
            .rows
            .iter()
            .map(|r| {
                [
                    r.target.clone(),
                    r.fault.clone(),
                    r.connections.to_string(),
                    r.messages.to_string(),
                    human_bytes(r.bytes),
                    r.failures.to_string(),
                    us(r.p50_us),
                    us(r.p99_us),
                ]
            })
            .collect();
        let mut width = header.map(str::len);
        for r in &rows {
            for (w, c) in width.iter_mut().zip(r) {
                *w = (*w).max(c.len());
            }
        }
        let mut out = String::new();
        let line = |out: &mut String, cells: &[String]| {
            for (i, (c, w)) in cells.iter().zip(width).enumerate() {
                let _ = if i < 2 {
                    write!(out, "{c:<w$}  ")
                } else {
                    write!(out, "{c:>w$}  ")
                };
            }
            out.truncate(out.trim_end().len());
            out.push('\n');
        };
        line(&mut out, &header.map(String::from));
        for r in &rows {
            line(&mut out, r);
        }
        let _ = writeln!(
            out,
            "seed {}: {} connections, {} failures",
            self.seed,
            self.rows.iter().map(|r| r.connections).sum::<u64>(),
            self.total_failures()
        );
        // One verdict line per (row, class): the first failure names fault and offset.
        let mut seen = std::collections::BTreeSet::new();
        for f in &self.failures {
            if !seen.insert((f.target.clone(), f.fault.clone(), f.class)) {
                continue;
            }
            let count = self
                .failures
                .iter()
                .filter(|g| g.target == f.target && g.fault == f.fault && g.class == f.class)
                .count();
            let at = f
                .offset
                .map(|o| format!(" at byte {o}"))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "FAIL {}/{}: {} x{count} (first: conn {}{at}): {}",
                f.target, f.fault, f.class, f.conn, f.detail
            );
            if let Some(p) = &f.reproducer {
                let _ = writeln!(
                    out,
                    "     reproducer: {}  (chopstick replay {})",
                    p.display(),
                    p.display()
                );
            }
        }
        for u in &self.unusable {
            let _ = writeln!(out, "UNUSABLE: {u}");
        }
        out
    }

    pub fn write_json(&self, path: &Path) -> std::io::Result<()> {
        write_atomic(
            path,
            &serde_json::to_vec_pretty(self).expect("reports serialise"),
        )
    }

    /// JUnit XML: a suite per target, a test case per fault, failed if it has failures.
    pub fn junit(&self) -> String {
        use quick_junit::{NonSuccessKind, Report as JReport, TestCase, TestCaseStatus, TestSuite};
        let mut report = JReport::new("chopstick");
        let mut suites: BTreeMap<&str, TestSuite> = BTreeMap::new();
        for row in &self.rows {
            let suite = suites
                .entry(&row.target)
                .or_insert_with(|| TestSuite::new(row.target.clone()));
            let status = if row.failures == 0 {
                TestCaseStatus::success()
            } else {
                let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
                let classes: Vec<String> = row
                    .classes
                    .iter()
                    .map(|(k, v)| format!("{k} x{v}"))
                    .collect();
                s.set_message(format!(
                    "{} of {} connections failed: {}",
                    row.failures,
                    row.connections,
                    classes.join(", ")
                ));
                let details: Vec<String> = self
                    .failures
                    .iter()
                    .filter(|f| f.target == row.target && f.fault == row.fault)
                    .take(20)
                    .map(|f| {
                        let repro = f
                            .reproducer
                            .as_ref()
                            .map(|p| format!(" [{}]", p.display()))
                            .unwrap_or_default();
                        format!("conn {} {}: {}{repro}", f.conn, f.class, f.detail)
                    })
                    .collect();
                s.set_description(details.join("\n"));
                s
            };
            let mut case = TestCase::new(format!("{}::{}", row.target, row.fault), status);
            case.set_classname(format!("chopstick.{}", row.target));
            case.set_time(std::time::Duration::from_secs_f64(row.seconds.max(0.0)));
            suite.add_test_case(case);
        }
        report.add_test_suites(suites.into_values());
        report.to_string().expect("JUnit serialises")
    }

    pub fn write_junit(&self, path: &Path) -> std::io::Result<()> {
        write_atomic(path, self.junit().as_bytes())
    }
}

fn human_bytes(b: u64) -> String {
    match b {
        b if b >= 1 << 30 => format!("{:.1}GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1}MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1}KiB", b as f64 / 1024.0),
        b => format!("{b}B"),
    }
}

/// Writes via a temporary file and a rename, so a report is never half-written
/// ([`crate::repro_file::write_atomic`], the one writer).
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    crate::repro_file::write_atomic(path, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Report {
        let mut r = Report::new(7);
        let mut ok = Row::new("echo", "split");
        ok.connections = 3;
        ok.latencies_us = vec![30, 10, 20];
        ok.finish();
        let mut bad = Row::new("echo", "coalesce");
        bad.connections = 2;
        bad.failures = 1;
        bad.classes.insert("lost".into(), 1);
        r.rows = vec![ok, bad];
        r.failures.push(FailureRecord {
            target: "echo".into(),
            fault: "coalesce".into(),
            class: FailureClass::Lost,
            conn: 1,
            offset: Some(42),
            detail: "no reply to message #2 <&>".into(),
            reproducer: None,
        });
        r
    }

    #[test]
    fn percentiles_and_exit_code() {
        let r = sample();
        assert_eq!((r.rows[0].p50_us, r.rows[0].p99_us), (Some(20), Some(30)));
        assert_eq!(r.exit_code(), 1);
        assert_eq!(Report::new(1).exit_code(), 0);
    }

    #[test]
    fn table_names_fault_class_and_offset() {
        let t = sample().table();
        assert!(
            t.contains("FAIL echo/coalesce: lost x1 (first: conn 1 at byte 42)"),
            "{t}"
        );
        assert!(t.lines().next().unwrap().starts_with("target"));
    }

    #[test]
    fn junit_has_one_case_per_row_and_escapes_text() {
        let x = sample().junit();
        assert_eq!(x.matches("<testcase ").count(), 2);
        assert_eq!(x.matches("<failure").count(), 1);
        assert!(x.contains("&lt;&amp;&gt;"), "{x}");
    }

    #[test]
    fn json_round_trips() {
        let r = sample();
        let back: Report = serde_json::from_slice(&serde_json::to_vec(&r).unwrap()).unwrap();
        assert_eq!(back.rows.len(), 2);
        assert_eq!(back.failures, r.failures);
    }
}
