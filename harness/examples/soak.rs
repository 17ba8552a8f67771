//! Runs the soak outside the CLI (ci/soak uses it):
//! `cargo run --release --example soak -- [--quick] [--json FILE]`.
//! Exit code 0 = every promise held, 1 = a promise broke, 2 = the soak could not run.

use std::process::ExitCode;

use chopstick::soak::alloc::Counting;

// Live heap bytes for the leak check (exact, unlike RSS).
#[global_allocator]
static ALLOC: Counting = Counting;

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let config = if args.iter().any(|a| a == "--quick") {
        chopstick::soak::SoakConfig::quick()
    } else {
        chopstick::soak::SoakConfig::full()
    };
    let json = args
        .iter()
        .position(|a| a == "--json")
        .and_then(|i| args.get(i + 1));
    let report = match chopstick::soak::run(&config).await {
        Ok(report) => report,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    println!("{report}");
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(&report).expect("report serialises");
        if let Err(e) = std::fs::write(path, text) {
            eprintln!("cannot write {path}: {e}");
            return ExitCode::from(2);
        }
    }
    if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
