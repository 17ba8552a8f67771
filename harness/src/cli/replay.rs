//! `chopstick replay FILE`: run a TCP or UDP reproducer again; exit 1 while the bug is
//! there, 0 once it is fixed.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use chopstick::campaign::payload::preview;
use chopstick::campaign::repro::Reproducer;
use chopstick::campaign::Timing;
use clap::Args;

#[derive(Args, Debug)]
pub struct ReplayArgs {
    /// A reproducer JSON file written by `check` or `run`.
    file: PathBuf,
    /// Runs to try before declaring the bug fixed (timing-dependent bugs may need more).
    #[arg(long, default_value_t = 5)]
    attempts: usize,
}

pub async fn exec(args: ReplayArgs) -> Result<ExitCode> {
    let json: serde_json::Value = std::fs::read(&args.file)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    if chopstick::udp::repro::is_udp_reproducer(&json) {
        return replay_udp(&args.file, args.attempts).await;
    }
    let r = Reproducer::read(&args.file)?;
    println!(
        "replaying {}: seed {} conn {}, {} {} with {}, {} messages, plan `{}`",
        args.file.display(),
        r.seed,
        r.conn,
        r.target_name,
        r.config.framing,
        r.fault,
        r.messages.len(),
        r.plan_line
    );
    println!("recorded: {}: {}", r.failure.class, r.failure.detail);
    let outcome =
        match chopstick::campaign::repro::replay(&r, args.attempts, Timing::default()).await {
            Ok(o) => o,
            Err(e) => {
                eprintln!("chopstick replay: target unusable: {e}");
                return Ok(ExitCode::from(2));
            }
        };
    let show = |v: &[bytes::Bytes]| v.iter().map(|b| preview(b)).collect::<Vec<_>>().join(", ");
    println!("expected: [{}]", show(&outcome.expected));
    println!("seen:     [{}]", show(&outcome.seen));
    match outcome.failure {
        Some(f) => {
            println!(
                "STILL FAILS (attempt {}): {}: {}",
                outcome.attempts, f.class, f.detail
            );
            Ok(ExitCode::from(1))
        }
        None => {
            println!("passes ({} attempts): fixed", outcome.attempts);
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn replay_udp(path: &std::path::Path, attempts: usize) -> Result<ExitCode> {
    let r = chopstick::udp::UdpReproducer::read(path)?;
    println!("replaying {} (udp)", path.display());
    let outcome = match chopstick::udp::replay(&r, attempts).await {
        Ok(o) => o,
        Err(e) => {
            eprintln!("chopstick replay: target unusable: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    for f in outcome.failures.iter().take(20) {
        println!("  {:?} (datagram {:?}): {}", f.kind, f.seq, f.detail);
    }
    if outcome.failures.len() > 20 {
        println!("  ... and {} more", outcome.failures.len() - 20);
    }
    if outcome.confirmed {
        println!("STILL FAILS ({} attempts)", outcome.attempts);
        Ok(ExitCode::from(1))
    } else {
        println!("passes ({} attempts): fixed", outcome.attempts);
        Ok(ExitCode::SUCCESS)
    }
}
