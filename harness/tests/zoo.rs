//! The zoo: deliberately broken receivers (Python and Node, real processes, real
//! sockets) that `chopstick check` must catch with the right failure class, a
//! reproducer that `replay` confirms, on each of 5 seeds — and correct servers in other
//! languages that must pass with zero failures on the same seeds (no false alarms,
//! including a server that sleeps a few ms per reply).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const SEEDS: [u64; 5] = [1, 2, 3, 4, 5];
/// Upper bound for one chopstick invocation; nothing may hang CI.
const DEADLINE: Duration = Duration::from_secs(240);

fn zoo(file: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/zoo")
        .join(file)
        .display()
        .to_string()
}

/// Runs the chopstick binary with `args`, killing it at [`DEADLINE`]. Output is read
/// on another thread, so a chatty child never blocks on a full pipe.
fn chopstick(args: &[&str]) -> Output {
    let child = Command::new(env!("CARGO_BIN_EXE_chopstick"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn chopstick");
    let pid = child.id() as i32;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(DEADLINE) {
        Ok(out) => out.expect("wait for chopstick"),
        Err(_) => {
            // SAFETY: kill(2) on the pid of our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("chopstick {args:?} ran longer than {DEADLINE:?}");
        }
    }
}

struct Checked {
    code: Option<i32>,
    report: serde_json::Value,
    out: String,
}

/// `chopstick check --spawn CMD` with small, fast settings and a JSON report.
/// `extra`: further arguments (e.g. another oracle).
fn check_with(cmd: &str, seed: u64, faults: &str, dir: &Path, extra: &[&str]) -> Checked {
    let json = dir.join(format!("report-{seed}.json"));
    let seed_s = seed.to_string();
    let mut args = vec![
        "check",
        "--spawn",
        cmd,
        "--seed",
        &seed_s,
        "--connections",
        "4",
        "--messages",
        "8",
        "--max-size",
        "256KiB",
        "--faults",
        faults,
        "--liveness",
        "1",
        "--reply-timeout",
        "2",
        "--shrink-time",
        "8",
        "--json",
        json.to_str().unwrap(),
        "--artifacts",
        dir.to_str().unwrap(),
    ];
    if extra.contains(&"--connections") {
        // The caller's count instead of the default one.
        let at = args.iter().position(|a| *a == "--connections").unwrap();
        args.drain(at..at + 2);
    }
    args.extend_from_slice(extra);
    let out = chopstick(&args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report = std::fs::read(&json)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_else(|| panic!("no JSON report for `{cmd}` seed {seed}:\n{text}"));
    Checked {
        code: out.status.code(),
        report,
        out: text,
    }
}

/// A broken receiver: every seed must fail with one of `classes`, and the reproducer
/// of that failure must be confirmed by `replay`.
fn caught(cmd: &str, faults: &str, classes: &[&str]) -> Vec<PathBuf> {
    caught_with(cmd, faults, classes, &[])
}

/// [`caught`] with `extra` arguments for `check_with`.
fn caught_with(cmd: &str, faults: &str, classes: &[&str], extra: &[&str]) -> Vec<PathBuf> {
    let mut reproducers = Vec::new();
    for seed in SEEDS {
        let dir = tempfile::tempdir().unwrap();
        let c = check_with(cmd, seed, faults, dir.path(), extra);
        assert_eq!(
            c.code,
            Some(1),
            "`{cmd}` seed {seed} not failed:\n{}",
            c.out
        );
        let failures = c.report["failures"].as_array().unwrap();
        let hit = failures
            .iter()
            .find(|f| {
                classes.contains(&f["class"].as_str().unwrap()) && f["reproducer"].is_string()
            })
            .unwrap_or_else(|| {
                panic!(
                    "`{cmd}` seed {seed}: no {classes:?} failure with a reproducer:\n{}",
                    c.out
                )
            });
        let repro = PathBuf::from(hit["reproducer"].as_str().unwrap());
        let replay = chopstick(&["replay", repro.to_str().unwrap()]);
        assert_eq!(
            replay.status.code(),
            Some(1),
            "replay did not confirm {}:\n{}",
            repro.display(),
            String::from_utf8_lossy(&replay.stdout)
        );
        // Keep the reproducer beyond the tempdir for assertions about its size.
        let kept = std::env::temp_dir().join(format!(
            "zoo-{}-{seed}-{}.json",
            std::process::id(),
            hit["class"].as_str().unwrap()
        ));
        std::fs::copy(&repro, &kept).unwrap();
        reproducers.push(kept);
    }
    reproducers
}

fn passes(cmd: &str) {
    passes_with(cmd, &[])
}

/// [`passes`] with `extra` arguments for `check_with`.
fn passes_with(cmd: &str, extra: &[&str]) {
    for seed in SEEDS {
        let dir = tempfile::tempdir().unwrap();
        let c = check_with(
            cmd,
            seed,
            "split,boundary,coalesce,disconnect,mixed",
            dir.path(),
            extra,
        );
        assert_eq!(
            c.code,
            Some(0),
            "false alarm on correct `{cmd}` seed {seed}:\n{}",
            c.out
        );
        // The JSON matches what the table says: 5 rows, every connection ran, no failure.
        let rows = c.report["rows"].as_array().unwrap();
        assert_eq!(rows.len(), 5);
        assert!(rows
            .iter()
            .all(|r| r["connections"] == 4 && r["failures"] == 0));
        assert!(
            c.out
                .contains(&format!("seed {seed}: 20 connections, 0 failures")),
            "{}",
            c.out
        );
    }
}

#[test]
fn header_read_with_one_recv_is_caught_and_shrunk_small() {
    let cmd = format!("python3 {} {{port}} single_read_header", zoo("broken.py"));
    for path in caught(&cmd, "boundary", &["truncated", "corrupted"]) {
        let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let messages = r["messages"].as_array().unwrap().len();
        let writes = r["plan"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s.get("write").is_some())
            .count();
        assert!(
            messages <= 2 && writes <= 4,
            "{}: {messages} messages, {writes} writes",
            path.display()
        );
        let _ = std::fs::remove_file(path);
    }
}

#[test]
fn body_read_with_one_recv_is_caught() {
    let cmd = format!("python3 {} {{port}} single_read_body", zoo("broken.py"));
    caught(&cmd, "split", &["truncated"]);
}

#[test]
fn one_read_as_one_message_is_caught() {
    let cmd = format!("node {} {{port}} one_read_one_message", zoo("broken.js"));
    caught(&cmd, "coalesce", &["lost", "corrupted"]);
}

/// A failure seen at no reply (a death or hang after a disconnect) shrinks straight to
/// the message the connection was cut in: one or two runs, each a restart (and, for a
/// hang, a liveness deadline), where halving the messages took four or more.
fn shrunk_to_the_cut_message(reproducers: Vec<PathBuf>) {
    for path in reproducers {
        let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let messages = r["messages"].as_array().unwrap().len();
        let runs = r["shrink_runs"]
            .as_u64()
            .expect("a shrunk reproducer says its runs");
        assert!(
            messages == 1 && runs <= 2,
            "{}: {messages} messages after {runs} shrink runs",
            path.display()
        );
        let _ = std::fs::remove_file(path);
    }
}

#[test]
fn server_dying_on_a_mid_frame_disconnect_is_caught() {
    let cmd = format!("python3 {} {{port}} dies_on_cut", zoo("broken.py"));
    shrunk_to_the_cut_message(caught(&cmd, "disconnect", &["server_died"]));
}

#[test]
fn server_spinning_on_eof_mid_frame_is_caught() {
    let cmd = format!("python3 {} {{port}} spins_on_eof", zoo("broken.py"));
    shrunk_to_the_cut_message(caught(&cmd, "disconnect", &["hang"]));
}

#[test]
fn dropped_empty_messages_are_caught() {
    let cmd = format!("node {} {{port}} drops_empty", zoo("broken.js"));
    caught(&cmd, "split", &["lost"]);
}

#[test]
fn truncated_large_replies_are_caught() {
    let cmd = format!("python3 {} {{port}} truncates_large", zoo("broken.py"));
    caught(&cmd, "coalesce", &["truncated"]);
}

/// A varint (protobuf-delimited) receiver that takes the length from one `recv`: a
/// two-byte prefix cut after its first byte is read as a short length.
#[test]
fn varint_length_read_with_one_recv_is_caught() {
    let cmd = format!("python3 {} {{port}} single_recv_len", zoo("varint.py"));
    caught_with(
        &cmd,
        "boundary",
        &["corrupted", "truncated", "lost"],
        &["--framing", "varint"],
    );
}

#[test]
fn correct_varint_python_server_passes() {
    let cmd = format!("python3 {} {{port}} correct", zoo("varint.py"));
    passes_with(&cmd, &["--framing", "varint"]);
}

/// A netstring receiver that parses the length from the front of each chunk it gets.
#[test]
fn netstring_length_taken_from_the_front_of_each_chunk_is_caught() {
    let cmd = format!("node {} {{port}} digits_per_chunk", zoo("netstring.js"));
    caught_with(
        &cmd,
        "boundary",
        &["corrupted", "truncated", "lost", "hang"],
        &["--framing", "netstring"],
    );
}

#[test]
fn correct_netstring_node_server_passes() {
    let cmd = format!("node {} {{port}} correct", zoo("netstring.js"));
    passes_with(&cmd, &["--framing", "netstring"]);
}

#[test]
fn noisy_server_passes_the_differential_oracle_with_its_noise_masked() {
    passes_with(
        &format!("python3 {} {{port}}", zoo("noisy.py")),
        &["--oracle", "differential"],
    );
}

#[test]
fn noisy_server_with_a_one_recv_header_fails_the_differential_oracle() {
    caught_with(
        &format!("python3 {} {{port}} --bug", zoo("noisy.py")),
        "split,boundary",
        &["lost", "hang"],
        &["--oracle", "differential"],
    );
}

#[test]
fn correct_python_server_passes() {
    passes(&format!("python3 {} {{port}}", zoo("correct.py")));
}

#[test]
fn correct_slow_python_server_passes() {
    passes(&format!(
        "python3 {} {{port}} --delay-ms 3",
        zoo("correct.py")
    ));
}

#[test]
fn correct_node_server_passes() {
    passes(&format!("node {} {{port}}", zoo("correct.js")));
}

/// `check --udp` through the binary: the receiver that reads with a too-small buffer and
/// echoes what it got is caught for truncation, `replay` confirms it, and the correct
/// receiver passes — on every seed.
#[test]
fn udp_truncating_receiver_is_caught_and_correct_one_passes() {
    for seed in SEEDS {
        let seed_s = seed.to_string();
        let dir = tempfile::tempdir().unwrap();
        let udp = |file: &str| {
            let cmd = format!("python3 {} {{port}}", zoo(file));
            chopstick(&[
                "check",
                "--udp",
                "--spawn",
                &cmd,
                "--seed",
                &seed_s,
                "--datagrams",
                "100",
                "--artifacts",
                dir.path().to_str().unwrap(),
            ])
        };
        let ok = udp("udp_correct.py");
        assert_eq!(
            ok.status.code(),
            Some(0),
            "seed {seed}: {}",
            String::from_utf8_lossy(&ok.stdout)
        );
        let bad = udp("udp_broken.py");
        let text = String::from_utf8_lossy(&bad.stdout);
        assert_eq!(bad.status.code(), Some(1), "seed {seed}: {text}");
        assert!(text.contains("truncat"), "seed {seed}: {text}");
        let repro = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "json"))
            .expect("a reproducer file");
        let replay = chopstick(&["replay", repro.to_str().unwrap()]);
        assert_eq!(
            replay.status.code(),
            Some(1),
            "seed {seed}: {}",
            String::from_utf8_lossy(&replay.stdout)
        );
    }
}

/// `check --framing raw --reply-framing i32le` against the tutorial remote-exec shape
/// (a raw command read with one `recv`, answered `struct.pack('i', n)` + output): the
/// server that reads into a 1 KiB buffer is caught on every seed with a reproducer
/// `replay` confirms; the one whose buffer holds any command passes (a raw message is
/// one write, never cut, so it is one `recv`).
#[test]
fn raw_requests_with_i32le_replies_catch_a_short_recv_buffer_and_pass_a_big_one() {
    for seed in SEEDS {
        let seed_s = seed.to_string();
        let dir = tempfile::tempdir().unwrap();
        let run = |mode: &str, faults: &str| {
            let cmd = format!("python3 {} {{port}} {mode}", zoo("raw_exec.py"));
            let out = chopstick(&[
                "check",
                "--spawn",
                &cmd,
                "--framing",
                "raw",
                "--reply-framing",
                "i32le",
                "--oracle",
                "upper",
                "--seed",
                &seed_s,
                "--connections",
                "4",
                "--messages",
                "8",
                "--max-size",
                "4KiB",
                "--liveness",
                "1",
                "--reply-timeout",
                "2",
                "--shrink-time",
                "8",
                "--faults",
                faults,
                "--artifacts",
                dir.path().to_str().unwrap(),
            ]);
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
            )
        };
        let (code, text) = run("correct", "split,boundary,coalesce,disconnect,mixed");
        assert_eq!(code, Some(0), "false alarm, seed {seed}:\n{text}");
        assert!(text.contains("20 connections, 0 failures"), "{text}");
        let (code, text) = run("small_recv", "boundary");
        assert_eq!(code, Some(1), "not caught, seed {seed}:\n{text}");
        let repro = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("reproducer: "))
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or_else(|| panic!("no reproducer, seed {seed}:\n{text}"))
            .to_string();
        let replay = chopstick(&["replay", &repro]);
        assert_eq!(
            replay.status.code(),
            Some(1),
            "replay did not confirm {repro}:\n{}",
            String::from_utf8_lossy(&replay.stdout)
        );
    }
}

/// `check` against a misconfigured server: exit 2 with a diagnosis from the pre-flight,
/// before any fault (so no reproducer is written).
fn misconfigured(mode: &str, extra: &[&str]) -> String {
    misconfigured_waiting(mode, "1", extra)
}

/// [`misconfigured`] with another `--reply-timeout` (seconds).
fn misconfigured_waiting(mode: &str, reply_timeout: &str, extra: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let cmd = format!("python3 {} {{port}} {mode}", zoo("misconfig.py"));
    let mut args = vec![
        "check",
        "--spawn",
        &cmd,
        "--seed",
        "1",
        "--reply-timeout",
        reply_timeout,
        "--liveness",
        "1",
        "--artifacts",
        dir.path().to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = chopstick(&args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(2), "`{mode}`:\n{text}");
    assert!(text.contains("pre-flight"), "`{mode}`:\n{text}");
    let written = std::fs::read_dir(dir.path()).map_or(0, |d| d.count());
    assert_eq!(written, 0, "`{mode}`: reproducers written:\n{text}");
    text
}

#[test]
fn a_text_server_is_diagnosed_as_text_lines() {
    let t = misconfigured("text", &[]);
    assert!(
        t.contains("text lines") && t.contains("--framing line"),
        "{t}"
    );
}

#[test]
fn an_http_server_is_diagnosed_as_http() {
    let t = misconfigured("http", &[]);
    assert!(t.contains("HTTP response"), "{t}");
}

#[test]
fn replies_in_another_byte_order_are_diagnosed_with_the_framing_to_use() {
    let t = misconfigured("reply_le", &[]);
    assert!(t.contains("try --framing u32le"), "{t}");
}

#[test]
fn a_reply_wrapping_the_request_header_is_diagnosed_as_a_transformed_header() {
    let t = misconfigured("wraps", &[]);
    assert!(t.contains("header included"), "{t}");
}

#[test]
fn an_upper_casing_server_checked_with_echo_points_at_the_oracle() {
    let t = misconfigured("upper", &[]);
    assert!(t.contains("--oracle upper"), "{t}");
}

#[test]
fn a_server_that_serves_one_connection_and_exits_is_diagnosed() {
    let t = misconfigured("once", &[]);
    assert!(t.contains("served one connection"), "{t}");
}

/// A connection queued while such a server exits is reset rather than refused: that
/// alone reads like a server closing without a reply (a framing mismatch), which is
/// how a busy machine once turned the test above into a false diagnosis. The reply
/// timeout is well above the server's 0.5 s exit, so the reset, not a hang, ends it.
#[test]
fn a_server_that_serves_one_connection_and_exits_slowly_is_diagnosed() {
    let t = misconfigured_waiting("once_slow", "10", &[]);
    assert!(t.contains("served one connection"), "{t}");
}

#[test]
fn a_server_that_never_replies_is_diagnosed_with_other_readings_of_the_header() {
    let t = misconfigured("silent", &[]);
    assert!(
        t.contains("never replied") && t.contains("u32le reads our header"),
        "{t}"
    );
}

#[test]
fn a_server_of_another_width_is_diagnosed() {
    // The reference echo server with u16be framing, checked as u32be.
    let exe = env!("CARGO_BIN_EXE_chopstick");
    let dir = tempfile::tempdir().unwrap();
    let cmd = format!("{exe} serve echo --listen 127.0.0.1:{{port}} --framing u16be");
    let out = chopstick(&[
        "check",
        "--spawn",
        &cmd,
        "--seed",
        "1",
        "--reply-timeout",
        "1",
        "--liveness",
        "1",
        "--artifacts",
        dir.path().to_str().unwrap(),
    ]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("--framing u16be"), "{text}");
}

/// The totals of a report's rows: connections, messages, bytes, failures.
fn totals(report: &serde_json::Value) -> [u64; 4] {
    let mut t = [0u64; 4];
    for row in report["rows"].as_array().unwrap() {
        for (i, k) in ["connections", "messages", "bytes", "failures"]
            .iter()
            .enumerate()
        {
            t[i] += row[k].as_u64().unwrap();
        }
    }
    t
}

#[test]
fn three_shards_merged_give_the_totals_of_the_unsharded_check() {
    let dir = tempfile::tempdir().unwrap();
    let cmd = format!("node {} {{port}} drops_empty", zoo("broken.js"));
    let run = |shard: Option<&str>, name: &str| -> PathBuf {
        let json = dir.path().join(name);
        let mut args = vec![
            "check",
            "--spawn",
            &cmd,
            "--seed",
            "3",
            "--connections",
            "6",
            "--messages",
            "6",
            "--max-size",
            "4KiB",
            "--faults",
            "split,coalesce",
            "--no-shrink",
            "--json",
            json.to_str().unwrap(),
            "--artifacts",
            dir.path().to_str().unwrap(),
        ];
        if let Some(s) = shard {
            args.extend_from_slice(&["--shard", s]);
        }
        let out = chopstick(&args);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{shard:?}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        json
    };
    let whole = run(None, "whole.json");
    let shards: Vec<PathBuf> = (1..=3)
        .map(|k| run(Some(&format!("{k}/3")), &format!("shard{k}.json")))
        .collect();
    let merged = dir.path().join("merged.json");
    let junit = dir.path().join("merged.xml");
    let mut args = vec!["report", "merge"];
    let names: Vec<String> = shards.iter().map(|p| p.display().to_string()).collect();
    args.extend(names.iter().map(String::as_str));
    args.extend_from_slice(&[
        "--json",
        merged.to_str().unwrap(),
        "--junit",
        junit.to_str().unwrap(),
    ]);
    let out = chopstick(&args);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let read = |p: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
    };
    let (whole, merged) = (read(&whole), read(&merged));
    assert_eq!(totals(&whole), totals(&merged));
    assert!(totals(&whole)[0] == 12 && totals(&whole)[3] > 0, "{whole}");
    // Each shard ran a third of every profile's connections.
    for s in &shards {
        assert_eq!(totals(&read(s))[0], 4, "{}", s.display());
    }
    assert!(std::fs::read_to_string(&junit)
        .unwrap()
        .contains("<testsuites"));
}

#[test]
fn a_check_stopped_by_sigterm_leaves_valid_json_and_junit() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let junit = dir.path().join("report.xml");
    let cmd = format!("python3 {} {{port}}", zoo("correct.py"));
    let child = Command::new(env!("CARGO_BIN_EXE_chopstick"))
        .args([
            "check",
            "--spawn",
            &cmd,
            "--seed",
            "1",
            "--connections",
            "100000",
            "--json",
            json.to_str().unwrap(),
            "--junit",
            junit.to_str().unwrap(),
            "--artifacts",
            dir.path().to_str().unwrap(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn chopstick");
    let pid = child.id() as i32;
    std::thread::sleep(Duration::from_secs(4));
    // SAFETY: kill(2) on the pid of our own child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("check did not stop on SIGTERM");
        }
    };
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    // No failure was found: nothing can be concluded, exit 2.
    assert_eq!(out.status.code(), Some(2), "{text}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("a JSON report")).unwrap();
    assert!(
        report["stopped"].as_str().unwrap().contains("signal"),
        "{report}"
    );
    let xml = std::fs::read_to_string(&junit).expect("a JUnit report");
    assert!(
        xml.starts_with("<?xml") && xml.contains("<testsuites"),
        "{xml}"
    );
    let mut reader = quick_xml::Reader::from_str(&xml);
    loop {
        match reader.read_event() {
            Ok(quick_xml::events::Event::Eof) => break,
            Ok(_) => {}
            Err(e) => panic!("invalid JUnit XML ({e}):\n{xml}"),
        }
    }
}

/// `check --faults hostile`: the hostile row's failures, and the exit code.
fn hostile(cmd: &str) -> (Option<i32>, serde_json::Value, String) {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let out = chopstick(&[
        "check",
        "--spawn",
        cmd,
        "--seed",
        "1",
        "--faults",
        "hostile",
        "--reply-timeout",
        "2",
        "--liveness",
        "2",
        "--json",
        json.to_str().unwrap(),
        "--artifacts",
        dir.path().to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let report = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    (out.status.code(), report, text)
}

#[test]
fn a_server_that_trusts_any_length_is_caught_by_hostile_frames() {
    let cmd = format!("python3 {} {{port}} trusts_length", zoo("broken.py"));
    let (code, report, text) = hostile(&cmd);
    assert_eq!(code, Some(1), "{text}");
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{text}");
    assert_eq!(rows[0]["fault"], "hostile");
    let failures = report["failures"].as_array().unwrap();
    assert!(
        failures
            .iter()
            .any(|f| f["class"] == "hang" && f["detail"].as_str().unwrap().contains("over-max")),
        "{text}"
    );
}

#[test]
fn correct_servers_pass_hostile_frames() {
    for cmd in [
        format!("python3 {} {{port}}", zoo("correct.py")),
        format!("node {} {{port}}", zoo("correct.js")),
    ] {
        let (code, report, text) = hostile(&cmd);
        assert_eq!(code, Some(0), "false alarm on `{cmd}`:\n{text}");
        assert_eq!(report["rows"][0]["connections"], 3, "{text}");
    }
}

/// A correct server that serves one client to completion before accepting the next:
/// `--concurrency auto` probes it, says it serves one client at a time, and checks it
/// one connection at a time with no false alarm; the threaded server is probed as
/// concurrent.
#[test]
fn a_server_serving_one_client_at_a_time_passes_with_auto_concurrency_and_the_probe_says_so() {
    let sequential = format!("python3 {} {{port}} --sequential", zoo("correct.py"));
    let threaded = format!("python3 {} {{port}}", zoo("correct.py"));
    for seed in [1, 2] {
        let dir = tempfile::tempdir().unwrap();
        let all = "split,boundary,coalesce,disconnect,mixed";
        let c = check_with(&sequential, seed, all, dir.path(), &[]);
        assert_eq!(c.code, Some(0), "false alarm, seed {seed}:\n{}", c.out);
        assert!(
            c.out.contains("concurrency auto: probe:")
                && c.out.contains("serves one client at a time"),
            "the probe's decision is not printed:\n{}",
            c.out
        );
        assert_eq!(c.report["concurrency"], 1, "{}", c.out);
        // The probe gives up on a connection left in the accept queue for 150 ms, which a
        // CPython starved by other processes can miss now and then (it is then only
        // checked more slowly); a probe that never sees concurrency fails all three.
        let mut outs = Vec::new();
        for _ in 0..3 {
            let c = check_with(&threaded, seed, all, dir.path(), &[]);
            assert_eq!(c.code, Some(0), "false alarm, seed {seed}:\n{}", c.out);
            if c.report["concurrency"].as_u64().unwrap() > 1 {
                break;
            }
            outs.push(c.out);
        }
        assert!(
            outs.len() < 3,
            "a threaded server probed as one at a time, three times:\n{}",
            outs.join("\n---\n")
        );
    }
}

/// What a report found, comparable across concurrencies: the rows' counts and, in
/// order, every failure's profile, class and connection.
fn found(report: &serde_json::Value) -> (Vec<String>, Vec<String>) {
    let rows = report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            format!(
                "{} conns={} failures={} classes={}",
                r["fault"], r["connections"], r["failures"], r["classes"]
            )
        })
        .collect();
    let mut failures: Vec<String> = report["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| format!("{} {} c{}", f["fault"], f["class"], f["conn"]))
        .collect();
    // Failures are recorded per profile in case order; the order across concurrent
    // stretches and reruns is the same, but sort to compare sets per profile.
    failures.sort();
    (rows, failures)
}

/// Broken servers checked 4 connections at a time (8 per profile) give the same rows and failures as
/// one at a time, including one that dies (taking the other in-flight connections
/// with it) and one whose bug is on every connection.
#[test]
fn a_concurrent_check_finds_what_a_one_at_a_time_check_finds_on_broken_servers() {
    for (cmd, faults) in [
        (
            format!("node {} {{port}} drops_empty", zoo("broken.js")),
            "split,coalesce",
        ),
        (
            format!("python3 {} {{port}} dies_on_cut", zoo("broken.py")),
            "split,disconnect",
        ),
        (
            format!("python3 {} {{port}} truncates_large", zoo("broken.py")),
            "coalesce",
        ),
    ] {
        for seed in [1, 2] {
            let dir = tempfile::tempdir().unwrap();
            let at = |n: &str| {
                check_with(
                    &cmd,
                    seed,
                    faults,
                    dir.path(),
                    &[
                        "--concurrency",
                        n,
                        "--no-shrink",
                        "--connections",
                        "8",
                        "--confirm",
                        "0",
                    ],
                )
            };
            let (one, four) = (at("1"), at("4"));
            assert_eq!(one.code, Some(1), "`{cmd}` seed {seed}:\n{}", one.out);
            assert_eq!(four.code, Some(1), "`{cmd}` seed {seed}:\n{}", four.out);
            assert_eq!(one.report["concurrency"], 1);
            assert_eq!(four.report["concurrency"], 4);
            assert_eq!(
                found(&one.report),
                found(&four.report),
                "`{cmd}` seed {seed}: concurrency changed what was found\n--- 1:\n{}\n--- 4:\n{}",
                one.out,
                four.out
            );
        }
    }
}

/// `--fail-fast` wants the first bug fast: one confirming replay unless `--confirm` says
/// more (a hang's replay costs a whole liveness deadline).
#[test]
fn fail_fast_confirms_once_by_default() {
    let cmd = format!("node {} {{port}} drops_empty", zoo("broken.js"));
    let dir = tempfile::tempdir().unwrap();
    let c = check_with(&cmd, 1, "split", dir.path(), &["--fail-fast"]);
    assert_eq!(c.code, Some(1), "`{cmd}`:\n{}", c.out);
    let reproduced = &c.report["findings"][0]["reproduced"];
    assert_eq!(reproduced["attempts"], 1, "`{cmd}`:\n{}", c.out);
    assert_eq!(reproduced["hits"], 1, "`{cmd}`:\n{}", c.out);
}

/// `--fail-fast` scouts the profiles whose first cases write quickest first: a bug only
/// a cut shows is found before any paced split runs. The order follows from the seed's
/// plans, so it is the same on any machine and at any concurrency.
#[test]
fn fail_fast_scouts_the_quickest_profiles_first() {
    let cmd = format!("python3 {} {{port}} spins_on_eof", zoo("broken.py"));
    let dir = tempfile::tempdir().unwrap();
    let c = check_with(
        &cmd,
        1,
        "split,boundary,disconnect",
        dir.path(),
        &["--fail-fast"],
    );
    assert_eq!(c.code, Some(1), "`{cmd}`:\n{}", c.out);
    assert_eq!(c.report["findings"][0]["class"], "hang", "{}", c.out);
    let begun: Vec<&str> = c.report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["fault"].as_str().unwrap())
        .collect();
    assert_eq!(
        begun,
        ["disconnect"],
        "only the cut ran before the hang:\n{}",
        c.out
    );
}

/// `replay --attempts N`: the count of attempts that reproduced it, as `reproduced k/N`.
fn replayed(repro: &Path, attempts: u32) -> (Option<i32>, u32, String) {
    let n = attempts.to_string();
    let out = chopstick(&["replay", repro.to_str().unwrap(), "--attempts", &n]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let hits = text
        .lines()
        .find_map(|l| l.strip_prefix("reproduced "))
        .and_then(|l| l.split('/').next())
        .and_then(|k| k.parse().ok())
        .unwrap_or_else(|| panic!("no `reproduced k/{attempts}` line:\n{text}"));
    (out.status.code(), hits, text)
}

/// Point 7 of issue 14: the reproducers `check` writes (a hang among them) replay their
/// failure on 20 attempts out of 20, or were written saying they are flaky. Counted,
/// not timed; each attempt is bounded by the check's own timeouts.
#[test]
fn reproducers_replay_their_failure_twenty_times_out_of_twenty() {
    const ATTEMPTS: u32 = 20;
    for (cmd, faults, class) in [
        (
            format!("python3 {} {{port}} spins_on_eof", zoo("broken.py")),
            "disconnect",
            "hang",
        ),
        (
            format!("python3 {} {{port}} single_read_body", zoo("broken.py")),
            "split",
            "truncated",
        ),
        (
            format!("node {} {{port}} drops_empty", zoo("broken.js")),
            "split",
            "lost",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let c = check_with(
            &cmd,
            1,
            faults,
            dir.path(),
            &["--fail-fast", "--confirm", "3"],
        );
        assert_eq!(c.code, Some(1), "`{cmd}`:\n{}", c.out);
        let finding = &c.report["findings"][0];
        assert_eq!(finding["class"], class, "`{cmd}`:\n{}", c.out);
        let written = &finding["reproduced"];
        assert_eq!(written["attempts"], 3, "`{cmd}`: not confirmed:\n{}", c.out);
        let repro = PathBuf::from(finding["reproducer"].as_str().unwrap());
        let (code, hits, text) = replayed(&repro, ATTEMPTS);
        assert_eq!(code, Some(1), "`{cmd}`:\n{text}");
        if written["hits"] == written["attempts"] {
            assert_eq!(
                hits, ATTEMPTS,
                "`{cmd}`: a steady reproducer was flaky:\n{text}"
            );
        } else {
            // Written as flaky: replay says so too.
            assert!(text.contains("flaky") || hits == ATTEMPTS, "{text}");
        }
    }
}
