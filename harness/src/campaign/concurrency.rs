//! `--concurrency N|auto`: how many of a profile's connections are in flight at once,
//! and the probe that decides `auto`.
//!
//! A server that serves one client at a time is correct; driving it with several
//! connections at once would make every queued connection look like a hang. So
//! `auto` asks the server first: with [`AUTO_CONCURRENCY`]` - 1` connections open
//! and idle (nothing sent, so closing them is a clean end between frames), a fresh
//! connection must round-trip the oracle's liveness probe within [`PROBE_WAIT`]. If
//! it does, the server serves that many clients at once; if not, the check runs one
//! connection at a time. A busy machine can only make the probe fail, which costs
//! speed, never a false alarm.
//!
//! Concurrency changes how fast a check runs, not what it finds: every case's plan
//! comes from its own seed, results are taken in case order, and a case that fails
//! among others is run again alone (see [`super::check::drive_profile`]).

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio_util::codec::FramedRead;

use super::stuck::Watch;
use super::{open_fresh, CaseConfig, Target, TargetSpec};
use crate::oracle::PROBE_CONN;

/// What `auto` runs at when the probe says the server serves clients concurrently.
/// Cases spend most of their time waiting (pauses between writes, the reply grace),
/// so more connections than cores pay off.
pub const AUTO_CONCURRENCY: usize = 8;
/// Most connections in flight that `--concurrency` accepts.
pub const MAX_CONCURRENCY: usize = 64;
/// How long the probe's fresh connection may take to be served while the others are
/// open. Generous for a loopback round trip; a slower answer means "one at a time".
pub const PROBE_WAIT: Duration = Duration::from_secs(1);
/// How long connections may sit in the server's accept queue, never taken, before the
/// probe stops waiting and says "one at a time" (`campaign::stuck`): a server that
/// serves clients concurrently takes a new one off the queue in well under a
/// millisecond, and one that misses this on a busy machine is only checked more slowly.
pub const ACCEPT_STALL: Duration = Duration::from_millis(150);

/// `--concurrency`: a number of connections, or `auto` (probe, then
/// [`AUTO_CONCURRENCY`] or 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Concurrency {
    #[default]
    Auto,
    Fixed(usize),
}

/// A `--concurrency` that is neither `auto` nor a number in range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad concurrency `{0}`: expected `auto` or a number from 1 to {MAX_CONCURRENCY}")]
pub struct ConcurrencyError(pub String);

impl std::str::FromStr for Concurrency {
    type Err = ConcurrencyError;

    fn from_str(s: &str) -> Result<Concurrency, ConcurrencyError> {
        let s = s.trim();
        if s == "auto" {
            return Ok(Concurrency::Auto);
        }
        match s.parse::<usize>() {
            Ok(n) if (1..=MAX_CONCURRENCY).contains(&n) => Ok(Concurrency::Fixed(n)),
            _ => Err(ConcurrencyError(s.to_string())),
        }
    }
}

impl std::fmt::Display for Concurrency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Concurrency::Auto => f.write_str("auto"),
            Concurrency::Fixed(n) => write!(f, "{n}"),
        }
    }
}

/// What a check runs at, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decided {
    pub concurrency: usize,
    /// One line for the user: the probe's observation, or that it was asked for.
    pub reason: String,
}

/// Whether `target` can be driven over several connections at once at all: only
/// servers reached by address (a `--client` is started per case).
pub fn supports_lanes(target: &Target) -> bool {
    target.client.is_none() && matches!(target.spec, TargetSpec::Connect(_) | TargetSpec::Spawn(_))
}

/// Resolves `asked` for `target`: a number is taken as it is (1 for targets that
/// cannot have several connections); `auto` runs the probe. `session` is what the
/// oracle may probe with (a real server's own first request).
pub async fn decide(
    target: &Target,
    config: &CaseConfig,
    asked: Concurrency,
    session: &[Bytes],
) -> Decided {
    if !supports_lanes(target) {
        return Decided {
            concurrency: 1,
            reason: "one connection at a time (the target is not a server at an address)".into(),
        };
    }
    match asked {
        Concurrency::Fixed(n) => Decided {
            concurrency: n,
            reason: format!("{n} connection(s) at a time (--concurrency {n})"),
        },
        Concurrency::Auto => probe(target, config, AUTO_CONCURRENCY, session).await,
    }
}

/// Opens `want - 1` idle connections, then checks that one more is served within
/// [`PROBE_WAIT`]; `want` if it is, else 1.
///
/// Nothing is cut: the idle connections close between frames and the probe's own
/// connection stays open until its reply has come (bounded by the liveness deadline),
/// so a server that serves clients in turn never sees a peer vanish mid-request.
pub async fn probe(
    target: &Target,
    config: &CaseConfig,
    want: usize,
    session: &[Bytes],
) -> Decided {
    let one = |why: String| Decided {
        concurrency: 1,
        reason: format!("{why}: one connection at a time"),
    };
    let probe = config.oracle.probe(session);
    let Ok((request, _)) = config.encode(PROBE_CONN, std::slice::from_ref(&probe.message)) else {
        return one("probe: the liveness probe cannot be encoded".into());
    };
    let mut idle = Vec::with_capacity(want.saturating_sub(1));
    for _ in 1..want {
        match open_fresh(target, config, &config.timing).await {
            Ok(sock) => idle.push(sock),
            Err(f) => {
                return one(format!(
                    "probe: only {} connection(s) could be opened at once ({})",
                    idle.len() + 1,
                    f.detail
                ))
            }
        }
    }
    let mut sock = match open_fresh(target, config, &config.timing).await {
        Ok(sock) => sock,
        Err(f) => {
            return one(format!(
                "probe: a connection beside {} open ones was refused ({})",
                idle.len(),
                f.detail
            ))
        }
    };
    let written = tokio::time::timeout(PROBE_WAIT, sock.write_all(&request)).await;
    let mut replies = FramedRead::new(sock, config.oracle.reply_codec(config.reply_framing()));
    let mut unaccepted = None;
    let served = matches!(written, Ok(Ok(()))) && {
        let reply = tokio::time::timeout(PROBE_WAIT, replies.next());
        match Watch::new(target) {
            Some(mut watch) => tokio::select! {
                r = reply => matches!(r, Ok(Some(Ok(_)))),
                queued = watch.not_accepting(ACCEPT_STALL) => {
                    unaccepted = Some(queued);
                    false
                }
            },
            None => matches!(reply.await, Ok(Some(Ok(_)))),
        }
    };
    // Let a server that serves clients in turn finish with the idle ones, then with
    // the probe, before its connection goes: it then sees only clean ends.
    drop(idle);
    if !served {
        let _ = tokio::time::timeout(config.liveness, replies.next()).await;
    }
    drop(replies);
    if served {
        Decided {
            concurrency: want,
            reason: format!(
                "probe: a connection was served while {} others were open: {want} connections at a time",
                want - 1
            ),
        }
    } else {
        let seen = match unaccepted {
            Some(queued) => format!("sat unaccepted for {queued:.1?}"),
            None => format!("was not served within {PROBE_WAIT:?}"),
        };
        one(format!(
            "probe: a connection {seen} while {} other(s) were open (the server serves one \
             client at a time)",
            want - 1
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrency_is_auto_or_a_number_in_range() {
        assert_eq!("auto".parse(), Ok(Concurrency::Auto));
        assert_eq!(" 4 ".parse(), Ok(Concurrency::Fixed(4)));
        assert!("0".parse::<Concurrency>().is_err());
        assert!("65".parse::<Concurrency>().is_err());
        assert!("many".parse::<Concurrency>().is_err());
        assert_eq!(Concurrency::Fixed(3).to_string(), "3");
    }
}
