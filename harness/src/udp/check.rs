//! `chopstick check --udp`: sends tagged datagrams to a UDP target through the seeded
//! datagram faults and judges every reply with an oracle.
//!
//! Every request starts with a 10-byte tag `#xxxxxxxx#` (its sequence number in hex),
//! which echo, upper (hex digits survive upper-casing) and time (literal text is copied)
//! all return, so each reply is matched to the request it answers. The faults are
//! applied on the way out by the same [`Shaper`](super::shaper::Shaper) the relay uses
//! ([`super::exchange`]), so the check knows exactly what the target received and can
//! tell injected faults from receiver bugs ([`super::judge`]):
//!
//! - a reply that is a strict prefix of the right answer is **silent truncation**, the
//!   bug of reading a datagram into too small a buffer and serving what fitted;
//! - a truncation *report* (`!truncated ...`, see [`chopstick_targets::udp::truncation_report`])
//!   is the correct reaction to a too-large datagram and never a failure;
//! - a request the target received but never answered is **lost**; one dropped by the
//!   `loss` fault is expected to go unanswered;
//! - more answers than copies received is **duplicated**; a reply matching nothing is
//!   **corrupted**; a time reply that is not the requested format near now is **wrong time**.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use rand::Rng;
use serde::Serialize;

pub use super::error::UdpCheckError;
pub use super::exchange::Request;
use super::exchange::{exchange, Params};
use super::fault::DatagramFaults;
use super::judge::{judge, kinds, tag};
pub use super::judge::{
    parse_tag, FailureKind, FaultCounts, OracleParseError, UdpFailure, UdpOracle, TAG_LEN,
};
use super::repro::{UdpReproducer, VERSION};
use super::target::{RunningTarget, UdpTarget};
use crate::campaign::payload::Payload;
use crate::chaos::{purpose_rng, Direction};
use chopstick_targets::udp::strftime;
use chopstick_targets::udp::MAX_UDP_PAYLOAD;

/// At most this many failing datagrams go into a shrunk reproducer.
const MAX_SHRUNK: usize = 16;

/// Formats the time oracle asks for (after the tag); all within the documented subset.
pub const TIME_FORMATS: &[&str] = &[
    strftime::DEFAULT_FORMAT,
    "%s",
    "%a %b %e %H:%M:%S %Z %Y",
    "%Y%m%d%H%M%S %j %y %%",
    "",
];

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

    pub(crate) fn params(&self) -> Params {
        Params::new(self.window, &self.faults, self.reply_timeout, self.deadline)
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

async fn check_with(
    config: &UdpCheckConfig,
    target: &RunningTarget,
) -> Result<UdpCheckReport, UdpCheckError> {
    let reqs = requests(config);
    let x = exchange(target.addr, &reqs, config.params()).await?;
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
        let mut repro = shrunk(config, &reqs, &report.failures, target).await?;
        report.reproducer = Some(repro.write_to(dir)?);
    }
    Ok(report)
}

/// A reproducer for a failed run: only the failing datagrams when they alone fail
/// the same way against `target` again, otherwise every datagram of the run.
async fn shrunk(
    config: &UdpCheckConfig,
    requests: &[Request],
    failures: &[UdpFailure],
    target: &RunningTarget,
) -> Result<UdpReproducer, UdpCheckError> {
    let mut seqs: Vec<u64> = failures.iter().filter_map(|f| f.seq).collect();
    seqs.sort_unstable();
    seqs.dedup();
    seqs.truncate(MAX_SHRUNK);
    let mut r = UdpReproducer {
        version: VERSION,
        seed: config.seed,
        target: config.target.clone(),
        oracle: config.oracle,
        faults: config.faults,
        datagrams: requests.to_vec(),
        failures: failures.to_vec(),
        original_datagrams: requests.len(),
        window: config.window,
        reply_timeout_ms: u64::try_from(config.reply_timeout.as_millis()).unwrap_or(u64::MAX),
        time_tolerance_s: config.time_tolerance.as_secs(),
        replay: String::new(),
    };
    if seqs.is_empty() || seqs.len() == requests.len() {
        return Ok(r);
    }
    let small: Vec<Request> = requests
        .iter()
        .filter(|q| seqs.contains(&q.seq))
        .cloned()
        .collect();
    let x = exchange(target.addr, &small, config.params()).await?;
    let j = judge(config.oracle, &small, &x, config.time_tolerance);
    let wanted = kinds(failures);
    if kinds(&j.failures).iter().any(|k| wanted.contains(k)) {
        r.datagrams = small;
        r.failures = j.failures;
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::udp::exchange::Exchange;
    use crate::udp::fault::Fate;

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
