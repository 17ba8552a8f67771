//! The request/reply shapes of the exec, file and auth oracles.
//!
//! A campaign case is still "messages + a plan for the request stream", and `judge`
//! still compares reply bytes with expected bytes. What changes per oracle is how a
//! message becomes a frame and how a reply becomes comparable bytes:
//!
//! | oracle | a message is | request frame | reply as judged |
//! |---|---|---|---|
//! | echo, upper, differential | the payload | `framing` | the payload |
//! | exec | `ARGV_JSON\nSTDIN`, e.g. `["wc","-c"]\nhello` | hjson `{"argv":..}` + stdin | [`exec_canonical`] |
//! | file | the body of a put, named [`file_name`] | hjson `put` + body | [`file_canonical`] |
//! | auth | an inner echo payload | `framing`, after the handshake | the payload |
//!
//! Messages are self-describing (exec carries its argv, file derives its name from its
//! content and connection), so shrinking, which drops messages, never changes what the
//! remaining ones mean, and a reproducer file reads as the requests it sends.
//!
//! Expected exec replies come from a model of the few commands the workload uses
//! (`cat`, `wc -c`, `echo`, `seq 1 N`, and `false` in hand-written cases), plus one
//! command that exits 1 and writes stderr
//! (`cat` of a missing file), whose exact message is taken once from running it
//! locally the way the server runs it (empty environment, fixed PATH): stderr wording
//! differs between coreutils and busybox, and the oracle checks that the server relays
//! it, not what it says.

use std::sync::OnceLock;

use bytes::{Bytes, BytesMut};
use chopstick_targets::wire::{FrameLayout, HjsonCodec, HjsonFrame, WireError, DEFAULT_MAX};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio_util::codec::Encoder;

/// A shared auth key: 32 random ASCII letters and digits, so a key file holding it
/// survives `load_key`'s newline stripping and reads back the same.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct AuthKey(pub [u8; 32]);

impl AuthKey {
    /// A fresh key from the operating system's generator.
    pub fn random() -> AuthKey {
        use rand::Rng;
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        let mut rng = rand::rng();
        AuthKey(std::array::from_fn(|_| {
            ALPHABET[rng.random_range(0..ALPHABET.len())]
        }))
    }

    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// A different key of the same length, for the wrong-key variant.
    pub fn wrong(&self) -> AuthKey {
        let mut k = self.0;
        k[0] = if k[0] == b'x' { b'y' } else { b'x' };
        AuthKey(k)
    }
}

// Reports and logs print configs; the key itself only goes into reproducer files.
impl std::fmt::Debug for AuthKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthKey(<redacted>)")
    }
}

impl Serialize for AuthKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&String::from_utf8_lossy(&self.0))
    }
}

impl<'de> Deserialize<'de> for AuthKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<AuthKey, D::Error> {
        let s = String::deserialize(d)?;
        let bytes: [u8; 32] = s
            .as_bytes()
            .try_into()
            .map_err(|_| serde::de::Error::custom("an auth key is 32 bytes"))?;
        Ok(AuthKey(bytes))
    }
}

/// What one auth connection tries, chosen by connection index so every variant is
/// exercised in every fault profile and a reproducer (which keeps `conn`) repeats it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthVariant {
    /// The right digest in one write; must be accepted, then the inner echo is judged.
    RightKey,
    /// The right digest written one byte at a time; must be accepted likewise.
    SplitDigest,
    /// A digest made with another key; must get verdict 0 and a close.
    WrongKey,
    /// The digest accepted on an earlier connection, sent again on a fresh one (whose
    /// nonce differs); must get verdict 0 and a close.
    Replayed,
}

impl AuthVariant {
    pub fn for_conn(conn: u64) -> AuthVariant {
        match conn % 4 {
            0 => AuthVariant::RightKey,
            1 => AuthVariant::SplitDigest,
            2 => AuthVariant::WrongKey,
            _ => AuthVariant::Replayed,
        }
    }

    /// Whether the server must accept, so the inner traffic is driven.
    pub fn accepted(self) -> bool {
        matches!(self, AuthVariant::RightKey | AuthVariant::SplitDigest)
    }
}

fn hex16(data: &[u8]) -> String {
    hex::encode(&Sha256::digest(data)[..8])
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Encodes hjson request frames, recording each frame's layout like
/// [`chopstick_targets::wire::Framing::encode_all`] does, so faults can cut inside headers.
pub fn encode_hjson(frames: &[HjsonFrame]) -> Result<(Bytes, Vec<FrameLayout>), WireError> {
    let mut codec = HjsonCodec::new(DEFAULT_MAX);
    let mut dst = BytesMut::new();
    let mut layouts = Vec::with_capacity(frames.len());
    for frame in frames {
        let start = dst.len();
        codec.encode(frame, &mut dst)?;
        let end = dst.len();
        layouts.push(FrameLayout {
            start,
            length_field: start..start + 4,
            body: end - frame.body.len()..end,
            end,
        });
    }
    Ok((dst.freeze(), layouts))
}

/// Why a message cannot be turned into a request (a hand-edited reproducer).
fn bad_message(why: &str) -> WireError {
    WireError::BadHeader(format!("not an exec request message: {why}"))
}

// ---------------------------------------------------------------------------------
// exec

/// Where the stderr-writing command looks for a file that is not there.
pub const MISSING_FILE: &str = "/nonexistent/chopstick-missing-file";

/// Longest `echo` argument drawn from a message (the server allows 4096).
const ECHO_ARG_MAX: usize = 64;

/// An exec request message: `ARGV_JSON\nSTDIN`.
pub fn exec_message(argv: &[&str], stdin: &[u8]) -> Bytes {
    let mut m = serde_json::to_vec(argv).expect("strings serialise");
    m.push(b'\n');
    m.extend_from_slice(stdin);
    m.into()
}

/// Splits an exec message into argv and stdin.
pub fn parse_exec_message(message: &[u8]) -> Result<(Vec<String>, Bytes), WireError> {
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
pub fn exec_messages(payloads: &[Bytes], conn: u64) -> Vec<Bytes> {
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
                0 => exec_message(&["cat"], p),
                1 => exec_message(&["wc", "-c"], p),
                2 => {
                    // Payloads are ASCII; a byte that is not would be escaped by JSON
                    // anyway, so lossy conversion only affects non-workload input.
                    let text = String::from_utf8_lossy(&p[..p.len().min(ECHO_ARG_MAX)]);
                    exec_message(&["echo", &text], b"")
                }
                3 => exec_message(&["seq", "1", &(1 + p.len() % 50).to_string()], b""),
                _ => exec_message(&["cat", MISSING_FILE], b""),
            }
        })
        .collect()
}

/// The hjson request frame of an exec message.
pub fn exec_request(message: &[u8]) -> Result<HjsonFrame, WireError> {
    let (argv, stdin) = parse_exec_message(message)?;
    Ok(HjsonFrame::new(json!({ "argv": argv }), stdin))
}

/// What a correct server answers to the exec `message`, in [`exec_canonical`] form.
pub fn exec_expected(message: &[u8]) -> Bytes {
    let Ok((argv, stdin)) = parse_exec_message(message) else {
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
    canonical_exec(Some(exit), None, false, false, &stdout, &stderr)
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

fn canonical_exec(
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
pub fn exec_canonical(reply: HjsonFrame) -> Bytes {
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
    canonical_exec(
        h.get("exit").and_then(Value::as_i64),
        h.get("signal").and_then(Value::as_i64),
        flag("timed_out"),
        flag("truncated"),
        &reply.body[..out_n],
        &reply.body[out_n..],
    )
}

// ---------------------------------------------------------------------------------
// file

/// The name a file body is stored under: per connection, derived from the content, so
/// it is unique per message (workload payloads carry their connection and index) and
/// stays the same when shrinking drops other messages.
pub fn file_name(conn: u64, body: &[u8]) -> String {
    format!("run/c{conn}-{}", hex16(body))
}

/// The put frame storing `body`.
pub fn file_put(conn: u64, body: &[u8]) -> HjsonFrame {
    HjsonFrame::new(
        json!({"op": "put", "name": file_name(conn, body), "sha256": sha256_hex(body)}),
        Bytes::copy_from_slice(body),
    )
}

/// The get frame reading back what `file_put(conn, body)` stored.
pub fn file_get(conn: u64, body: &[u8]) -> HjsonFrame {
    HjsonFrame::new(
        json!({"op": "get", "name": file_name(conn, body)}),
        Bytes::new(),
    )
}

/// A file reply as comparable bytes: `ok bytes=N sha=H body=B` (H the header's
/// sha256, B the body's, both shortened to 16 hex digits), or `error: TEXT`.
pub fn file_canonical(reply: HjsonFrame) -> Bytes {
    let h = &reply.header;
    match h.get("ok") {
        Some(Value::Bool(true)) => {
            let sha = h.get("sha256").and_then(Value::as_str).unwrap_or("-");
            format!(
                "ok bytes={} sha={} body={}",
                reply.body.len(),
                &sha[..sha.len().min(16)],
                hex16(&reply.body)
            )
            .into()
        }
        _ => match h.get("error").and_then(Value::as_str) {
            Some(e) => format!("error: {e}").into(),
            None => format!("malformed file reply header {}", Value::Object(h.clone())).into(),
        },
    }
}

/// The reply due to a put of `body`.
pub fn file_put_expected(body: &[u8]) -> Bytes {
    format!("ok bytes=0 sha={} body={}", hex16(body), hex16(b"")).into()
}

/// The reply due to a get of a file holding `body`.
pub fn file_get_expected(body: &[u8]) -> Bytes {
    format!(
        "ok bytes={} sha={} body={}",
        body.len(),
        hex16(body),
        hex16(body)
    )
    .into()
}

/// Whether a canonical get reply says the file does not exist.
pub fn file_absent(canonical: &[u8]) -> bool {
    canonical.starts_with(b"error: no such file")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_messages_round_trip_and_expect_what_the_tools_print() {
        let payloads = vec![Bytes::from("c0m0:ab"); 5];
        let msgs = exec_messages(&payloads, 0);
        let (argv, stdin) = parse_exec_message(&msgs[0]).unwrap();
        assert_eq!(
            (argv, &stdin[..]),
            (vec!["cat".to_string()], &b"c0m0:ab"[..])
        );
        assert_eq!(
            exec_expected(&msgs[1]),
            canonical_exec(Some(0), None, false, false, b"7\n", b"")
        );
        assert_eq!(
            exec_expected(&msgs[3]),
            canonical_exec(
                Some(0),
                None,
                false,
                false,
                b"1\n2\n3\n4\n5\n6\n7\n8\n",
                b""
            )
        );
        assert_eq!(
            exec_expected(&exec_message(&["false"], b"")),
            canonical_exec(Some(1), None, false, false, b"", b"")
        );
        assert!(parse_exec_message(b"no newline").is_err());
        assert!(exec_request(b"{\"argv\":1}\n").is_err());
    }

    #[test]
    fn canonical_exec_reply_checks_counts_and_keeps_stderr() {
        let good = HjsonFrame::new(
            json!({"exit": 1, "stdout": 1, "stderr": 2, "timed_out": false, "truncated": false}),
            Bytes::from("oer"),
        );
        assert_eq!(
            exec_canonical(good),
            canonical_exec(Some(1), None, false, false, b"o", b"er")
        );
        let bad = HjsonFrame::new(json!({"exit": 0, "stdout": 5, "stderr": 0}), Bytes::new());
        assert!(exec_canonical(bad).starts_with(b"malformed"));
        let refused = HjsonFrame::new(json!({"error": "nope"}), Bytes::new());
        assert_eq!(&exec_canonical(refused)[..], b"error: nope");
    }

    #[test]
    fn file_replies_and_names() {
        assert_eq!(file_name(3, b"x"), file_name(3, b"x"));
        assert_ne!(file_name(3, b"x"), file_name(4, b"x"));
        assert!(chopstick_targets::file::validate(&file_name(3, b"")).is_ok());
        let put = HjsonFrame::new(
            json!({"ok": true, "sha256": sha256_hex(b"hi")}),
            Bytes::new(),
        );
        assert_eq!(file_canonical(put), file_put_expected(b"hi"));
        let get = HjsonFrame::new(json!({"ok": true, "sha256": sha256_hex(b"hi")}), "hi");
        assert_eq!(file_canonical(get), file_get_expected(b"hi"));
        let missing = HjsonFrame::new(json!({"ok": false, "error": "no such file: 'a'"}), "");
        assert!(file_absent(&file_canonical(missing)));
    }

    #[test]
    fn hjson_layouts_point_at_bodies() {
        let frames = [file_put(0, b"abc"), file_get(0, b"abc")];
        let (stream, layouts) = encode_hjson(&frames).unwrap();
        assert_eq!(&stream[layouts[0].body.clone()], b"abc");
        assert_eq!(layouts[1].end, stream.len());
        assert!(layouts[1].body.is_empty());
    }

    #[test]
    fn auth_keys_serialise_and_variants_cycle() {
        let k = AuthKey::random();
        let json = serde_json::to_string(&k).unwrap();
        assert_eq!(serde_json::from_str::<AuthKey>(&json).unwrap(), k);
        assert_ne!(k.wrong(), k);
        assert!(!format!("{k:?}").contains(&String::from_utf8_lossy(&k.0).to_string()));
        let v: Vec<_> = (0..4).map(AuthVariant::for_conn).collect();
        assert_eq!(v.iter().filter(|v| v.accepted()).count(), 2);
    }
}
