//! `exec` (`--oracle exec`): the exec server, hjson both ways. A message is
//! `ARGV_JSON\nSTDIN` (e.g. `["wc","-c"]\nhello`); its request frame is hjson
//! `{"argv": ..}` with stdin as the body; a reply is judged as [`canonical`] bytes:
//! exit, signal, timed_out, truncated, stdout and stderr.
//!
//! Messages are self-describing (each carries its argv), so shrinking, which drops
//! messages, never changes what the remaining ones mean, and a reproducer file reads
//! as the requests it sends.
//!
//! Expected replies come from a model of the few commands the workload uses (`cat`,
//! `wc -c`, `echo`, `seq 1 N`, and `false` in hand-written cases), plus one command that
//! exits 1 and writes stderr (`cat` of a missing file), whose exact message is taken
//! once from running it locally the way the server runs it (empty environment, fixed
//! PATH): stderr wording differs between coreutils and busybox, and the oracle checks
//! that the server relays it, not what it says.
//!
//! The server kills a running command when its client closes, so after any cut only a
//! prefix of the replies is due, and a half-close waits for every due reply.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use chopstick_targets::wire::{Framing, HjsonCodec, HjsonFrame, WireError, DEFAULT_MAX};
use serde_json::{json, Value};

use super::{encode_hjson, no_config, Encoded, Oracle, OracleError, Probe};
use crate::campaign::drive::{Fin, ReplyCodec};

/// The exec oracle.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Exec;

impl Exec {
    pub fn build(config: Option<&Value>) -> Result<Arc<dyn Oracle>, OracleError> {
        no_config("exec", config)?;
        Ok(Arc::new(Exec))
    }
}

impl Oracle for Exec {
    fn name(&self) -> &str {
        "exec"
    }

    fn expected(&self, _conn: u64, messages: &[Bytes]) -> Vec<Bytes> {
        messages.iter().map(|m| expected(m)).collect()
    }

    fn messages(&self, payloads: Vec<Bytes>, conn: u64) -> Vec<Bytes> {
        messages(&payloads, conn)
    }

    fn encode(&self, _: &Framing, _conn: u64, messages: &[Bytes]) -> Result<Encoded, WireError> {
        encode_hjson(
            &messages
                .iter()
                .map(|m| request(m))
                .collect::<Result<Vec<_>, _>>()?,
        )
    }

    fn reply_codec(&self, _: &Framing) -> ReplyCodec {
        ReplyCodec::Hjson(HjsonCodec::new(DEFAULT_MAX), canonical)
    }

    // A FIN kills a running command; it may only come once all replies have.
    fn fin(&self) -> Fin {
        Fin::AfterReplies
    }

    fn close_aborts(&self) -> bool {
        true
    }

    fn probe(&self, _session: &[Bytes]) -> Probe {
        let message = message(&["echo", "chopstick liveness probe"], b"");
        Probe {
            reply: Some(expected(&message)),
            message,
            fin: Fin::AfterReplies,
        }
    }
}

/// Why a message cannot be turned into a request (a hand-edited reproducer).
fn bad_message(why: &str) -> WireError {
    WireError::BadHeader(format!("not an exec request message: {why}"))
}

/// Where the stderr-writing command looks for a file that is not there.
pub const MISSING_FILE: &str = "/nonexistent/chopstick-missing-file";

/// Longest `echo` argument drawn from a message (the server allows 4096).
const ECHO_ARG_MAX: usize = 64;

/// An exec request message: `ARGV_JSON\nSTDIN`.
pub fn message(argv: &[&str], stdin: &[u8]) -> Bytes {
    let mut m = serde_json::to_vec(argv).expect("strings serialise");
    m.push(b'\n');
    m.extend_from_slice(stdin);
    m.into()
}

/// Splits an exec message into argv and stdin.
pub fn parse_message(message: &[u8]) -> Result<(Vec<String>, Bytes), WireError> {
    let nl = message
        .iter()
        .position(|&b| b == b'\n')
        .ok_or_else(|| bad_message("no newline after the argv JSON"))?;
    let argv: Vec<String> = serde_json::from_slice(&message[..nl])
        .map_err(|e| bad_message(&format!("argv is not a JSON array of strings: {e}")))?;
    Ok((argv, Bytes::copy_from_slice(&message[nl + 1..])))
}

/// Turns workload payloads into exec requests: each payload becomes the stdin of
/// `cat` or `wc -c`, the argument of `echo`, the `N` of `seq 1 N`, or is replaced by
/// a `cat` of a missing file (exit 1 and stderr), in turn by index. No two kinds can
/// have the same reply, so a reply missing its stderr or exit code never looks like
/// another request's (which `judge` would call duplicated or reordered).
pub fn messages(payloads: &[Bytes], conn: u64) -> Vec<Bytes> {
    payloads
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let kinds = if missing_file_stderr().is_some() {
                6
            } else {
                5
            };
            match (conn as usize + i) % kinds {
                0 => message(&["cat"], p),
                1 => message(&["wc", "-c"], p),
                2 => {
                    // Payloads are ASCII; a byte that is not would be escaped by JSON
                    // anyway, so lossy conversion only affects non-workload input.
                    let text = String::from_utf8_lossy(&p[..p.len().min(ECHO_ARG_MAX)]);
                    message(&["echo", &text], b"")
                }
                3 => message(&["seq", "1", &(1 + p.len() % 50).to_string()], b""),
                _ => message(&["cat", MISSING_FILE], b""),
            }
        })
        .collect()
}

/// The hjson request frame of an exec message.
pub fn request(message: &[u8]) -> Result<HjsonFrame, WireError> {
    let (argv, stdin) = parse_message(message)?;
    Ok(HjsonFrame::new(json!({ "argv": argv }), stdin))
}

/// What a correct server answers to the exec `message`, in [`canonical`] form.
pub fn expected(message: &[u8]) -> Bytes {
    let Ok((argv, stdin)) = parse_message(message) else {
        return Bytes::from_static(b"(not an exec request)");
    };
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let (exit, stdout, stderr): (i64, Vec<u8>, Vec<u8>) = match argv.as_slice() {
        ["cat"] => (0, stdin.to_vec(), Vec::new()),
        ["wc", "-c"] => (0, format!("{}\n", stdin.len()).into_bytes(), Vec::new()),
        ["echo", args @ ..] => (0, format!("{}\n", args.join(" ")).into_bytes(), Vec::new()),
        ["seq", "1", n] => match n.parse::<u64>() {
            Ok(n) => (
                0,
                (1..=n).map(|i| format!("{i}\n")).collect::<String>().into(),
                Vec::new(),
            ),
            Err(_) => return Bytes::from_static(b"(seq needs a number)"),
        },
        ["false"] => (1, Vec::new(), Vec::new()),
        ["cat", MISSING_FILE] => match missing_file_stderr() {
            Some((code, stderr)) => (*code, Vec::new(), stderr.clone()),
            None => return Bytes::from_static(b"(no local cat to compare with)"),
        },
        _ => return Bytes::from_static(b"(a command the exec oracle has no model of)"),
    };
    canonical_reply(Some(exit), None, false, false, &stdout, &stderr)
}

/// Exit code and stderr of `cat MISSING_FILE` run here as the exec server runs it
/// (no shell, empty environment, `FIXED_PATH`); computed once.
fn missing_file_stderr() -> Option<&'static (i64, Vec<u8>)> {
    static CELL: OnceLock<Option<(i64, Vec<u8>)>> = OnceLock::new();
    CELL.get_or_init(|| {
        let cat = chopstick_targets::exec::FIXED_PATH
            .split(':')
            .map(|d| std::path::Path::new(d).join("cat"))
            .find(|p| p.is_file())?;
        use std::os::unix::process::CommandExt;
        // argv[0] as the server passes it: the bare name, which cat puts in its message.
        let out = std::process::Command::new(cat)
            .arg0("cat")
            .arg(MISSING_FILE)
            .env_clear()
            .env("PATH", chopstick_targets::exec::FIXED_PATH)
            .stdin(std::process::Stdio::null())
            .output()
            .ok()?;
        let code = out.status.code()?;
        // Only a failing cat that says something is a useful stderr check.
        (code != 0 && !out.stderr.is_empty()).then_some((i64::from(code), out.stderr))
    })
    .as_ref()
}

fn canonical_reply(
    exit: Option<i64>,
    signal: Option<i64>,
    timed_out: bool,
    truncated: bool,
    stdout: &[u8],
    stderr: &[u8],
) -> Bytes {
    let show = |v: Option<i64>| v.map_or("-".to_string(), |v| v.to_string());
    let mut out = format!(
        "exit={} signal={} timed_out={timed_out} truncated={truncated}\nstdout {}:",
        show(exit),
        show(signal),
        stdout.len()
    )
    .into_bytes();
    out.extend_from_slice(stdout);
    out.extend_from_slice(format!("\nstderr {}:", stderr.len()).as_bytes());
    out.extend_from_slice(stderr);
    out.into()
}

/// An exec reply as comparable bytes: exit, signal, timed_out, truncated, then stdout
/// and stderr split by the header's counts. A refusal becomes `error: TEXT`; a header
/// whose counts do not match the body says so.
pub fn canonical(reply: HjsonFrame) -> Bytes {
    let h = &reply.header;
    if let Some(error) = h.get("error") {
        return format!("error: {}", error.as_str().unwrap_or(&error.to_string())).into();
    }
    let count = |k: &str| h.get(k).and_then(Value::as_u64).map(|n| n as usize);
    let flag = |k: &str| h.get(k).and_then(Value::as_bool).unwrap_or(false);
    let (Some(out_n), Some(err_n)) = (count("stdout"), count("stderr")) else {
        return format!("malformed exec reply header {}", Value::Object(h.clone())).into();
    };
    if out_n.checked_add(err_n) != Some(reply.body.len()) {
        return format!(
            "malformed exec reply: stdout {out_n} + stderr {err_n} bytes, body {} bytes",
            reply.body.len()
        )
        .into();
    }
    canonical_reply(
        h.get("exit").and_then(Value::as_i64),
        h.get("signal").and_then(Value::as_i64),
        flag("timed_out"),
        flag("truncated"),
        &reply.body[..out_n],
        &reply.body[out_n..],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_messages_round_trip_and_expect_what_the_tools_print() {
        let payloads = vec![Bytes::from("c0m0:ab"); 5];
        let msgs = messages(&payloads, 0);
        let (argv, stdin) = parse_message(&msgs[0]).unwrap();
        assert_eq!(
            (argv, &stdin[..]),
            (vec!["cat".to_string()], &b"c0m0:ab"[..])
        );
        assert_eq!(
            expected(&msgs[1]),
            canonical_reply(Some(0), None, false, false, b"7\n", b"")
        );
        assert_eq!(
            expected(&msgs[3]),
            canonical_reply(
                Some(0),
                None,
                false,
                false,
                b"1\n2\n3\n4\n5\n6\n7\n8\n",
                b""
            )
        );
        assert_eq!(
            expected(&message(&["false"], b"")),
            canonical_reply(Some(1), None, false, false, b"", b"")
        );
        assert!(parse_message(b"no newline").is_err());
        assert!(request(b"{\"argv\":1}\n").is_err());
    }

    #[test]
    fn canonical_exec_reply_checks_counts_and_keeps_stderr() {
        let good = HjsonFrame::new(
            json!({"exit": 1, "stdout": 1, "stderr": 2, "timed_out": false, "truncated": false}),
            Bytes::from("oer"),
        );
        assert_eq!(
            canonical(good),
            canonical_reply(Some(1), None, false, false, b"o", b"er")
        );
        let bad = HjsonFrame::new(json!({"exit": 0, "stdout": 5, "stderr": 0}), Bytes::new());
        assert!(canonical(bad).starts_with(b"malformed"));
        let refused = HjsonFrame::new(json!({"error": "nope"}), Bytes::new());
        assert_eq!(&canonical(refused)[..], b"error: nope");
    }
}
