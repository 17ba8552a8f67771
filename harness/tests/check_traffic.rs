//! `chopstick check --traffic FILE` and `--requests FILE` on the real binary: recorded
//! sessions replayed under faults and judged by the differential oracle (the default
//! for real requests) against `zoo/noisy.py`, whose replies carry a timestamp and a
//! random id. The correct server passes; the one reading its header with one `recv` is
//! caught; a recording checked with another framing is refused before any traffic.

use std::path::Path;
use std::process::{Command, Output};

fn chopstick(args: &[&str]) -> Output {
    // Bounded by the check's own settings: 2 profiles x 4 connections, 2 s timeouts.
    Command::new(env!("CARGO_BIN_EXE_chopstick"))
        .args(args)
        .output()
        .expect("run chopstick")
}

fn noisy(bug: bool) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/zoo/noisy.py");
    format!(
        "python3 {} {{port}}{}",
        script.display(),
        if bug { " --bug" } else { "" }
    )
}

/// A traffic file as `proxy --record` writes it: two connections of text requests.
const TRAFFIC: &str = r#"{
  "format": "chopstick-traffic", "version": 1, "framing": "u32be", "reply_framing": "u32be",
  "upstream": "127.0.0.1:7000", "complete": true, "truncated": false,
  "connections": [
    { "conn": 0, "peer": "127.0.0.1:50000",
      "requests": [ {"text": "GET alpha"}, {"text": ""}, {"hex": "00ff10"} ],
      "replies": [], "errors": [], "ended": null },
    { "conn": 1, "peer": "127.0.0.1:50001",
      "requests": [ {"text": "PUT beta 1"}, {"text": "GET beta"} ],
      "replies": [], "errors": [], "ended": null }
  ]
}"#;

fn check(
    target: &str,
    flag: &str,
    file: &Path,
    extra: &[&str],
    dir: &Path,
) -> (Option<i32>, String) {
    let mut args = vec![
        "check",
        "--spawn",
        target,
        flag,
        file.to_str().unwrap(),
        "--seed",
        "5",
        "--connections",
        "4",
        "--faults",
        // A split only reaches the server as separate reads if it reads each piece
        // before the next lands: with the default 1 ms gap a busy CI machine (two busy
        // loops) once merged every cut and the one-recv bug went uncaught, 0 failures.
        "split:pause_us=20000,boundary:pause_us=20000",
        "--reply-timeout",
        "2",
        "--liveness",
        "2",
        "--shrink-time",
        "8",
        "--artifacts",
        dir.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = chopstick(&args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

#[test]
fn recorded_traffic_passes_a_noisy_correct_server_and_catches_its_one_recv_header_bug() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("traffic.json");
    std::fs::write(&file, TRAFFIC).unwrap();
    let (code, text) = check(&noisy(false), "--traffic", &file, &[], dir.path());
    assert_eq!(
        code,
        Some(0),
        "false alarm on the correct noisy server:\n{text}"
    );
    assert!(text.contains("8 connections, 0 failures"), "{text}");
    let (code, text) = check(&noisy(true), "--traffic", &file, &[], dir.path());
    assert_eq!(code, Some(1), "one-recv header bug not caught:\n{text}");
}

#[test]
fn a_request_corpus_is_replayed_the_same_way() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("requests.txt");
    std::fs::write(
        &file,
        "# one request per line\n474554206120\n{\"text\": \"PUT b 1\"}\n[{\"text\": \"PUT c\"}, {\"hex\": \"\"}]\n",
    )
    .unwrap();
    let (code, text) = check(&noisy(false), "--requests", &file, &[], dir.path());
    assert_eq!(code, Some(0), "false alarm:\n{text}");
    let (code, text) = check(&noisy(true), "--requests", &file, &[], dir.path());
    assert_eq!(code, Some(1), "not caught:\n{text}");
}

#[test]
fn a_recording_checked_with_another_framing_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("traffic.json");
    std::fs::write(&file, TRAFFIC).unwrap();
    let (code, text) = check(
        &noisy(false),
        "--traffic",
        &file,
        &["--framing", "u16be"],
        dir.path(),
    );
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("recorded with --framing u32be"), "{text}");
}

#[test]
fn a_keep_framing_without_recorded_requests_is_a_usage_error() {
    // Drawn payloads are not whole frames of the server's protocol; nothing is connected.
    let out = chopstick(&[
        "check",
        "--connect",
        "127.0.0.1:9",
        "--framing",
        "u32be,offset=8,adjust=12,keep",
        "--seed",
        "1",
    ]);
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("--traffic or --requests"), "{text}");
}
