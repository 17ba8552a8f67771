//! `chopstick replay FILE`: run a TCP or UDP reproducer again; exit 1 while the bug is
//! there, 0 once it is fixed. A TCP reproducer runs `--attempts` times and says how
//! often it reproduced (`reproduced 3/3`, or `flaky` when only some attempts failed).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use chopstick::campaign::payload::preview;
use chopstick::campaign::repro::{self, Reproducer};
use clap::Args;

#[derive(Args, Debug)]
pub struct ReplayArgs {
    /// A reproducer JSON file written by `check` or `run`.
    file: PathBuf,
    /// Runs of the case: all are made and counted (`reproduced k/N`); exit 1 if any
    /// reproduced the failure. UDP reproducers stop at the first that does.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=1000))]
    attempts: u32,
}

pub async fn exec(args: ReplayArgs) -> Result<ExitCode> {
    let json: serde_json::Value = std::fs::read(&args.file)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    if chopstick::udp::repro::is_udp_reproducer(&json) {
        return replay_udp(&args.file, args.attempts as usize).await;
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
    let recorded = r
        .reproduced
        .map(|k| format!(" (reproduced {k} when written)"))
        .unwrap_or_default();
    println!(
        "recorded: {}: {}{recorded}",
        r.failure.class, r.failure.detail
    );
    // The check's own timeouts: a hang is a hang against the deadline it was found with.
    let (_, timing) = repro::recorded_timing(&r);
    let outcome = match repro::replay(&r, args.attempts as usize, timing).await {
        Ok(o) => o,
        Err(e) => {
            eprintln!("chopstick replay: target unusable: {e}");
            return Ok(ExitCode::from(2));
        }
    };
    let show = |v: &[bytes::Bytes]| v.iter().map(|b| preview(b)).collect::<Vec<_>>().join(", ");
    println!("expected: [{}]", show(&outcome.expected));
    println!("seen:     [{}]", show(&outcome.seen));
    if let Some(raw) = &outcome.raw {
        // The replies did not decode: show the bytes themselves.
        let what = chopstick::campaign::preflight::looks_like(&raw.bytes)
            .map(|w| format!("; they look like {w}"))
            .unwrap_or_default();
        println!(
            "raw reply: {}{what}",
            chopstick::campaign::preflight::show_bytes(&raw.bytes)
        );
    }
    let k = outcome.reproduced;
    let other = if outcome.other > 0 {
        format!(", and {} attempt(s) failed another way", outcome.other)
    } else {
        String::new()
    };
    println!("reproduced {}/{}{other}", k.hits, k.attempts);
    match outcome.failure {
        Some(f) => {
            let how = if k.flaky() {
                "flaky"
            } else if k.hits == 0 {
                "not as recorded"
            } else {
                "every attempt"
            };
            println!("STILL FAILS ({how}): {}: {}", f.class, f.detail);
            Ok(ExitCode::from(1))
        }
        None => {
            println!("passes ({} attempts): fixed", k.attempts);
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
