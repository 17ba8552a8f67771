//! `chopstick bench`: throughput, latency and server CPU per fragmentation profile; the
//! bench itself is `chopstick::bench`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use chopstick::bench::{self, BenchConfig, BenchReport};
use chopstick::campaign::TargetSpec;
use chopstick_targets::wire::Framing;
use clap::Args;

use super::{secs, size_arg};

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["connect", "spawn"])))]
pub struct BenchArgs {
    /// Address of a running server (loopback only; no server CPU figures).
    #[arg(long)]
    connect: Option<SocketAddr>,
    /// Command that starts the server; `{port}` is replaced by a free port. Its CPU time
    /// is read from /proc. Split on whitespace (quotes group), no shell.
    #[arg(long)]
    spawn: Option<String>,
    /// Framing spec of requests and replies.
    #[arg(long, default_value = "u32be")]
    framing: Framing,
    /// How replies are judged: echo or upper (ASCII a-z upper-cased). A wrong reply
    /// invalidates its run.
    #[arg(long, default_value = "echo")]
    oracle: String,
    /// Cycle through the requests of a traffic file (`chopstick proxy --record`) instead
    /// of generated messages; each request's reply is learnt from two unfaulted passes
    /// first and held to that, noise masked (the server must answer every request with
    /// one reply). The recording's framing must be --framing, in both directions.
    #[arg(long, conflicts_with_all = ["requests", "oracle", "size"])]
    traffic: Option<PathBuf>,
    /// Like --traffic, from a request corpus (one payload per line, as `check --requests`).
    #[arg(long, conflicts_with_all = ["oracle", "size"])]
    requests: Option<PathBuf>,
    /// Fragmentation profiles, comma-separated: whole, coalesced, split:N (N-byte
    /// pieces back to back), paced:N (each piece once the server has read the last).
    #[arg(long, default_value = bench::profile::DEFAULT)]
    profiles: String,
    /// Connection counts, comma-separated; every profile runs at each (one plot line each).
    #[arg(long, value_delimiter = ',', default_value = "4")]
    connections: Vec<usize>,
    /// Requests in flight per connection (deep enough by default that a fast server on
    /// loopback, not the round trip, sets the rate).
    #[arg(long, default_value_t = 128)]
    depth: usize,
    /// Payload bytes per message.
    #[arg(long, value_parser = size_arg, default_value = "64")]
    size: usize,
    /// Seconds of load before each measured window.
    #[arg(long, default_value_t = 0.5)]
    warmup: f64,
    /// Seconds measured per profile and connection count.
    #[arg(long, default_value_t = 2.0)]
    duration: f64,
    /// Repetitions of the whole profile list (medians and spread over them).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Seed of the messages (default: random, printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Write the results as JSON (versioned; see README).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Draw throughput and p99 against piece size as an SVG.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// An earlier `--json` result to compare throughput with.
    #[arg(long)]
    compare: Option<PathBuf>,
    /// With --compare: exit 1 if a profile's throughput dropped by more than PCT percent.
    #[arg(long, requires = "compare")]
    max_regression: Option<f64>,
}

pub async fn exec(args: BenchArgs) -> Result<ExitCode> {
    let seed = args.seed.unwrap_or_else(rand::random);
    eprintln!("chopstick bench: seed {seed}");
    let target = match (&args.connect, &args.spawn) {
        (Some(addr), _) => TargetSpec::Connect(*addr),
        (None, Some(cmd)) => TargetSpec::Spawn(cmd.clone()),
        (None, None) => unreachable!("clap requires one of --connect/--spawn"),
    };
    // Read before the bench, so a bad path costs nothing.
    let before: Option<BenchReport> = match &args.compare {
        Some(path) => Some(chopstick::repro_file::read(path)?),
        None => None,
    };
    let config = BenchConfig {
        target_name: target.display_name(),
        target,
        framing: args.framing,
        oracle: chopstick::oracle::parse(&args.oracle)?,
        requests: real_requests(&args)?,
        profiles: bench::profile::parse_list(&args.profiles)?,
        connections: args.connections.clone(),
        depth: args.depth,
        size: args.size,
        warmup: secs(args.warmup, "warmup")?,
        duration: secs(args.duration, "duration")?,
        runs: args.runs,
        seed,
    };
    let report = bench::run(&config, |line| eprintln!("  {line}")).await?;
    print!("{report}");
    if let Some(path) = &args.json {
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .context("--json needs a file name")?;
        chopstick::repro_file::write_to(
            &mut report.clone(),
            dir.unwrap_or(std::path::Path::new(".")),
            name,
        )?;
    }
    if let Some(path) = &args.plot {
        bench::plot::write(&report, path)?;
    }
    let mut code = report.exit_code();
    if let Some(before) = before {
        let cmp = bench::compare::compare(&before, &report, args.max_regression);
        print!("{cmp}");
        code = code.max(cmp.exit_code());
    }
    Ok(ExitCode::from(code))
}

/// `--traffic` or `--requests`: every request, in recorded order, at most
/// [`bench::MAX_REQUESTS`] of them.
fn real_requests(args: &BenchArgs) -> Result<Option<Vec<bytes::Bytes>>> {
    // bench decodes replies with --framing too: the recording must have used it both ways.
    let Some(templates) = super::real_templates(
        args.traffic.as_deref(),
        args.requests.as_deref(),
        args.framing,
        args.framing,
    )?
    else {
        return Ok(None);
    };
    let mut all: Vec<bytes::Bytes> = templates.into_iter().flatten().collect();
    if all.len() > bench::MAX_REQUESTS {
        eprintln!(
            "chopstick bench: using the first {} of {} requests",
            bench::MAX_REQUESTS,
            all.len()
        );
        all.truncate(bench::MAX_REQUESTS);
    }
    Ok(Some(all))
}
