//! `chopstick soak`: bounded, loopback-only load and fault runs against every
//! reference server and through the proxy, reporting reliability figures
//! (RELIABILITY.md records them).
//!
//! Two phases, each on freshly started in-process servers:
//!
//! 1. **Load** ([`load`]): raise RLIMIT_NOFILE to the hard limit, then hold
//!    [`SoakConfig::load_connections`] connections open at once against echo, and
//!    through the proxy to echo; every connection gets a correct reply right after it
//!    connects and again once all are open. Reports the connection rate and the peak
//!    RSS delta of this process (the server and proxy run in-process; the clients run
//!    in a child process, so they are not counted). The proxy run is capped by the fd
//!    limit (the proxy and its upstream cost three fds per connection here) and says so.
//! 2. **Abrupt disconnects** ([`cut`]): [`SoakConfig::disconnects`] connections per
//!    target (echo, exec, file, auth, proxy->echo), [`SoakConfig::in_flight`] at a time,
//!    each cut by FIN or RST at a random region (mid-header, mid-body, mid-reply, ...).
//!    Afterwards: the server is alive and serves a fresh client, no connection is left
//!    open (`active == 0`), fds are back to the baseline, no leak (below), no child
//!    processes, no temporary files, and every file on disk is exactly one body that
//!    was sent for its name (every acknowledged put is there).
//!
//!    **Leaks** are judged so that noise cannot fail and a leak cannot pass: the cuts
//!    run in two equal rounds after a warm-up, and the heap is measured after each
//!    ([`alloc::live_bytes`], exact, when the program installs the counting allocator;
//!    RSS otherwise). A leak grows the heap in *both* rounds in proportion to the
//!    connections; one-off growth (pools, arenas, caches reaching their working size)
//!    happens once; so the check fails only if both rounds grew by more than
//!    [`cut::LEAK_BYTES_PER_CONN`] per connection plus a fixed noise floor. RSS growth
//!    is still reported, but is not a verdict.
//!
//! [`run`] returns a [`SoakReport`] (`Display` for people, `Serialize` for `--json`);
//! [`SoakReport::passed`] says whether every promise held. Setup problems (cannot
//! bind, cannot start the load client) are a [`SoakError`].
//!
//! **Re-execution.** The load clients run in a child process: `run` starts this same
//! program again (`current_exe` with the same arguments) with
//! `CHOPSTICK_SOAK_CLIENT` set, and in that child `run` acts as the load client and
//! exits the process instead of returning. So call `run` from a program whose
//! arguments lead back to `run` (`chopstick soak ...`, `examples/soak.rs`).

pub mod alloc;
pub mod cut;
pub mod load;
pub mod servers;
pub mod sys;

use std::fmt;
use std::time::{Duration, Instant};

pub use cut::CutFigures;
pub use load::LoadFigures;
pub use servers::Kind;
pub use sys::FdLimit;

/// Scale knobs of a soak run.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct SoakConfig {
    /// Connections held open at once in the load test (echo, and through the proxy).
    pub load_connections: usize,
    /// Abruptly cut connections per target.
    pub disconnects: u64,
    /// Cut connections in flight at once.
    pub in_flight: usize,
    /// Seed of the cut regions, FIN/RST choices and payloads.
    pub seed: u64,
    /// Whether this is the shortened preset (recorded in the report).
    pub quick: bool,
}

impl SoakConfig {
    /// The full soak: 10 000 held connections, 100 000 cuts per target, 200 in flight.
    pub fn full() -> SoakConfig {
        SoakConfig {
            load_connections: 10_000,
            disconnects: 100_000,
            in_flight: 200,
            seed: 0x50AC,
            quick: false,
        }
    }

    /// The CI preset: 1 000 held connections, 2 000 cuts per target.
    pub fn quick() -> SoakConfig {
        SoakConfig {
            load_connections: 1_000,
            disconnects: 2_000,
            in_flight: 100,
            quick: true,
            ..SoakConfig::full()
        }
    }
}

impl Default for SoakConfig {
    fn default() -> Self {
        SoakConfig::full()
    }
}

/// Why the soak could not run at all (as opposed to figures that broke a promise,
/// which are in [`SoakReport::failures`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SoakError {
    #[error("soak setup failed: {0}")]
    Setup(String),
}

/// The machine the figures were measured on.
#[derive(Debug, Clone, Default, serde::Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory_mib: u64,
    pub kernel: String,
}

impl Machine {
    fn read() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        Machine {
            cpu: cpuinfo
                .lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
                .unwrap_or_default(),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_mib: meminfo
                .lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .map_or(0, |kib| kib / 1024),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
        }
    }
}

/// Version of `soak --json`'s layout ([`SoakReport`]): raised when a field changes
/// meaning or goes away.
pub const SOAK_REPORT_FORMAT: u32 = 1;

/// Everything a soak run measured.
#[derive(Debug, Clone, serde::Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct SoakReport {
    /// The version of this JSON layout (`SOAK_REPORT_FORMAT`, published as
    /// `harness/schemas/soak-report.schema.json`).
    pub format: u32,
    pub config: SoakConfig,
    pub machine: Machine,
    pub fd_limit: FdLimit,
    pub load: Vec<LoadFigures>,
    pub disconnects: Vec<CutFigures>,
    /// Panics anywhere in this process during the run.
    pub panics: u64,
    pub elapsed_secs: f64,
    /// Every broken promise, one line each; empty = passed.
    pub failures: Vec<String>,
}

impl SoakReport {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Runs the soak. See the module docs; in a load-client child it never returns.
pub async fn run(config: &SoakConfig) -> Result<SoakReport, SoakError> {
    if let Some(spec) = load::client_spec() {
        let code = match spec {
            Ok(spec) => {
                let result = load::client_main(spec).await;
                i32::from(result.held == 0)
            }
            Err(e) => {
                eprintln!("{e}");
                2
            }
        };
        std::process::exit(code);
    }
    let started = Instant::now();
    sys::count_panics();
    let panics_before = sys::panics();
    let fd_limit =
        sys::raise_fd_limit().map_err(|e| SoakError::Setup(format!("RLIMIT_NOFILE: {e}")))?;
    let proxy_faults: crate::chaos::FaultSet = "split:max=2048"
        .parse()
        .map_err(|e| SoakError::Setup(format!("proxy faults: {e}")))?;

    let mut load_figs = Vec::new();
    for kind in [Kind::Echo, Kind::ProxyEcho] {
        let opts = servers::Options {
            max_conns: config.load_connections + 64,
            backlog: 4096,
            // Held connections sit idle between their two round trips.
            idle_timeout: Duration::from_secs(120),
            proxy_faults: crate::chaos::FaultSet::none(),
            seed: config.seed,
        };
        let target = servers::start(kind, &opts)?;
        let fig = load::run(&target, config.load_connections, fd_limit.soft).await;
        target.stop().await?;
        load_figs.push(fig?);
    }

    let mut cut_figs = Vec::new();
    for kind in Kind::ALL {
        let opts = servers::Options {
            max_conns: config.in_flight * 2 + 64,
            backlog: 1024,
            idle_timeout: Duration::from_secs(30),
            proxy_faults: proxy_faults.clone(),
            seed: config.seed,
        };
        let target = servers::start(kind, &opts)?;
        let fig = cut::run(&target, config.disconnects, config.in_flight, config.seed).await;
        target.stop().await?;
        cut_figs.push(fig);
    }

    let mut failures: Vec<String> = load_figs.iter().flat_map(LoadFigures::failures).collect();
    failures.extend(cut_figs.iter().flat_map(CutFigures::failures));
    let panics = sys::panics() - panics_before;
    if panics > 0 {
        failures.push(format!("{panics} panics during the soak"));
    }
    Ok(SoakReport {
        format: SOAK_REPORT_FORMAT,
        config: config.clone(),
        machine: Machine::read(),
        fd_limit,
        load: load_figs,
        disconnects: cut_figs,
        panics,
        elapsed_secs: started.elapsed().as_secs_f64(),
        failures,
    })
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

impl fmt::Display for SoakReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        let m = &self.machine;
        writeln!(
            f,
            "chopstick soak{}: {} held connections, {} cuts per target ({} in flight), seed {}",
            if c.quick { " --quick" } else { "" },
            c.load_connections,
            c.disconnects,
            c.in_flight,
            c.seed
        )?;
        writeln!(
            f,
            "machine: {} x{} cores, {} MiB RAM, Linux {}; RLIMIT_NOFILE soft {} -> {} (hard {})",
            m.cpu,
            m.cores,
            m.memory_mib,
            m.kernel,
            self.fd_limit.soft_before,
            self.fd_limit.soft,
            self.fd_limit.hard
        )?;
        writeln!(f, "\nload (server and proxy in-process; RSS = this process's delta, clients in a child process)")?;
        writeln!(
            f,
            "{:<12} {:>9} {:>7} {:>13} {:>12} {:>10} {:>13} {:>9}",
            "target",
            "attempted",
            "held",
            "replies ok",
            "conn/s",
            "connect s",
            "peak RSS +",
            "fds peak"
        )?;
        for l in &self.load {
            writeln!(
                f,
                "{:<12} {:>9} {:>7} {:>6}+{:<6} {:>12.0} {:>10.2} {:>13} {:>9}",
                l.target,
                l.attempted,
                l.held,
                l.first_replies_ok,
                l.second_replies_ok,
                l.connections_per_sec,
                l.connect_secs,
                mib(l.rss_peak_delta_kib),
                l.fds_at_peak
            )?;
            if let Some(why) = &l.limited_by {
                writeln!(f, "  {} of {} requested: {why}", l.attempted, l.requested)?;
            }
        }
        writeln!(
            f,
            "\nabrupt disconnects (FIN/RST at random regions; baseline after a warm-up of max(5 x in-flight, 10 %) cuts)"
        )?;
        writeln!(
            f,
            "{:<12} {:>8} {:>6} {:>6} {:>8} {:>8} {:>6} {:>9} {:>9} {:>8} {:>5} {:>5} {:>12} {:>7}",
            "target",
            "conns",
            "FIN",
            "RST",
            "conn/s",
            "cli err",
            "open",
            "fds",
            "RSS",
            "RSS +%",
            "kids",
            "tmp",
            "files ok",
            "healthy"
        )?;
        for d in &self.disconnects {
            let files = if d.target == "file" {
                format!(
                    "{}/{}",
                    d.files_checked - d.files_bad.min(d.files_checked),
                    d.files_checked
                )
            } else {
                "-".into()
            };
            writeln!(
                f,
                "{:<12} {:>8} {:>6} {:>6} {:>8.0} {:>8} {:>6} {:>9} {:>9} {:>8.1} {:>5} {:>5} {:>12} {:>7}",
                d.target,
                d.connections,
                d.fin,
                d.rst,
                d.per_sec,
                d.client_errors,
                d.active_after,
                format!("{}->{}", d.fds_before, d.fds_after),
                mib(d.rss_after_kib),
                d.rss_growth_pct,
                d.children_left,
                d.temp_files_left,
                files,
                if d.healthy_after { "yes" } else { "NO" }
            )?;
        }
        for d in &self.disconnects {
            let regions: Vec<String> = d.regions.iter().map(|(k, v)| format!("{k} {v}")).collect();
            let errors: Vec<String> = d
                .server_errors
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            writeln!(
                f,
                "  {}: {:.1} s; {} growth per round {:+} / {:+} bytes (leak only if both > {}); RSS cold {} -> baseline {} -> peak {} -> after {} (settled in {:.1} s); regions [{}]; server accepted {}, completed {}, aborted {} [{}]{}",
                d.target,
                d.secs,
                d.leak_measure,
                d.leak_round1_bytes,
                d.leak_round2_bytes,
                d.leak_limit_bytes,
                mib(d.rss_cold_kib),
                mib(d.rss_before_kib),
                mib(d.rss_peak_kib),
                mib(d.rss_after_kib),
                d.rss_settle_secs,
                regions.join(", "),
                d.server_accepted,
                d.server_completed,
                d.server_aborted,
                errors.join(", "),
                if d.target == "file" {
                    format!("; puts acked {}", d.puts_acked)
                } else {
                    String::new()
                }
            )?;
        }
        writeln!(
            f,
            "\npanics: {}; elapsed {:.1} s",
            self.panics, self.elapsed_secs
        )?;
        if self.failures.is_empty() {
            writeln!(f, "PASSED: no crash, no leak, every reply correct")
        } else {
            writeln!(f, "FAILED:")?;
            for failure in &self.failures {
                writeln!(f, "  - {failure}")?;
            }
            Ok(())
        }
    }
}
