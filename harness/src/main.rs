//! The `chopstick` binary: parses flags and calls the libraries. Nothing else lives here.
//!
//! Exit codes: 0 = no failure, 1 = failures found, 2 = usage error or target unusable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use targets::server::{self, Common};
use targets::wire::{parse_size, Framing};
use targets::{auth, echo, exec, file};

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
    /// Start a reference server; prints `listening on ADDR` first.
    Serve(ServeArgs),
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
    /// Programs that may run (argv[0], comma-separated).
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
        let transform = match self.transform {
            TransformArg::None => echo::Transform::None,
            TransformArg::Upper => echo::Transform::Upper,
        };
        echo::Config {
            common,
            framing: self.framing,
            transform,
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
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
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
            eprintln!("chopstick: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn dispatch(command: Command) -> Result<ExitCode> {
    match command {
        Command::Serve(args) => serve(args.server).await.map(|()| ExitCode::SUCCESS),
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
    };
    let listener = server::bind(common.listen, common.backlog)
        .with_context(|| format!("cannot listen on {}", common.listen))?;
    let addr = listener.local_addr()?;
    let config = common.common()?;
    // Everything that can refuse to serve is checked before the port is announced, so
    // `listening on` always means a server that is serving.
    let ready = match cmd {
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
