//! `chopstick check --udp`: sends tagged datagrams to a UDP target through the seeded
//! datagram faults and judges every reply with an oracle.
//!
//! Every request starts with a 10-byte tag `#xxxxxxxx#` (its sequence number in hex),
//! which echo, upper (hex digits survive upper-casing) and time (literal text is copied)
//! all return, so each reply is matched to the request it answers. The faults are
//! applied on the way out by the same [`Shaper`] the relay uses, so the check knows
//! exactly what the target received and can tell injected faults from receiver bugs:
//!
//! - a reply that is a strict prefix of the right answer is **silent truncation**, the
//!   bug of reading a datagram into too small a buffer and serving what fitted;
//! - a truncation *report* (`!truncated ...`, see [`chopstick_targets::udp::truncation_report`])
//!   is the correct reaction to a too-large datagram and never a failure;
//! - a request the target received but never answered is **lost**; one dropped by the
//!   `loss` fault is expected to go unanswered;
//! - more answers than copies received is **duplicated**; a reply matching nothing is
//!   **corrupted**; a time reply that is not the requested format near now is **wrong time**.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;

use super::fault::{DatagramFaults, Fate};
use super::repro::{Payload, UdpReproError, UdpReproducer};
use super::shaper::{Datagram, Shaper};
use super::target::{RunningTarget, UdpTarget, UdpTargetError};
use crate::chaos::{purpose_rng, Direction};
use chopstick_targets::udp::strftime::{self, UtcTime};
use chopstick_targets::udp::{MAX_UDP_PAYLOAD, TRUNCATED_PREFIX};

/// Length of the `#xxxxxxxx#` tag that starts every request.
pub const TAG_LEN: usize = 10;

/// Formats the time oracle asks for (after the tag); all within the documented subset.
pub const TIME_FORMATS: &[&str] = &[
    strftime::DEFAULT_FORMAT,
    "%s",
    "%a %b %e %H:%M:%S %Z %Y",
    "%Y%m%d%H%M%S %j %y %%",
    "",
];

/// What a correct reply is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum UdpOracle {
    /// The same bytes.
    Echo,
    /// The ASCII upper-case of the request.
    Upper,
    /// The request is a format; the reply is the current UTC time in it.
    Time,
}

/// An `--oracle` that the UDP check does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown udp oracle `{0}` (expected echo, upper or time)")]
pub struct OracleParseError(pub String);

impl FromStr for UdpOracle {
    type Err = OracleParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "echo" => Ok(UdpOracle::Echo),
            "upper" => Ok(UdpOracle::Upper),
            "time" => Ok(UdpOracle::Time),
            _ => Err(OracleParseError(s.into())),
        }
    }
}

/// Everything one UDP check run needs. Build with [`UdpCheckConfig::new`] and adjust.
#[derive(Debug, Clone)]
pub struct UdpCheckConfig {
    pub target: UdpTarget,
    pub oracle: UdpOracle,
    pub faults: DatagramFaults,
    pub seed: u64,
    /// Requests to send (`--datagrams`).
    pub datagrams: usize,
    /// Largest request, tag included (echo and upper; time requests are short).
    pub max_size: usize,
    /// Requests awaiting a reply at once, so a slow target is not flooded into loss.
    pub window: usize,
    /// A reply not seen this long after the last progress is given up as lost.
    pub reply_timeout: Duration,
    /// Slack around send and receive time for the time oracle (clock granularity).
    pub time_tolerance: Duration,
    /// Bound on the whole exchange.
    pub deadline: Duration,
    /// Where to write a reproducer when something fails (`--artifacts`).
    pub artifacts: Option<PathBuf>,
}

impl UdpCheckConfig {
    pub fn new(target: UdpTarget, oracle: UdpOracle) -> UdpCheckConfig {
        UdpCheckConfig {
            target,
            oracle,
            faults: DatagramFaults::none(),
            seed: 0,
            datagrams: 200,
            max_size: 4096,
            window: 8,
            reply_timeout: Duration::from_secs(1),
            time_tolerance: Duration::from_secs(2),
            deadline: Duration::from_secs(60),
            artifacts: None,
        }
    }

    fn validate(&self) -> Result<(), UdpCheckError> {
        if !(TAG_LEN..=MAX_UDP_PAYLOAD).contains(&self.max_size) {
            return Err(UdpCheckError::Config(format!(
                "max size must be {TAG_LEN}..={MAX_UDP_PAYLOAD}, got {}",
                self.max_size
            )));
        }
        if self.datagrams == 0 || self.datagrams > 0xffff_fffe {
            return Err(UdpCheckError::Config(
                "datagrams must be 1..=4294967294".into(),
            ));
        }
        Ok(())
    }
}

/// One request as sent: its tag number, bytes and fate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub seq: u64,
    pub request: Payload,
    pub fate: Fate,
}

/// What went wrong with one reply or request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FailureKind {
    /// A reply that is a strict prefix of the right answer: a cut datagram served as whole.
    SilentTruncation,
    /// A reply that answers no request.
    Corrupted,
    /// A request the target received and never answered.
    Lost,
    /// More answers than copies the target received.
    Duplicated,
    /// A time reply not in the requested format near the current time.
    WrongTime,
}

impl std::fmt::Display for FailureKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = serde_json::to_value(self).ok();
        f.write_str(s.as_ref().and_then(|v| v.as_str()).unwrap_or("failure"))
    }
}

/// One failure, with expected vs seen where they exist.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct UdpFailure {
    pub kind: FailureKind,
    pub seq: Option<u64>,
    pub detail: String,
    // A payload is a string, or `{"hex": "..."}` when it is not UTF-8.
    #[cfg_attr(feature = "schema", schemars(with = "Option<serde_json::Value>"))]
    pub expected: Option<Payload>,
    #[cfg_attr(feature = "schema", schemars(with = "Option<serde_json::Value>"))]
    pub seen: Option<Payload>,
}

/// Counts per fault, injected by the check or observed in the replies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct FaultCounts {
    pub lost: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub truncated: u64,
    pub corrupted: u64,
    pub delayed: u64,
}

/// Version of `check --udp --json`'s layout ([`UdpCheckReport`]): raised when a field
/// changes meaning or goes away.
pub const UDP_REPORT_FORMAT: u32 = 1;

/// The result of one check run.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct UdpCheckReport {
    /// The version of this JSON layout (`UDP_REPORT_FORMAT`, published as
    /// `harness/schemas/udp-report.schema.json`).
    pub format: u32,
    pub seed: u64,
    pub target: String,
    pub oracle: UdpOracle,
    pub faults: String,
    pub datagrams: usize,
    /// Datagrams that reached the socket (copies included) and replies received.
    pub sent: u64,
    pub replies: u64,
    /// Faults the check applied to its requests.
    pub injected: FaultCounts,
    /// What the replies showed: `lost` = requests without an answer, `duplicated` =
    /// answers beyond the first, `reordered` = answers overtaken by a later request's,
    /// `truncated` = answers shorter than the request sent (cut in transit or by the
    /// receiver), `corrupted` = answers matching no request.
    pub observed: FaultCounts,
    /// Truncation reports received (a too-large request refused correctly).
    pub truncation_reported: u64,
    /// Everything not explained by the injected faults. Empty = pass.
    pub failures: Vec<UdpFailure>,
    /// The reproducer written, when failing and given an artifacts directory.
    pub reproducer: Option<PathBuf>,
    /// Tail of a spawned target's stderr.
    pub stderr: Option<String>,
    /// Whether the exchange hit `deadline` before finishing.
    pub timed_out: bool,
}

impl UdpCheckReport {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    /// One line for the terminal, seed first so it can be rerun.
    pub fn summary(&self) -> String {
        let mut kinds: Vec<String> = Vec::new();
        for f in &self.failures {
            let k = f.kind.to_string();
            if !kinds.contains(&k) {
                kinds.push(k);
            }
        }
        let o = &self.observed;
        format!(
            "seed {} {} oracle {:?} faults {}: {} datagrams, {} replies; observed lost {} dup {} reordered {} truncated {} corrupted {}; truncation reported {}; {} failures{}",
            self.seed, self.target, self.oracle, self.faults, self.datagrams, self.replies,
            o.lost, o.duplicated, o.reordered, o.truncated, o.corrupted,
            self.truncation_reported, self.failures.len(),
            if kinds.is_empty() { String::new() } else { format!(" ({})", kinds.join(", ")) }
        )
    }
}

/// Why a check could not run (a usage or environment error, not a finding).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UdpCheckError {
    #[error(transparent)]
    Target(#[from] UdpTargetError),
    #[error("bad check configuration: {0}")]
    Config(String),
    #[error("socket error: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Repro(#[from] UdpReproError),
}

fn tag(seq: u64) -> String {
    format!("#{seq:08x}#")
}

/// The sequence number in a reply's leading tag (hex of either case).
pub fn parse_tag(bytes: &[u8]) -> Option<u64> {
    let t = bytes.get(..TAG_LEN)?;
    if t[0] != b'#' || t[TAG_LEN - 1] != b'#' {
        return None;
    }
    let hex = std::str::from_utf8(&t[1..TAG_LEN - 1]).ok()?;
    u64::from_str_radix(hex, 16).ok()
}

/// The requests of a run: payloads from the seed's `udp-requests` stream, fates from
/// `faults.fate(seed, Up, seq)`. Same config, same requests.
pub fn requests(config: &UdpCheckConfig) -> Vec<Request> {
    let mut rng = purpose_rng(config.seed, "udp-requests");
    let max_extra = config.max_size.saturating_sub(TAG_LEN);
    (0..config.datagrams as u64)
        .map(|seq| {
            let mut bytes = tag(seq).into_bytes();
            match config.oracle {
                UdpOracle::Time => {
                    bytes.push(b' ');
                    let f = TIME_FORMATS[rng.random_range(0..TIME_FORMATS.len())];
                    bytes.extend_from_slice(f.as_bytes());
                }
                UdpOracle::Echo | UdpOracle::Upper => {
                    // Sizes spread over the ranges where receive buffers are commonly
                    // too small (64, 512, 1500 bytes) and up to the maximum.
                    let cap = [54, 502, 1490, max_extra][rng.random_range(0..4)].min(max_extra);
                    let extra = rng.random_range(0..=cap);
                    if rng.random_range(0..4) == 0 {
                        bytes.extend((0..extra).map(|_| rng.random::<u8>()));
                    } else {
                        const TEXT: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789 -";
                        bytes.extend((0..extra).map(|_| TEXT[rng.random_range(0..TEXT.len())]));
                    }
                }
            }
            Request {
                seq,
                request: Payload(Bytes::from(bytes)),
                fate: config.faults.fate(config.seed, Direction::Up, seq),
            }
        })
        .collect()
}

/// What one exchange saw.
#[derive(Debug, Default)]
pub(crate) struct Exchange {
    /// Per request (by position): what the target received (last copy) and how often.
    pub delivered: Vec<Option<Bytes>>,
    pub copies: Vec<u32>,
    pub sent_unix: Vec<Option<i64>>,
    /// Replies in arrival order, with the UTC second they arrived.
    pub replies: Vec<(Bytes, i64)>,
    pub injected: FaultCounts,
    pub sent: u64,
    pub timed_out: bool,
}

/// Knobs of the exchange, separate from the target so replays reuse them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Params {
    pub window: usize,
    pub reply_timeout: Duration,
    pub deadline: Duration,
}

pub(crate) async fn exchange(
    addr: SocketAddr,
    requests: &[Request],
    p: Params,
) -> std::io::Result<Exchange> {
    let bind: SocketAddr = if addr.is_ipv4() {
        ([127, 0, 0, 1], 0).into()
    } else {
        "[::1]:0".parse().expect("literal")
    };
    let sock = UdpSocket::bind(bind).await?;
    // Room for a burst of replies; the kernel may cap it, which only costs speed.
    let _ = socket2::SockRef::from(&sock).set_recv_buffer_size(4 << 20);
    let n = requests.len();
    let mut x = Exchange {
        delivered: vec![None; n],
        copies: vec![0; n],
        sent_unix: vec![None; n],
        ..Exchange::default()
    };
    let index: HashMap<u64, usize> = requests
        .iter()
        .enumerate()
        .map(|(i, r)| (r.seq, i))
        .collect();
    let mut shaper = Shaper::default();
    let mut buf = vec![0u8; 65_536];
    let hard = Instant::now() + p.deadline;
    let (mut next, mut closed, mut written_off, mut pushed) = (0usize, false, 0u64, 0u64);
    let mut last_progress = Instant::now();
    loop {
        let now = Instant::now();
        if now >= hard {
            x.timed_out = true;
            break;
        }
        while let Some(Datagram { seq, bytes }) = shaper.pop_due(now) {
            let i = index[&seq];
            // A send error (ICMP from a dead target) is one lost datagram, not the end.
            if sock.send_to(&bytes, addr).await.is_ok() {
                x.copies[i] += 1;
                x.sent_unix[i].get_or_insert_with(strftime::unix_now);
                x.delivered[i] = Some(bytes);
                x.sent += 1;
            }
        }
        // Copies pushed into the shaper count as awaited from the moment they are
        // pushed, so delayed and held datagrams cannot sneak past the window as a burst.
        let awaited = pushed.saturating_sub(x.replies.len() as u64 + written_off);
        if next < n && (awaited as usize) < p.window.max(1) {
            let r = &requests[next];
            pushed += u64::from(r.fate.copies);
            let a = shaper.push(
                now,
                &r.fate,
                Datagram {
                    seq: r.seq,
                    bytes: r.request.0.clone(),
                },
            );
            let c = &mut x.injected;
            c.lost += u64::from(a.lost);
            c.duplicated += u64::from(a.duplicated);
            c.reordered += u64::from(a.reordered);
            c.truncated += u64::from(a.truncated);
            c.delayed += u64::from(a.delayed);
            next += 1;
            last_progress = now;
            continue;
        }
        if next == n && !closed {
            shaper.close(now);
            closed = true;
            continue;
        }
        let quiet = now.duration_since(last_progress) >= p.reply_timeout;
        if closed && shaper.is_empty() && (awaited == 0 || quiet) {
            break;
        }
        if quiet && next < n {
            // Stop waiting for replies that are not coming; they are judged lost later.
            written_off += awaited;
            last_progress = now;
            continue;
        }
        let mut wake = (last_progress + p.reply_timeout).min(hard);
        if let Some(w) = shaper.next_wake() {
            wake = wake.min(w);
        }
        tokio::select! {
            r = sock.recv_from(&mut buf) => {
                if let Ok((len, from)) = r {
                    if from == addr {
                        x.replies.push((Bytes::copy_from_slice(&buf[..len]), strftime::unix_now()));
                        last_progress = Instant::now();
                    }
                }
            }
            _ = tokio::time::sleep_until(wake.into()) => {}
        }
    }
    Ok(x)
}

enum Verdict {
    Ok,
    Prefix(Bytes),
    Mismatch(Option<Bytes>),
}

fn verdict(oracle: UdpOracle, delivered: &Bytes, reply: &[u8], window: (i64, i64)) -> Verdict {
    let expected = match oracle {
        UdpOracle::Echo => delivered.clone(),
        UdpOracle::Upper => Bytes::from(delivered.to_ascii_uppercase()),
        UdpOracle::Time => {
            let format: &[u8] = if delivered.is_empty() {
                strftime::DEFAULT_FORMAT.as_bytes()
            } else {
                delivered
            };
            // Near now = equal to the format applied to some second in the window.
            let (lo, hi) = window;
            let hi = hi.min(lo.saturating_add(600));
            let mut nearest = None;
            for t in lo..=hi {
                if let Ok(e) = strftime::format(format, &UtcTime::from_unix(t), MAX_UDP_PAYLOAD) {
                    if e == reply {
                        return Verdict::Ok;
                    }
                    nearest.get_or_insert(Bytes::from(e));
                }
            }
            return Verdict::Mismatch(nearest);
        }
    };
    if expected == reply {
        Verdict::Ok
    } else if reply.len() < expected.len() && expected.starts_with(reply) {
        Verdict::Prefix(expected)
    } else {
        Verdict::Mismatch(Some(expected))
    }
}

/// The judgement of one exchange.
#[derive(Debug, Default)]
pub(crate) struct Judgement {
    pub observed: FaultCounts,
    pub truncation_reported: u64,
    pub failures: Vec<UdpFailure>,
}

fn payload(b: &[u8]) -> Option<Payload> {
    Some(Payload(Bytes::copy_from_slice(b)))
}

pub(crate) fn judge(
    oracle: UdpOracle,
    requests: &[Request],
    x: &Exchange,
    tolerance: Duration,
) -> Judgement {
    let tol = i64::try_from(tolerance.as_secs())
        .unwrap_or(i64::MAX / 4)
        .max(1);
    let index: HashMap<u64, usize> = requests
        .iter()
        .enumerate()
        .map(|(i, r)| (r.seq, i))
        .collect();
    let mut answers = vec![0u32; requests.len()];
    let mut j = Judgement::default();
    let mut highest_first: Option<u64> = None;
    for (reply, at) in &x.replies {
        if reply.starts_with(TRUNCATED_PREFIX) {
            j.truncation_reported += 1;
            // The report quotes the request's first bytes; credit that request.
            let head = reply
                .windows(5)
                .position(|w| w == b"head=")
                .map(|p| &reply[p + 5..]);
            if let Some(i) = head.and_then(parse_tag).and_then(|s| index.get(&s)) {
                answers[*i] += 1;
            }
            continue;
        }
        // Candidates: the tagged request, or (tag cut off in transit) any request whose
        // delivered bytes lost their tag.
        let candidates: Vec<usize> = match parse_tag(reply).and_then(|s| index.get(&s)) {
            Some(i) if x.delivered[*i].is_some() => vec![*i],
            Some(_) => vec![],
            None => (0..requests.len())
                .filter(|i| x.delivered[*i].as_ref().is_some_and(|d| d.len() < TAG_LEN))
                .collect(),
        };
        let mut matched = None;
        let mut prefix = None;
        let mut mismatch = None;
        for &i in &candidates {
            let Some(d) = &x.delivered[i] else { continue };
            let window = (x.sent_unix[i].unwrap_or(*at) - tol, at + tol);
            match verdict(oracle, d, reply, window) {
                Verdict::Ok => {
                    // Among equal candidates, credit one still owed an answer.
                    if matched.is_none() || answers[i] < x.copies[i] {
                        matched = Some(i);
                    }
                    if answers[i] < x.copies[i] {
                        break;
                    }
                }
                Verdict::Prefix(e) => prefix = Some((i, e)),
                Verdict::Mismatch(e) => mismatch = Some((i, e)),
            }
        }
        if let Some(i) = matched {
            answers[i] += 1;
            let seq = requests[i].seq;
            if answers[i] == 1 {
                if highest_first.is_some_and(|h| seq < h) {
                    j.observed.reordered += 1;
                }
                highest_first = Some(highest_first.map_or(seq, |h| h.max(seq)));
            }
            if reply.len() < requests[i].request.0.len() && oracle != UdpOracle::Time {
                j.observed.truncated += 1; // cut in transit by the truncate fault: expected
            }
        } else if let Some((i, expected)) = prefix {
            answers[i] += 1;
            j.observed.truncated += 1;
            j.failures.push(UdpFailure {
                kind: FailureKind::SilentTruncation,
                seq: Some(requests[i].seq),
                detail: format!(
                    "reply has {} of the {} bytes expected and no truncation report: a cut datagram was served as whole",
                    reply.len(),
                    expected.len()
                ),
                expected: Some(Payload(expected)),
                seen: payload(reply),
            });
        } else {
            j.observed.corrupted += 1;
            let (seq, expected) = match mismatch {
                Some((i, e)) => {
                    answers[i] += 1;
                    (Some(requests[i].seq), e.map(Payload))
                }
                None => (None, None),
            };
            let kind = if oracle == UdpOracle::Time && seq.is_some() {
                FailureKind::WrongTime
            } else {
                FailureKind::Corrupted
            };
            j.failures.push(UdpFailure {
                kind,
                seq,
                detail: match (kind, seq) {
                    (FailureKind::WrongTime, _) => format!(
                        "reply is not the requested format at any second within {tol} s of the exchange"
                    ),
                    (_, Some(_)) => "reply carries a request's tag but not its answer".into(),
                    _ => "reply matches no request sent".into(),
                },
                expected,
                seen: payload(reply),
            });
        }
    }
    for (i, r) in requests.iter().enumerate() {
        let (copies, got) = (x.copies[i], answers[i]);
        if got == 0 {
            j.observed.lost += 1;
            if copies > 0 {
                j.failures.push(UdpFailure {
                    kind: FailureKind::Lost,
                    seq: Some(r.seq),
                    detail: format!("target received {copies} cop(ies) and never answered"),
                    expected: x.delivered[i].as_deref().and_then(payload),
                    seen: None,
                });
            }
        }
        j.observed.duplicated += u64::from(got.saturating_sub(1));
        if got > copies && copies > 0 {
            j.failures.push(UdpFailure {
                kind: FailureKind::Duplicated,
                seq: Some(r.seq),
                detail: format!("{got} answers to {copies} cop(ies) received"),
                expected: None,
                seen: None,
            });
        }
    }
    j
}

/// Runs one check: starts or reaches the target, exchanges, judges, and on failure
/// writes a reproducer (when `artifacts` is set) after confirming it still fails with
/// only the failing datagrams.
pub async fn run_check(config: &UdpCheckConfig) -> Result<UdpCheckReport, UdpCheckError> {
    config.validate()?;
    let target = RunningTarget::start(&config.target).await?;
    let result = check_with(config, &target).await;
    let stderr = target.stderr();
    target.stop().await;
    let mut report = result?;
    if !stderr.is_empty() {
        report.stderr = Some(stderr);
    }
    Ok(report)
}

pub(crate) fn params(config: &UdpCheckConfig) -> Params {
    // A held datagram waits for up to `reorder window - 1` later ones; the send window
    // must let that many through, or holds end by timeout instead of by reordering.
    let reorder = config.faults.reorder.map_or(0, |(w, _)| w as usize);
    Params {
        window: config.window.max(reorder + 1),
        reply_timeout: config.reply_timeout,
        deadline: config.deadline,
    }
}

async fn check_with(
    config: &UdpCheckConfig,
    target: &RunningTarget,
) -> Result<UdpCheckReport, UdpCheckError> {
    let reqs = requests(config);
    let x = exchange(target.addr, &reqs, params(config)).await?;
    let j = judge(config.oracle, &reqs, &x, config.time_tolerance);
    let mut report = UdpCheckReport {
        format: UDP_REPORT_FORMAT,
        seed: config.seed,
        target: config.target.to_string(),
        oracle: config.oracle,
        faults: config.faults.to_string(),
        datagrams: reqs.len(),
        sent: x.sent,
        replies: x.replies.len() as u64,
        injected: x.injected,
        observed: j.observed,
        truncation_reported: j.truncation_reported,
        failures: j.failures,
        reproducer: None,
        stderr: None,
        timed_out: x.timed_out,
    };
    if let (false, Some(dir)) = (report.failures.is_empty(), &config.artifacts) {
        let mut repro = UdpReproducer::shrunk(config, &reqs, &report.failures, target).await?;
        report.reproducer = Some(repro.write_to(dir)?);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(oracle: UdpOracle) -> UdpCheckConfig {
        let mut c = UdpCheckConfig::new(UdpTarget::Connect(([127, 0, 0, 1], 9).into()), oracle);
        c.datagrams = 50;
        c
    }

    #[test]
    fn tags_round_trip_and_survive_upper_case() {
        assert_eq!(parse_tag(tag(0xab).as_bytes()), Some(0xab));
        assert_eq!(
            parse_tag(tag(0xab).to_ascii_uppercase().as_bytes()),
            Some(0xab)
        );
        assert_eq!(parse_tag(b"#0000"), None);
        assert_eq!(parse_tag(b"x00000001#"), None);
    }

    #[test]
    fn same_seed_same_requests_within_size_bounds() {
        let mut c = cfg(UdpOracle::Echo);
        c.max_size = 600;
        let a = requests(&c);
        assert_eq!(a, requests(&c));
        assert!(a
            .iter()
            .all(|r| (TAG_LEN..=600).contains(&r.request.0.len())));
        assert!(a
            .iter()
            .enumerate()
            .all(|(i, r)| parse_tag(&r.request.0) == Some(i as u64)));
        c.seed = 1;
        assert_ne!(a, requests(&c));
    }

    fn exchange_of(reqs: &[Request], replies: &[&[u8]]) -> Exchange {
        let now = strftime::unix_now();
        Exchange {
            delivered: reqs.iter().map(|r| Some(r.request.0.clone())).collect(),
            copies: vec![1; reqs.len()],
            sent_unix: vec![Some(now); reqs.len()],
            replies: replies
                .iter()
                .map(|r| (Bytes::copy_from_slice(r), now))
                .collect(),
            ..Exchange::default()
        }
    }

    fn req(seq: u64, body: &str) -> Request {
        Request {
            seq,
            request: Payload(Bytes::from(format!("{}{body}", tag(seq)))),
            fate: Fate::CLEAN,
        }
    }

    #[test]
    fn judge_tells_silent_truncation_from_a_truncation_report() {
        let reqs = [req(0, "hello world"), req(1, "abc")];
        let x = exchange_of(
            &reqs,
            &[b"#00000000#hello", b"!truncated max=5 head=#00000001#abc"],
        );
        let j = judge(UdpOracle::Echo, &reqs, &x, Duration::from_secs(2));
        assert_eq!(j.failures.len(), 1);
        assert_eq!(j.failures[0].kind, FailureKind::SilentTruncation);
        assert_eq!(j.truncation_reported, 1);
        assert_eq!(
            j.observed.lost, 0,
            "a reported truncation answers its request"
        );
    }

    #[test]
    fn judge_counts_reorder_duplicate_loss_and_corruption() {
        let reqs = [req(0, "a"), req(1, "b"), req(2, "c")];
        let x = exchange_of(
            &reqs,
            &[b"#00000001#b", b"#00000000#a", b"#00000001#b", b"junk"],
        );
        let j = judge(UdpOracle::Echo, &reqs, &x, Duration::from_secs(2));
        assert_eq!(
            j.observed,
            FaultCounts {
                lost: 1,
                duplicated: 1,
                reordered: 1,
                corrupted: 1,
                ..FaultCounts::default()
            }
        );
        let kinds: Vec<FailureKind> = j.failures.iter().map(|f| f.kind).collect();
        assert_eq!(
            kinds,
            [
                FailureKind::Corrupted,
                FailureKind::Duplicated,
                FailureKind::Lost
            ]
        );
    }

    #[test]
    fn judge_accepts_injected_loss_and_duplicates() {
        let reqs = [req(0, "a"), req(1, "b")];
        let mut x = exchange_of(&reqs, &[b"#00000001#b", b"#00000001#b"]);
        x.copies = vec![0, 2];
        x.delivered[0] = None;
        let j = judge(UdpOracle::Echo, &reqs, &x, Duration::from_secs(2));
        assert!(j.failures.is_empty(), "{:?}", j.failures);
        assert_eq!((j.observed.lost, j.observed.duplicated), (1, 1));
    }

    #[test]
    fn time_judge_wants_the_format_near_now() {
        let reqs = [req(0, " %s"), req(1, " %Y")];
        let now = strftime::unix_now();
        let good = format!("#00000000# {now}");
        let x = exchange_of(&reqs, &[good.as_bytes(), b"#00000001# 1999"]);
        let j = judge(UdpOracle::Time, &reqs, &x, Duration::from_secs(2));
        assert_eq!(j.failures.len(), 1);
        assert_eq!(
            (j.failures[0].kind, j.failures[0].seq),
            (FailureKind::WrongTime, Some(1))
        );
    }

    #[test]
    fn oracle_and_bad_sizes_are_rejected() {
        assert!("differential".parse::<UdpOracle>().is_err());
        let mut c = cfg(UdpOracle::Echo);
        c.max_size = 3;
        assert!(matches!(c.validate(), Err(UdpCheckError::Config(_))));
    }
}
