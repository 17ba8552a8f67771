//! The `chopstick` binary: parses flags and calls the libraries. Nothing else lives here.
//!
//! Exit codes: 0 = no failure, 1 = failures found, 2 = usage error or target unusable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use chopstick::campaign::check::{CheckConfig, Profile, Progress};
use chopstick::campaign::payload::preview;
use chopstick::campaign::repro::Reproducer;
use chopstick::campaign::{CaseConfig, TargetSpec, Timing};
use chopstick::oracle::Oracle;
use chopstick::proxy::FaultDirection;
use chopstick::report::{Report, Row};
use chopstick::workload::{Mode, Workload};
use chopstick_targets::server::{self, Common};
use chopstick_targets::wire::{parse_size, Framing};
use chopstick_targets::{auth, echo, exec, file};
use clap::{Args, Parser, Subcommand, ValueEnum};

/// A test harness and fuzzer for framed network protocols: reference servers, seeded
/// splitting/coalescing/disconnect chaos, oracles, shrunk reproducers.
#[derive(Parser, Debug)]
#[command(name = "chopstick", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start every reference server in-process and drive each with every fault; print
    /// the table. The main job: no arguments needed.
    Run(RunArgs),
    /// Start a reference server; prints `listening on ADDR` first.
    Serve(ServeArgs),
    /// Drive any server (any language) with faults and judge its replies with an oracle.
    Check(CheckArgs),
    /// Run a reproducer file again: exit 1 while the bug is there, 0 once fixed.
    Replay(ReplayArgs),
    /// A relay applying faults to what it passes on, for any client and server
    /// (TCP; with --udp, datagrams). Loopback upstreams only.
    Proxy(ProxyArgs),
    /// Load, abrupt-disconnect and leak figures for every reference server and the proxy
    /// (loopback only, bounded; figures in RELIABILITY.md).
    Soak(SoakArgs),
}

#[derive(Args, Debug)]
struct SoakArgs {
    /// The shortened variant CI runs (1 000 connections, 2 000 cuts per target).
    #[arg(long)]
    quick: bool,
    /// Write the figures as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct RunArgs {
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

#[derive(Args, Debug)]
struct ProxyArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// The server to relay to (loopback only).
    #[arg(long)]
    upstream: SocketAddr,
    /// Framing of the relayed stream, so faults cut at frame boundaries (TCP only).
    #[arg(long)]
    framing: Option<Framing>,
    /// Faults: TCP `split`, `boundary`, `coalesce`, `disconnect`, `latency`, `bandwidth`,
    /// `slow`, `mixed` (comma-separated, combined); with --udp `loss:p=0.1`, `dup:p=0.05`,
    /// `reorder:window=4:p=0.2`, `delay:us=1000:jitter_us=500`, `truncate:size=512`.
    #[arg(long, default_value = "")]
    faults: String,
    /// Which way faults apply: up (client to server), down, or both.
    #[arg(long, default_value = "both")]
    direction: FaultDirection,
    /// Master seed (default: random, printed); connection i uses a seed derived from it.
    #[arg(long)]
    seed: Option<u64>,
    /// Relay datagrams instead of a byte stream.
    #[arg(long)]
    udp: bool,
    /// Minimum pause between the pieces of a split write, in milliseconds (shorter
    /// pauses let the kernel merge pieces again on loopback).
    #[arg(long, default_value_t = 1.0)]
    min_pause_ms: f64,
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["connect", "spawn"])))]
struct CheckArgs {
    /// Address of a running server (loopback only).
    #[arg(long)]
    connect: Option<SocketAddr>,
    /// Command that starts the server; `{port}` is replaced by a free port. chopstick
    /// waits until it accepts connections, watches it, captures its stderr and restarts
    /// it after it dies. Split on whitespace (quotes group), no shell.
    #[arg(long)]
    spawn: Option<String>,
    /// Framing spec of requests and replies.
    #[arg(long, default_value = "u32be")]
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
    #[arg(long, default_value_t = 200)]
    datagrams: usize,
    #[command(flatten)]
    campaign: CampaignArgs,
}

/// Options shared by `check` and `run`.
#[derive(Args, Debug)]
struct CampaignArgs {
    /// Connections per fault profile.
    #[arg(long, default_value_t = 20)]
    connections: usize,
    /// Messages per connection.
    #[arg(long, default_value_t = 16)]
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
    #[arg(long, value_enum, default_value_t = ModeArg::Pipelined)]
    mode: ModeArg,
    /// Do not send a FIN after the last request (for servers that treat it as abort).
    #[arg(long)]
    no_half_close: bool,
    /// Seconds to wait for the next reply before calling it a hang.
    #[arg(long, default_value_t = 3.0)]
    reply_timeout: f64,
    /// Seconds a fresh connection may take to be served after a fault.
    #[arg(long, default_value_t = 3.0)]
    liveness: f64,
    /// Do not shrink failures (reproducers are then the unshrunk cases).
    #[arg(long)]
    no_shrink: bool,
    /// Seconds allowed for shrinking one failure (a hanging server costs a reply
    /// timeout per attempt).
    #[arg(long, default_value_t = 20.0)]
    shrink_time: f64,
    /// Write the report as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the report as JUnit XML (one test case per target x fault).
    #[arg(long)]
    junit: Option<PathBuf>,
    /// Directory for reproducer files.
    #[arg(long, default_value = "chopstick-artifacts")]
    artifacts: PathBuf,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum ModeArg {
    Pipelined,
    PingPong,
}

#[derive(Args, Debug)]
struct ReplayArgs {
    /// A reproducer JSON file written by `check` or `run`.
    file: PathBuf,
    /// Runs to try before declaring the bug fixed (timing-dependent bugs may need more).
    #[arg(long, default_value_t = 5)]
    attempts: usize,
}

#[derive(Args, Debug)]
struct ServeArgs {
    #[command(subcommand)]
    server: ServerCmd,
}

#[derive(Subcommand, Debug)]
enum ServerCmd {
    /// Answer every frame with the same payload (or its ASCII upper-case).
    Echo {
        #[command(flatten)]
        common: CommonArgs,
        #[command(flatten)]
        echo: EchoArgs,
    },
    /// Run allow-listed programs without a shell (hjson requests, loopback only).
    Exec {
        #[command(flatten)]
        common: CommonArgs,
        #[command(flatten)]
        exec: ExecArgs,
    },
    /// Put/get/list/delete files under a root directory (hjson, loopback only).
    File {
        #[command(flatten)]
        common: CommonArgs,
        #[command(flatten)]
        file: FileArgs,
    },
    /// UDP echo or time service (`--mode`); a datagram larger than --max-datagram is
    /// reported as truncated, never served cut.
    Udp {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// echo: reply with the same bytes; time: the request is a strftime format.
        #[arg(long, default_value = "echo")]
        mode: chopstick_targets::udp::Mode,
        /// Reply transform for echo.
        #[arg(long, value_enum, default_value_t = TransformArg::None)]
        transform: TransformArg,
        /// Largest datagram served (at most 65507).
        #[arg(long, value_parser = size_arg, default_value = "65507")]
        max_datagram: usize,
    },
    /// HMAC-SHA256 challenge-response, then an inner protocol. Key from --key-file or
    /// the CHOPSTICK_KEY environment variable, never the command line.
    Auth {
        #[command(flatten)]
        common: CommonArgs,
        /// The protocol spoken after the handshake.
        #[arg(long, value_enum, default_value_t = InnerKind::Echo)]
        inner: InnerKind,
        /// File holding the key (its bytes; one trailing newline is dropped).
        #[arg(long)]
        key_file: Option<PathBuf>,
        /// Seconds a client has to answer the challenge.
        #[arg(long, default_value_t = 10.0)]
        handshake_timeout: f64,
        #[command(flatten)]
        echo: EchoArgs,
        #[command(flatten)]
        exec: ExecArgs,
        /// Root directory for `--inner file`.
        #[arg(long)]
        root: Option<PathBuf>,
    },
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum InnerKind {
    Echo,
    Exec,
    File,
}

/// Options every server takes.
#[derive(Args, Debug)]
struct CommonArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Connections served at once; more wait in the listen queue.
    #[arg(long, default_value_t = 1024)]
    max_conns: usize,
    /// Seconds of silence before a connection is closed.
    #[arg(long, default_value_t = 30.0)]
    idle_timeout: f64,
    /// Largest frame payload (e.g. 65536, 64KiB, 8MiB); lowers the framing's max.
    #[arg(long, value_parser = size_arg)]
    max_frame: Option<usize>,
    /// Length of the kernel's listen queue.
    #[arg(long, default_value_t = 1024)]
    backlog: u32,
    /// TCP keepalive idle seconds, to notice peers that vanished.
    #[arg(long)]
    keepalive: Option<f64>,
}

#[derive(Args, Debug)]
struct EchoArgs {
    /// Framing spec: u32be (default), u8, u16le, i32le, ..., line, hjson, with
    /// modifiers like `u16be,offset=2,adjust=-2,max=1MiB`.
    #[arg(long, default_value = "u32be")]
    framing: Framing,
    /// Reply transform.
    #[arg(long, value_enum, default_value_t = TransformArg::None)]
    transform: TransformArg,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum TransformArg {
    None,
    Upper,
}

#[derive(Args, Debug)]
struct ExecArgs {
    /// Programs that may run (`argv[0]`, comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "echo,printf,seq,cat,head,wc,true,false"
    )]
    allow: Vec<String>,
    /// Seconds before a running command is killed.
    #[arg(long, default_value_t = 5.0)]
    timeout: f64,
    /// Most stdout+stderr bytes returned per command.
    #[arg(long, value_parser = size_arg, default_value = "16MiB")]
    output_cap: usize,
}

#[derive(Args, Debug)]
struct FileArgs {
    /// Directory every name is resolved in.
    #[arg(long)]
    root: PathBuf,
}

fn size_arg(s: &str) -> Result<usize, String> {
    parse_size(s).map(|n| n as usize).map_err(str::to_string)
}

fn secs(s: f64, what: &str) -> Result<Duration> {
    Duration::try_from_secs_f64(s)
        .with_context(|| format!("--{what} must be a non-negative number of seconds"))
}

impl CommonArgs {
    fn common(&self) -> Result<Common> {
        Ok(Common {
            max_conns: self.max_conns,
            idle_timeout: secs(self.idle_timeout, "idle-timeout")?,
            max_frame: self.max_frame,
            keepalive: self.keepalive.map(|k| secs(k, "keepalive")).transpose()?,
            ..Common::default()
        })
    }
}

impl EchoArgs {
    fn config(&self, common: Common) -> echo::Config {
        echo::Config {
            common,
            framing: self.framing,
            transform: self.transform.into(),
        }
    }
}

impl ExecArgs {
    fn config(&self, common: Common) -> Result<exec::Config> {
        Ok(exec::Config {
            common,
            allow: self.allow.clone(),
            timeout: secs(self.timeout, "timeout")?,
            output_cap: self.output_cap,
        })
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = match cli.command {
        Command::Serve(_) => "info",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not in CI logs or captured stderr.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
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
        Command::Run(args) => run_cmd(args).await,
        Command::Serve(args) => serve(args.server).await.map(|()| ExitCode::SUCCESS),
        Command::Check(args) => check(args).await,
        Command::Replay(args) => replay(args).await,
        Command::Proxy(args) => proxy(args).await,
        Command::Soak(args) => soak(args).await,
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}

/// A server whose configuration passed every check that can refuse it.
enum Ready {
    Echo(echo::Config),
    Exec(exec::Config),
    File(file::Config),
    Auth(auth::Config),
}

async fn serve(cmd: ServerCmd) -> Result<()> {
    let common = match &cmd {
        ServerCmd::Echo { common, .. }
        | ServerCmd::Exec { common, .. }
        | ServerCmd::File { common, .. }
        | ServerCmd::Auth { common, .. } => common,
        ServerCmd::Udp {
            listen,
            mode,
            transform,
            max_datagram,
        } => return serve_udp(*listen, *mode, *transform, *max_datagram).await,
    };
    let listener = server::bind(common.listen, common.backlog)
        .with_context(|| format!("cannot listen on {}", common.listen))?;
    let addr = listener.local_addr()?;
    let config = common.common()?;
    // Everything that can refuse to serve is checked before the port is announced, so
    // `listening on` always means a server that is serving.
    let ready = match cmd {
        ServerCmd::Udp { .. } => unreachable!("handled above"),
        ServerCmd::Echo { echo, .. } => Ready::Echo(echo.config(config)),
        ServerCmd::Exec { exec, .. } => {
            server::require_loopback(&listener, "exec")?;
            Ready::Exec(exec.config(config)?)
        }
        ServerCmd::File { file, .. } => {
            server::require_loopback(&listener, "file")?;
            file::prepare_root(&file.root).await?;
            Ready::File(file::Config {
                common: config,
                root: file.root,
            })
        }
        ServerCmd::Auth {
            inner,
            key_file,
            handshake_timeout,
            echo,
            exec,
            root,
            ..
        } => {
            let key = auth::load_key(key_file.as_deref()).context("no usable key")?;
            let handshake_timeout = secs(handshake_timeout, "handshake-timeout")?;
            if handshake_timeout.is_zero() {
                bail!("--handshake-timeout must be above zero");
            }
            let inner_common = Common {
                counters: Default::default(),
                ..config.clone()
            };
            let inner = match inner {
                InnerKind::Echo => auth::Inner::Echo(echo.config(inner_common)),
                InnerKind::Exec => auth::Inner::Exec(exec.config(inner_common)?),
                InnerKind::File => {
                    let Some(root) = root else {
                        bail!("--inner file needs --root DIR");
                    };
                    file::prepare_root(&root).await?;
                    auth::Inner::File(file::Config {
                        common: inner_common,
                        root,
                    })
                }
            };
            Ready::Auth(auth::Config {
                common: config,
                key,
                handshake_timeout,
                inner,
            })
        }
    };
    // Announce before serving: tests and `check --spawn` parse this line for the port.
    println!("listening on {addr}");
    let result = match ready {
        Ready::Echo(config) => echo::run(listener, config, shutdown_signal()).await,
        Ready::Exec(config) => exec::run(listener, config, shutdown_signal()).await,
        Ready::File(config) => file::run(listener, config, shutdown_signal()).await,
        Ready::Auth(config) => auth::run(listener, config, shutdown_signal()).await,
    };
    result.context("server stopped")
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

/// A progress bar on stderr (hidden when stderr is not a terminal).
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

    fn finish(&mut self) {
        self.0.finish_and_clear();
    }
}

fn bar() -> Bar {
    Bar(indicatif::ProgressBar::with_draw_target(
        None,
        indicatif::ProgressDrawTarget::stderr(),
    ))
}

async fn check(args: CheckArgs) -> Result<ExitCode> {
    let c = &args.campaign;
    let seed = c.seed();
    eprintln!("chopstick check: seed {seed}");
    if args.udp {
        return check_udp(&args, seed).await;
    }
    let oracle = chopstick::oracle::parse(&args.oracle)?;
    let (target, target_name) = match (&args.connect, &args.spawn) {
        (Some(addr), _) => (TargetSpec::Connect(*addr), addr.to_string()),
        (None, Some(cmd)) => (TargetSpec::Spawn(cmd.clone()), spawn_name(cmd)),
        (None, None) => unreachable!("clap requires one of --connect/--spawn"),
    };
    let config = CheckConfig {
        target,
        target_name,
        case: c.case_config(args.framing, oracle)?,
        workload: Workload {
            connections: c.connections,
            messages: c.messages,
            max_size: c.max_size.min(args.framing.max()),
            header_width: header_width(&args.framing),
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

/// A short report name for a spawned target: its words without directories or `{port}`.
fn spawn_name(cmd: &str) -> String {
    cmd.split_whitespace()
        .filter(|w| !w.contains("{port}"))
        .map(|w| w.rsplit('/').next().unwrap_or(w))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Width of the framing's length header, so workloads draw sizes around it.
fn header_width(framing: &Framing) -> usize {
    match framing {
        Framing::Length(l) => l.header_len(),
        Framing::Line { .. } => 1,
        Framing::Hjson { .. } => 4,
    }
}

async fn replay(args: ReplayArgs) -> Result<ExitCode> {
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

async fn serve_udp(
    listen: SocketAddr,
    mode: chopstick_targets::udp::Mode,
    transform: TransformArg,
    max_datagram: usize,
) -> Result<()> {
    let socket = chopstick_targets::udp::bind(listen)
        .with_context(|| format!("cannot listen on {listen}"))?;
    let config = chopstick_targets::udp::Config {
        mode,
        transform: transform.into(),
        max_datagram,
        ..chopstick_targets::udp::Config::default()
    };
    println!("listening on {}", socket.local_addr()?);
    chopstick_targets::udp::run(socket, config, shutdown_signal())
        .await
        .context("server stopped")
}

impl From<TransformArg> for echo::Transform {
    fn from(t: TransformArg) -> echo::Transform {
        match t {
            TransformArg::None => echo::Transform::None,
            TransformArg::Upper => echo::Transform::Upper,
        }
    }
}

async fn proxy(args: ProxyArgs) -> Result<ExitCode> {
    if !args.upstream.ip().is_loopback() {
        bail!(
            "--upstream {} is not loopback; chopstick only sends traffic to this machine",
            args.upstream
        );
    }
    let seed = args.seed.unwrap_or_else(rand::random);
    eprintln!("chopstick proxy: seed {seed}");
    if args.udp {
        let socket = tokio::net::UdpSocket::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let mut config = chopstick::udp::RelayConfig::new(args.upstream);
        config.faults = args.faults.parse().context("--faults")?;
        config.seed = seed;
        config.direction = args.direction;
        println!("listening on {}", socket.local_addr()?);
        let stats = chopstick::udp::relay::run(socket, config, shutdown_signal()).await?;
        eprintln!("{stats:?}");
        return Ok(ExitCode::SUCCESS);
    }
    let listener = server::bind(args.listen, 1024)
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let mut config = chopstick::proxy::ProxyConfig::new(args.upstream);
    config.framing = args.framing;
    config.faults = args.faults.replace('+', ",").parse().context("--faults")?;
    config.direction = args.direction;
    config.seed = seed;
    config.min_pause = secs(args.min_pause_ms / 1000.0, "min-pause-ms")?;
    // `coalesce` can only merge frames the relay holds back; hold a few when it is asked for.
    if args.faults.contains("coalesce") || args.faults.contains("mixed") {
        config.hold.frames = config.hold.frames.max(4);
    }
    println!("listening on {}", listener.local_addr()?);
    chopstick::proxy::run(listener, config, shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
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
        .unwrap_or("loss:p=0.05,dup:p=0.05,reorder:window=4:p=0.2,delay:us=1000:jitter_us=500");
    config.faults = faults.parse().context("--faults")?;
    config.seed = seed;
    config.datagrams = args.datagrams;
    config.max_size = args
        .campaign
        .max_size
        .min(config.max_size.max(args.campaign.max_size.min(65507)));
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

async fn soak(args: SoakArgs) -> Result<ExitCode> {
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

async fn run_cmd(args: RunArgs) -> Result<ExitCode> {
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
