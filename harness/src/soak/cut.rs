//! Abrupt disconnects: many connections, each cut (FIN or RST, at random) at a random
//! region of its exchange, driven `in_flight` at a time; then the leak checks.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures::StreamExt;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde_json::json;
use sha2::{Digest, Sha256};
use socket2::SockRef;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::{Decoder, Encoder};

use super::servers::{Kind, Running, KEY};
use super::sys;
use crate::chaos::{conn_rng, Direction};
use chopstick_targets::file::TEMP_PREFIX as TEMP_NAME_PREFIX;
use chopstick_targets::wire::{Framing, HjsonCodec, HjsonFrame};

/// Bound on one connection of the run (connect, partial exchange, cut).
const CONN_DEADLINE: Duration = Duration::from_secs(30);
/// Bound on waiting for the server to wind down after the run.
const SETTLE: Duration = Duration::from_secs(30);
/// A leak is heap growth of more than this per cut connection, in each of two rounds.
/// Every connection allocates at least one read buffer (8 KiB) and a task; losing any
/// of them is far above this.
pub const LEAK_BYTES_PER_CONN: i64 = 256;
/// Growth per round that is noise, whatever the connection count: live heap
/// (timer wheels, slabs, maps resizing once) ...
const LEAK_FLOOR_HEAP: i64 = 256 * 1024;
/// ... and RSS, where arenas and thread stacks come and go.
const LEAK_FLOOR_RSS: i64 = 4 * 1024 * 1024;

/// Bound on waiting for RSS to come back (tokio's blocking threads idle out after 10 s).
const RSS_SETTLE: Duration = Duration::from_secs(20);

/// Figures of one target's abrupt-disconnect run.
#[derive(Debug, Clone, Default, serde::Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct CutFigures {
    pub target: String,
    pub connections: u64,
    pub fin: u64,
    pub rst: u64,
    /// Connections per region of the exchange where they were cut.
    pub regions: BTreeMap<String, u64>,
    pub secs: f64,
    pub per_sec: f64,
    /// Client-side surprises: connect failures, wrong replies, timeouts (must be 0).
    pub client_errors: u64,
    /// First few client-side surprises, for the report.
    pub client_error_samples: Vec<String>,
    /// Server counters after the run: accepted / cleanly completed / aborted, and
    /// aborted connections by kind.
    pub server_accepted: u64,
    pub server_completed: u64,
    pub server_aborted: u64,
    pub server_errors: BTreeMap<String, u64>,
    pub server_alive: bool,
    /// Open connections (tasks) in the server (and proxy) once settled (must be 0).
    pub active_after: u64,
    /// Cut connections run first to bring pools and caches to their working size
    /// (not counted in the other figures, but their client errors are).
    pub warmup: u64,
    /// RSS before the warm-up.
    pub rss_cold_kib: u64,
    /// Baseline taken after the warm-up.
    pub fds_before: usize,
    pub fds_after: usize,
    pub rss_before_kib: u64,
    pub rss_peak_kib: u64,
    pub rss_after_kib: u64,
    /// (after - before) / before, in percent, after returning freed heap to the kernel.
    pub rss_growth_pct: f64,
    /// How long RSS took to come back within 10 % (idle threads exiting), bounded.
    pub rss_settle_secs: f64,
    /// What the leak check measured: `live heap` (counting allocator) or `RSS`.
    pub leak_measure: String,
    /// Growth of that measure in each of the two rounds of cuts, bytes.
    pub leak_round1_bytes: i64,
    pub leak_round2_bytes: i64,
    /// Growth per round above which (in both rounds) it is a leak.
    pub leak_limit_bytes: i64,
    /// Child processes of this process left after the run (must be 0).
    pub children_left: usize,
    /// file: temporary (partial) files left under the root (must be 0).
    pub temp_files_left: usize,
    /// file: puts acknowledged with ok:true.
    pub puts_acked: u64,
    /// file: files on disk after the run, each hashed and matched against a body sent
    /// for that name.
    pub files_checked: u64,
    /// file: files whose content is not exactly one body sent for that name, or acked
    /// names missing (must be 0).
    pub files_bad: u64,
    /// A fresh client was served correctly after the run.
    pub healthy_after: bool,
    /// Panics in this process during the run (must be 0).
    pub panics: u64,
}

impl CutFigures {
    /// What broke a promise, if anything.
    pub fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut fail = |ok: bool, what: String| {
            if !ok {
                out.push(format!("{}: {what}", self.target));
            }
        };
        fail(self.server_alive, "server task ended (crash)".into());
        fail(self.panics == 0, format!("{} panics", self.panics));
        fail(
            self.client_errors == 0,
            format!(
                "{} client errors, e.g. {:?}",
                self.client_errors, self.client_error_samples
            ),
        );
        fail(
            self.active_after == 0,
            format!("{} connections still open", self.active_after),
        );
        fail(
            self.fds_after <= self.fds_before,
            format!("fds {} -> {}", self.fds_before, self.fds_after),
        );
        fail(
            self.leak_round1_bytes <= self.leak_limit_bytes
                || self.leak_round2_bytes <= self.leak_limit_bytes,
            format!(
                "leak: {} grew by {} and {} bytes in two rounds of {} connections (limit {} each)",
                self.leak_measure,
                self.leak_round1_bytes,
                self.leak_round2_bytes,
                self.connections / 2,
                self.leak_limit_bytes
            ),
        );
        fail(
            self.children_left == 0,
            format!("{} child processes left", self.children_left),
        );
        fail(
            self.temp_files_left == 0,
            format!("{} temp files left", self.temp_files_left),
        );
        fail(self.files_bad == 0, format!("{} bad files", self.files_bad));
        fail(self.healthy_after, "fresh client not served".into());
        out
    }
}

/// Where a connection is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Region {
    /// Connected, nothing sent.
    Connected,
    /// auth: nonce read, no digest sent.
    BeforeDigest,
    /// auth: part of the digest sent.
    MidDigest,
    /// auth: whole digest sent, verdict not read.
    DigestSent,
    /// Inside the request's header (length field, JSON).
    InHeader,
    /// Right after the header, before any body byte.
    HeaderEnd,
    /// Inside the request's body.
    InBody,
    /// Whole request sent, no reply read.
    RequestSent,
    /// Part of the reply read.
    InReply,
    /// Whole reply read (and checked), then cut instead of a clean close.
    Complete,
}

impl Region {
    fn name(self) -> &'static str {
        match self {
            Region::Connected => "connected",
            Region::BeforeDigest => "before-digest",
            Region::MidDigest => "mid-digest",
            Region::DigestSent => "digest-sent",
            Region::InHeader => "in-header",
            Region::HeaderEnd => "header-end",
            Region::InBody => "in-body",
            Region::RequestSent => "request-sent",
            Region::InReply => "in-reply",
            Region::Complete => "complete",
        }
    }

    fn draw(kind: Kind, rng: &mut ChaCha8Rng) -> Region {
        const COMMON: [Region; 7] = [
            Region::Connected,
            Region::InHeader,
            Region::HeaderEnd,
            Region::InBody,
            Region::RequestSent,
            Region::InReply,
            Region::Complete,
        ];
        const AUTH: [Region; 3] = [Region::BeforeDigest, Region::MidDigest, Region::DigestSent];
        if kind == Kind::Auth && rng.random_bool(0.3) {
            AUTH[rng.random_range(0..AUTH.len())]
        } else {
            COMMON[rng.random_range(0..COMMON.len())]
        }
    }
}

/// What one connection did.
struct Outcome {
    region: Region,
    rst: bool,
    /// file: (name, sha256 of the body, acked).
    put: Option<(String, [u8; 32], bool)>,
    error: Option<String>,
}

/// One request of the run and what its reply must be.
struct Request {
    bytes: BytesMut,
    /// Header end and body range in `bytes`.
    body: std::ops::Range<usize>,
    expect: Expect,
    put: Option<(String, [u8; 32])>,
}

enum Expect {
    /// A u32be frame with this payload.
    Echo(Vec<u8>),
    /// exec: exit 0 and this stdout.
    Stdout(Vec<u8>),
    /// file: `ok: true`.
    Ok,
}

fn random_bytes(rng: &mut ChaCha8Rng, max: usize) -> Vec<u8> {
    let len = rng.random_range(1..=max);
    let mut v = vec![0u8; len];
    rng.fill(&mut v[..]);
    v
}

fn hjson(header: serde_json::Value, body: Vec<u8>) -> (BytesMut, std::ops::Range<usize>) {
    let mut buf = BytesMut::new();
    let len = body.len();
    HjsonCodec::new(usize::MAX)
        .encode(HjsonFrame::new(header, body), &mut buf)
        .expect("soak requests are small");
    let range = buf.len() - len..buf.len();
    (buf, range)
}

/// The file names the run writes: few enough that puts collide, nested so directories
/// are created under load.
pub const FILE_NAMES: u64 = 128;

fn request(kind: Kind, i: u64, rng: &mut ChaCha8Rng) -> Request {
    match kind {
        Kind::Echo | Kind::Auth | Kind::ProxyEcho => {
            let payload = random_bytes(rng, if kind == Kind::Auth { 2048 } else { 8192 });
            let mut bytes = BytesMut::new();
            let layout = Framing::default()
                .encode(&payload, &mut bytes)
                .expect("small frame");
            Request {
                bytes,
                body: layout.body,
                expect: Expect::Echo(payload),
                put: None,
            }
        }
        Kind::Exec => {
            if rng.random_bool(0.25) {
                // A larger output, so some cuts land while the server is still writing.
                let n = rng.random_range(1000..20_000u32);
                let stdout: String = (1..=n).map(|k| format!("{k}\n")).collect();
                let (bytes, body) =
                    hjson(json!({"argv": ["seq", "1", n.to_string()]}), b"x".to_vec());
                Request {
                    bytes,
                    body,
                    expect: Expect::Stdout(stdout.into_bytes()),
                    put: None,
                }
            } else {
                let stdin = random_bytes(rng, 8192);
                let (bytes, body) = hjson(json!({"argv": ["cat"]}), stdin.clone());
                Request {
                    bytes,
                    body,
                    expect: Expect::Stdout(stdin),
                    put: None,
                }
            }
        }
        Kind::File => {
            let name = format!("soak/d{}/f{}", i % 8, i % FILE_NAMES);
            let body = random_bytes(rng, 65_536);
            let sha: [u8; 32] = Sha256::digest(&body).into();
            let (bytes, range) = hjson(
                json!({"op": "put", "name": name, "sha256": hex::encode(sha)}),
                body,
            );
            Request {
                bytes,
                body: range,
                expect: Expect::Ok,
                put: Some((name, sha)),
            }
        }
    }
}

/// Reads one reply and checks it against `expect`.
async fn read_reply(s: &mut TcpStream, kind: Kind, expect: &Expect) -> Result<(), String> {
    let mut buf = BytesMut::new();
    let mut hjson = HjsonCodec::new(64 << 20);
    let mut frames = Framing::default().codec();
    loop {
        let decoded = if kind.is_hjson() {
            hjson
                .decode(&mut buf)
                .map_err(|e| e.to_string())?
                .map(Reply::Hjson)
        } else {
            frames
                .decode(&mut buf)
                .map_err(|e| e.to_string())?
                .map(|b| Reply::Frame(b.to_vec()))
        };
        if let Some(reply) = decoded {
            return check(reply, expect);
        }
        match s.read_buf(&mut buf).await {
            Ok(0) => return Err(format!("EOF after {} reply bytes", buf.len())),
            Ok(_) => {}
            Err(e) => return Err(format!("reading reply: {e}")),
        }
    }
}

enum Reply {
    Frame(Vec<u8>),
    Hjson(HjsonFrame),
}

fn check(reply: Reply, expect: &Expect) -> Result<(), String> {
    match (reply, expect) {
        (Reply::Frame(got), Expect::Echo(want)) if &got == want => Ok(()),
        (Reply::Hjson(f), Expect::Stdout(want))
            if f.header.get("exit") == Some(&json!(0)) && f.body[..] == want[..] =>
        {
            Ok(())
        }
        (Reply::Hjson(f), Expect::Ok) if f.header.get("ok") == Some(&json!(true)) => Ok(()),
        (Reply::Hjson(f), _) => Err(format!("unexpected reply {:?}", f.header)),
        (Reply::Frame(f), _) => Err(format!("unexpected {}-byte reply", f.len())),
    }
}

/// Connects, does the auth handshake unless cut inside it, and returns the stream, or
/// `None` if the region was inside the handshake (then the stream is already cut).
async fn handshake(
    s: &mut TcpStream,
    region: Region,
    rng: &mut ChaCha8Rng,
) -> Result<bool, String> {
    let mut nonce = [0u8; chopstick_targets::auth::NONCE_LEN];
    s.read_exact(&mut nonce)
        .await
        .map_err(|e| format!("reading nonce: {e}"))?;
    let digest = chopstick_targets::auth::digest(KEY, &nonce);
    let sent = match region {
        Region::BeforeDigest => return Ok(false),
        Region::MidDigest => rng.random_range(1..digest.len()),
        _ => digest.len(),
    };
    s.write_all(&digest[..sent])
        .await
        .map_err(|e| format!("sending digest: {e}"))?;
    if region != Region::DigestSent && region != Region::MidDigest {
        let mut verdict = [0u8; 1];
        s.read_exact(&mut verdict)
            .await
            .map_err(|e| format!("reading verdict: {e}"))?;
        if verdict[0] != chopstick_targets::auth::ACCEPTED {
            return Err(format!("right key rejected (verdict {})", verdict[0]));
        }
        return Ok(true);
    }
    Ok(false)
}

async fn one(kind: Kind, addr: std::net::SocketAddr, seed: u64, i: u64) -> Outcome {
    let mut rng = conn_rng(seed, i, Direction::Up);
    let region = Region::draw(kind, &mut rng);
    let rst = rng.random_bool(0.5);
    let req = request(kind, i, &mut rng);
    let mut out = Outcome {
        region,
        rst,
        put: req.put.clone().map(|(n, h)| (n, h, false)),
        error: None,
    };
    let exchange = async {
        let mut s = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = s.set_nodelay(true);
        let go_on = if kind == Kind::Auth && region != Region::Connected {
            handshake(&mut s, region, &mut rng).await?
        } else {
            region != Region::Connected
        };
        if go_on {
            let cut = match region {
                Region::InHeader => rng.random_range(1..req.body.start),
                Region::HeaderEnd => req.body.start,
                Region::InBody if req.body.len() >= 2 => {
                    rng.random_range(req.body.start + 1..req.body.end)
                }
                Region::InBody => req.body.start,
                _ => req.bytes.len(),
            };
            s.write_all(&req.bytes[..cut])
                .await
                .map_err(|e| format!("sending request: {e}"))?;
            match region {
                Region::InReply => {
                    // Fewer bytes than the shortest possible reply, so this never waits
                    // for bytes that will not come.
                    let shortest = match &req.expect {
                        Expect::Echo(p) => 4 + p.len(),
                        Expect::Stdout(_) | Expect::Ok => 16,
                    };
                    let mut some = vec![0u8; rng.random_range(1..shortest.min(17))];
                    s.read_exact(&mut some)
                        .await
                        .map_err(|e| format!("reading reply start: {e}"))?;
                }
                Region::Complete => {
                    read_reply(&mut s, kind, &req.expect).await?;
                    if let Some(put) = &mut out.put {
                        put.2 = true;
                    }
                }
                _ => {}
            }
        }
        Ok::<TcpStream, String>(s)
    };
    match tokio::time::timeout(CONN_DEADLINE, exchange).await {
        Ok(Ok(s)) => cut(s, rst).await,
        Ok(Err(e)) => out.error = Some(format!("{}: {e}", region.name())),
        Err(_) => {
            out.error = Some(format!(
                "{}: no progress in {CONN_DEADLINE:?}",
                region.name()
            ))
        }
    }
    out
}

/// Ends the connection abruptly: RST (SO_LINGER 0), or FIN and gone without reading.
async fn cut(mut s: TcpStream, rst: bool) {
    if rst {
        let _ = SockRef::from(&s).set_linger(Some(Duration::ZERO));
    } else {
        let _ = s.shutdown().await;
    }
    drop(s);
}

/// Runs `n` cut connections against `target`, `in_flight` at a time, then checks for
/// leaks. `baseline_fds` etc. are taken by the caller after warming up.
pub async fn run(target: &Running, n: u64, in_flight: usize, seed: u64) -> CutFigures {
    let kind = target.kind;
    let mut fig = CutFigures {
        target: kind.name().into(),
        connections: n,
        ..Default::default()
    };
    // Warm up so the baseline is the working size, not a cold start: the runtime,
    // tokio's blocking pool, malloc's per-thread arenas and the kernel's socket caches
    // all grow to the concurrency once and are reused after. A leak keeps growing past
    // that; this is what the 10 % compares against.
    fig.rss_cold_kib = sys::rss_kib().map_or(0, |r| r.0);
    fig.healthy_after = healthy(target).await.is_ok();
    // 10 % of the run (at least 5 x in-flight): enough for glibc's per-thread arenas
    // and tokio's blocking pool (file's fsyncs) to reach their working size, which
    // takes a few rounds of the full concurrency and then stays flat.
    let warmup = (in_flight as u64 * 5).max(n / 10).min(n);
    let mut files = Files::default();
    let mut warm = CutFigures::default();
    drive(
        target,
        n..n + warmup,
        in_flight,
        seed,
        &mut warm,
        &mut files,
    )
    .await;
    fig.warmup = warmup;
    fig.client_errors = warm.client_errors;
    fig.client_error_samples = warm.client_error_samples;
    target.wait_idle(SETTLE).await;
    sys::poll_until(SETTLE, || sys::child_pids().is_empty()).await;
    sys::trim_heap();
    fig.fds_before = sys::open_fds().unwrap_or(0);
    fig.rss_before_kib = sys::rss_kib().map(|r| r.0).unwrap_or(0);
    sys::reset_peak_rss();
    let panics_before = sys::panics();
    let before = target.server_snapshot();

    // Two equal rounds, the heap measured after each (see the module docs of `soak`).
    let round = (n / 2).max(1);
    let (measure, floor) = match super::alloc::live_bytes() {
        Some(_) => ("live heap", LEAK_FLOOR_HEAP),
        None => ("RSS", LEAK_FLOOR_RSS),
    };
    let heap = || {
        sys::trim_heap();
        super::alloc::live_bytes()
            .unwrap_or_else(|| sys::rss_kib().map_or(0, |r| r.0 as i64 * 1024))
    };
    fig.leak_measure = measure.into();
    fig.leak_limit_bytes = floor + LEAK_BYTES_PER_CONN * round as i64;
    let m0 = heap();
    let started = Instant::now();
    drive(target, 0..round, in_flight, seed, &mut fig, &mut files).await;
    target.wait_idle(SETTLE).await;
    sys::poll_until(SETTLE, || sys::child_pids().is_empty()).await;
    let m1 = heap();
    let second = n + warmup..n + warmup + round;
    drive(target, second, in_flight, seed, &mut fig, &mut files).await;
    fig.secs = started.elapsed().as_secs_f64();
    fig.connections = 2 * round;
    fig.per_sec = fig.connections as f64 / fig.secs.max(1e-9);

    // Settle: every connection ended in the server (and proxy), every child reaped.
    let idle = target.wait_idle(SETTLE).await;
    let after = target.server_snapshot();
    fig.active_after = after.active + target.proxy_snapshot().map_or(0, |p| p.active);
    if !idle && fig.active_after == 0 {
        fig.active_after = 1;
    }
    fig.server_accepted = after.accepted - before.accepted;
    fig.server_completed = after.completed - before.completed;
    fig.server_aborted = after.aborted - before.aborted;
    fig.server_errors = after
        .errors
        .iter()
        .map(|(k, v)| (k.clone(), v - before.errors.get(k).copied().unwrap_or(0)))
        .filter(|(_, v)| *v > 0)
        .collect();
    fig.server_alive = target.alive();
    sys::poll_until(SETTLE, || sys::child_pids().is_empty()).await;
    fig.children_left = sys::child_pids().len();
    let m2 = heap();
    fig.leak_round1_bytes = m1 - m0;
    fig.leak_round2_bytes = m2 - m1;
    let fds_before = fig.fds_before;
    sys::poll_until(Duration::from_secs(10), || {
        sys::open_fds().is_ok_and(|n| n <= fds_before)
    })
    .await;
    fig.fds_after = sys::open_fds().unwrap_or(usize::MAX);
    fig.rss_peak_kib = sys::rss_kib().map(|r| r.1).unwrap_or(0);
    // Idle blocking-pool threads (file's fsyncs, exec's reaping) exit after tokio's
    // 10 s keep-alive, and with them their stacks and malloc arenas: wait for that
    // (bounded) before judging memory.
    let settle = Instant::now();
    let rss_before = fig.rss_before_kib;
    sys::poll_until(RSS_SETTLE, || {
        sys::trim_heap();
        growth_pct(rss_before, sys::rss_kib().map_or(u64::MAX, |r| r.0)) <= 10.0
    })
    .await;
    fig.rss_settle_secs = settle.elapsed().as_secs_f64();
    fig.rss_after_kib = sys::rss_kib().map(|r| r.0).unwrap_or(0);
    fig.rss_growth_pct = growth_pct(fig.rss_before_kib, fig.rss_after_kib);
    if let Some(root) = target.root_path() {
        let (temps, checked, bad) = check_files(&root, &files.attempted, &files.acked);
        fig.temp_files_left = temps;
        fig.files_checked = checked;
        fig.files_bad = bad;
    }
    fig.healthy_after = fig.healthy_after && healthy(target).await.is_ok();
    fig.panics = sys::panics() - panics_before;
    fig
}

/// file: every body sent per name, and the names whose put was acknowledged.
#[derive(Default)]
struct Files {
    attempted: HashMap<String, HashSet<[u8; 32]>>,
    acked: HashSet<String>,
}

/// Drives connections `range` (the index picks region, FIN/RST and payload) and
/// tallies them into `fig` and `files`.
async fn drive(
    target: &Running,
    range: std::ops::Range<u64>,
    in_flight: usize,
    seed: u64,
    fig: &mut CutFigures,
    files: &mut Files,
) {
    let (kind, addr) = (target.kind, target.addr);
    let mut outcomes = futures::stream::iter(range)
        .map(|i| one(kind, addr, seed, i))
        .buffer_unordered(in_flight.max(1));
    while let Some(o) = outcomes.next().await {
        *fig.regions.entry(o.region.name().into()).or_default() += 1;
        if o.rst {
            fig.rst += 1;
        } else {
            fig.fin += 1;
        }
        if let Some((name, sha, ok)) = o.put {
            files.attempted.entry(name.clone()).or_default().insert(sha);
            if ok {
                fig.puts_acked += 1;
                files.acked.insert(name);
            }
        }
        if let Some(e) = o.error {
            fig.client_errors += 1;
            if fig.client_error_samples.len() < 5 {
                fig.client_error_samples.push(e);
            }
        }
    }
}

fn growth_pct(before: u64, after: u64) -> f64 {
    (after as f64 - before as f64) * 100.0 / (before.max(1) as f64)
}

/// Walks the file root: counts temp files, and checks every file's content is exactly
/// one body sent for its name and that every acked name is there.
fn check_files(
    root: &Path,
    attempted: &HashMap<String, HashSet<[u8; 32]>>,
    acked: &HashSet<String>,
) -> (usize, u64, u64) {
    let mut temps = 0;
    let mut checked = 0;
    let mut bad = 0;
    let mut seen = HashSet::new();
    let mut stack = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            bad += 1;
            continue;
        };
        for entry in entries.flatten() {
            let file_name = entry.file_name().to_string_lossy().into_owned();
            let name = if prefix.is_empty() {
                file_name.clone()
            } else {
                format!("{prefix}/{file_name}")
            };
            let Ok(kind) = entry.file_type() else {
                bad += 1;
                continue;
            };
            if kind.is_dir() {
                stack.push((entry.path(), name));
            } else if file_name.starts_with(TEMP_NAME_PREFIX) {
                temps += 1;
            } else {
                checked += 1;
                let ok = std::fs::read(entry.path()).is_ok_and(|body| {
                    let sha: [u8; 32] = Sha256::digest(&body).into();
                    attempted.get(&name).is_some_and(|set| set.contains(&sha))
                });
                if !ok {
                    bad += 1;
                }
                seen.insert(name);
            }
        }
    }
    bad += acked.iter().filter(|n| !seen.contains(*n)).count() as u64;
    (temps, checked, bad)
}

/// A fresh client gets a correct answer (bounded).
pub async fn healthy(target: &Running) -> Result<(), String> {
    let kind = target.kind;
    let work = async {
        let mut s = TcpStream::connect(target.addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        if kind == Kind::Auth
            && !chopstick_targets::auth::client_handshake(&mut s, KEY)
                .await
                .map_err(|e| format!("handshake: {e}"))?
        {
            return Err("right key rejected".into());
        }
        let mut rng = conn_rng(0, u64::MAX, Direction::Down);
        let req = match kind {
            Kind::File => {
                let (bytes, body) = hjson(json!({"op": "list"}), Vec::new());
                Request {
                    bytes,
                    body,
                    expect: Expect::Ok,
                    put: None,
                }
            }
            _ => request(kind, u64::MAX, &mut rng),
        };
        s.write_all(&req.bytes)
            .await
            .map_err(|e| format!("send: {e}"))?;
        read_reply(&mut s, kind, &req.expect).await
    };
    tokio::time::timeout(CONN_DEADLINE, work)
        .await
        .map_err(|_| "healthy client timed out".to_string())?
}

#[cfg(test)]
mod leak_tests {
    use super::*;

    fn judged(round1: i64, round2: i64) -> bool {
        let fig = CutFigures {
            target: "t".into(),
            connections: 2000,
            server_alive: true,
            healthy_after: true,
            leak_measure: "live heap".into(),
            leak_round1_bytes: round1,
            leak_round2_bytes: round2,
            leak_limit_bytes: 512 * 1024,
            ..Default::default()
        };
        fig.failures().is_empty()
    }

    #[test]
    fn one_off_growth_in_either_round_is_not_a_leak() {
        assert!(judged(3 << 20, 1000));
        assert!(judged(-5000, 3 << 20));
        assert!(judged(0, 0));
    }

    #[test]
    fn growth_beyond_the_limit_in_both_rounds_is_a_leak() {
        // A leak of 8 KiB per connection (one read buffer) over 1000 per round.
        assert!(!judged(8 << 20, 8 << 20));
        assert!(!judged(512 * 1024 + 1, 512 * 1024 + 1));
    }
}
