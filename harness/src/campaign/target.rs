//! The target under test: a server at an address to connect to, a server command
//! chopstick starts itself (`{port}` replaced by a free port), watches, and restarts
//! after it dies, a client command that connects to chopstick (see [`super::client`]),
//! or an in-process handler given a fresh duplex pipe per connection ([`InProcess`]).
//! [`Target::open`] gives the connection a case drives, whichever it is: a [`Conn`].

use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tokio::io::DuplexStream;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use super::client::{ClientOutput, ClientTarget, OpenError};
use super::conn::{Conn, DUPLEX_BUF_BYTES};
use super::drive::Timing;
use super::judge::{Failure, FailureClass};
use super::process::{capture_tail, tail_lines};
pub use super::process::{split_command, BadCommand};

/// How long a spawned target gets to start accepting connections.
const STARTUP: Duration = Duration::from_secs(15);

/// Where the target comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetSpec {
    Connect(SocketAddr),
    /// A command line with `{port}`, split into words as a POSIX shell would ([`split_command`]).
    Spawn(String),
    /// A client command line with `{port}` (chopstick listens there); started per case.
    Client {
        cmd: String,
        #[serde(default)]
        output: ClientOutput,
    },
    /// A connection handler in this process, given the server half of a fresh duplex
    /// pipe per connection. Files keep only its name: it cannot start from one.
    InProcess(InProcess),
}

/// A connection handler served over in-process duplex pipes (see [`super::conn`] for
/// what a pipe cannot model).
pub type DuplexHandler =
    Arc<dyn Fn(DuplexStream) -> BoxFuture<'static, std::io::Result<()>> + Send + Sync>;

/// [`TargetSpec::InProcess`]: a name for reports and files, and the handler (absent in
/// one read back from a file).
#[derive(Clone)]
pub struct InProcess {
    pub name: String,
    handler: Option<DuplexHandler>,
}

impl InProcess {
    pub fn new(name: impl Into<String>, handler: DuplexHandler) -> InProcess {
        InProcess {
            name: name.into(),
            handler: Some(handler),
        }
    }
}

impl std::fmt::Debug for InProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("InProcess").field(&self.name).finish()
    }
}

impl PartialEq for InProcess {
    fn eq(&self, other: &InProcess) -> bool {
        self.name == other.name
    }
}

impl Eq for InProcess {}

impl Serialize for InProcess {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.name.serialize(s)
    }
}

impl<'de> Deserialize<'de> for InProcess {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<InProcess, D::Error> {
        Ok(InProcess {
            name: String::deserialize(d)?,
            handler: None,
        })
    }
}

impl TargetSpec {
    /// A short name for reports: the address, or the command's words without
    /// directories or `{port}` (`python3 broken.py single_read_body`).
    pub fn display_name(&self) -> String {
        match self {
            TargetSpec::Connect(addr) => addr.to_string(),
            TargetSpec::Spawn(cmd) => command_name(cmd),
            TargetSpec::Client { cmd, .. } => format!("client {}", command_name(cmd)),
            TargetSpec::InProcess(p) => p.name.clone(),
        }
    }
}

fn command_name(cmd: &str) -> String {
    cmd.split_whitespace()
        .filter(|w| !w.contains("{port}"))
        .map(|w| w.rsplit('/').next().unwrap_or(w))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Why the target cannot be used at all (exit code 2).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TargetError {
    #[error("--connect address {0} is not loopback; chopstick only sends traffic to this machine")]
    NotLoopback(SocketAddr),
    #[error(transparent)]
    BadCommand(#[from] BadCommand),
    #[error("cannot start `{cmd}`: {source}")]
    Spawn { cmd: String, source: std::io::Error },
    #[error("`{cmd}` exited ({status}) before accepting connections; stderr:\n{stderr}")]
    DiedAtStart {
        cmd: String,
        status: String,
        stderr: String,
    },
    #[error("`{cmd}` did not accept connections on {addr} within {STARTUP:?}")]
    NotListening { cmd: String, addr: SocketAddr },
    #[error("cannot find a free port: {0}")]
    NoPort(std::io::Error),
    #[error("client `{cmd}`: {source}")]
    Client { cmd: String, source: OpenError },
    #[error("the in-process target `{0}` lives in the program that ran it (a reproducer file cannot start it); run that program or test again")]
    NotInProcess(String),
}

/// A running target.
#[derive(Debug)]
pub struct Target {
    pub spec: TargetSpec,
    pub addr: SocketAddr,
    child: Option<Child>,
    /// The spawned child's process group (its pid), killed with it.
    pgid: Option<u32>,
    stderr: Arc<Mutex<Vec<u8>>>,
    pub restarts: u32,
    /// How many times a spawned target was found to have exited on its own by the time
    /// it was restarted or killed: a server that dies while its listener still queues a
    /// connection resets that connection, which alone looks like a reply-less close.
    pub exits: u32,
    /// `--client`: the client started for each case.
    pub client: Option<ClientTarget>,
    /// An in-process target (with its handler), run once per connection.
    duplex: Option<InProcess>,
    /// Cancels the handler tasks of an in-process target when it is killed.
    tasks: CancellationToken,
}

/// Kills a spawned target's whole process group (it leads its own, see `spawn`), so
/// the processes it started die with it: a shell script's children too.
pub(crate) fn kill_group(pgid: u32) {
    if let Ok(pgid) = libc::pid_t::try_from(pgid) {
        // SAFETY: kill(2) takes plain integers; a negative pid names the process group.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
    }
}

fn free_port() -> Result<u16, TargetError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(TargetError::NoPort)?;
    Ok(l.local_addr().map_err(TargetError::NoPort)?.port())
}

impl Target {
    pub async fn start(spec: &TargetSpec) -> Result<Target, TargetError> {
        let mut t = Target {
            spec: spec.clone(),
            addr: "127.0.0.1:0".parse().expect("literal"),
            child: None,
            pgid: None,
            stderr: Arc::default(),
            restarts: 0,
            exits: 0,
            client: None,
            duplex: None,
            tasks: CancellationToken::new(),
        };
        match spec {
            TargetSpec::Connect(addr) if !addr.ip().is_loopback() => {
                return Err(TargetError::NotLoopback(*addr))
            }
            TargetSpec::Connect(addr) => t.addr = *addr,
            TargetSpec::Spawn(_) => t.spawn().await?,
            TargetSpec::Client { cmd, output } => {
                let mut client = ClientTarget::new(cmd, *output)?;
                client
                    .preflight()
                    .await
                    .map_err(|source| TargetError::Client {
                        cmd: cmd.clone(),
                        source,
                    })?;
                t.client = Some(client);
            }
            TargetSpec::InProcess(p) if p.handler.is_none() => {
                return Err(TargetError::NotInProcess(p.name.clone()))
            }
            TargetSpec::InProcess(p) => t.duplex = Some(p.clone()),
        }
        Ok(t)
    }

    /// The connection a case drives: connected to the server, or accepted from a
    /// freshly started client. `sent` is the length of the stream the case will send.
    pub async fn open(&mut self, sent: usize, timing: &Timing) -> Result<Conn, Failure> {
        match self.client.as_mut() {
            Some(client) => client
                .open(sent)
                .await
                .map(Conn::Tcp)
                .map_err(|e| e.into_failure()),
            None => self.connect(timing.connect).await.map_err(|e| {
                Failure::new(FailureClass::Refused, None, format!("cannot connect: {e}"))
            }),
        }
    }

    /// Whether the replies come back on the connection (false for a client that prints
    /// them on stdout).
    pub fn replies_on_socket(&self) -> bool {
        self.client
            .as_ref()
            .is_none_or(|c| c.output == ClientOutput::Echo)
    }

    async fn spawn(&mut self) -> Result<(), TargetError> {
        let TargetSpec::Spawn(cmd) = self.spec.clone() else {
            return Ok(());
        };
        let port = free_port()?;
        let words: Vec<String> = split_command(&cmd)?
            .into_iter()
            .map(|w| w.replace("{port}", &port.to_string()))
            .collect();
        let mut child = Command::new(&words[0])
            .args(&words[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            // Its own process group, so `kill` reaches whatever it starts.
            .process_group(0)
            .spawn()
            .map_err(|source| TargetError::Spawn {
                cmd: cmd.clone(),
                source,
            })?;
        self.pgid = child.id();
        if let Some(err) = child.stderr.take() {
            tokio::spawn(capture_tail(err, self.stderr.clone()));
        }
        self.addr = SocketAddr::from(([127, 0, 0, 1], port));
        self.child = Some(child);
        // Wait (bounded) until it accepts a connection, or dies trying.
        let deadline = tokio::time::Instant::now() + STARTUP;
        loop {
            if let Some(status) = self.exited() {
                return Err(TargetError::DiedAtStart {
                    cmd: cmd.clone(),
                    status,
                    stderr: self.stderr_tail(),
                });
            }
            if tokio::net::TcpStream::connect(self.addr).await.is_ok() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(TargetError::NotListening {
                    cmd: cmd.clone(),
                    addr: self.addr,
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Opens a connection to the target (NODELAY set, so each planned write is its own
    /// segment), or for an in-process target a fresh duplex pipe whose other half a new
    /// handler task serves. Every stream a case uses comes from here or from an
    /// oracle's handshake on top of it, so a target that supplies streams another way
    /// (one a client under test connects to) changes only this method.
    pub async fn connect(&self, timeout: Duration) -> std::io::Result<Conn> {
        if let Some(handler) = self.duplex.as_ref().and_then(|p| p.handler.as_ref()) {
            let (client, server) = tokio::io::duplex(DUPLEX_BUF_BYTES);
            let conn = handler(server);
            let stop = self.tasks.clone();
            tokio::spawn(async move {
                // A handler that never returns ends with the target (`kill`, drop).
                tokio::select! {
                    r = conn => {
                        if let Err(e) = r {
                            tracing::debug!("in-process handler: {e}");
                        }
                    }
                    () = stop.cancelled() => {}
                }
            });
            return Ok(Conn::Duplex(client));
        }
        let stream = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(self.addr))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
            })??;
        stream.set_nodelay(true)?;
        Ok(Conn::Tcp(stream))
    }

    /// `Some(status)` if a spawned target has exited.
    pub fn exited(&mut self) -> Option<String> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => Some(status.to_string()),
            Ok(None) => None,
            Err(e) => Some(format!("unknown ({e})")),
        }
    }

    /// The process id of a spawned target (`None` for `--connect`), for CPU sampling.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    /// Whether chopstick started this target (and so can restart it).
    pub fn is_spawned(&self) -> bool {
        matches!(self.spec, TargetSpec::Spawn(_))
    }

    /// Restarts a spawned target that died (or hangs); no-op for `--connect`.
    pub async fn restart(&mut self) -> Result<(), TargetError> {
        if !self.is_spawned() {
            return Ok(());
        }
        self.kill().await;
        self.restarts += 1;
        self.spawn().await
    }

    /// The last lines of a spawned target's stderr.
    pub fn stderr_tail(&self) -> String {
        tail_lines(&self.stderr.lock().expect("stderr lock"))
    }

    pub async fn kill(&mut self) {
        std::mem::take(&mut self.tasks).cancel();
        if let Some(client) = self.client.as_mut() {
            client.kill().await;
        }
        // Gone already, or ended by anything but our SIGKILL: it was exiting on its own
        // (a process already inside exit(2) keeps the status it chose, so one caught
        // between exiting and being reaped counts too).
        let gone = self.exited().is_some();
        if let Some(pgid) = self.pgid.take() {
            kill_group(pgid);
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let reaped = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
            if gone || matches!(reaped, Ok(Ok(s)) if s.signal() != Some(libc::SIGKILL)) {
                self.exits += 1;
            }
        }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        self.tasks.cancel();
        // `kill_on_drop` reaches the child only; its group goes here.
        if let Some(pgid) = self.pgid.take() {
            kill_group(pgid);
        }
    }
}
