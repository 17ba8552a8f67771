//! [`Check`]: a campaign from Rust in a few lines, with defaults for everything but the
//! target: `Check::new(Target::addr(a)).oracle(o).faults("split,boundary")?.seed(7).run().await`.
//!
//! It fills a [`CheckConfig`] (the whole configuration, still public for callers who
//! want every knob) and runs [`campaign::check::check`](crate::campaign::check::check).
//! The target is an address, a command to spawn, or a connection handler of the
//! caller's own: [`Target::serve`] puts it behind a fresh loopback listener (real
//! sockets, so the chaos is the kernel's too) for the duration of the run, and
//! [`Target::duplex`] hands it one end of an in-process pipe per connection (no
//! socket: exact and fast, for unit tests; see [`crate::campaign::conn`] for what a
//! pipe cannot model). The framing is a spec ([`Check::framing`]) or any
//! `Decoder + Encoder` of the caller's ([`Check::codec`]).

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use chopstick_targets::server::{self, Common, ConnError, Handle};
use chopstick_targets::wire::Framing;
use tokio::io::DuplexStream;
use tokio::net::TcpStream;

use crate::campaign::check::{check, CheckConfig, Quiet};
use crate::campaign::run::{parse_profiles, RunError, DEFAULT_PROFILES};
use crate::campaign::{CaseConfig, InProcess, TargetSpec, Timing};
use crate::oracle::codec::Codec;
use crate::oracle::{echo::Echo, Oracle};
use crate::report::Report;
use crate::workload::{Mode, Workload};

/// Connections per fault profile unless [`Check::connections`] says otherwise.
pub const DEFAULT_CONNECTIONS: usize = 20;
/// Messages per connection unless [`Check::messages`] says otherwise.
pub const DEFAULT_MESSAGES: usize = 16;
/// Largest message unless [`Check::max_size`] says otherwise (bytes).
pub const DEFAULT_MAX_SIZE: usize = 64 * 1024;
/// How long a fresh connection may take to be served after a fault.
const LIVENESS: Duration = Duration::from_secs(3);
/// Listen queue of an in-process server.
const BACKLOG: u32 = 128;

/// A connection handler for [`Target::serve`].
type Handler = Arc<
    dyn Fn(TcpStream) -> Pin<Box<dyn Future<Output = std::io::Result<()>> + Send>> + Send + Sync,
>;

/// What a [`Check`] drives.
#[derive(Clone)]
pub struct Target(Kind);

#[derive(Clone)]
enum Kind {
    Spec(TargetSpec),
    Serve(Handler),
}

impl Target {
    /// A running server at `addr` (loopback only).
    pub fn addr(addr: SocketAddr) -> Target {
        Target(Kind::Spec(TargetSpec::Connect(addr)))
    }

    /// A command chopstick starts itself; `{port}` becomes a free port.
    pub fn spawn(command: impl Into<String>) -> Target {
        Target(Kind::Spec(TargetSpec::Spawn(command.into())))
    }

    /// Your own connection handler (a `serve_conn`), served on a fresh 127.0.0.1 port
    /// while the check runs, one task per connection.
    pub fn serve<H, Fut>(handler: H) -> Target
    where
        H: Fn(TcpStream) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::io::Result<()>> + Send + 'static,
    {
        Target(Kind::Serve(Arc::new(move |s| Box::pin(handler(s)))))
    }

    /// Your own connection handler (a `serve_conn`), given the server end of a fresh
    /// in-process [`DuplexStream`] for every connection, one task each: no socket, no
    /// port. Faults are the same writes, pauses and closes as on a socket; a `reset`
    /// reaches the handler as a plain EOF. A `serve_conn` generic over
    /// `AsyncRead + AsyncWrite` serves both this and [`Target::serve`].
    pub fn duplex<H, Fut>(handler: H) -> Target
    where
        H: Fn(DuplexStream) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::io::Result<()>> + Send + 'static,
    {
        let handler = InProcess::new(DUPLEX_NAME, Arc::new(move |s| Box::pin(handler(s))));
        Target(Kind::Spec(TargetSpec::InProcess(handler)))
    }
}

/// How a [`Target::duplex`] is named in reports and reproducer files.
const DUPLEX_NAME: &str = "in-process duplex";

/// A campaign being set up; [`Check::run`] runs it.
pub struct Check {
    target: Target,
    framing: Framing,
    codec: Option<Codec>,
    oracle: Arc<dyn Oracle>,
    faults: String,
    seed: u64,
    connections: usize,
    messages: usize,
    max_size: usize,
    artifacts: Option<PathBuf>,
    shrink: bool,
}

impl Check {
    /// Echo oracle, `u32be`, every default fault profile, seed 0, no reproducer files.
    pub fn new(target: Target) -> Check {
        Check {
            target,
            framing: Framing::default(),
            codec: None,
            oracle: Arc::new(Echo),
            faults: DEFAULT_PROFILES.into(),
            seed: 0,
            connections: DEFAULT_CONNECTIONS,
            messages: DEFAULT_MESSAGES,
            max_size: DEFAULT_MAX_SIZE,
            artifacts: None,
            shrink: true,
        }
    }

    /// A framing spec for requests and replies (default `u32be`).
    pub fn framing(mut self, framing: Framing) -> Check {
        self.framing = framing;
        self
    }

    /// Your own `Decoder + Encoder` as the framing of requests and replies, instead of
    /// a spec; see [`Codec`] for frame layouts and text codecs.
    pub fn codec(mut self, codec: Codec) -> Check {
        self.codec = Some(codec);
        self
    }

    /// How replies are judged: any [`Oracle`], the built-in ones or your own.
    pub fn oracle(mut self, oracle: impl Oracle + 'static) -> Check {
        self.oracle = Arc::new(oracle);
        self
    }

    /// Fault profiles as `check --faults` spells them (`split,boundary+coalesce`), one
    /// report row each.
    pub fn faults(mut self, list: &str) -> Result<Check, RunError> {
        parse_profiles(list)?;
        self.faults = list.into();
        Ok(self)
    }

    pub fn seed(mut self, seed: u64) -> Check {
        self.seed = seed;
        self
    }

    pub fn connections(mut self, n: usize) -> Check {
        self.connections = n;
        self
    }

    pub fn messages(mut self, n: usize) -> Check {
        self.messages = n;
        self
    }

    pub fn max_size(mut self, bytes: usize) -> Check {
        self.max_size = bytes;
        self
    }

    /// Shrink failures and write reproducers into `dir` (default: neither is written).
    pub fn artifacts(mut self, dir: impl Into<PathBuf>) -> Check {
        self.artifacts = Some(dir.into());
        self
    }

    /// Whether failures are shrunk before they are reported (default: yes).
    pub fn shrink(mut self, shrink: bool) -> Check {
        self.shrink = shrink;
        self
    }

    /// Runs the campaign. A target that cannot be used is listed in
    /// [`Report::unusable`] (and [`Report::exit_code`] is 2).
    pub async fn run(self) -> Report {
        let mut report = Report::new(self.seed);
        let (spec, server) = match &self.target.0 {
            Kind::Spec(spec) => (spec.clone(), None),
            Kind::Serve(handler) => match serve(handler.clone()) {
                Ok(handle) => (TargetSpec::Connect(handle.addr), Some(handle)),
                Err(e) => {
                    report
                        .unusable
                        .push(format!("cannot serve in-process: {e}"));
                    return report;
                }
            },
        };
        let config = self.config(spec);
        if let Err(e) = check(&config, &mut Quiet, &mut report).await {
            report.unusable.push(e.to_string());
        }
        if let Some(server) = server {
            if let Err(e) = server.shutdown().await {
                report.unusable.push(format!("in-process server: {e}"));
            }
        }
        report
    }

    fn config(&self, target: TargetSpec) -> CheckConfig {
        let target_name = match &self.target.0 {
            Kind::Serve(_) => "in-process".to_string(),
            Kind::Spec(spec) => spec.display_name(),
        };
        CheckConfig {
            target,
            target_name,
            case: CaseConfig {
                framing: self.framing,
                oracle: match &self.codec {
                    Some(codec) => codec.with_oracle(self.oracle.clone()),
                    None => self.oracle.clone(),
                },
                mode: Mode::Pipelined,
                half_close: true,
                timing: Timing::default(),
                liveness: LIVENESS,
                reply_framing: None,
            },
            workload: Workload {
                connections: self.connections,
                messages: self.messages,
                max_size: self.max_size.min(self.framing.max()),
                header_width: self.framing.header_width(),
                sessions: None,
            },
            profiles: parse_profiles(&self.faults).expect("checked by Check::faults"),
            seed: self.seed,
            artifacts: self.artifacts.clone(),
            shrink: self.shrink,
            shrink_budget: crate::campaign::shrink::DEFAULT_BUDGET,
            shrink_time: Duration::from_secs(20),
            fail_fast: false,
            budget: None,
            shard: None,
            hostile: false,
            concurrency: crate::campaign::concurrency::Concurrency::Fixed(1),
            confirm: 0,
        }
    }
}

/// `handler` behind the shared accept loop on a fresh loopback port.
fn serve(handler: Handler) -> std::io::Result<Handle> {
    let listener = server::bind(SocketAddr::from(([127, 0, 0, 1], 0)), BACKLOG)?;
    Handle::spawn(listener, move |listener, stop| async move {
        let common = Common::default();
        server::serve(listener, &common, stop, move |stream, _peer| {
            let conn = handler(stream);
            async move { conn.await.map_err(ConnError::from) }
        })
        .await
    })
}
