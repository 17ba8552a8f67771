//! `chopstick check`: drive any server (TCP, or UDP with `--udp`) with seeded faults and
//! judge its replies; the campaign itself is `chopstick::campaign::check`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use chopstick::campaign::check::{CheckConfig, Profile, Progress, Shard, Stop};
use chopstick::campaign::client::ClientOutput;
use chopstick::campaign::concurrency::Concurrency;
use chopstick::campaign::{CaseConfig, TargetSpec, Timing};
use chopstick::oracle::differential::Differential;
use chopstick::oracle::Oracle;
use chopstick::report::Report;
use chopstick::workload::{Mode, Sessions, Workload};
use chopstick_targets::udp::MAX_UDP_PAYLOAD;
use chopstick_targets::wire::Framing;
use clap::{Args, ValueEnum};

use super::{bar, secs, shutdown_signal, size_arg};

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["connect", "spawn", "client"])))]
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
    /// Command that starts a client receiver; `{port}` is replaced by the port chopstick
    /// listens on. Started afresh for every case: chopstick sends it the messages under
    /// faults and judges what it hands back (see --client-output); it must exit once the
    /// connection ends (status 0 after a clean end). Split like --spawn, no shell.
    #[arg(long)]
    client: Option<String>,
    /// How the --client hands back each message it received: `echo` sends it back on
    /// the socket, framed the same way; `lines-hex` prints it on stdout as one hex line.
    #[arg(long, value_enum, default_value_t = ClientOutputArg::Echo, requires = "client")]
    client_output: ClientOutputArg,
    /// Framing spec of requests and replies.
    #[arg(long, default_value = "u32be", conflicts_with = "udp")]
    framing: Framing,
    /// Framing of the replies when it differs from --framing's (e.g. `--framing raw
    /// --reply-framing i32le`). A `raw` side runs ping-pong, one message per write,
    /// never cut inside.
    #[arg(long)]
    reply_framing: Option<Framing>,
    /// How replies are judged: echo, upper (ASCII a-z upper-cased), differential
    /// (equal to an unfaulted run's replies), exec or file (chopstick's own servers).
    /// (with --udp: echo, upper or time). Default: echo; differential with --traffic
    /// or --requests.
    #[arg(long)]
    oracle: Option<String>,
    /// Replay the requests of a traffic file recorded by `chopstick proxy --record`:
    /// each recorded connection is a session template the workload draws from (seeded).
    /// --framing (and --reply-framing) must be those of the recording.
    #[arg(long, conflicts_with_all = ["requests", "udp", "client"])]
    traffic: Option<PathBuf>,
    /// A request corpus, for servers without a client to record: one request payload
    /// per line as hex, `{"hex": ...}`, `{"text": ...}`, or a JSON array of them (one
    /// session); blank lines and `#` comments are skipped. Each line is a template.
    #[arg(long, conflicts_with_all = ["udp", "client"])]
    requests: Option<PathBuf>,
    /// With --oracle differential: replies may come in any order (matched as a
    /// multiset), for servers that answer pipelined requests out of order.
    #[arg(long)]
    unordered: bool,
    /// Check a UDP server: tagged datagrams, judged for loss, duplication, reordering,
    /// truncation and corruption.
    #[arg(long)]
    udp: bool,
    /// Datagrams to send (--udp).
    #[arg(long, default_value_t = 200, requires = "udp")]
    datagrams: usize,
    /// Stop at the first confirmed failure (after shrinking it and writing its
    /// reproducer).
    #[arg(long)]
    fail_fast: bool,
    /// Seconds the whole check may take; the report says what was covered.
    #[arg(long)]
    budget: Option<f64>,
    /// Run a deterministic slice K of N of every profile's connections (K from 1);
    /// `chopstick report merge` combines the shards' JSON reports.
    #[arg(long)]
    shard: Option<Shard>,
    /// Connections in flight at once: a number, or `auto`, which first checks that a
    /// connection is served while others are open (else 1, so a server that serves one
    /// client at a time is not called hanging). Findings are the same at any value: a
    /// case that fails among others is run again alone and judged on that run.
    #[arg(long, default_value = "auto", conflicts_with_all = ["udp", "client"])]
    concurrency: Concurrency,
    /// Replays of each shrunk failure before its reproducer is written; the report and
    /// the reproducer say how many reproduced it (`3/3`, or `1/3 (flaky)`). 0: none.
    /// Default: 3, or 1 with --fail-fast (the first bug fast; a hang costs a whole
    /// --liveness deadline per replay).
    #[arg(long, conflicts_with = "udp")]
    confirm: Option<usize>,
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
    /// datagram fault list, default loss, dup, reorder and delay). `hostile` adds a row
    /// of frames no client should send (a length above max, a negative one, a header
    /// then FIN, garbage after a frame): the server must close or answer, and live on.
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
    /// Seconds a fresh connection may take to be served after a fault (--client: seconds
    /// the client may take to exit once its connection has ended).
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
pub enum ClientOutputArg {
    Echo,
    LinesHex,
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
            reply_framing: None,
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
        anyhow::ensure!(args.client.is_none(), "--udp does not take --client");
        return check_udp(&args, seed).await;
    }
    let reply_framing = args.reply_framing.unwrap_or(args.framing);
    if args.framing.is_raw() && reply_framing.is_raw() {
        // Unframed both ways, nothing tells one message from the next and every fault
        // would be a false alarm; `raw` is for one side of a request/reply pair.
        anyhow::bail!(
            "--framing raw has no message boundaries to check; it is only valid as one \
             side of a request/reply pair (`--framing raw --reply-framing i32le`)"
        );
    }
    let sessions = sessions(&args, reply_framing)?;
    if args.framing.kept_header_len() > 0 && sessions.is_none() {
        // A drawn payload would have to be a whole frame the server understands.
        anyhow::bail!(
            "--framing {} keeps each frame's header in its payload (`keep`), so requests \
             must be whole frames: give them with --traffic or --requests",
            args.framing
        );
    }
    let oracle_name = match (&args.oracle, &sessions) {
        (Some(name), _) => name.as_str(),
        // Real requests get real replies that only the server itself can predict.
        (None, Some(_)) => "differential",
        (None, None) => "echo",
    };
    let oracle: Arc<dyn Oracle> = match (oracle_name, args.unordered) {
        (name, false) => chopstick::oracle::parse(name)?,
        ("differential", true) => Arc::new(Differential { unordered: true }),
        (other, true) => anyhow::bail!("--unordered needs --oracle differential, not {other}"),
    };
    let target = match (&args.connect, &args.spawn, &args.client) {
        (Some(addr), _, _) => TargetSpec::Connect(*addr),
        (None, Some(cmd), _) => TargetSpec::Spawn(cmd.clone()),
        (None, None, Some(cmd)) => client_spec(&args, cmd, &*oracle)?,
        (None, None, None) => unreachable!("clap requires one of --connect/--spawn/--client"),
    };
    let target_name = target.display_name();
    // `hostile` is not a plan over the workload but cases of its own.
    let (hostile, profiles) = match c.faults.as_deref() {
        Some(list) => {
            let hostile_name = chopstick::campaign::hostile::NAME;
            let rest: Vec<&str> = list
                .split(',')
                .filter(|p| p.trim() != hostile_name)
                .collect();
            let hostile = rest.len() < list.split(',').count();
            let profiles = if rest.is_empty() {
                Vec::new()
            } else {
                chopstick::campaign::run::parse_profiles(&rest.join(","))?
            };
            (hostile, profiles)
        }
        None => (false, c.profiles()?),
    };
    let config = CheckConfig {
        target,
        target_name,
        case: {
            let mut case = c.case_config(args.framing, oracle)?;
            case.reply_framing = args.reply_framing.filter(|r| *r != args.framing);
            if args.framing.is_raw() || reply_framing.is_raw() {
                // A raw side tells messages apart only by turns: one reply per request.
                case.mode = Mode::PingPong;
            }
            case
        },
        workload: Workload {
            connections: c.connections,
            messages: c.messages,
            max_size: c.max_size.min(args.framing.max()),
            header_width: args.framing.header_width(),
            sessions,
        },
        profiles,
        seed,
        artifacts: Some(c.artifacts.clone()),
        shrink: !c.no_shrink,
        shrink_budget: chopstick::campaign::shrink::DEFAULT_BUDGET,
        shrink_time: secs(c.shrink_time, "shrink-time")?,
        fail_fast: args.fail_fast,
        budget: args.budget.map(|b| secs(b, "budget")).transpose()?,
        shard: args.shard,
        hostile,
        concurrency: args.concurrency,
        confirm: args.confirm.unwrap_or(if args.fail_fast {
            chopstick::campaign::shrink::FAIL_FAST_CONFIRM
        } else {
            chopstick::campaign::shrink::DEFAULT_CONFIRM
        }),
    };
    let mut report = Report::new(seed);
    let stop = Stop::new();
    let mut progress = progress();
    let checked = {
        let checking =
            chopstick::campaign::check::check_until(&config, &mut *progress, &mut report, &stop);
        tokio::pin!(checking);
        tokio::select! {
            r = &mut checking => r,
            () = shutdown_signal() => {
                // Let the check end its connection and keep what it found.
                stop.stop("interrupted by a signal");
                checking.await
            }
        }
    };
    if let Err(e) = checked {
        eprintln!("chopstick check: target unusable: {e}");
        report.unusable.push(e.to_string());
    }
    let code = c.finish(&report)?;
    // Interrupted: 1 if failures were found, else 2 (nothing can be concluded).
    if report.stopped.as_deref() == Some("interrupted by a signal") && report.total_failures() == 0
    {
        return Ok(ExitCode::from(2));
    }
    Ok(code)
}

/// Seconds between progress lines when stderr is not a terminal (CI logs).
const LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(3);

/// The progress bar on a terminal; elsewhere a line every [`LOG_EVERY`].
fn progress() -> Box<dyn Progress> {
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        Box::new(bar())
    } else {
        Box::new(LogLines {
            total: 0,
            done: 0,
            found: 0,
            last: std::time::Instant::now(),
        })
    }
}

/// Progress for logs: profile, connections done, failures so far, every few seconds.
struct LogLines {
    total: u64,
    done: u64,
    /// Findings noted so far.
    found: u64,
    last: std::time::Instant,
}

impl Progress for LogLines {
    fn start(&mut self, total: u64) {
        self.total = total;
        self.last = std::time::Instant::now();
    }

    fn tick(&mut self, row: &chopstick::report::Row) {
        self.done += 1;
        if self.last.elapsed() >= LOG_EVERY {
            self.last = std::time::Instant::now();
            eprintln!(
                "chopstick check: {}/{}: {}/{} connections, {} failures in this profile, {} findings so far",
                row.target, row.fault, self.done, self.total, row.failures, self.found
            );
        }
    }

    fn note(&mut self, line: &str) {
        self.found += 1;
        eprintln!("chopstick check: {line}");
    }

    fn info(&mut self, line: &str) {
        eprintln!("chopstick check: {line}");
    }
}

/// `--traffic` or `--requests`: the session templates the workload draws from.
fn sessions(args: &CheckArgs, reply_framing: Framing) -> Result<Option<Arc<Sessions>>> {
    let templates = super::real_templates(
        args.traffic.as_deref(),
        args.requests.as_deref(),
        args.framing,
        reply_framing,
    )?;
    Ok(match templates {
        Some(t) => Some(Arc::new(Sessions::new(t)?)),
        None => None,
    })
}

/// `--client`: only oracles that judge the echoes of one connection on their own (no
/// baseline, read-back or handshake: those need fresh connections a client does not
/// make), and ping-pong only when the echoes come back on the socket.
fn client_spec(args: &CheckArgs, cmd: &str, oracle: &dyn Oracle) -> Result<TargetSpec> {
    if oracle.baseline().is_some() || oracle.read_back().is_some() || oracle.handshake().is_some() {
        anyhow::bail!(
            "--client works with oracles that judge each echo on its own (echo, upper), not `{}`",
            oracle.name()
        );
    }
    let output = match args.client_output {
        ClientOutputArg::Echo => ClientOutput::Echo,
        ClientOutputArg::LinesHex => ClientOutput::LinesHex,
    };
    if output == ClientOutput::LinesHex && matches!(args.campaign.mode, ModeArg::PingPong) {
        anyhow::bail!(
            "--mode ping-pong needs replies on the socket, not --client-output lines-hex"
        );
    }
    Ok(TargetSpec::Client {
        cmd: cmd.to_string(),
        output,
    })
}

async fn check_udp(args: &CheckArgs, seed: u64) -> Result<ExitCode> {
    use chopstick::udp::{UdpCheckConfig, UdpTarget};
    let target = match (&args.connect, &args.spawn) {
        (Some(addr), _) => UdpTarget::Connect(*addr),
        (None, Some(cmd)) => UdpTarget::Spawn(cmd.clone()),
        (None, None) => unreachable!("clap requires one of --connect/--spawn"),
    };
    let mut config = UdpCheckConfig::new(target, args.oracle.as_deref().unwrap_or("echo").parse()?);
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
