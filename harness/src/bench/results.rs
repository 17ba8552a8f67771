//! Bench results: per-run figures, the median and spread over runs, the terminal table
//! and the versioned JSON file (`--json`).
//!
//! JSON (format [`VERSION`]; a reader refuses other versions):
//!
//! ```text
//! { "version": 1, "chopstick": VERSION, "target", "framing", "oracle", "size", "depth",
//!   "warmup_s", "duration_s", "runs", "seed",
//!   "machine": { "nproc", "load_before": [1m, 5m, 15m], "load_after": [..] },
//!   "rows": [ { "profile": "paced:64", "piece": 64 | null, "paced": true,
//!               "connections", "valid_runs",
//!               "msgs_per_s", "mib_per_s", "p50_us", "p99_us", "p999_us",
//!               "server_cpu_s_per_m", "gen_cpu_s_per_m", "gen_busiest",
//!               "vs_whole_msgs", "vs_whole_server_cpu":  { "median", "min", "max" } or null,
//!               "runs": [ { "run", "msgs_per_s", ..., "vs_whole_server_cpu" } ] } ],
//!   "invalid": [ { "run", "profile", "connections", "class", "detail" } ],
//!   "warnings": [ "..." ] }
//! ```
//!
//! `*_cpu_s_per_m` is CPU seconds per million replies (`server_`: the spawned server
//! process, null for `--connect`; `gen_`: chopstick itself); `gen_busiest` is the
//! busiest generator thread's share of a core; `vs_whole_*` divides by the `whole`
//! profile of the same run and connection count.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::profile::Profile;
use crate::repro_file::ReproFile;

/// The format version of the JSON file.
pub const VERSION: u32 = 1;

/// Median, smallest and largest over the valid runs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Stat {
    /// `None` for no values.
    pub fn of(values: &[f64]) -> Option<Stat> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Stat {
            median,
            min: v[0],
            max: v[n - 1],
        })
    }

    /// Half the min..max range as a share of the median (0.05 = ±5 %).
    pub fn spread(&self) -> f64 {
        if self.median == 0.0 {
            0.0
        } else {
            (self.max - self.min) / 2.0 / self.median
        }
    }
}

/// One valid run of one profile at one connection count.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunFigures {
    pub run: usize,
    pub msgs_per_s: f64,
    pub mib_per_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub server_cpu_s_per_m: Option<f64>,
    pub gen_cpu_s_per_m: f64,
    pub gen_busiest: f64,
    pub vs_whole_msgs: Option<f64>,
    pub vs_whole_server_cpu: Option<f64>,
}

/// A profile at a connection count, over all runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    pub profile: String,
    pub piece: Option<usize>,
    pub paced: bool,
    pub connections: usize,
    pub valid_runs: usize,
    pub msgs_per_s: Option<Stat>,
    pub mib_per_s: Option<Stat>,
    pub p50_us: Option<Stat>,
    pub p99_us: Option<Stat>,
    pub p999_us: Option<Stat>,
    pub server_cpu_s_per_m: Option<Stat>,
    pub gen_cpu_s_per_m: Option<Stat>,
    pub gen_busiest: Option<Stat>,
    pub vs_whole_msgs: Option<Stat>,
    pub vs_whole_server_cpu: Option<Stat>,
    pub runs: Vec<RunFigures>,
}

impl Row {
    /// The row for `profile` at `connections` from its valid runs.
    pub fn from_runs(profile: Profile, connections: usize, runs: Vec<RunFigures>) -> Row {
        let stat = |f: &dyn Fn(&RunFigures) -> Option<f64>| {
            Stat::of(&runs.iter().filter_map(f).collect::<Vec<f64>>())
        };
        Row {
            profile: profile.to_string(),
            piece: profile.piece(),
            paced: profile.paced(),
            connections,
            valid_runs: runs.len(),
            msgs_per_s: stat(&|r| Some(r.msgs_per_s)),
            mib_per_s: stat(&|r| Some(r.mib_per_s)),
            p50_us: stat(&|r| Some(r.p50_us)),
            p99_us: stat(&|r| Some(r.p99_us)),
            p999_us: stat(&|r| Some(r.p999_us)),
            server_cpu_s_per_m: stat(&|r| r.server_cpu_s_per_m),
            gen_cpu_s_per_m: stat(&|r| Some(r.gen_cpu_s_per_m)),
            gen_busiest: stat(&|r| Some(r.gen_busiest)),
            vs_whole_msgs: stat(&|r| r.vs_whole_msgs),
            vs_whole_server_cpu: stat(&|r| r.vs_whole_server_cpu),
            runs,
        }
    }
}

/// A run that a wrong or missing reply (or a dead server) invalidated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InvalidRun {
    pub run: usize,
    pub profile: String,
    pub connections: usize,
    pub class: String,
    pub detail: String,
}

/// How busy the machine was.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    pub nproc: usize,
    /// /proc/loadavg's 1, 5 and 15 minute averages before and after the bench.
    pub load_before: [f64; 3],
    pub load_after: [f64; 3],
}

impl Machine {
    /// The load averages now (zeros where /proc/loadavg cannot be read).
    pub fn load_now() -> [f64; 3] {
        let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        let mut out = [0.0; 3];
        for (slot, f) in out.iter_mut().zip(text.split_whitespace()) {
            *slot = f.parse().unwrap_or(0.0);
        }
        out
    }
}

/// Everything one `chopstick bench` produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchReport {
    pub version: u32,
    pub chopstick: String,
    pub target: String,
    pub framing: String,
    pub oracle: String,
    /// Payload bytes per message (with real requests: their mean).
    pub size: usize,
    pub depth: usize,
    pub warmup_s: f64,
    pub duration_s: f64,
    pub runs: usize,
    pub seed: u64,
    pub machine: Machine,
    pub rows: Vec<Row>,
    pub invalid: Vec<InvalidRun>,
    pub warnings: Vec<String>,
}

impl ReproFile for BenchReport {
    const KIND: &'static str = "bench result";
    const VERSION: u32 = VERSION;

    /// A bench result is not replayed: `--compare FILE` is how it is used again.
    fn set_replay(&mut self, _command: String) {}
}

impl BenchReport {
    /// The row of `profile` at `connections`.
    pub fn row(&self, profile: &str, connections: usize) -> Option<&Row> {
        self.rows
            .iter()
            .find(|r| r.profile == profile && r.connections == connections)
    }

    /// 0 when every run was valid, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        u8::from(!self.invalid.is_empty())
    }
}

fn med(s: &Option<Stat>) -> String {
    match s {
        Some(s) => fmt_num(s.median),
        None => "-".into(),
    }
}

fn fmt_num(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if x >= 1e4 {
        format!("{:.1}k", x / 1e3)
    } else if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 1.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.3}")
    }
}

fn ratio(s: &Option<Stat>) -> String {
    s.map(|s| format!("{:.2}x", s.median)).unwrap_or("-".into())
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "chopstick bench: {} ({} framing, {} oracle), {} B messages, depth {}, {} run(s) of {:.1} s after {:.1} s warm-up, seed {}",
            self.target, self.framing, self.oracle, self.size, self.depth, self.runs,
            self.duration_s, self.warmup_s, self.seed
        )?;
        writeln!(
            f,
            "{:<11} {:>5} {:>9} {:>7} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9} {:>8} {:>6}",
            "profile",
            "conns",
            "msgs/s",
            "±",
            "MiB/s",
            "p50 µs",
            "p99 µs",
            "p999 µs",
            "srv s/M",
            "gen s/M",
            "vs whole",
            "srvcpu"
        )?;
        for r in &self.rows {
            let spread = r
                .msgs_per_s
                .map(|s| format!("{:.0}%", s.spread() * 100.0))
                .unwrap_or("-".into());
            writeln!(
                f,
                "{:<11} {:>5} {:>9} {:>7} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9} {:>8} {:>6}",
                r.profile,
                r.connections,
                med(&r.msgs_per_s),
                spread,
                med(&r.mib_per_s),
                med(&r.p50_us),
                med(&r.p99_us),
                med(&r.p999_us),
                med(&r.server_cpu_s_per_m),
                med(&r.gen_cpu_s_per_m),
                ratio(&r.vs_whole_msgs),
                ratio(&r.vs_whole_server_cpu),
            )?;
        }
        writeln!(
            f,
            "(medians over valid runs; ± = half the min..max range; s/M = CPU seconds per million messages; \
             vs whole = msgs/s and server CPU per message against `whole` in the same run)"
        )?;
        for w in &self.warnings {
            writeln!(f, "warning: {w}")?;
        }
        for i in &self.invalid {
            writeln!(
                f,
                "INVALID run {} {} x{}: {}: {}",
                i.run, i.profile, i.connections, i.class, i.detail
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_spread_of_runs() {
        let s = Stat::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(s.spread(), 0.5);
        assert_eq!(Stat::of(&[1.0, 3.0]).unwrap().median, 2.0);
        assert_eq!(Stat::of(&[]), None);
        assert_eq!(Stat::of(&[f64::NAN]), None);
    }
}
