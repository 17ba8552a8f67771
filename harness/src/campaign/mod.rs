//! Campaigns: drive a target with seeded workloads under each fault, judge every reply
//! with an oracle, check liveness after every cut, shrink failures into reproducers.
//!
//! - [`drive`]: one connection over a real socket, per its plan.
//! - [`judge`]: expected versus seen, and the failure classes.
//! - [`target`]: `--connect ADDR` or `--spawn CMD` (started, watched, restarted).
//! - [`shrink`]: makes a failing case smaller while it still fails.
//! - [`repro`]: reproducer files and `chopstick replay`.

pub mod check;
pub mod drive;
pub mod judge;
pub mod payload;
pub mod repro;
pub mod shrink;
pub mod target;

use std::str::FromStr;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use targets::wire::Framing;

use crate::chaos::{conn_rng, Direction, Ending, FaultSet, Plan};
use crate::workload::{Mode, Workload};
pub use drive::Timing;
pub use judge::{End, Failure, FailureClass, Seen};
pub use target::{Target, TargetError, TargetSpec};

/// How replies are judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OracleKind {
    /// Each reply equals its request.
    Echo,
    /// Each reply is its request with ASCII a-z upper-cased.
    Upper,
    /// Each reply equals the reply to the same request on an unfaulted connection.
    Differential,
}

impl FromStr for OracleKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "echo" => Ok(OracleKind::Echo),
            "upper" => Ok(OracleKind::Upper),
            "differential" => Ok(OracleKind::Differential),
            _ => Err(format!(
                "unknown oracle `{s}` (expected echo, upper or differential)"
            )),
        }
    }
}

/// Everything about a case but its messages and plan.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CaseConfig {
    #[serde(with = "framing_string")]
    pub framing: Framing,
    pub oracle: OracleKind,
    pub mode: Mode,
    /// Send a FIN once everything is written (when the plan does not end otherwise).
    pub half_close: bool,
    #[serde(skip)]
    pub timing: Timing,
    /// How long a fresh connection may take to be served after a fault.
    #[serde(skip, default = "default_liveness")]
    pub liveness: Duration,
}

fn default_liveness() -> Duration {
    Duration::from_secs(3)
}

mod framing_string {
    use serde::{Deserialize, Deserializer, Serializer};
    use targets::wire::Framing;

    pub fn serialize<S: Serializer>(f: &Framing, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&f.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Framing, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// One connection's worth of test: its messages and the plan for the request stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Case {
    pub conn: u64,
    pub messages: Vec<Bytes>,
    pub plan: Plan,
}

/// The outcome of one case.
#[derive(Debug, Clone)]
pub struct CaseResult {
    pub failure: Option<Failure>,
    pub expected: Vec<Bytes>,
    pub seen: Seen,
    pub latencies_us: Vec<u64>,
    pub bytes: usize,
}

impl OracleKind {
    /// The replies due for `messages` (not for differential, which needs a baseline run).
    fn expected(self, messages: &[Bytes]) -> Vec<Bytes> {
        match self {
            OracleKind::Upper => messages
                .iter()
                .map(|m| Bytes::from(m.to_ascii_uppercase()))
                .collect(),
            _ => messages.to_vec(),
        }
    }
}

/// Draws case `conn` of a campaign: its messages and the plan of `faults` for them.
pub fn draw_case(
    workload: &Workload,
    framing: &Framing,
    faults: &FaultSet,
    seed: u64,
    conn: u64,
) -> Case {
    let messages = workload.messages(seed, conn);
    let plan = match framing.encode_all(&messages) {
        Ok((stream, layouts)) => faults.plan(
            stream.len(),
            &layouts,
            &mut conn_rng(seed, conn, Direction::Up),
        ),
        Err(_) => Plan::default(),
    };
    Case {
        conn,
        messages,
        plan,
    }
}

/// Runs one case against `target`, then (after a cut) checks liveness.
pub async fn run_case(target: &mut Target, config: &CaseConfig, case: &Case) -> CaseResult {
    let (stream, layouts) = match config.framing.encode_all(&case.messages) {
        Ok(x) => x,
        Err(e) => {
            return CaseResult {
                failure: Some(Failure::new(
                    FailureClass::MalformedReply,
                    None,
                    format!("cannot encode: {e}"),
                )),
                expected: Vec::new(),
                seen: Seen {
                    replies: Vec::new(),
                    end: End::Eof,
                },
                latencies_us: Vec::new(),
                bytes: 0,
            }
        }
    };
    let ending = case.plan.ending();
    // Frames wholly sent before a cut are due a reply; the cut one never is.
    let complete = match ending {
        Some((_, at)) => layouts.iter().take_while(|l| l.end <= at).count(),
        None => layouts.len(),
    };
    let expected = match config.oracle {
        OracleKind::Differential => baseline(target, config, &case.messages[..complete]).await,
        oracle => oracle.expected(&case.messages[..complete]),
    };
    let bytes = stream.len();
    let mut result = CaseResult {
        failure: None,
        expected,
        seen: Seen {
            replies: Vec::new(),
            end: End::Eof,
        },
        latencies_us: Vec::new(),
        bytes,
    };
    let sock = match drive::connect(target.addr, &config.timing).await {
        Ok(s) => s,
        Err(e) => {
            result.failure = Some(dead_or(
                target,
                FailureClass::Refused,
                format!("cannot connect: {e}"),
            ));
            recover(target).await;
            return result;
        }
    };
    let driven = drive::drive(
        sock,
        &config.framing,
        stream,
        &layouts,
        &case.plan,
        result.expected.len(),
        config.mode == Mode::PingPong,
        config.half_close,
        &config.timing,
    )
    .await;
    let must_finish = !matches!(ending, Some((Ending::Reset, _)));
    result.failure = judge::judge(&result.expected, &driven.seen, must_finish);
    result.seen = driven.seen;
    result.latencies_us = driven.latencies_us;
    if result.failure.is_none() && (ending.is_some() || target.exited().is_some()) {
        result.failure = liveness(target, config).await.err();
    }
    if result.failure.is_some() {
        recover(target).await;
    }
    result
}

/// The reply sequence of an unfaulted connection sending `messages`.
async fn baseline(target: &mut Target, config: &CaseConfig, messages: &[Bytes]) -> Vec<Bytes> {
    let Ok((stream, layouts)) = config.framing.encode_all(messages) else {
        return Vec::new();
    };
    let Ok(sock) = drive::connect(target.addr, &config.timing).await else {
        return Vec::new();
    };
    let plan = Plan::passthrough(stream.len());
    drive::drive(
        sock,
        &config.framing,
        stream,
        &layouts,
        &plan,
        messages.len(),
        false,
        config.half_close,
        &config.timing,
    )
    .await
    .seen
    .replies
}

/// A fresh connection must be served correctly within `config.liveness`.
pub async fn liveness(target: &mut Target, config: &CaseConfig) -> Result<(), Failure> {
    let probe = vec![Bytes::from_static(b"chopstick liveness probe")];
    let expected = match config.oracle {
        OracleKind::Differential => None,
        oracle => Some(oracle.expected(&probe)),
    };
    let (stream, layouts) = config
        .framing
        .encode_all(&probe)
        .expect("the probe always encodes");
    let deadline = tokio::time::Instant::now() + config.liveness;
    let timing = Timing {
        reply_timeout: config.liveness,
        ..config.timing
    };
    let mut last = String::new();
    // Retry connecting briefly: a server may take a moment to return to accept().
    while tokio::time::Instant::now() < deadline {
        match drive::connect(target.addr, &timing).await {
            Ok(sock) => {
                let plan = Plan::passthrough(stream.len());
                let d = drive::drive(
                    sock,
                    &config.framing,
                    stream.clone(),
                    &layouts,
                    &plan,
                    1,
                    false,
                    false,
                    &timing,
                )
                .await;
                return match (&expected, d.seen.replies.first()) {
                    (Some(want), Some(got)) if want[0] == *got => Ok(()),
                    (None, Some(_)) => Ok(()),
                    (_, Some(got)) => Err(Failure::new(
                        FailureClass::Liveness,
                        None,
                        format!(
                            "after the fault, a fresh connection got a wrong reply {}",
                            payload::preview(got)
                        ),
                    )),
                    (_, None) => Err(dead_or(
                        target,
                        FailureClass::Hang,
                        format!(
                            "after the fault, a fresh connection was not served within {:?} ({:?})",
                            config.liveness, d.seen.end
                        ),
                    )),
                };
            }
            Err(e) => {
                last = e.to_string();
                if target.exited().is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    Err(dead_or(
        target,
        FailureClass::Refused,
        format!("after the fault, fresh connections are refused: {last}"),
    ))
}

/// `class`, unless the spawned process has exited, which is reported instead.
fn dead_or(target: &mut Target, class: FailureClass, detail: String) -> Failure {
    match target.exited() {
        Some(status) => {
            let tail = target.stderr_tail();
            let stderr = if tail.is_empty() {
                String::new()
            } else {
                format!("; stderr: {tail}")
            };
            Failure::new(
                FailureClass::ServerDied,
                None,
                format!("server process exited ({status}){stderr}"),
            )
        }
        None => Failure::new(class, None, detail),
    }
}

/// After a failure, restart a spawned target so the next case starts healthy.
async fn recover(target: &mut Target) {
    if target.is_spawned() {
        if let Err(e) = target.restart().await {
            tracing::warn!("restart failed: {e}");
        }
    }
}
