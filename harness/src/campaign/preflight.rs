//! Pre-flight: before any fault, one unfaulted connection must round-trip (and a
//! second one be served after it). If not, `check` stops at once (exit 2) with a
//! diagnosis instead of a wall of identical failures: what the reply bytes look like
//! (text, HTTP, another width or byte order), whether the reply is the request with
//! its header transformed, whether the server exited after one connection or never
//! answered.
//!
//! The round trip itself is an ordinary [`run_case`]; only when it fails does
//! pre-flight open a raw connection of its own to look at the bytes that came back.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use chopstick_targets::wire::{Framing, DEFAULT_MAX};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::codec::Decoder;

use super::payload::preview;
use super::{run_case, Case, CaseConfig, FailureClass, Target};
use crate::chaos::Plan;

/// The payload of the pre-flight request: lowercase letters so `upper` shows, a space
/// and a colon so text stays text.
pub const PROBE: &[u8] = b"chopstick preflight: hello";
/// Size of the large pre-flight message: above what a 16-bit length field can say.
pub const BIG_PROBE: usize = 70_000;
/// Most reply bytes kept for a diagnosis.
const MAX_SAMPLE: usize = 64 * 1024;
/// How long the diagnosing connection waits for reply bytes.
const SAMPLE_WAIT: Duration = Duration::from_millis(1500);
/// Bytes shown in a diagnosis.
const SHOWN: usize = 24;
/// Framings tried on a reply that does not decode in the configured one.
const CANDIDATES: &[&str] = &[
    "u32be", "u32le", "u16be", "u16le", "u64be", "u64le", "u8", "i32le", "i32be", "line", "hjson",
];
/// The diagnosis of a server that is not a long-running server.
const ONE_AND_DONE: &str = "the server served one connection and then stopped (exited or \
     stopped accepting): chopstick needs a server that keeps accepting connections";
/// The same, after "or it": a spawned server's first connection is chopstick's
/// start-up check.
const ONE_AND_DONE_SHORT: &str = "served one connection (chopstick's start-up check) and then \
     stopped: chopstick needs a server that keeps accepting connections";
/// Oracles whose requests are the framing's plain payloads: the pre-flight's probe
/// means the same to them as to the server.
const PLAIN_ORACLES: &[&str] = &["echo", "upper", "differential"];
/// Connection indexes of the two pre-flight cases: outside any workload's range.
const PREFLIGHT_CONN: u64 = u64::MAX - 2;

/// Why the target cannot be checked as configured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("pre-flight: {what}\n  diagnosis: {diagnosis}")]
#[non_exhaustive]
pub struct PreflightError {
    /// What went wrong on the unfaulted connection.
    pub what: String,
    /// What it most likely means, and what to try.
    pub diagnosis: String,
}

/// Runs the pre-flight for oracles that send the framing's plain payloads (echo,
/// upper, differential); the protocol oracles of `run` have their own requests.
///
/// The first connection sends [`PROBE`]; the second sends it and a message of
/// `largest.min(`[`BIG_PROBE`]`)` bytes: a 16-bit length field echoes any small u32be
/// frame back as a valid one (an empty frame, then the payload), only a length above
/// 65535 tells them apart.
pub async fn preflight(
    target: &mut Target,
    config: &CaseConfig,
    largest: usize,
) -> Result<(), PreflightError> {
    if !PLAIN_ORACLES.contains(&config.oracle.name()) {
        return Ok(());
    }
    // A raw message is one write the server reads with one `recv` of its own size:
    // nothing tells a big one apart from a short buffer, so raw sends only the small probe.
    let big = if config.framing.is_raw() {
        0
    } else {
        largest.min(BIG_PROBE).min(config.framing.max())
    };
    let big_probe: Bytes = PROBE
        .iter()
        .copied()
        .cycle()
        .take(big)
        .collect::<Vec<u8>>()
        .into();
    let small = vec![Bytes::from_static(PROBE)];
    let mut both = small.clone();
    if big > PROBE.len() {
        both.push(big_probe);
    }
    for (n, messages) in [small, both].into_iter().enumerate() {
        let conn = PREFLIGHT_CONN + n as u64;
        let Ok((stream, _)) = config.encode(conn, &messages) else {
            return Ok(()); // the campaign reports encoding errors itself
        };
        let case = Case {
            conn,
            plan: Plan::passthrough(stream.len()),
            messages,
        };
        let exits = target.exits;
        let result = run_case(target, config, &case).await;
        let Some(failure) = result.failure else {
            continue;
        };
        // A connection queued while the server was exiting is reset, not refused: judged
        // by its bytes that is a reply-less close, yet the server died (seen under load
        // with a server that exits after chopstick's start-up check).
        let class = if target.exits > exits {
            FailureClass::ServerDied
        } else {
            failure.class
        };
        // Replied correctly, then failed the liveness probe that follows an exit.
        let answered = !result.expected.is_empty() && result.seen.replies == result.expected;
        let what = format!(
            "{} unfaulted connection failed: {}: {}",
            if n == 0 { "the first" } else { "a second" },
            failure.class,
            failure.detail
        );
        let diagnosis = match class {
            FailureClass::ServerDied if n == 0 && !answered => format!(
                "the server exited before answering its first unfaulted frame: it crashes \
                 on this framing, or it {}",
                ONE_AND_DONE_SHORT
            ),
            FailureClass::ServerDied | FailureClass::Refused | FailureClass::Hang
                if n == 1 || answered =>
            {
                ONE_AND_DONE.to_string()
            }
            // chopstick's start-up check of a spawned server is a connection too.
            FailureClass::Refused if target.is_spawned() => {
                format!("{ONE_AND_DONE} (its first was chopstick's start-up check)")
            }
            FailureClass::Refused => "the server refuses connections".to_string(),
            // The large frame failed: a bug of the server's own (a one-read receiver,
            // a reply cap) is the campaign's to find and shrink; only a reply that is
            // whole frames of a narrower length field is a misconfiguration.
            _ if n == 1 => {
                let stream = config
                    .encode(conn, &case.messages)
                    .map(|(s, _)| s)
                    .unwrap_or_default();
                let sample = sample(target, config, &stream, case.messages.len()).await;
                match narrower(&config.framing, &sample.bytes) {
                    Some(spec) => format!(
                        "a {}-byte frame round-tripped but a {big}-byte one did not, and the \
                         replies are whole `{spec}` frames ({}): the server's length field is \
                         narrower (try --framing {spec})",
                        PROBE.len(),
                        show_bytes(&sample.bytes)
                    ),
                    None => continue,
                }
            }
            _ => {
                let stream = config
                    .encode(conn, &case.messages)
                    .map(|(s, _)| s)
                    .unwrap_or_default();
                let sample = sample(target, config, &stream, case.messages.len()).await;
                if sample.refused && target.is_spawned() {
                    format!("{ONE_AND_DONE} (its first was chopstick's start-up check)")
                } else {
                    diagnose(config, &stream, &sample)
                }
            }
        };
        return Err(PreflightError { what, diagnosis });
    }
    Ok(())
}

/// What a raw, unfaulted connection got back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    pub bytes: Vec<u8>,
    /// The server closed (or reset) the connection; false = it went quiet.
    pub closed: bool,
    /// The connection could not even be opened.
    pub refused: bool,
}

async fn sample(target: &mut Target, config: &CaseConfig, stream: &[u8], due: usize) -> Sample {
    raw_exchange(target, config, stream, due).await
}

/// Writes `stream` in one go on a fresh connection (half-closing after it if the
/// config says so) and keeps the raw bytes that come back: for a diagnosis, and for
/// `replay` to show what a reply that does not decode looks like.
///
/// Reading stops at a close, at the deadline, or once `due` whole frames of the
/// configured framing came.
pub async fn raw_exchange(
    target: &Target,
    config: &CaseConfig,
    stream: &[u8],
    due: usize,
) -> Sample {
    let mut out = Sample {
        bytes: Vec::new(),
        closed: false,
        refused: false,
    };
    let Ok(mut sock) = target.connect(config.timing.connect).await else {
        out.closed = true;
        out.refused = true;
        return out;
    };
    // At least SAMPLE_WAIT: a busy machine must not cut a diagnosis short.
    let wait = SAMPLE_WAIT.max(config.timing.reply_timeout);
    if tokio::time::timeout(wait, sock.write_all(stream))
        .await
        .is_err()
    {
        return out;
    }
    if config.half_close {
        let _ = sock.shutdown().await;
    }
    let deadline = tokio::time::Instant::now() + wait;
    let mut buf = vec![0u8; 8192];
    while out.bytes.len() < MAX_SAMPLE {
        match tokio::time::timeout_at(deadline, sock.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                out.closed = true;
                break;
            }
            Ok(Ok(n)) => {
                out.bytes.extend_from_slice(&buf[..n]);
                // A quiet spell after some bytes is the end of the reply.
                if decodes_whole(config.reply_framing(), &out.bytes).is_some_and(|f| f.len() >= due)
                {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    out
}

/// The payloads of `bytes` if they are whole frames of `framing`, nothing left over.
fn decodes_whole(framing: &Framing, bytes: &[u8]) -> Option<Vec<Bytes>> {
    let mut codec = framing.codec();
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    loop {
        match codec.decode(&mut buf) {
            Ok(Some(p)) => out.push(p),
            Ok(None) => break,
            Err(_) => return None,
        }
    }
    (buf.is_empty() && !out.is_empty()).then_some(out)
}

/// A framing with a narrower length field in which `bytes` are whole frames while they
/// are not in `framing`.
fn narrower(framing: &Framing, bytes: &[u8]) -> Option<&'static str> {
    if decodes_whole(framing, bytes).is_some() {
        return None;
    }
    let width = framing.header_width();
    CANDIDATES.iter().copied().find(|spec| {
        spec.parse::<Framing>().is_ok_and(|other| {
            matches!(other, Framing::Length(_))
                && other.header_width() < width
                && decodes_whole(&other, bytes).is_some()
        })
    })
}

/// Hex of the first bytes, and the same as text where printable.
pub fn show_bytes(b: &[u8]) -> String {
    let head = &b[..b.len().min(SHOWN)];
    let hex: Vec<String> = head.iter().map(|x| format!("{x:02x}")).collect();
    let more = if b.len() > SHOWN { " ..." } else { "" };
    format!(
        "{} bytes: {}{more} ({})",
        b.len(),
        hex.join(" "),
        String::from_utf8_lossy(head).escape_debug()
    )
}

/// What reply bytes look like, when not the configured framing.
pub fn looks_like(b: &[u8]) -> Option<&'static str> {
    if b.starts_with(b"HTTP/") {
        return Some("an HTTP response: the server speaks HTTP, not a framed protocol");
    }
    if !b.is_empty()
        && b.iter()
            .all(|c| c.is_ascii_graphic() || matches!(c, b' ' | b'\t' | b'\r' | b'\n'))
    {
        return Some(if b.contains(&b'\n') {
            "text lines: the server may speak a line protocol (try --framing line)"
        } else {
            "text: the server answers in text, not in length-prefixed frames"
        });
    }
    None
}

/// The diagnosis for a failed round trip, from the raw reply sample.
pub fn diagnose(config: &CaseConfig, request: &[u8], sample: &Sample) -> String {
    let framing = &config.framing;
    let want: &[u8] = PROBE;
    let upper = PROBE.to_ascii_uppercase();
    if sample.bytes.is_empty() {
        let how = if sample.closed {
            "closed the connection without replying"
        } else {
            "never replied (nothing came back within the deadline)"
        };
        return format!(
            "the server {how} to one `{framing}` frame {}; {}",
            show_bytes(request),
            other_readings(request, framing)
        );
    }
    let got = show_bytes(&sample.bytes);
    if let Some(payloads) = decodes_whole(framing, &sample.bytes) {
        let first = &payloads[0];
        if first.as_ref() == upper.as_slice() && config.oracle.name() != "upper" {
            return format!(
                "replies decode as `{framing}` but are the request upper-cased: the oracle \
                 is wrong (try --oracle upper)"
            );
        }
        if first.as_ref() == request {
            return format!(
                "each reply's payload is the whole request frame, header included ({got}): \
                 the server echoes raw bytes inside its own frame; framing or oracle is wrong"
            );
        }
        if first.ends_with(want) || first.ends_with(&upper) {
            return format!(
                "each reply is the request with its header transformed: {} extra bytes \
                 before the payload ({got}); the framing (offset=, adjust=) or the oracle is \
                 wrong",
                first.len() - want.len()
            );
        }
        return format!(
            "replies decode as `{framing}` but carry {} where {} was due: the oracle is wrong \
             for this server",
            preview(first),
            preview(want)
        );
    }
    for spec in CANDIDATES {
        let Ok(other) = spec.parse::<Framing>() else {
            continue;
        };
        if other.to_string() == framing.to_string() {
            continue;
        }
        if let Some(p) = decodes_whole(&other.with_max(DEFAULT_MAX), &sample.bytes) {
            if p[0].as_ref() == want || p[0].as_ref() == upper.as_slice() {
                return format!(
                    "replies do not parse as `{framing}` but do as `{spec}` ({got}): the \
                     server answers in another width or byte order (try --framing {spec})"
                );
            }
        }
    }
    if sample.bytes.windows(want.len()).any(|w| w == want) {
        return format!(
            "the reply carries the request's payload, but not in a `{framing}` frame \
             ({got}): the server's header differs from the one given (framing wrong)"
        );
    }
    match looks_like(&sample.bytes) {
        Some(what) => format!("replies do not parse as `{framing}`; they look like {what} ({got})"),
        None => format!("replies do not parse as `{framing}` ({got})"),
    }
}

/// How our request header reads as other widths and byte orders: a server expecting
/// one of them waits for a body that never comes, or refuses the length.
fn other_readings(request: &[u8], framing: &Framing) -> String {
    let mut readings = Vec::new();
    for (spec, width, little) in [
        ("u32le", 4, true),
        ("u32be", 4, false),
        ("u16be", 2, false),
        ("u16le", 2, true),
        ("u64be", 8, false),
        ("u64le", 8, true),
    ] {
        if spec == framing.to_string() || request.len() < width {
            continue;
        }
        let mut field = request[..width].to_vec();
        if little {
            field.reverse();
        }
        let n = field.iter().fold(0u128, |n, b| n << 8 | u128::from(*b));
        readings.push(format!("{spec} reads our header as {n}"));
    }
    format!(
        "the server may expect another framing or byte order ({})",
        readings.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::campaign::Timing;
    use crate::workload::Mode;

    fn config(framing: &str) -> CaseConfig {
        CaseConfig {
            framing: framing.parse().unwrap(),
            oracle: crate::oracle::parse("echo").unwrap(),
            mode: Mode::Pipelined,
            half_close: true,
            timing: Timing::default(),
            liveness: Duration::from_secs(1),
            reply_framing: None,
        }
    }

    fn frame(framing: &str, p: &[u8]) -> Vec<u8> {
        let f: Framing = framing.parse().unwrap();
        f.encode_all(&[p]).unwrap().0.to_vec()
    }

    fn got(bytes: &[u8]) -> Sample {
        Sample {
            bytes: bytes.to_vec(),
            closed: true,
            refused: false,
        }
    }

    #[test]
    fn another_byte_order_is_named() {
        let c = config("u32be");
        let d = diagnose(&c, &frame("u32be", PROBE), &got(&frame("u32le", PROBE)));
        assert!(d.contains("try --framing u32le"), "{d}");
    }

    #[test]
    fn http_and_text_replies_are_recognised() {
        let c = config("u32be");
        let req = frame("u32be", PROBE);
        let d = diagnose(&c, &req, &got(b"HTTP/1.1 400 Bad Request\r\n\r\n"));
        assert!(d.contains("HTTP"), "{d}");
        let d = diagnose(&c, &req, &got(b"ERR unknown command\n"));
        assert!(d.contains("text lines"), "{d}");
    }

    #[test]
    fn an_upper_cased_reply_points_at_the_oracle() {
        let c = config("u32be");
        let d = diagnose(
            &c,
            &frame("u32be", PROBE),
            &got(&frame("u32be", &PROBE.to_ascii_uppercase())),
        );
        assert!(d.contains("--oracle upper"), "{d}");
    }

    #[test]
    fn a_reply_wrapping_the_request_frame_says_so() {
        let c = config("u32be");
        let req = frame("u32be", PROBE);
        let d = diagnose(&c, &req, &got(&frame("u32be", &req)));
        assert!(d.contains("header included"), "{d}");
    }

    #[test]
    fn silence_names_other_readings_of_our_header() {
        let c = config("u32be");
        let d = diagnose(
            &c,
            &frame("u32be", PROBE),
            &Sample {
                bytes: vec![],
                closed: false,
                refused: false,
            },
        );
        assert!(d.contains("never replied"), "{d}");
        assert!(d.contains("u32le reads our header as 436207616"), "{d}");
    }
}
