//! Load: thousands of connections held open at once against echo (directly and
//! through the proxy), every one served a correct reply twice, while the server's
//! (and proxy's) memory and fds are measured.
//!
//! The clients run in a child process (this same program, re-run with
//! [`CLIENT_ENV`] set): a process has only RLIMIT_NOFILE descriptors, and a client
//! and server sharing one would halve the connections either could hold. It also keeps
//! the clients' memory out of the server's RSS figures. The server and proxy stay
//! in-process, so their memory is measured as this process's RSS delta.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures::StreamExt;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_util::codec::Decoder;

use super::servers::Running;
use super::{sys, SoakError};
use chopstick_targets::wire::Framing;

/// Set in the environment of the load client process; holds its [`ClientSpec`] JSON.
pub const CLIENT_ENV: &str = "CHOPSTICK_SOAK_CLIENT";
/// Prefix of the client's one result line on stdout.
const RESULT_PREFIX: &str = "chopstick-soak-client: ";
/// Bound on the whole client run (connecting, both rounds).
const CLIENT_DEADLINE: Duration = Duration::from_secs(300);
/// Bound on one connect or one round trip.
const STEP_DEADLINE: Duration = Duration::from_secs(60);
/// Connects in flight at once (below the listen backlog).
const CONNECTING: usize = 256;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ClientSpec {
    pub addr: SocketAddr,
    pub connections: usize,
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct ClientResult {
    pub fd_limit: u64,
    /// Connections open at once after the connect phase.
    pub held: usize,
    pub connect_errors: usize,
    /// Correct replies on the first round (right after each connect).
    pub first_ok: usize,
    /// Correct replies on the second round (all connections open).
    pub second_ok: usize,
    pub connect_secs: f64,
    pub second_secs: f64,
    pub errors: Vec<String>,
}

/// Figures of one load run.
#[derive(Debug, Clone, Default, serde::Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct LoadFigures {
    pub target: String,
    pub requested: usize,
    /// Connections attempted (below `requested` only if the fd limit forced it).
    pub attempted: usize,
    /// Why `attempted` < `requested`.
    pub limited_by: Option<String>,
    pub held: usize,
    /// Connections the server (and proxy) counted open at the peak.
    pub server_active_at_peak: u64,
    pub proxy_active_at_peak: Option<u64>,
    pub first_replies_ok: usize,
    pub second_replies_ok: usize,
    pub connect_secs: f64,
    /// Connections (each with one round trip) per second during the connect phase.
    pub connections_per_sec: f64,
    pub second_round_secs: f64,
    pub rss_before_kib: u64,
    /// Peak RSS (VmHWM, reset before the run) minus the RSS before: the memory of the
    /// in-process server (and proxy) holding the connections.
    pub rss_peak_delta_kib: u64,
    pub fds_at_peak: usize,
    pub fds_after: usize,
    pub fds_before: usize,
    pub active_after: u64,
    pub client_errors: Vec<String>,
}

impl LoadFigures {
    pub fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        let t = &self.target;
        if self.held != self.attempted {
            out.push(format!("{t}: held {} of {}", self.held, self.attempted));
        }
        if self.first_replies_ok != self.attempted || self.second_replies_ok != self.attempted {
            out.push(format!(
                "{t}: correct replies {} + {} of {} each round; {:?}",
                self.first_replies_ok, self.second_replies_ok, self.attempted, self.client_errors
            ));
        }
        if self.active_after != 0 {
            out.push(format!("{t}: {} connections left open", self.active_after));
        }
        if self.fds_after > self.fds_before {
            out.push(format!(
                "{t}: fds {} -> {}",
                self.fds_before, self.fds_after
            ));
        }
        out
    }
}

/// If this process is a load client (see [`CLIENT_ENV`]), the spec it was given.
pub fn client_spec() -> Option<Result<ClientSpec, String>> {
    let raw = std::env::var(CLIENT_ENV).ok()?;
    Some(serde_json::from_str(&raw).map_err(|e| format!("bad {CLIENT_ENV}: {e}")))
}

fn payload(i: usize, round: u8) -> Vec<u8> {
    format!("soak load connection {i} round {round}").into_bytes()
}

async fn round_trip(s: &mut TcpStream, i: usize, round: u8) -> Result<(), String> {
    let want = payload(i, round);
    let mut out = BytesMut::new();
    Framing::default()
        .encode(&want, &mut out)
        .map_err(|e| e.to_string())?;
    s.write_all(&out).await.map_err(|e| format!("send: {e}"))?;
    let mut codec = Framing::default().codec();
    let mut buf = BytesMut::new();
    loop {
        if let Some(reply) = codec.decode(&mut buf).map_err(|e| e.to_string())? {
            return if reply[..] == want[..] {
                Ok(())
            } else {
                Err(format!("connection {i}: wrong reply"))
            };
        }
        match s.read_buf(&mut buf).await {
            Ok(0) => return Err(format!("connection {i}: closed before the reply")),
            Ok(_) => {}
            Err(e) => return Err(format!("connection {i}: {e}")),
        }
    }
}

/// The load client: connects, round-trips, holds, round-trips again, reports one JSON
/// line, then holds every connection until stdin closes (bounded).
pub async fn client_main(spec: ClientSpec) -> ClientResult {
    let mut result = ClientResult {
        fd_limit: sys::raise_fd_limit().map_or(0, |l| l.soft),
        ..Default::default()
    };
    let started = Instant::now();
    let addr = spec.addr;
    let mut opened = futures::stream::iter(0..spec.connections)
        .map(|i| async move {
            let work = async {
                let mut s = TcpStream::connect(addr)
                    .await
                    .map_err(|e| format!("connect {i}: {e}"))?;
                let _ = s.set_nodelay(true);
                let first = round_trip(&mut s, i, 1).await;
                Ok::<_, String>((i, s, first))
            };
            tokio::time::timeout(STEP_DEADLINE, work)
                .await
                .unwrap_or_else(|_| Err(format!("connection {i}: timed out")))
        })
        .buffer_unordered(CONNECTING);
    let mut held = Vec::with_capacity(spec.connections);
    while let Some(r) = opened.next().await {
        match r {
            Ok((i, s, first)) => {
                match first {
                    Ok(()) => result.first_ok += 1,
                    Err(e) => push_error(&mut result.errors, e),
                }
                held.push((i, s));
            }
            Err(e) => {
                result.connect_errors += 1;
                push_error(&mut result.errors, e);
            }
        }
    }
    drop(opened);
    result.connect_secs = started.elapsed().as_secs_f64();
    result.held = held.len();

    let started = Instant::now();
    let second: Vec<Result<(), String>> = futures::stream::iter(held.iter_mut())
        .map(|(i, s)| async move {
            tokio::time::timeout(STEP_DEADLINE, round_trip(s, *i, 2))
                .await
                .unwrap_or_else(|_| Err(format!("connection {i}: second round timed out")))
        })
        .buffer_unordered(1024)
        .collect()
        .await;
    result.second_secs = started.elapsed().as_secs_f64();
    for r in second {
        match r {
            Ok(()) => result.second_ok += 1,
            Err(e) => push_error(&mut result.errors, e),
        }
    }
    println!(
        "{RESULT_PREFIX}{}",
        serde_json::to_string(&result).unwrap_or_default()
    );
    // Hold until the parent has measured and closes our stdin.
    let mut stdin = tokio::io::stdin();
    let mut sink = [0u8; 64];
    let _ = tokio::time::timeout(CLIENT_DEADLINE, async {
        while matches!(stdin.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
    drop(held);
    result
}

fn push_error(errors: &mut Vec<String>, e: String) {
    if errors.len() < 5 {
        errors.push(e);
    }
}

/// Runs one load test against `target` with a client process holding `n` connections.
pub async fn run(
    target: &Running,
    requested: usize,
    fd_soft: u64,
) -> Result<LoadFigures, SoakError> {
    let mut fig = LoadFigures {
        target: target.kind.name().into(),
        requested,
        ..Default::default()
    };
    target.wait_idle(Duration::from_secs(30)).await;
    sys::trim_heap();
    fig.fds_before = sys::open_fds().unwrap_or(0);
    // Each connection costs the server one fd and the proxy two.
    let per_conn = if target.proxy.is_some() { 3 } else { 1 };
    let room = (fd_soft as usize).saturating_sub(fig.fds_before + 256) / per_conn;
    fig.attempted = requested.min(room);
    if fig.attempted < requested {
        fig.limited_by = Some(format!(
            "RLIMIT_NOFILE {fd_soft}: {per_conn} fd(s) per connection in this process \
             (server{}), {} already open",
            if per_conn == 3 { " 1 + proxy 2" } else { "" },
            fig.fds_before
        ));
    }
    fig.rss_before_kib = sys::rss_kib().map_or(0, |r| r.0);
    sys::reset_peak_rss();

    let spec = ClientSpec {
        addr: target.addr,
        connections: fig.attempted,
    };
    let exe = std::env::current_exe().map_err(|e| SoakError::Setup(format!("current_exe: {e}")))?;
    let mut child = tokio::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env(
            CLIENT_ENV,
            serde_json::to_string(&spec).expect("spec serialises"),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| SoakError::Setup(format!("start the load client: {e}")))?;
    let stdout = child.stdout.take().expect("piped");
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(CLIENT_DEADLINE, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(json) = line.strip_prefix(RESULT_PREFIX) {
                return Some(json.to_string());
            }
        }
        None
    })
    .await
    .ok()
    .flatten();
    // Measure while every connection is still held.
    fig.fds_at_peak = sys::open_fds().unwrap_or(0);
    fig.server_active_at_peak = target.server_snapshot().active;
    fig.proxy_active_at_peak = target.proxy_snapshot().map(|p| p.active);
    fig.rss_peak_delta_kib = sys::rss_kib()
        .map_or(0, |r| r.1)
        .saturating_sub(fig.rss_before_kib);
    drop(child.stdin.take());
    let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
    let _ = child.kill().await;
    drop(lines);
    drop(child);
    let result: ClientResult = match line {
        Some(json) => serde_json::from_str(&json)
            .map_err(|e| SoakError::Setup(format!("load client result: {e}")))?,
        None => {
            return Err(SoakError::Setup(
                "the load client ended without a result (see its stderr)".into(),
            ))
        }
    };
    fig.held = result.held;
    fig.first_replies_ok = result.first_ok;
    fig.second_replies_ok = result.second_ok;
    fig.connect_secs = result.connect_secs;
    fig.connections_per_sec = result.held as f64 / result.connect_secs.max(1e-9);
    fig.second_round_secs = result.second_secs;
    fig.client_errors = result.errors;

    target.wait_idle(Duration::from_secs(60)).await;
    fig.active_after =
        target.server_snapshot().active + target.proxy_snapshot().map_or(0, |p| p.active);
    let before = fig.fds_before;
    sys::poll_until(Duration::from_secs(10), || {
        sys::open_fds().is_ok_and(|n| n <= before)
    })
    .await;
    fig.fds_after = sys::open_fds().unwrap_or(usize::MAX);
    Ok(fig)
}
