//! The command line: `Cli` and `Command`, `main`, and what every subcommand shares (the
//! error printer, signals, the progress bar, flag parsers). One file per subcommand:
//!
//! - [`run`]: `chopstick run`, every reference server under every fault.
//! - [`serve`]: `chopstick serve echo|exec|file|auth|udp`.
//! - [`check`]: `chopstick check`, any server (TCP or UDP) under faults.
//! - [`replay`]: `chopstick replay FILE`.
//! - [`report`]: `chopstick report merge`, shard reports into one.
//! - [`proxy`]: `chopstick proxy`, a faulting relay.
//! - [`soak`]: `chopstick soak`, reliability figures.
//! - [`bench`]: `chopstick bench`, throughput and CPU per fragmentation profile.
//!
//! A handler parses its flags into a library config and calls the library; it decides
//! nothing a library user would need too. Exit codes: 0 = no failure, 1 = failures
//! found, 2 = usage error or target unusable.

mod bench;
mod check;
mod proxy;
mod replay;
mod report;
mod run;
mod serve;
mod soak;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use chopstick::campaign::check::Progress;
use chopstick::report::Row;
use chopstick_targets::wire::parse_size;
use clap::{Parser, Subcommand};

/// A test harness and fuzzer for framed network protocols: reference servers, seeded
/// splitting/coalescing/disconnect chaos, oracles, shrunk reproducers.
#[derive(Parser, Debug)]
#[command(name = "chopstick", version, about)]
#[command(
    after_help = "Logging goes to stderr: warnings by default (serve: info). -q, -v \
and -vv set the level; RUST_LOG (e.g. RUST_LOG=chopstick=debug) overrides both. Colour \
only on a terminal, and never with NO_COLOR set."
)]
struct Cli {
    /// Errors only on stderr, and no progress bar.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    /// More log output on stderr: -v info, -vv debug, -vvv trace (RUST_LOG overrides).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

/// Set by `-q`: no progress bar.
static QUIET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The log level from `-q`/`-v` (RUST_LOG, when set, wins over it).
fn log_level(cli: &Cli) -> &'static str {
    match (cli.quiet, cli.verbose, &cli.command) {
        (true, _, _) => "error",
        (false, 0, Command::Serve(_)) => "info",
        (false, 0, _) => "warn",
        (false, 1, _) => "info",
        (false, 2, _) => "debug",
        (false, _, _) => "trace",
    }
}

/// Colour codes only for a person at a terminal, not in CI logs or captured stderr, and
/// never when `NO_COLOR` is set to anything non-empty (<https://no-color.org>).
fn colour(stderr_is_terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start every reference server in-process and drive each with every fault; print
    /// the table. The main job: no arguments needed.
    Run(run::RunArgs),
    /// Start a reference server; prints `listening on ADDR` first.
    Serve(serve::ServeArgs),
    /// Drive any server (any language) with faults and judge its replies with an oracle.
    Check(check::CheckArgs),
    /// Run a reproducer file again: exit 1 while the bug is there, 0 once fixed.
    Replay(replay::ReplayArgs),
    /// Work with JSON reports: `report merge A.json B.json ...` combines shards.
    Report(report::ReportArgs),
    /// A relay applying faults to what it passes on, for any client and server
    /// (TCP; with --udp, datagrams). Loopback upstreams only.
    Proxy(proxy::ProxyArgs),
    /// Load, abrupt-disconnect and leak figures for every reference server and the proxy
    /// (loopback only, bounded; figures in RELIABILITY.md).
    Soak(soak::SoakArgs),
    /// Throughput, reply latency and server CPU per message under fragmentation
    /// profiles (whole, coalesced, split and paced pieces), against whole writes.
    Bench(bench::BenchArgs),
}

fn size_arg(s: &str) -> Result<usize, String> {
    parse_size(s).map(|n| n as usize).map_err(str::to_string)
}

/// `--traffic FILE` or `--requests FILE` (check and bench): the session templates, the
/// recording's framing held to the one asked for (requests decoded in one framing and
/// re-encoded in another are other bytes). `None` when neither was given.
fn real_templates(
    traffic: Option<&std::path::Path>,
    requests: Option<&std::path::Path>,
    framing: chopstick_targets::wire::Framing,
    reply_framing: chopstick_targets::wire::Framing,
) -> Result<Option<Vec<chopstick::traffic::Template>>> {
    Ok(Some(match (traffic, requests) {
        (Some(path), _) => {
            let file = chopstick::traffic::read(path)?;
            if file.framing != framing.to_string()
                || file.reply_framing != reply_framing.to_string()
            {
                anyhow::bail!(
                    "{} was recorded with --framing {} --reply-framing {}; use the same \
                     (here: --framing {framing} --reply-framing {reply_framing})",
                    path.display(),
                    file.framing,
                    file.reply_framing
                );
            }
            file.templates(path)?
        }
        (None, Some(path)) => chopstick::traffic::load_requests(path)?,
        (None, None) => return Ok(None),
    }))
}

fn secs(s: f64, what: &str) -> Result<Duration> {
    Duration::try_from_secs_f64(s)
        .with_context(|| format!("--{what} must be a non-negative number of seconds"))
}

pub fn main() -> ExitCode {
    // Started by `serve exec` to run one command confined: becomes that command.
    chopstick_targets::exec::trampoline::enter_if_invoked();
    // SAFETY: the first thing the program does, before any thread is started (the
    // runtime and tracing come later), as `take_env_key` requires.
    unsafe { chopstick_targets::auth::take_env_key() };
    let cli = Cli::parse();
    let default_level = log_level(&cli);
    QUIET.store(cli.quiet, std::sync::atomic::Ordering::Relaxed);
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(colour(
            std::io::IsTerminal::is_terminal(&std::io::stderr()),
            std::env::var_os("NO_COLOR"),
        ))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("chopstick: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(dispatch(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("chopstick: {}", describe(&e));
            ExitCode::from(2)
        }
    }
}

/// The error and its causes, each said once. The library errors already put their
/// cause in their own message (`cannot read F: {source}`) and also report it as their
/// `source()`, so anyhow's `{:#}` would print it twice; contexts added here do not.
fn describe(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

async fn dispatch(command: Command) -> Result<ExitCode> {
    match command {
        Command::Run(args) => run::exec(args).await,
        Command::Serve(args) => serve::exec(args).await,
        Command::Check(args) => check::exec(args).await,
        Command::Bench(args) => bench::exec(args).await,
        Command::Replay(args) => replay::exec(args).await,
        Command::Report(args) => report::exec(args).await,
        Command::Proxy(args) => proxy::exec(args).await,
        Command::Soak(args) => soak::exec(args).await,
    }
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed when this is called, not
/// when the future is first polled: a server announces its port right after, and a
/// SIGTERM that arrives before the accept loop first polls the future must still be a
/// graceful stop, not the default action (death by signal).
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        let recv = |s: std::io::Result<tokio::signal::unix::Signal>| async move {
            match s {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = recv(int) => {},
            _ = recv(term) => {},
        }
        tracing::info!("shutting down");
    }
}

/// The progress bar of `run` and `check`.
struct Bar(indicatif::ProgressBar);

impl Progress for Bar {
    fn start(&mut self, total: u64) {
        self.0.set_length(total);
        self.0.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {prefix} [{bar:30}] {pos}/{len} conns {msg}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
    }

    fn tick(&mut self, row: &Row) {
        self.0.set_prefix(format!("{}/{}", row.target, row.fault));
        self.0.set_message(format!("{} failures", row.failures));
        self.0.inc(1);
    }

    fn note(&mut self, line: &str) {
        self.0.println(line);
    }

    fn info(&mut self, line: &str) {
        self.0.println(line);
    }

    fn finish(&mut self) {
        self.0.finish_and_clear();
    }
}

/// A progress bar on stderr (hidden when stderr is not a terminal, and with `-q`).
fn bar() -> Bar {
    let target = if QUIET.load(std::sync::atomic::Ordering::Relaxed) {
        indicatif::ProgressDrawTarget::hidden()
    } else {
        indicatif::ProgressDrawTarget::stderr()
    };
    Bar(indicatif::ProgressBar::with_draw_target(None, target))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_color_set_to_anything_turns_colour_off_and_empty_does_not() {
        assert!(colour(true, None));
        assert!(!colour(true, Some("1".into())));
        assert!(colour(true, Some("".into())));
        assert!(!colour(false, None));
    }

    #[test]
    fn quiet_and_verbose_set_the_default_log_level() {
        let level = |args: &[&str]| {
            let mut argv = vec!["chopstick"];
            argv.extend(args);
            log_level(&Cli::try_parse_from(argv).unwrap())
        };
        assert_eq!(level(&["replay", "f.json"]), "warn");
        assert_eq!(level(&["serve", "echo"]), "info");
        assert_eq!(level(&["-q", "replay", "f.json"]), "error");
        assert_eq!(level(&["replay", "-vv", "f.json"]), "debug");
        assert!(Cli::try_parse_from(["chopstick", "-q", "-v", "replay", "f"]).is_err());
    }
}
