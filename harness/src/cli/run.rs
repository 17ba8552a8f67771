//! `chopstick run`: every reference server in-process under every fault, then the table.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use chopstick::report::Report;
use clap::Args;

use super::bar;

#[derive(Args, Debug)]
pub struct RunArgs {
    /// A short run (under a minute): fewer connections, messages and bytes.
    #[arg(long)]
    quick: bool,
    /// Master seed (default: random, printed). The same seed gives the same run.
    #[arg(long)]
    seed: Option<u64>,
    /// Targets, comma-separated: echo, upper, exec, file, auth, udp (default: all).
    #[arg(long, default_value = "echo,upper,exec,file,auth,udp")]
    targets: String,
    /// TCP fault profiles, one report row each (as in `check`; udp uses datagram faults).
    #[arg(long, default_value = chopstick::campaign::run::DEFAULT_PROFILES)]
    faults: String,
    /// Write the report as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the report as JUnit XML (one test case per target x fault).
    #[arg(long)]
    junit: Option<PathBuf>,
    /// Directory for reproducer files (and the file root and key file they spawn with).
    #[arg(long, default_value = "chopstick-artifacts")]
    artifacts: PathBuf,
    /// Do not shrink failures or write reproducers.
    #[arg(long)]
    no_shrink: bool,
}

pub async fn exec(args: RunArgs) -> Result<ExitCode> {
    use chopstick::campaign::run::{self, RunConfig, Scale};
    let seed = args.seed.unwrap_or_else(rand::random);
    eprintln!("chopstick run: seed {seed}");
    let exe = std::env::current_exe().context("cannot find the chopstick binary")?;
    let mut config = RunConfig::new(exe, seed, args.artifacts.clone());
    config.targets = run::parse_targets(&args.targets)?;
    config.profiles = run::parse_profiles(&args.faults)?;
    config.shrink = !args.no_shrink;
    if args.quick {
        config.scale = Scale::quick();
    }
    let mut report = Report::new(seed);
    run::run(&config, &mut bar(), &mut report).await;
    print!("{}", report.table());
    run::write_reports(&report, args.json.as_deref(), args.junit.as_deref())
        .context("cannot write the report")?;
    Ok(ExitCode::from(report.exit_code()))
}
