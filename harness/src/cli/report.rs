//! `chopstick report merge A.json B.json ... [--json F] [--junit F]`: combine the JSON
//! reports of shards (`check --shard K/N`) into one; the merge is
//! `chopstick::report::Report::merge`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use chopstick::report::Report;
use clap::{Args, Subcommand};

#[derive(Args, Debug)]
pub struct ReportArgs {
    #[command(subcommand)]
    command: ReportCommand,
}

#[derive(Subcommand, Debug)]
enum ReportCommand {
    /// Merge JSON reports (e.g. the shards of one check) into one: prints the merged
    /// table, writes it as JSON and JUnit if asked; exits like the merged check would
    /// (0 no failure, 1 failures, 2 an unusable target).
    Merge(MergeArgs),
}

#[derive(Args, Debug)]
struct MergeArgs {
    /// JSON reports written by `check --json` or `run --json`.
    #[arg(required = true)]
    reports: Vec<PathBuf>,
    /// Write the merged report as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the merged report as JUnit XML.
    #[arg(long)]
    junit: Option<PathBuf>,
}

pub async fn exec(args: ReportArgs) -> Result<ExitCode> {
    let ReportCommand::Merge(m) = args.command;
    let reports = m
        .reports
        .iter()
        .map(|p| Report::read_json(p))
        .collect::<Result<Vec<_>, _>>()?;
    let merged = Report::merge(reports)?;
    print!("{}", merged.table());
    if let Some(path) = &m.json {
        merged
            .write_json(path)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(path) = &m.junit {
        merged
            .write_junit(path)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(ExitCode::from(merged.exit_code()))
}
