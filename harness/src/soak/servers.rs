//! The reference servers (and the proxy) as the soak runs them: in-process, on
//! loopback, with counters to read.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chopstick_targets::server::{self, Common, CounterSnapshot, Counters, Handle};
use chopstick_targets::{auth, echo, exec, file};

use super::SoakError;
use crate::proxy::{ProxyConfig, ProxyCounters, ProxyHandle, ProxySnapshot};

/// The key of the soak's auth server (a test key: the server is on loopback only).
pub const KEY: &[u8] = b"chopstick soak key";
/// exec: requests that may wait for a child slot (more than the soak ever has in flight).
const SOAK_MAX_WAITING: usize = 4096;

/// What a soak run is pointed at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Echo,
    Exec,
    File,
    /// auth with the echo server inside.
    Auth,
    /// The proxy (plain relay or with faults) in front of echo.
    ProxyEcho,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Echo,
        Kind::Exec,
        Kind::File,
        Kind::Auth,
        Kind::ProxyEcho,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Echo => "echo",
            Kind::Exec => "exec",
            Kind::File => "file",
            Kind::Auth => "auth(echo)",
            Kind::ProxyEcho => "proxy->echo",
        }
    }

    /// Whether the client speaks hjson (exec, file) rather than u32be frames.
    pub fn is_hjson(self) -> bool {
        matches!(self, Kind::Exec | Kind::File)
    }
}

/// Knobs of one started target.
#[derive(Debug, Clone)]
pub struct Options {
    pub max_conns: usize,
    pub backlog: u32,
    pub idle_timeout: Duration,
    /// Faults the proxy applies (ignored for direct targets); empty = plain relay.
    pub proxy_faults: crate::chaos::FaultSet,
    pub seed: u64,
}

/// One running target: the server, the proxy in front of it (for `ProxyEcho`), and
/// the file root (for `File`).
pub struct Running {
    pub kind: Kind,
    /// Where clients connect (the proxy's address for `ProxyEcho`).
    pub addr: SocketAddr,
    pub server: Handle,
    pub counters: Arc<Counters>,
    pub proxy: Option<ProxyHandle>,
    pub root: Option<TempRoot>,
}

impl Running {
    pub fn server_snapshot(&self) -> CounterSnapshot {
        self.counters.snapshot()
    }

    pub fn proxy_snapshot(&self) -> Option<ProxySnapshot> {
        self.proxy.as_ref().map(|p| p.counters().snapshot())
    }

    pub fn proxy_counters(&self) -> Option<&Arc<ProxyCounters>> {
        self.proxy.as_ref().map(|p| p.counters())
    }

    pub fn root_path(&self) -> Option<PathBuf> {
        self.root.as_ref().map(|r| r.path().to_path_buf())
    }

    /// Whether the server (and proxy) tasks are still running.
    pub fn alive(&self) -> bool {
        !self.server.is_finished() && self.proxy.as_ref().is_none_or(|p| !p.is_finished())
    }

    /// Waits (bounded) until no connection is open in the server or the proxy.
    pub async fn wait_idle(&self, limit: Duration) -> bool {
        let server = self.counters.wait_until(limit, |c| c.active == 0).await;
        let proxy = match self.proxy_counters() {
            Some(p) => p.wait_until(limit, |c| c.active == 0).await.is_ok(),
            None => true,
        };
        server.is_ok() && proxy
    }

    pub async fn stop(self) -> Result<(), SoakError> {
        if let Some(proxy) = self.proxy {
            proxy
                .shutdown()
                .await
                .map_err(|e| SoakError::Setup(format!("proxy shutdown: {e}")))?;
        }
        self.server
            .shutdown()
            .await
            .map_err(|e| SoakError::Setup(format!("{} shutdown: {e}", self.kind.name())))
    }
}

/// A fresh directory under the system temp dir, removed when dropped.
#[derive(Debug)]
pub struct TempRoot(PathBuf);

impl TempRoot {
    fn new() -> std::io::Result<TempRoot> {
        let dir = std::env::temp_dir().join(format!(
            "chopstick-soak-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir(&dir)?;
        Ok(TempRoot(dir))
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn loopback(backlog: u32) -> Result<tokio::net::TcpListener, SoakError> {
    server::bind(SocketAddr::from(([127, 0, 0, 1], 0)), backlog)
        .map_err(|e| SoakError::Setup(format!("bind loopback: {e}")))
}

/// Starts `kind` on an ephemeral loopback port.
pub fn start(kind: Kind, opts: &Options) -> Result<Running, SoakError> {
    let counters = Arc::new(Counters::default());
    let common = Common {
        max_conns: opts.max_conns,
        idle_timeout: opts.idle_timeout,
        counters: counters.clone(),
        ..Common::default()
    };
    let listener = loopback(opts.backlog)?;
    let mut root = None;
    let spawned = match kind {
        Kind::Echo | Kind::ProxyEcho => {
            let config = echo::Config {
                common,
                ..Default::default()
            };
            Handle::spawn(listener, move |l, stop| echo::run(l, config, stop))
        }
        Kind::Exec => {
            let config = exec::Config {
                common,
                // Every connection in flight may wait for a child: the soak judges
                // disconnects, not the busy refusal (tested in targets/tests/exec_load.rs).
                slots: Arc::new(exec::Slots::new(
                    exec::slots::default_max_children(),
                    SOAK_MAX_WAITING,
                )),
                ..Default::default()
            };
            Handle::spawn(listener, move |l, stop| exec::run(l, config, stop))
        }
        Kind::File => {
            let dir = TempRoot::new().map_err(|e| SoakError::Setup(format!("file root: {e}")))?;
            let config = file::Config {
                common,
                root: dir.path().to_path_buf(),
            };
            root = Some(dir);
            Handle::spawn(listener, move |l, stop| file::run(l, config, stop))
        }
        Kind::Auth => {
            let mut config = auth::Config::new(
                KEY.to_vec(),
                auth::Inner::Echo(echo::Config {
                    common: Common {
                        counters: counters.clone(),
                        ..Common::default()
                    },
                    ..Default::default()
                }),
            );
            config.common = common;
            config.handshake_timeout = Duration::from_secs(10);
            Handle::spawn(listener, move |l, stop| auth::run(l, config, stop))
        }
    };
    let server = spawned.map_err(|e| SoakError::Setup(format!("spawn server: {e}")))?;
    let mut addr = server.addr;
    let mut proxy = None;
    if kind == Kind::ProxyEcho {
        let mut config = ProxyConfig::new(server.addr);
        config.framing = Some(chopstick_targets::wire::Framing::default());
        config.faults = opts.proxy_faults.clone();
        config.seed = opts.seed;
        config.max_conns = opts.max_conns;
        config.idle_timeout = opts.idle_timeout;
        // Small relay buffers: the soak holds thousands of connections.
        config.read_buffer = 16 * 1024;
        let handle = ProxyHandle::spawn(loopback(opts.backlog)?, config)
            .map_err(|e| SoakError::Setup(format!("spawn proxy: {e}")))?;
        addr = handle.addr;
        proxy = Some(handle);
    }
    Ok(Running {
        kind,
        addr,
        server,
        counters,
        proxy,
        root,
    })
}
