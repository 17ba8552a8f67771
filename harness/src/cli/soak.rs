//! `chopstick soak`: load, abrupt-disconnect and leak figures for every reference server
//! and the proxy (see RELIABILITY.md).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

#[derive(Args, Debug)]
pub struct SoakArgs {
    /// The shortened variant CI runs (1 000 connections, 2 000 cuts per target).
    #[arg(long)]
    quick: bool,
    /// Write the figures as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

pub async fn exec(args: SoakArgs) -> Result<ExitCode> {
    // The soak re-runs this same command line as its load-client process (see
    // chopstick::soak), so everything it needs must come from these arguments.
    let config = if args.quick {
        chopstick::soak::SoakConfig::quick()
    } else {
        chopstick::soak::SoakConfig::full()
    };
    let report = chopstick::soak::run(&config).await?;
    println!("{report}");
    if let Some(path) = &args.json {
        chopstick::report::write_atomic(path, &serde_json::to_vec_pretty(&report)?)?;
    }
    Ok(ExitCode::from(if report.passed() { 0 } else { 1 }))
}
