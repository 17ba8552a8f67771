//! `chopstick bench`: what fragmentation costs a server. Throughput, reply latency and
//! server CPU per message under each fragmentation profile, against the `whole`
//! baseline of the same run.
//!
//! - [`profile`]: the profiles (`whole`, `coalesced`, `split:N`, `paced:N`).
//! - [`load`]: the load generator (pipelined connections, `depth` in flight, judging).
//! - [`drain`]: asks the kernel whether the server has read what we sent (paced).
//! - [`cpu`]: CPU time of the server and of chopstick itself from /proc.
//! - [`results`]: per-run figures, medians, the table and the versioned JSON.
//! - [`plot`]: the SVG (throughput and p99 against piece size).
//! - [`compare`]: `--compare A.json`, the change against an earlier run.
//! - [`baseline`]: `--traffic`/`--requests`: real requests, replies learnt from the server.
//!
//! The target is the campaign's ([`Target`]: `--connect` or `--spawn`), replies are
//! judged with the campaign's oracle and [`crate::campaign::judge::judge`], and a
//! wrong reply invalidates its run.

pub mod baseline;
pub mod compare;
pub mod cpu;
pub mod drain;
pub mod load;
pub mod plot;
pub mod profile;
pub mod results;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use chopstick_targets::wire::{Framing, WireError};
use rand::RngCore;

use crate::campaign::{Target, TargetError, TargetSpec};
use crate::chaos::purpose_rng;
use crate::oracle::differential::Slot;
use crate::oracle::Oracle;
pub use load::{LoadError, LoadSpec, Measured, Pool};
pub use profile::Profile;
pub use results::{BenchReport, Row, RunFigures, Stat};

/// Distinct messages cycled through per connection, so a duplicated or reordered reply
/// does not equal the one that was due.
const POOL: usize = 64;
/// Most real requests in a pool (`--traffic`/`--requests`): each costs two baseline
/// round trips before the load.
pub const MAX_REQUESTS: usize = 4096;
/// Largest `--size`.
pub const MAX_SIZE: usize = 8 * 1024 * 1024;
/// Most connections per measurement.
pub const MAX_CONNECTIONS: usize = 256;
/// Most requests in flight per connection.
pub const MAX_DEPTH: usize = 4096;
/// A generator thread busier than this share of a core may be the bottleneck.
pub const SATURATED: f64 = 0.9;

/// What to bench.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub target: TargetSpec,
    /// How the target is named in the table and the JSON.
    pub target_name: String,
    pub framing: Framing,
    /// Judges each reply on its own: an oracle without a baseline, read-back or handshake.
    /// Unused with `requests` (their replies are learnt, see [`baseline`]).
    pub oracle: std::sync::Arc<dyn Oracle>,
    /// Real requests (payloads, from a traffic file or a request corpus) cycled through
    /// instead of generated `size`-byte messages.
    pub requests: Option<Vec<Bytes>>,
    pub profiles: Vec<Profile>,
    /// Each profile is measured at each of these connection counts.
    pub connections: Vec<usize>,
    pub depth: usize,
    /// Payload bytes per message.
    pub size: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub runs: usize,
    pub seed: u64,
}

/// Why a bench could not run (exit code 2).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BenchError {
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("oracle `{0}` cannot be benched: bench judges each reply on its own (e.g. echo or upper), without baselines, read-backs or handshakes")]
    Oracle(String),
    #[error("bad bench setting: {0}")]
    Setting(String),
    #[error("baseline pass: request #{request} ({preview}): {why}; bench with real requests needs a server that answers each request with one reply")]
    Baseline {
        request: usize,
        preview: String,
        why: String,
    },
    #[error("no requests to bench with: {0}")]
    NoRequests(String),
    #[error("cannot encode a {size}-byte message in this framing: {source}")]
    Encode { size: usize, source: WireError },
    #[error("the load thread panicked")]
    Panicked,
}

impl BenchConfig {
    fn validate(&self) -> Result<(), BenchError> {
        let bad = |s: String| Err(BenchError::Setting(s));
        let o = &self.oracle;
        let judged_alone =
            o.baseline().is_none() && o.read_back().is_none() && o.handshake().is_none();
        if self.requests.is_none() && !judged_alone {
            return Err(BenchError::Oracle(o.name().to_string()));
        }
        if let Some(r) = &self.requests {
            if r.is_empty() {
                return Err(BenchError::NoRequests("the file holds none".into()));
            }
            if r.len() > MAX_REQUESTS {
                return bad(format!(
                    "at most {MAX_REQUESTS} distinct requests ({} given)",
                    r.len()
                ));
            }
        }
        if self.connections.is_empty()
            || self
                .connections
                .iter()
                .any(|&c| c == 0 || c > MAX_CONNECTIONS)
        {
            return bad(format!("--connections: 1..={MAX_CONNECTIONS} each"));
        }
        if self.depth == 0 || self.depth > MAX_DEPTH {
            return bad(format!("--depth: 1..={MAX_DEPTH}"));
        }
        if self.size > MAX_SIZE {
            return bad(format!("--size: at most {MAX_SIZE} bytes"));
        }
        if self.runs == 0 || self.duration.is_zero() {
            return bad("--runs and --duration must be positive".into());
        }
        if !self.profiles.contains(&Profile::Whole) {
            return bad("the profiles must include `whole`".into());
        }
        Ok(())
    }

    /// The seeded messages every connection cycles through, encoded, with their replies.
    pub fn pool(&self) -> Result<Pool, BenchError> {
        let mut rng = purpose_rng(self.seed, "bench/messages");
        let line = matches!(self.framing, Framing::Line { .. });
        let mut frames = Vec::with_capacity(POOL);
        let mut expected = Vec::with_capacity(POOL);
        for i in 0..POOL {
            let mut m = vec![0u8; self.size];
            rng.fill_bytes(&mut m);
            if line {
                // A newline would end a `line` frame early: letters only.
                m.iter_mut().for_each(|b| *b = b'a' + *b % 26);
            }
            // A tag at the front tells the pool's messages apart even when tiny.
            let tag = format!("{i}:");
            let n = tag.len().min(m.len());
            m[..n].copy_from_slice(&tag.as_bytes()[..n]);
            let mut dst = BytesMut::new();
            self.framing
                .encode(&m, &mut dst)
                .map_err(|source| BenchError::Encode {
                    size: self.size,
                    source,
                })?;
            frames.push(dst.freeze());
            expected.push(Slot::exact(
                self.oracle
                    .expected(0, &[Bytes::from(m)])
                    .into_iter()
                    .next()
                    .ok_or_else(|| BenchError::Oracle(self.oracle.name().to_string()))?,
            ));
        }
        Ok(Pool {
            frames,
            payload_len: vec![self.size; POOL],
            expected,
        })
    }
}

/// Runs the bench: every run, connection count and profile, in that nesting, so that
/// each run holds its own `whole` baseline. `progress` hears one line per measurement.
pub async fn run(
    config: &BenchConfig,
    mut progress: impl FnMut(&str),
) -> Result<BenchReport, BenchError> {
    config.validate()?;
    let generated = match config.requests {
        None => Some(config.pool()?),
        Some(_) => None,
    };
    let load_before = results::Machine::load_now();
    let mut target = Target::start(&config.target).await?;
    let pool = Arc::new(match (generated, &config.requests) {
        (Some(pool), _) => pool,
        (None, requests) => {
            let (addr, framing) = (target.addr, config.framing);
            let requests = requests.clone().unwrap_or_default();
            let learnt =
                tokio::task::spawn_blocking(move || baseline::learn(addr, framing, &requests))
                    .await
                    .map_err(|_| BenchError::Panicked)?;
            match learnt {
                Ok(pool) => pool,
                Err(e) => {
                    target.kill().await;
                    return Err(e);
                }
            }
        }
    });
    let mut figures: HashMap<(Profile, usize), Vec<RunFigures>> = HashMap::new();
    let mut invalid = Vec::new();
    let mut warnings = Vec::new();
    for run in 1..=config.runs {
        for &conns in &config.connections {
            let mut this_run: Vec<(Profile, Measured)> = Vec::new();
            for &profile in &config.profiles {
                let spec = LoadSpec {
                    addr: target.addr,
                    framing: config.framing,
                    profile,
                    connections: conns,
                    depth: config.depth,
                    warmup: config.warmup,
                    duration: config.duration,
                    server_pid: target.pid(),
                };
                let p = pool.clone();
                let m = tokio::task::spawn_blocking(move || load::measure(&spec, &p))
                    .await
                    .map_err(|_| BenchError::Panicked)??;
                let died = target.exited();
                let failure = m.failure.clone().or_else(|| {
                    died.as_ref().map(|status| {
                        crate::campaign::Failure::new(
                            crate::campaign::FailureClass::ServerDied,
                            None,
                            format!("the server exited ({status}): {}", target.stderr_tail()),
                        )
                    })
                });
                progress(&format!(
                    "run {run} {profile} x{conns}: {:.0} msgs/s{}",
                    m.messages as f64 / m.window.as_secs_f64().max(1e-9),
                    if failure.is_some() { " (invalid)" } else { "" }
                ));
                if let Some(f) = failure {
                    invalid.push(results::InvalidRun {
                        run,
                        profile: profile.to_string(),
                        connections: conns,
                        class: f.class.to_string(),
                        detail: f.detail,
                    });
                    if died.is_some() {
                        target.restart().await?;
                    }
                    continue;
                }
                if m.gen_busiest >= SATURATED {
                    warnings.push(format!(
                        "run {run} {profile} x{conns}: a chopstick thread was busy {:.0}% of a core; \
                         the generator may be the limit (try more --connections)",
                        m.gen_busiest * 100.0
                    ));
                }
                this_run.push((profile, m));
            }
            let base = this_run
                .iter()
                .find(|(p, _)| *p == Profile::Whole)
                .map(|(_, m)| figures_of(run, m, None));
            for (profile, m) in &this_run {
                let fig = match profile {
                    Profile::Whole => base.clone().expect("whole is in this run"),
                    _ => figures_of(run, m, Some(base.as_ref())),
                };
                figures.entry((*profile, conns)).or_default().push(fig);
            }
        }
    }
    target.kill().await;
    let mut rows = Vec::new();
    for &conns in &config.connections {
        for &profile in &config.profiles {
            let runs = figures.remove(&(profile, conns)).unwrap_or_default();
            rows.push(Row::from_runs(profile, conns, runs));
        }
    }
    Ok(BenchReport {
        version: results::VERSION,
        chopstick: env!("CARGO_PKG_VERSION").into(),
        target: config.target_name.clone(),
        framing: config.framing.to_string(),
        oracle: match config.requests {
            None => config.oracle.name().to_string(),
            Some(_) => "differential".to_string(),
        },
        size: match &config.requests {
            None => config.size,
            Some(r) => r.iter().map(Bytes::len).sum::<usize>() / r.len().max(1),
        },
        depth: config.depth,
        warmup_s: config.warmup.as_secs_f64(),
        duration_s: config.duration.as_secs_f64(),
        runs: config.runs,
        seed: config.seed,
        machine: results::Machine {
            nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
            load_before,
            load_after: results::Machine::load_now(),
        },
        rows,
        invalid,
        warnings,
    })
}

/// One measurement's figures. `base`: `None` for `whole` itself (ratios 1), else the
/// same run's `whole`, which a wrong reply may have invalidated (ratios unknown).
fn figures_of(run: usize, m: &Measured, base: Option<Option<&RunFigures>>) -> RunFigures {
    let secs = m.window.as_secs_f64().max(1e-9);
    let per_m = |ns: u64| {
        if m.messages == 0 {
            f64::NAN
        } else {
            ns as f64 / 1e9 / (m.messages as f64 / 1e6)
        }
    };
    let q = |p: f64| m.latency.value_at_quantile(p) as f64 / 1000.0;
    let msgs_per_s = m.messages as f64 / secs;
    let server = m.server_cpu_ns.map(per_m);
    RunFigures {
        run,
        msgs_per_s,
        mib_per_s: m.payload_bytes as f64 / secs / (1024.0 * 1024.0),
        p50_us: q(0.5),
        p99_us: q(0.99),
        p999_us: q(0.999),
        server_cpu_s_per_m: server,
        gen_cpu_s_per_m: per_m(m.gen_cpu_ns),
        gen_busiest: m.gen_busiest,
        vs_whole_msgs: match base {
            None => Some(1.0),
            Some(b) => b.map(|b| msgs_per_s / b.msgs_per_s),
        },
        vs_whole_server_cpu: match (server, base) {
            (Some(_), None) => Some(1.0),
            (Some(s), Some(Some(b))) => b.server_cpu_s_per_m.map(|bs| s / bs),
            _ => None,
        },
    }
}
