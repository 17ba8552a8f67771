//! The client zoo: deliberately broken *client* receivers (Python and Node, real
//! processes that connect to chopstick) that `chopstick check --client` must catch with
//! the right failure class and a reproducer that `replay` confirms, on each of 5 seeds —
//! and correct clients that must pass with zero failures on the same seeds. Workloads
//! are small: every case starts a fresh interpreter.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const SEEDS: [u64; 5] = [1, 2, 3, 4, 5];
/// Upper bound for one chopstick invocation; nothing may hang CI.
const DEADLINE: Duration = Duration::from_secs(240);
/// Every profile of a default check.
const ALL_PROFILES: &str = "split,boundary,coalesce,disconnect,mixed";

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

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

struct Checked {
    code: Option<i32>,
    report: serde_json::Value,
    junit: String,
    out: String,
}

/// How one `check --client` run is set up.
struct Run<'a> {
    /// The client command, with `{port}`.
    cmd: &'a str,
    faults: &'a str,
    connections: &'a str,
    /// More flags (`--framing`, `--client-output`, shrinking).
    extra: &'a [&'a str],
    /// Whether the client is the correct kind (see [`Run::patience`]).
    correct: bool,
}

impl Run<'_> {
    /// Seconds for the reply timeout and the exit deadline: short for broken clients
    /// (each hang costs them), generous for correct ones (free, and a busy machine must
    /// not turn a slow exit into a false alarm).
    fn patience(&self) -> &'static str {
        if self.correct {
            "6"
        } else {
            "2"
        }
    }

    fn check(&self, seed: u64, dir: &Path) -> Checked {
        let json = dir.join("report.json");
        let junit = dir.join("report.xml");
        let seed_s = seed.to_string();
        let mut args = vec![
            "check",
            "--client",
            self.cmd,
            "--seed",
            &seed_s,
            "--connections",
            self.connections,
            "--messages",
            "6",
            "--max-size",
            "64KiB",
            "--faults",
            self.faults,
            "--json",
            json.to_str().unwrap(),
            "--junit",
            junit.to_str().unwrap(),
            "--artifacts",
            dir.to_str().unwrap(),
        ];
        args.extend_from_slice(self.extra);
        for flag in ["--reply-timeout", "--liveness"] {
            if !self.extra.contains(&flag) {
                args.extend_from_slice(&[flag, self.patience()]);
            }
        }
        let out = chopstick(&args);
        let out_text = text(&out);
        let report = std::fs::read(&json)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_else(|| {
                panic!("no JSON report for `{}` seed {seed}:\n{out_text}", self.cmd)
            });
        Checked {
            code: out.status.code(),
            report,
            junit: std::fs::read_to_string(&junit).unwrap_or_default(),
            out: out_text,
        }
    }

    /// A broken client: every seed fails (exit 1) with one of `classes`, JUnit says so,
    /// and `replay` of that failure's reproducer (which starts the client again) fails
    /// too. Returns the reproducers, copied out of their temporary directories.
    fn caught(&self, classes: &[&str]) -> Vec<PathBuf> {
        let mut reproducers = Vec::new();
        for seed in SEEDS {
            let dir = tempfile::tempdir().unwrap();
            let c = self.check(seed, dir.path());
            let cmd = self.cmd;
            assert_eq!(
                c.code,
                Some(1),
                "`{cmd}` seed {seed} not failed:\n{}",
                c.out
            );
            assert!(c.junit.contains("<failure"), "seed {seed}: {}", c.junit);
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
                text(&replay)
            );
            let kept = std::env::temp_dir().join(format!(
                "zoo-client-{}-{seed}-{}.json",
                std::process::id(),
                hit["class"].as_str().unwrap()
            ));
            std::fs::copy(&repro, &kept).unwrap();
            reproducers.push(kept);
        }
        reproducers
    }

    /// A correct client: exit 0 and no failure on every seed, every case run.
    fn passes(&self) {
        let rows = self.faults.split(',').count();
        for seed in SEEDS {
            let dir = tempfile::tempdir().unwrap();
            let c = self.check(seed, dir.path());
            assert_eq!(
                c.code,
                Some(0),
                "false alarm on correct `{}` seed {seed}:\n{}\n{:#}",
                self.cmd,
                c.out,
                c.report["failures"]
            );
            let got = c.report["rows"].as_array().unwrap();
            assert_eq!(got.len(), rows, "{}", c.out);
            assert!(got.iter().all(|r| r["failures"] == 0
                && r["connections"].as_u64().map(|n| n.to_string()).as_deref()
                    == Some(self.connections)));
            assert!(!c.junit.contains("<failure"), "seed {seed}: {}", c.junit);
        }
    }
}

fn broken_py(bug: &str, rest: &str) -> String {
    format!("python3 {} {{port}} {bug}{rest}", zoo("client_broken.py"))
}

fn broken_js(bug: &str) -> String {
    format!("node {} {{port}} {bug}", zoo("client_broken.js"))
}

const NO_SHRINK: &[&str] = &["--no-shrink"];

#[test]
fn header_read_with_one_recv_crashes_the_client_and_is_shrunk() {
    let cmd = broken_py("single_read_header", "");
    let run = Run {
        cmd: &cmd,
        faults: "boundary",
        connections: "2",
        extra: &["--shrink-time", "4"],
        correct: false,
    };
    let mut smaller = 0;
    for path in run.caught(&["client_crashed"]) {
        let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let messages = r["messages"].as_array().unwrap().len() as u64;
        assert!(messages <= r["original_messages"].as_u64().unwrap());
        smaller += usize::from(messages < r["original_messages"].as_u64().unwrap());
        // The crash is reported with the client's own words.
        let detail = r["failure"]["detail"].as_str().unwrap();
        assert!(detail.contains("struct.error"), "{detail}");
        assert_eq!(r["target"]["client"]["output"], "echo");
        let _ = std::fs::remove_file(path);
    }
    assert!(smaller > 0, "no reproducer was shrunk");
}

#[test]
fn body_read_with_one_recv_delivers_a_short_message() {
    let cmd = broken_py("single_read_body", "");
    Run {
        cmd: &cmd,
        faults: "split",
        connections: "2",
        extra: NO_SHRINK,
        correct: false,
    }
    .caught(&["truncated"]);
}

#[test]
fn tutorial_remote_exec_client_reads_into_the_next_message() {
    let cmd = broken_py("tutorial_exec", "");
    Run {
        cmd: &cmd,
        faults: "coalesce",
        connections: "1",
        // It spins at the end of every case: short deadlines keep the test quick.
        extra: &[
            "--framing",
            "i32le",
            "--no-shrink",
            "--reply-timeout",
            "1",
            "--liveness",
            "1",
        ],
        correct: false,
    }
    .caught(&["corrupted"]);
}

#[test]
fn node_client_taking_one_read_as_one_message_loses_messages() {
    let cmd = broken_js("one_read_one_message");
    Run {
        cmd: &cmd,
        faults: "coalesce",
        connections: "2",
        extra: NO_SHRINK,
        correct: false,
    }
    .caught(&["lost", "corrupted", "client_crashed"]);
}

#[test]
fn node_client_delivering_the_rest_of_a_cut_frame_is_a_phantom() {
    let cmd = broken_js("delivers_partial");
    Run {
        cmd: &cmd,
        faults: "disconnect:at=mid-body",
        connections: "2",
        extra: NO_SHRINK,
        correct: false,
    }
    .caught(&["phantom"]);
}

#[test]
fn client_still_running_after_a_mid_frame_close_is_a_hang() {
    let cmd = broken_py("spins_on_cut", "");
    Run {
        cmd: &cmd,
        faults: "disconnect:at=mid-body",
        connections: "1",
        extra: NO_SHRINK,
        correct: false,
    }
    .caught(&["hang"]);
}

#[test]
fn lines_hex_client_reading_the_body_with_one_recv_prints_a_short_message() {
    let cmd = broken_py("single_read_body", " --output lines-hex");
    Run {
        cmd: &cmd,
        faults: "split",
        connections: "2",
        extra: &["--client-output", "lines-hex", "--no-shrink"],
        correct: false,
    }
    .caught(&["truncated"]);
}

#[test]
fn correct_python_client_passes_every_profile() {
    let cmd = format!("python3 {} {{port}}", zoo("client_correct.py"));
    Run {
        cmd: &cmd,
        faults: ALL_PROFILES,
        connections: "1",
        extra: &[],
        correct: true,
    }
    .passes();
}

#[test]
fn correct_node_client_passes_every_profile() {
    let cmd = format!("node {} {{port}}", zoo("client_correct.js"));
    Run {
        cmd: &cmd,
        faults: ALL_PROFILES,
        connections: "1",
        extra: &[],
        correct: true,
    }
    .passes();
}

#[test]
fn correct_client_printing_lines_hex_passes_even_after_resets() {
    let cmd = format!(
        "python3 {} {{port}} --output lines-hex",
        zoo("client_correct.py")
    );
    Run {
        cmd: &cmd,
        faults: "split,coalesce,disconnect:mode=reset,disconnect:at=mid-body",
        connections: "1",
        extra: &["--client-output", "lines-hex"],
        correct: true,
    }
    .passes();
}

#[test]
fn correct_i32le_client_passes_where_the_tutorial_one_fails() {
    let cmd = format!(
        "python3 {} {{port}} --framing i32le",
        zoo("client_correct.py")
    );
    Run {
        cmd: &cmd,
        faults: "split,coalesce,disconnect",
        connections: "1",
        extra: &["--framing", "i32le"],
        correct: true,
    }
    .passes();
}

/// A client that never connects is a usage problem (exit 2, said in the report), not a
/// wall of failures; so is a program that does not exist.
#[test]
fn client_that_cannot_start_or_connect_is_unusable() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    for cmd in [
        "python3 -c \"import sys; sys.exit('no server for me')\" {port}",
        "/nonexistent/client {port}",
    ] {
        let out = chopstick(&[
            "check",
            "--client",
            cmd,
            "--seed",
            "1",
            "--json",
            json.to_str().unwrap(),
            "--artifacts",
            dir.path().to_str().unwrap(),
        ]);
        assert_eq!(out.status.code(), Some(2), "`{cmd}`:\n{}", text(&out));
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
        let unusable = report["unusable"].to_string();
        assert!(
            unusable.contains("no server for me") || unusable.contains("cannot start"),
            "{unusable}"
        );
    }
    // Flags that cannot go together are refused before anything starts.
    let out = chopstick(&[
        "check",
        "--client",
        "python3 x.py {port}",
        "--client-output",
        "lines-hex",
        "--mode",
        "ping-pong",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}
