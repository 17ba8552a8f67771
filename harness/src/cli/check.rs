//! `chopstick check`: drive any server (TCP, or UDP with `--udp`) with seeded faults and
//! judge its replies; the campaign itself is `chopstick::campaign::check`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use chopstick::campaign::check::{CheckConfig, Profile};
use chopstick::campaign::{CaseConfig, TargetSpec, Timing};
use chopstick::oracle::Oracle;
use chopstick::report::Report;
use chopstick::workload::{Mode, Workload};
use chopstick_targets::udp::MAX_UDP_PAYLOAD;
use chopstick_targets::wire::Framing;
use clap::{Args, ValueEnum};

use super::{bar, secs, size_arg};

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["connect", "spawn"])))]
pub struct CheckArgs {
    /// Address of a running server (loopback only).
    #[arg(long)]
    connect: Option<SocketAddr>,
    /// Command that starts the server; `{port}` is replaced by a free port. chopstick
    /// waits until it accepts connections, watches it, captures its stderr and restarts
    /// it after it dies. Split into words as a shell would (quotes, backslashes), but no
    /// shell runs.
    #[arg(long)]
    spawn: Option<String>,
    /// Framing spec of requests and replies.
    #[arg(long, default_value = "u32be", conflicts_with = "udp")]
    framing: Framing,
    /// How replies are judged: echo, upper (ASCII a-z upper-cased), differential
    /// (equal to an unfaulted run's replies), exec or file (chopstick's own servers).
    /// (with --udp: echo, upper or time).
    #[arg(long, default_value = "echo")]
    oracle: String,
    /// Check a UDP server: tagged datagrams, judged for loss, duplication, reordering,
    /// truncation and corruption.
    #[arg(long)]
    udp: bool,
    /// Datagrams to send (--udp).
    #[arg(long, default_value_t = 200, requires = "udp")]
    datagrams: usize,
    #[command(flatten)]
    campaign: CampaignArgs,
}

/// The campaign's options. Those `--udp` ignores conflict with it: refused, not dropped.
#[derive(Args, Debug)]
pub struct CampaignArgs {
    /// Connections per fault profile.
    #[arg(long, default_value_t = 20, conflicts_with = "udp")]
    connections: usize,
    /// Messages per connection.
    #[arg(long, default_value_t = 16, conflicts_with = "udp")]
    messages: usize,
    /// Largest message (sizes 0, 1, around the header width and large are drawn).
    #[arg(long, value_parser = size_arg, default_value = "1MiB")]
    max_size: usize,
    /// Fault profiles, one report row each, comma-separated; `+` combines faults in one
    /// profile, `:k=v` sets options (e.g. `split:max=8,disconnect:mode=reset+split`).
    /// Default: split,boundary,coalesce,disconnect,mixed (with --udp: one combined
    /// datagram fault list, default loss, dup, reorder and delay).
    #[arg(long)]
    faults: Option<String>,
    /// Master seed (default: random, printed). The same seed gives the same run.
    #[arg(long)]
    seed: Option<u64>,
    /// Send everything at once (pipelined) or wait for each reply (ping-pong).
    #[arg(long, value_enum, default_value_t = ModeArg::Pipelined, conflicts_with = "udp")]
    mode: ModeArg,
    /// Do not send a FIN after the last request (for servers that treat it as abort).
    #[arg(long, conflicts_with = "udp")]
    no_half_close: bool,
    /// Seconds to wait for the next reply before calling it a hang.
    #[arg(long, default_value_t = 3.0, conflicts_with = "udp")]
    reply_timeout: f64,
    /// Seconds a fresh connection may take to be served after a fault.
    #[arg(long, default_value_t = 3.0, conflicts_with = "udp")]
    liveness: f64,
    /// Do not shrink failures (reproducers are then the unshrunk cases).
    #[arg(long, conflicts_with = "udp")]
    no_shrink: bool,
    /// Seconds allowed for shrinking one failure (a hanging server costs a reply
    /// timeout per attempt).
    #[arg(long, default_value_t = 20.0, conflicts_with = "udp")]
    shrink_time: f64,
    /// Write the report as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the report as JUnit XML (one test case per target x fault).
    #[arg(long, conflicts_with = "udp")]
    junit: Option<PathBuf>,
    /// Directory for reproducer files.
    #[arg(long, default_value = "chopstick-artifacts")]
    artifacts: PathBuf,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
pub enum ModeArg {
    Pipelined,
    PingPong,
}

impl CampaignArgs {
    fn seed(&self) -> u64 {
        self.seed.unwrap_or_else(rand::random)
    }

    fn profiles(&self) -> Result<Vec<Profile>> {
        let list = self
            .faults
            .as_deref()
            .unwrap_or(chopstick::campaign::run::DEFAULT_PROFILES);
        Ok(chopstick::campaign::run::parse_profiles(list)?)
    }

    fn case_config(&self, framing: Framing, oracle: Arc<dyn Oracle>) -> Result<CaseConfig> {
        Ok(CaseConfig {
            framing,
            oracle,
            mode: match self.mode {
                ModeArg::Pipelined => Mode::Pipelined,
                ModeArg::PingPong => Mode::PingPong,
            },
            half_close: !self.no_half_close,
            timing: Timing {
                reply_timeout: secs(self.reply_timeout, "reply-timeout")?,
                ..Timing::default()
            },
            liveness: secs(self.liveness, "liveness")?,
        })
    }

    /// Prints the table, writes the report files, returns the exit code.
    fn finish(&self, report: &Report) -> Result<ExitCode> {
        print!("{}", report.table());
        if let Some(path) = &self.json {
            report
                .write_json(path)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        if let Some(path) = &self.junit {
            report
                .write_junit(path)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        Ok(ExitCode::from(report.exit_code()))
    }
}

pub async fn exec(args: CheckArgs) -> Result<ExitCode> {
    let c = &args.campaign;
    let seed = c.seed();
    eprintln!("chopstick check: seed {seed}");
    if args.udp {
        return check_udp(&args, seed).await;
    }
    let oracle = chopstick::oracle::parse(&args.oracle)?;
    let target = match (&args.connect, &args.spawn) {
        (Some(addr), _) => TargetSpec::Connect(*addr),
        (None, Some(cmd)) => TargetSpec::Spawn(cmd.clone()),
        (None, None) => unreachable!("clap requires one of --connect/--spawn"),
    };
    let target_name = target.display_name();
    let config = CheckConfig {
        target,
        target_name,
        case: c.case_config(args.framing, oracle)?,
        workload: Workload {
            connections: c.connections,
            messages: c.messages,
            max_size: c.max_size.min(args.framing.max()),
            header_width: args.framing.header_width(),
        },
        profiles: c.profiles()?,
        seed,
        artifacts: Some(c.artifacts.clone()),
        shrink: !c.no_shrink,
        shrink_budget: chopstick::campaign::shrink::DEFAULT_BUDGET,
        shrink_time: secs(c.shrink_time, "shrink-time")?,
    };
    let mut report = Report::new(seed);
    if let Err(e) = chopstick::campaign::check::check(&config, &mut bar(), &mut report).await {
        report.unusable.push(e.to_string());
    }
    c.finish(&report)
}

async fn check_udp(args: &CheckArgs, seed: u64) -> Result<ExitCode> {
    use chopstick::udp::{UdpCheckConfig, UdpTarget};
    let target = match (&args.connect, &args.spawn) {
        (Some(addr), _) => UdpTarget::Connect(*addr),
        (None, Some(cmd)) => UdpTarget::Spawn(cmd.clone()),
        (None, None) => unreachable!("clap requires one of --connect/--spawn"),
    };
    let mut config = UdpCheckConfig::new(target, args.oracle.parse()?);
    let faults = args
        .campaign
        .faults
        .as_deref()
        .unwrap_or(chopstick::campaign::run::UDP_FAULTS);
    config.faults = faults.parse().context("--faults")?;
    config.seed = seed;
    config.datagrams = args.datagrams;
    config.max_size = args.campaign.max_size.min(MAX_UDP_PAYLOAD);
    config.artifacts = Some(args.campaign.artifacts.clone());
    let report = match chopstick::udp::run_check(&config).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("chopstick check: target unusable: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    print!("{}", report.summary());
    if let Some(path) = &args.campaign.json {
        chopstick::report::write_atomic(path, &serde_json::to_vec_pretty(&report)?)?;
    }
    Ok(ExitCode::from(if report.passed() { 0 } else { 1 }))
}
