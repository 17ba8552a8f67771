//! `chopstick bench` end to end: real server processes (the zoo's bench receivers, a
//! broken receiver, `chopstick serve echo`) over loopback. Asserts orderings and
//! ratios of CPU time, never absolute speed: the machine is shared and busy.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// Upper bound for one chopstick invocation; nothing may hang CI.
const DEADLINE: Duration = Duration::from_secs(120);
/// Short windows: a few seconds of bench time for the whole file.
const QUICK: [&str; 8] = [
    "--duration",
    "0.5",
    "--warmup",
    "0.2",
    "--runs",
    "1",
    "--seed",
    "3",
];

fn zoo(file: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/zoo")
        .join(file)
        .display()
        .to_string()
}

/// Runs the chopstick binary with `args`, killing it at [`DEADLINE`].
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

/// `chopstick bench --spawn CMD` with quick settings; returns the exit code and JSON.
fn bench(cmd: &str, extra: &[&str], json: &Path) -> (Option<i32>, serde_json::Value, String) {
    let mut args = vec!["bench", "--spawn", cmd, "--json", json.to_str().unwrap()];
    args.extend_from_slice(&QUICK);
    args.extend_from_slice(extra);
    let out = chopstick(&args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report = std::fs::read(json)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(serde_json::Value::Null);
    (out.status.code(), report, text)
}

fn row<'a>(report: &'a serde_json::Value, profile: &str) -> &'a serde_json::Value {
    report["rows"]
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["profile"] == profile))
        .unwrap_or_else(|| panic!("no row {profile} in {report}"))
}

fn median(v: &serde_json::Value) -> f64 {
    v["median"]
        .as_f64()
        .unwrap_or_else(|| panic!("no median in {v}"))
}

/// Held by every test here for its whole run: each one measures a server's CPU and
/// throughput, and run side by side (cargo's default) they loaded the machine for each
/// other: with two busy loops on both cores as well, per_message's paced:64 CPU ratio
/// rose from ~1.3x to 2.4x and per_read's fell from ~5x to 3.5x, under the margin.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    // A test that failed while holding it poisons it; the next one may still run.
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

#[test]
fn per_read_work_costs_far_more_cpu_per_message_under_paced_pieces_than_per_message_work() {
    let _serial = serial();
    let dir = tmp();
    let mut ratios = Vec::new();
    for mode in ["per_read", "per_message"] {
        let json = dir.path().join(format!("{mode}.json"));
        let cmd = format!("python3 {} {{port}} {mode}", zoo("bench_receiver.py"));
        let extra = [
            "--profiles",
            "whole,paced:64",
            "--connections",
            "2",
            "--depth",
            "128",
        ];
        let (code, report, text) = bench(&cmd, &extra, &json);
        assert_eq!(
            code,
            Some(0),
            "a correct receiver gives valid runs:\n{text}"
        );
        let paced = row(&report, "paced:64");
        assert!(
            median(&row(&report, "whole")["server_cpu_s_per_m"]) > 0.0,
            "server CPU is read from /proc:\n{text}"
        );
        ratios.push(median(&paced["vs_whole_server_cpu"]));
    }
    let (per_read, per_message) = (ratios[0], ratios[1]);
    eprintln!(
        "paced:64 / whole server CPU per message: per_read {per_read:.2}x, per_message \
         {per_message:.2}x"
    );
    // Ordering with a wide margin (typically ~5x against ~1.6x on an idle machine).
    assert!(
        per_read > 1.5 * per_message,
        "paced:64 / whole server CPU per message: per_read {per_read:.2}x should be well \
         above per_message {per_message:.2}x"
    );
}

#[test]
fn a_receiver_that_returns_short_messages_invalidates_its_run_and_exits_1() {
    let _serial = serial();
    let dir = tmp();
    let json = dir.path().join("broken.json");
    let cmd = format!("python3 {} {{port}} single_read_body", zoo("broken.py"));
    let (code, report, text) = bench(&cmd, &["--profiles", "whole,paced:7"], &json);
    assert_eq!(code, Some(1), "{text}");
    let invalid = report["invalid"].as_array().expect("invalid list");
    assert!(
        invalid
            .iter()
            .any(|i| i["profile"] == "paced:7" && i["class"] == "truncated"),
        "the paced run is invalid as truncated: {invalid:?}\n{text}"
    );
    assert_eq!(row(&report, "paced:7")["valid_runs"], 0);
}

#[test]
fn the_plot_is_well_formed_svg_with_a_line_per_series_and_compare_catches_a_drop() {
    let _serial = serial();
    let dir = tmp();
    let json = dir.path().join("echo.json");
    let svg: PathBuf = dir.path().join("echo.svg");
    let cmd = format!(
        "{} serve echo --listen 127.0.0.1:{{port}}",
        env!("CARGO_BIN_EXE_chopstick")
    );
    let extra = [
        "--profiles",
        "whole,split:64,paced:64",
        "--connections",
        "1,2",
        "--plot",
        svg.to_str().unwrap(),
    ];
    let (code, report, text) = bench(&cmd, &extra, &json);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(report["version"], 1);
    assert!(median(&row(&report, "whole")["msgs_per_s"]) > 0.0);

    // The SVG parses as XML, is an <svg> document, and has a polyline per series:
    // 2 connection counts x (back to back, paced) x 2 panels.
    let text_svg = std::fs::read_to_string(&svg).expect("svg written");
    let mut reader = quick_xml::Reader::from_str(&text_svg);
    let (mut root, mut lines, mut texts) = (None, 0, String::new());
    loop {
        match reader.read_event().expect("well-formed XML") {
            quick_xml::events::Event::Start(e) | quick_xml::events::Event::Empty(e) => {
                let name = String::from_utf8_lossy(e.name().as_ref()).to_string();
                root.get_or_insert(name.clone());
                if name == "polyline" || name == "path" {
                    lines += 1;
                }
            }
            quick_xml::events::Event::Text(t) => {
                texts.push_str(&String::from_utf8_lossy(&t.into_inner()));
            }
            quick_xml::events::Event::Eof => break,
            _ => {}
        }
    }
    assert_eq!(root.as_deref(), Some("svg"));
    assert!(lines >= 8, "{lines} lines drawn");
    assert!(texts.contains("piece size"), "axis labelled");
    assert!(texts.contains("paced"), "legend names the paced lines");

    // Pretend the earlier run was 100x faster: a drop beyond --max-regression exits 1.
    let mut faster = report.clone();
    for r in faster["rows"].as_array_mut().unwrap() {
        for k in ["median", "min", "max"] {
            let v = r["msgs_per_s"][k].as_f64().unwrap();
            r["msgs_per_s"][k] = serde_json::json!(v * 100.0);
        }
    }
    let before = dir.path().join("before.json");
    std::fs::write(&before, serde_json::to_vec(&faster).unwrap()).unwrap();
    let mut args = vec![
        "bench",
        "--spawn",
        &cmd,
        "--profiles",
        "whole",
        "--connections",
        "1",
        "--compare",
        before.to_str().unwrap(),
        "--max-regression",
        "50",
    ];
    args.extend_from_slice(&QUICK);
    let out = chopstick(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("REGRESSION"), "{stdout}");
}

/// A request corpus of a few distinct payloads, for `--requests`.
fn corpus(dir: &Path) -> PathBuf {
    let path = dir.join("requests.txt");
    let lines: String = (0..12)
        .map(|i| format!("{{\"text\": \"GET /item/{i} {}\"}}\n", "x".repeat(i * 5)))
        .collect();
    std::fs::write(&path, lines).expect("write corpus");
    path
}

#[test]
fn real_requests_to_a_noisy_server_are_judged_against_its_own_masked_baselines() {
    let _serial = serial();
    let dir = tmp();
    let requests = corpus(dir.path());
    let json = dir.path().join("noisy.json");
    let cmd = format!("python3 {} {{port}}", zoo("noisy.py"));
    let (code, report, text) = bench(
        &cmd,
        &[
            "--requests",
            requests.to_str().unwrap(),
            "--profiles",
            "whole,paced:7",
            "--connections",
            "2",
        ],
        &json,
    );
    // Every reply carries a fresh timestamp and id: without masks, no run would be valid.
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(report["oracle"], "differential", "{report}");
    assert_eq!(
        report["invalid"].as_array().map(Vec::len),
        Some(0),
        "{report}"
    );
    assert!(
        median(&row(&report, "whole")["msgs_per_s"]) > 0.0,
        "{report}"
    );
}

#[test]
fn real_requests_catch_a_server_that_reads_its_header_with_one_recv() {
    let _serial = serial();
    let dir = tmp();
    let requests = corpus(dir.path());
    let json = dir.path().join("noisy-bug.json");
    let cmd = format!("python3 {} {{port}} --bug", zoo("noisy.py"));
    // paced:7 makes every 7-byte piece its own read, so headers arrive split.
    let (code, report, text) = bench(
        &cmd,
        &[
            "--requests",
            requests.to_str().unwrap(),
            "--profiles",
            "whole,paced:7",
            "--connections",
            "1",
        ],
        &json,
    );
    assert_eq!(code, Some(1), "{text}");
    let invalid = report["invalid"].as_array().expect("invalid runs");
    assert!(
        invalid.iter().any(|r| r["profile"] == "paced:7"),
        "paced:7 should be invalid: {report}"
    );
}

#[test]
fn a_server_that_does_not_answer_a_real_request_stops_the_bench_with_its_name() {
    let _serial = serial();
    let dir = tmp();
    let requests = dir.path().join("one.txt");
    std::fs::write(&requests, "{\"text\": \"hello\"}\n").expect("write corpus");
    let json = dir.path().join("silent.json");
    // Accepts and reads, never answers: the baseline pass gives up after its timeout.
    let cmd = format!("python3 {} {{port}} silent", zoo("misconfig.py"));
    let (code, _report, text) = bench(&cmd, &["--requests", requests.to_str().unwrap()], &json);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("request #0"), "{text}");
}
