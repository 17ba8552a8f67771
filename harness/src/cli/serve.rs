//! `chopstick serve echo|exec|file|auth|udp`: flags for each reference server, checked
//! before the port is announced, then the server's own `run`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use chopstick_targets::server::{self, Common};
use chopstick_targets::udp::MAX_UDP_PAYLOAD;
use chopstick_targets::wire::Framing;
use chopstick_targets::{auth, echo, exec, file};
use clap::{Args, Subcommand, ValueEnum};

use super::{secs, shutdown_signal, size_arg};

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(subcommand)]
    server: ServerCmd,
}

#[derive(Subcommand, Debug)]
pub enum ServerCmd {
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
        #[arg(long, value_parser = size_arg, default_value_t = MAX_UDP_PAYLOAD)]
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
pub enum InnerKind {
    Echo,
    Exec,
    File,
}

/// Options every server takes.
#[derive(Args, Debug)]
pub struct CommonArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Connections served at once; more wait in the listen queue.
    #[arg(long, default_value_t = 1024)]
    max_conns: usize,
    /// Seconds without a byte moving either way before a connection is closed.
    #[arg(long, default_value_t = 30.0)]
    idle_timeout: f64,
    /// Seconds a request frame may take to arrive once its first byte has (the
    /// slow-sender defence: 120 s lets an 8 MiB frame through at 70 KiB/s).
    #[arg(long, default_value_t = 120.0)]
    frame_timeout: f64,
    /// Largest frame payload (e.g. 65536, 64KiB, 8MiB); lowers the framing's max.
    #[arg(long, value_parser = size_arg)]
    max_frame: Option<usize>,
    /// What all connections together may buffer: requests being received, queued
    /// exec stdin, exec output and file bodies until written (e.g. 512MiB, 2GiB).
    #[arg(long, value_parser = size_arg, default_value = "1GiB")]
    max_memory: usize,
    /// Length of the kernel's listen queue.
    #[arg(long, default_value_t = 1024)]
    backlog: u32,
    /// TCP keepalive idle seconds, to notice peers that vanished.
    #[arg(long)]
    keepalive: Option<f64>,
    /// Seconds requests in flight get to finish after SIGTERM/SIGINT (new connections
    /// are refused and idle ones closed at once).
    #[arg(long, default_value_t = 10.0)]
    shutdown_grace: f64,
}

#[derive(Args, Debug)]
pub struct EchoArgs {
    /// Framing spec: u32be (default), u8, u16le, i32le, ..., line, hjson, with
    /// modifiers like `u16be,offset=2,adjust=-2,max=1MiB`.
    #[arg(long, default_value = "u32be")]
    framing: Framing,
    /// Reply transform.
    #[arg(long, value_enum, default_value_t = TransformArg::None)]
    transform: TransformArg,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
pub enum TransformArg {
    None,
    Upper,
}

#[derive(Args, Debug)]
pub struct ExecArgs {
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
    /// Commands running at once, server-wide (default: sized to the machine's memory
    /// and process ids, at most 512; CPU is shared by priority, not by this bound).
    #[arg(long)]
    max_children: Option<usize>,
    /// Requests waiting for a free child, server-wide; one more is refused as busy
    /// (default: 4 per child). Waiting counts against the request's --timeout.
    #[arg(long)]
    max_waiting: Option<usize>,
    /// Seconds after which a command that is still runnable, or has used that much
    /// CPU, drops from nice +10 to nice 19, behind fresh commands.
    #[arg(long, default_value_t = 0.05)]
    demote_after: f64,
}

#[derive(Args, Debug)]
pub struct FileArgs {
    /// Directory every name is resolved in.
    #[arg(long)]
    root: PathBuf,
}

impl CommonArgs {
    fn common(&self) -> Result<Common> {
        Ok(Common {
            max_conns: self.max_conns,
            idle_timeout: secs(self.idle_timeout, "idle-timeout")?,
            frame_timeout: secs(self.frame_timeout, "frame-timeout")?,
            max_frame: self.max_frame,
            keepalive: self.keepalive.map(|k| secs(k, "keepalive")).transpose()?,
            shutdown_grace: secs(self.shutdown_grace, "shutdown-grace")?,
            memory: Arc::new(chopstick_targets::memory::Memory::new(self.max_memory)),
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
        let max_children = self
            .max_children
            .unwrap_or_else(exec::slots::default_max_children);
        let max_waiting = self
            .max_waiting
            .unwrap_or(max_children * exec::slots::DEFAULT_WAITING_PER_CHILD);
        Ok(exec::Config {
            common,
            allow: self.allow.clone(),
            timeout: secs(self.timeout, "timeout")?,
            output_cap: self.output_cap,
            slots: Arc::new(exec::Slots::new(max_children, max_waiting)),
            limits: exec::Limits {
                demote_after: secs(self.demote_after, "demote-after")?,
                ..exec::Limits::default()
            },
            // This binary's `main` enters the trampoline first (`crate::cli::main`).
            launch: exec::Launch::Trampoline("/proc/self/exe".into()),
        })
    }
}

/// A server whose configuration passed every check that can refuse it.
enum Ready {
    Echo(echo::Config),
    Exec(exec::Config),
    File(file::Config),
    Auth(auth::Config),
}

/// Starts the server; returns when it is shut down.
pub async fn exec(args: ServeArgs) -> Result<ExitCode> {
    serve(args.server).await.map(|()| ExitCode::SUCCESS)
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
    // Connections and exec's children (four pipes and descriptors each) both take
    // descriptors; a soft limit of 1024 would cap them long before their own bounds.
    if let Err(e) = chopstick::soak::sys::raise_fd_limit() {
        tracing::warn!("cannot raise the open-files limit: {e}");
    }
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
    // Signal handlers first, so a SIGTERM right after the announcement is graceful.
    let shutdown = shutdown_signal();
    // Announce before serving: tests and `check --spawn` parse this line for the port.
    println!("listening on {addr}");
    let result = match ready {
        Ready::Echo(config) => echo::run(listener, config, shutdown).await,
        Ready::Exec(config) => exec::run(listener, config, shutdown).await,
        Ready::File(config) => file::run(listener, config, shutdown).await,
        Ready::Auth(config) => auth::run(listener, config, shutdown).await,
    };
    result.context("server stopped")
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
    let shutdown = shutdown_signal();
    println!("listening on {}", socket.local_addr()?);
    chopstick_targets::udp::run(socket, config, shutdown)
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
