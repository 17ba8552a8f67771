//! Reports: the terminal summary table, `--json FILE`, `--junit FILE`.
//!
//! One [`Row`] per target x fault; one [`FailureRecord`] per failed connection; one
//! [`Finding`] per root cause: failures whose shrunk cases are the same (class, the
//! minimal messages' sizes and the plan) are one finding across profiles and seeds,
//! with one reproducer and a count. The JSON file is this module's types serialised
//! (schema in the README; fields are only ever added); the JUnit file has one test case
//! per row, failed when the row has failures.

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
    /// Index into [`Report::findings`]: the root cause this failure belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finding: Option<usize>,
}

/// One root cause: every failure whose shrunk case has the same [`Finding::key`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Finding {
    pub target: String,
    #[cfg_attr(feature = "schema", schemars(with = "String"))]
    pub class: FailureClass,
    /// What makes two failures the same: class, the shrunk messages' sizes and the
    /// shrunk plan (or, unshrunk, the profile and class).
    pub key: String,
    /// Failed connections with this cause.
    pub count: u64,
    /// Profiles it showed up in, in order of first occurrence.
    pub faults: Vec<String>,
    /// Seeds it showed up in.
    pub seeds: Vec<u64>,
    /// The first occurrence: profile, seed, connection, byte offset.
    pub fault: String,
    pub seed: u64,
    pub conn: u64,
    pub offset: Option<usize>,
    pub detail: String,
    pub reproducer: Option<PathBuf>,
    /// How often its reproducer's failure came back when replayed before it was written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reproduced: Option<Reproduced>,
}

/// How often a case's failure came back when it was run again: `hits` of `attempts`
/// runs failed with the recorded class.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Reproduced {
    pub hits: u32,
    pub attempts: u32,
}

impl Reproduced {
    /// Reproduced on some attempts but not all.
    pub fn flaky(&self) -> bool {
        self.hits > 0 && self.hits < self.attempts
    }
}

/// `3/3`, or `1/3 (flaky)`.
impl std::fmt::Display for Reproduced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.hits, self.attempts)?;
        if self.flaky() {
            f.write_str(" (flaky)")?;
        }
        Ok(())
    }
}

impl Finding {
    /// A finding's key from its shrunk case.
    pub fn key_of(class: FailureClass, sizes: &[usize], plan: &str) -> String {
        format!("{class} sizes={sizes:?} plan=[{plan}]")
    }

    /// The key of a failure that was not shrunk: one per profile and class.
    pub fn unshrunk_key(class: FailureClass, fault: &str) -> String {
        format!("{class} fault={fault} unshrunk")
    }
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
    /// Root causes, each with its count (see [`Finding`]).
    #[serde(default)]
    pub findings: Vec<Finding>,
    /// Set when the check stopped before its end (`--fail-fast`, `--budget`, a signal):
    /// what stopped it. The rows say what was covered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
    /// Connections `check` had in flight at once (`--concurrency`, or what `auto`'s
    /// probe chose).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<usize>,
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

    /// Adds `record` to the finding with `key` (a new one if none yet, taking the
    /// record's reproducer); returns the finding's index and sets `record.finding` and,
    /// from the finding, `record.reproducer`.
    pub fn add_failure(&mut self, seed: u64, key: String, mut record: FailureRecord) -> usize {
        let found = self
            .findings
            .iter()
            .position(|f| f.key == key && f.target == record.target);
        let i = match found {
            Some(i) => i,
            None => {
                self.findings.push(Finding {
                    target: record.target.clone(),
                    class: record.class,
                    key,
                    count: 0,
                    faults: Vec::new(),
                    seeds: Vec::new(),
                    fault: record.fault.clone(),
                    seed,
                    conn: record.conn,
                    offset: record.offset,
                    detail: record.detail.clone(),
                    reproducer: record.reproducer.clone(),
                    reproduced: None,
                });
                self.findings.len() - 1
            }
        };
        let f = &mut self.findings[i];
        f.count += 1;
        if !f.faults.contains(&record.fault) {
            f.faults.push(record.fault.clone());
        }
        if !f.seeds.contains(&seed) {
            f.seeds.push(seed);
        }
        if f.reproducer.is_none() {
            f.reproducer = record.reproducer.clone();
        }
        record.reproducer = f.reproducer.clone();
        record.finding = Some(i);
        self.failures.push(record);
        i
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
        // One line per root cause; failures recorded without one (older reports) get
        // one line per row and class, as before.
        for f in &self.findings {
            let at = f
                .offset
                .map(|o| format!(" at byte {o}"))
                .unwrap_or_default();
            let seeds = if f.seeds.len() > 1 {
                format!(", {} seeds", f.seeds.len())
            } else {
                String::new()
            };
            let _ = writeln!(
                out,
                "FAIL {}/{}: {} x{} in {}{seeds} (first: conn {}{at}): {}",
                f.target,
                f.fault,
                f.class,
                f.count,
                f.faults.join(","),
                f.conn,
                f.detail
            );
            if let Some(p) = &f.reproducer {
                let replayed = f
                    .reproduced
                    .map(|r| format!("  replayed: reproduced {r}"))
                    .unwrap_or_default();
                let _ = writeln!(
                    out,
                    "     reproducer: {}  (chopstick replay {}){replayed}",
                    p.display(),
                    p.display()
                );
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for f in self.failures.iter().filter(|f| f.finding.is_none()) {
            if !seen.insert((f.target.clone(), f.fault.clone(), f.class)) {
                continue;
            }
            let count = self
                .failures
                .iter()
                .filter(|g| {
                    g.finding.is_none()
                        && g.target == f.target
                        && g.fault == f.fault
                        && g.class == f.class
                })
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
        if let Some(why) = &self.stopped {
            let _ = writeln!(out, "STOPPED: {why}");
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

/// Why shard reports cannot be merged.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MergeError {
    #[error("cannot read report {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a chopstick JSON report: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("nothing to merge: give at least one report")]
    Empty,
}

impl Report {
    /// Reads a JSON report written by `--json`.
    pub fn read_json(path: &Path) -> Result<Report, MergeError> {
        let bytes = std::fs::read(path).map_err(|source| MergeError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        serde_json::from_slice(&bytes).map_err(|source| MergeError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Combines shard reports (`--shard K/N` of one campaign, or runs of other seeds)
    /// into one: rows of the same target and fault add up (connections, messages,
    /// bytes, failures, classes, seconds; p50/p99 become the worst shard's, since
    /// percentiles do not add), findings with the same key become one with the counts
    /// added, failures and unusable targets are kept in order.
    pub fn merge(reports: Vec<Report>) -> Result<Report, MergeError> {
        let mut parts = reports.into_iter();
        let first = parts.next().ok_or(MergeError::Empty)?;
        let mut out = Report {
            chopstick: first.chopstick.clone(),
            seed: first.seed,
            ..Report::default()
        };
        for part in std::iter::once(first).chain(parts) {
            for row in part.rows {
                match out
                    .rows
                    .iter_mut()
                    .find(|r| r.target == row.target && r.fault == row.fault)
                {
                    Some(r) => {
                        r.connections += row.connections;
                        r.messages += row.messages;
                        r.bytes += row.bytes;
                        r.failures += row.failures;
                        for (k, v) in row.classes {
                            *r.classes.entry(k).or_default() += v;
                        }
                        r.seconds += row.seconds;
                        r.p50_us = r.p50_us.max(row.p50_us);
                        r.p99_us = r.p99_us.max(row.p99_us);
                    }
                    None => out.rows.push(row),
                }
            }
            // Findings first, so failures can point at their merged index.
            let mut remap = Vec::with_capacity(part.findings.len());
            for f in part.findings {
                let i = match out
                    .findings
                    .iter()
                    .position(|g| g.key == f.key && g.target == f.target)
                {
                    Some(i) => {
                        let g = &mut out.findings[i];
                        g.count += f.count;
                        for fault in f.faults {
                            if !g.faults.contains(&fault) {
                                g.faults.push(fault);
                            }
                        }
                        for seed in f.seeds {
                            if !g.seeds.contains(&seed) {
                                g.seeds.push(seed);
                            }
                        }
                        if g.reproducer.is_none() {
                            g.reproducer = f.reproducer;
                            g.reproduced = f.reproduced;
                        }
                        i
                    }
                    None => {
                        out.findings.push(f);
                        out.findings.len() - 1
                    }
                };
                remap.push(i);
            }
            for mut failure in part.failures {
                failure.finding = failure.finding.and_then(|i| remap.get(i).copied());
                out.failures.push(failure);
            }
            out.unusable.extend(part.unusable);
            if let Some(why) = part.stopped {
                out.stopped = Some(match out.stopped.take() {
                    Some(before) => format!("{before}; {why}"),
                    None => why,
                });
            }
        }
        Ok(out)
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
            finding: None,
        });
        r
    }

    fn record(fault: &str, class: FailureClass, conn: u64) -> FailureRecord {
        FailureRecord {
            target: "srv".into(),
            fault: fault.into(),
            class,
            conn,
            offset: None,
            detail: format!("conn {conn}"),
            reproducer: (conn == 0).then(|| PathBuf::from("first.json")),
            finding: None,
        }
    }

    #[test]
    fn failures_with_one_shrunk_case_are_one_finding_across_profiles() {
        let mut r = Report::new(1);
        let key = Finding::key_of(FailureClass::Lost, &[0], "w4");
        r.add_failure(1, key.clone(), record("split", FailureClass::Lost, 0));
        r.add_failure(1, key.clone(), record("boundary", FailureClass::Lost, 3));
        let other = Finding::key_of(FailureClass::Lost, &[0, 1], "w9");
        r.add_failure(1, other, record("split", FailureClass::Lost, 5));
        assert_eq!(r.findings.len(), 2);
        assert_eq!(r.findings[0].count, 2);
        assert_eq!(r.findings[0].faults, ["split", "boundary"]);
        // Every failure of the finding points at its one reproducer.
        assert_eq!(r.failures[1].reproducer, Some(PathBuf::from("first.json")));
        assert_eq!(r.failures[1].finding, Some(0));
        let t = r.table();
        assert_eq!(t.matches("FAIL ").count(), 2, "{t}");
        assert!(t.contains("lost x2 in split,boundary"), "{t}");
    }

    #[test]
    fn merged_shards_add_up_rows_and_findings() {
        let shard = |conns: u64, failures: u64, seed: u64| {
            let mut r = Report::new(seed);
            let mut row = Row::new("srv", "split");
            row.connections = conns;
            row.failures = failures;
            row.classes.insert("lost".into(), failures);
            r.rows.push(row);
            for i in 0..failures {
                let key = Finding::key_of(FailureClass::Lost, &[0], "w4");
                r.add_failure(seed, key, record("split", FailureClass::Lost, i));
            }
            r
        };
        let m = Report::merge(vec![shard(3, 2, 1), shard(4, 1, 2), shard(3, 0, 1)]).unwrap();
        assert_eq!(m.rows.len(), 1);
        assert_eq!((m.rows[0].connections, m.rows[0].failures), (10, 3));
        assert_eq!(m.rows[0].classes["lost"], 3);
        assert_eq!(m.findings.len(), 1);
        assert_eq!(
            (m.findings[0].count, m.findings[0].seeds.clone()),
            (3, vec![1, 2])
        );
        assert!(m.failures.iter().all(|f| f.finding == Some(0)));
        assert!(matches!(Report::merge(vec![]), Err(MergeError::Empty)));
    }

    #[test]
    fn reports_without_findings_still_parse() {
        let old = r#"{"chopstick":"0.1.0","seed":1,"rows":[],"failures":[],"unusable":[]}"#;
        let r: Report = serde_json::from_str(old).unwrap();
        assert!(r.findings.is_empty() && r.stopped.is_none());
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
