//! `hostile`: frames no well-behaved client sends, for any length-prefixed server
//! (`check --faults hostile`, alone or beside other profiles).
//!
//! | case | bytes sent |
//! |---|---|
//! | `over-max` | a header declaring the framing's max + 1, a few body bytes, then silence |
//! | `negative` | (signed framings) a header declaring -1 |
//! | `header-then-fin` | a header declaring 64 bytes, then FIN |
//! | `garbage-after-frame` | a valid frame, then a header of 0xff bytes the framing must refuse |
//!
//! Judged: the server closes that connection or answers (an error, or the valid
//! frame's reply) within the reply timeout, never keeps it open waiting for a body it
//! should have refused (`hang`), never dies (`server_died`), and serves a fresh
//! connection afterwards (liveness). These are raw byte strings, not plans over a
//! workload, so they get no reproducer file: the failure's detail shows the bytes.

use std::time::Instant;

use bytes::Bytes;
use chopstick_targets::wire::{Endian, Framing, LengthSpec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::check::{Drive, Progress, Stop};
use super::preflight::{show_bytes, PROBE};
use super::{liveness, CaseConfig, Failure, FailureClass, Target};
use crate::report::{FailureRecord, Report, Row};

/// The profile name that selects these cases.
pub const NAME: &str = "hostile";
/// Body bytes sent after an over-max header (a server that trusts the length waits
/// for the rest).
const SOME_BODY: usize = 16;
/// Length declared by the `header-then-fin` header.
const CUT_LEN: u64 = 64;
/// Most bytes read back from one hostile connection.
const MAX_READ: usize = 1 << 20;

/// One hostile connection: its name, its bytes, whether a FIN follows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostileCase {
    pub name: &'static str,
    pub bytes: Vec<u8>,
    pub fin: bool,
}

/// The header of `spec` declaring a payload of `len` bytes (negative allowed for
/// signed fields), offset bytes as zeros.
fn header(spec: &LengthSpec, len: i128) -> Vec<u8> {
    let field = len - i128::from(spec.adjust);
    let mut value = field.to_be_bytes()[16 - spec.width..].to_vec();
    if spec.endian == Endian::Little {
        value.reverse();
    }
    let mut out = vec![0u8; spec.offset];
    out.extend_from_slice(&value);
    out
}

/// The hostile cases `framing` can express (none for `line` and `hjson`).
pub fn cases(framing: &Framing) -> Vec<HostileCase> {
    let Framing::Length(spec) = framing else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let over = spec.max as u64 + 1;
    if over <= spec.payload_limit() {
        let mut bytes = header(spec, over.into());
        bytes.extend(std::iter::repeat_n(b'x', SOME_BODY));
        out.push(HostileCase {
            name: "over-max",
            bytes,
            fin: false,
        });
    }
    if spec.signed {
        out.push(HostileCase {
            name: "negative",
            // The field itself reads -1, whatever the adjustment.
            bytes: header(spec, i128::from(spec.adjust) - 1),
            fin: false,
        });
    }
    out.push(HostileCase {
        name: "header-then-fin",
        bytes: header(spec, CUT_LEN.min(spec.max as u64).into()),
        fin: true,
    });
    let garbage = vec![0xffu8; spec.header_len()];
    if spec.payload_len(&garbage).is_err() {
        if let Ok((frame, _)) = framing.encode_all(&[Bytes::from_static(PROBE)]) {
            let mut bytes = frame.to_vec();
            bytes.extend_from_slice(&garbage);
            out.push(HostileCase {
                name: "garbage-after-frame",
                bytes,
                fin: false,
            });
        }
    }
    out
}

/// Sends one case; `Err` if the server kept the connection open past the reply
/// timeout without a word.
async fn send(target: &Target, config: &CaseConfig, case: &HostileCase) -> Result<(), Failure> {
    let mut sock = target
        .connect(config.timing.connect)
        .await
        .map_err(|e| Failure::new(FailureClass::Refused, None, format!("cannot connect: {e}")))?;
    // Writing may fail once the server has refused: that is a close, which is fine.
    let _ = tokio::time::timeout(config.timing.reply_timeout, sock.write_all(&case.bytes)).await;
    if case.fin {
        let _ = sock.shutdown().await;
    }
    let deadline = tokio::time::Instant::now() + config.timing.reply_timeout;
    let mut buf = vec![0u8; 8192];
    let mut got = 0usize;
    loop {
        match tokio::time::timeout_at(deadline, sock.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(()),
            // An answer is allowed (an error reply, or the valid frame's reply); keep
            // reading to see the close, within the deadline and a byte cap.
            Ok(Ok(n)) => {
                got += n;
                if got >= MAX_READ {
                    return Ok(());
                }
                if case.name == "over-max" || case.name == "negative" {
                    // Answered the bad header: that is an error reply.
                    return Ok(());
                }
            }
            Err(_) if got > 0 && case.name != "garbage-after-frame" => return Ok(()),
            Err(_) => {
                return Err(Failure::new(
                    FailureClass::Hang,
                    None,
                    format!(
                        "hostile `{}`: after {} the server neither closed nor refused \
                         within {:?} (it waits for a body it should refuse)",
                        case.name,
                        show_bytes(&case.bytes),
                        config.timing.reply_timeout
                    ),
                ))
            }
        }
    }
}

/// Runs every hostile case against `live`: one report row named [`NAME`].
pub async fn hostile_profile(
    live: &mut Target,
    drive: &Drive<'_>,
    progress: &mut dyn Progress,
    report: &mut Report,
) -> Row {
    let started = Instant::now();
    let mut row = Row::new(drive.name, NAME);
    for (conn, case) in cases(&drive.case.framing).iter().enumerate() {
        if drive.stop.is_some_and(Stop::is_stopped) {
            break;
        }
        row.connections += 1;
        row.messages += 1;
        row.bytes += case.bytes.len() as u64;
        let mut failure = send(live, drive.case, case).await.err();
        if failure.is_none() {
            failure = liveness(live, drive.case, &[]).await.err().map(|mut f| {
                f.detail = format!("hostile `{}`: {}", case.name, f.detail);
                f
            });
        }
        if let Some(f) = failure {
            row.failures += 1;
            *row.classes.entry(f.class.to_string()).or_default() += 1;
            let key = format!("{} hostile={}", f.class, case.name);
            report.add_failure(
                drive.seed,
                key,
                FailureRecord {
                    target: drive.name.to_string(),
                    fault: NAME.to_string(),
                    class: f.class,
                    conn: conn as u64,
                    offset: None,
                    detail: f.detail.clone(),
                    reproducer: None,
                    finding: None,
                },
            );
            progress.note(&format!(
                "found: {}/{NAME}: {}: {}",
                drive.name, f.class, f.detail
            ));
            if live.is_spawned() {
                if let Err(e) = live.restart().await {
                    tracing::warn!("restart failed: {e}");
                }
            }
            if drive.fail_fast {
                if let Some(stop) = drive.stop {
                    stop.stop(format!(
                        "--fail-fast: first failure ({} on {NAME})",
                        f.class
                    ));
                }
            }
        }
        progress.tick(&row);
    }
    row.seconds = started.elapsed().as_secs_f64();
    row.finish();
    row
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(spec: &str) -> Vec<&'static str> {
        cases(&spec.parse().unwrap())
            .iter()
            .map(|c| c.name)
            .collect()
    }

    #[test]
    fn each_framing_gets_the_cases_it_can_express() {
        assert_eq!(
            names("u32be"),
            ["over-max", "header-then-fin", "garbage-after-frame"]
        );
        assert_eq!(
            names("i32le"),
            [
                "over-max",
                "negative",
                "header-then-fin",
                "garbage-after-frame"
            ]
        );
        // A one-byte field cannot say more than its max, and 0xff is a valid length.
        assert_eq!(names("u8"), ["header-then-fin"]);
        assert!(names("line").is_empty());
    }

    #[test]
    fn headers_declare_what_they_say() {
        let Framing::Length(spec) = "u32be".parse::<Framing>().unwrap() else {
            unreachable!()
        };
        let over = &cases(&Framing::Length(spec))[0];
        assert_eq!(
            spec.payload_len(&over.bytes[..4]).map_err(|e| e.kind()),
            Err("too_large")
        );
        let Framing::Length(signed) = "i32le".parse::<Framing>().unwrap() else {
            unreachable!()
        };
        assert_eq!(header(&signed, -1), [0xff; 4]);
        assert_eq!(header(&signed, 5), [5, 0, 0, 0]);
    }
}
