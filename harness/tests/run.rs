//! `chopstick run` and the exec, file and auth oracles over real loopback sockets.
//!
//! - `run --quick` (the binary) finds nothing wrong with the reference servers, and its
//!   JSON report says what its table says;
//! - the reproducer commands of targets that need files on disk (file's root, auth's
//!   key file) start a server that a replay passes against;
//! - small deliberately broken servers, one per new oracle, are caught with the right
//!   failure class, and their reproducers still fail when replayed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use chopstick::campaign::check::Quiet;
use chopstick::campaign::repro::{self, Reproducer};
use chopstick::campaign::run::{self, RunTarget, Scale, TargetKind};
use chopstick::campaign::{draw_case, payload, FailureClass, TargetSpec, Timing};
use chopstick::oracle::{auth::Auth, exec::Exec, file::File, Oracle};
use chopstick::report::Report;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Framed;

use chopstick_targets::wire::{HjsonCodec, HjsonFrame};

/// Upper bound for each test; every wait inside is bounded more tightly.
const DEADLINE: Duration = Duration::from_secs(120);

fn exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_chopstick"))
}

async fn bounded<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(DEADLINE, f)
        .await
        .expect("test exceeded its deadline")
}

#[test]
fn run_quick_passes_on_the_reference_servers_and_json_matches_the_table() {
    let dir = tempfile::tempdir().unwrap();
    let json_path = dir.path().join("report.json");
    let junit_path = dir.path().join("report.xml");
    let mut child = std::process::Command::new(exe())
        .args(["run", "--quick", "--seed", "42", "--json"])
        .arg(&json_path)
        .arg("--junit")
        .arg(&junit_path)
        .arg("--artifacts")
        .arg(dir.path().join("artifacts"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Bounded: the child is killed if it overruns.
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > DEADLINE {
            let _ = child.kill();
            panic!("chopstick run --quick did not finish");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(status.code(), Some(0), "{stdout}");

    let report: Report = serde_json::from_slice(&std::fs::read(&json_path).unwrap()).unwrap();
    assert_eq!(report.seed, 42);
    assert_eq!(report.total_failures(), 0, "{:#?}", report.failures);
    assert!(report.unusable.is_empty(), "{:?}", report.unusable);
    // 5 TCP targets x 5 profiles, and the udp row.
    assert_eq!(report.rows.len(), 26);
    for target in ["echo", "upper", "exec", "file", "auth", "udp"] {
        assert!(report.rows.iter().any(|r| r.target == target), "{target}");
    }

    // Each table line is one JSON row: target, fault, conns, messages, failures.
    let table: Vec<Vec<&str>> = stdout
        .lines()
        .skip(1)
        .take_while(|l| !l.starts_with("seed "))
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(table.len(), report.rows.len(), "{stdout}");
    for (line, row) in table.iter().zip(&report.rows) {
        assert_eq!(line[0], row.target);
        assert_eq!(line[1], row.fault);
        assert_eq!(line[2], row.connections.to_string());
        assert_eq!(line[3], row.messages.to_string());
        assert_eq!(line[5], row.failures.to_string());
    }
    let junit = std::fs::read_to_string(&junit_path).unwrap();
    assert_eq!(junit.matches("<testcase ").count(), 26);
    assert_eq!(junit.matches("<failure").count(), 0);
}

/// A passing case replayed through a reference target's reproducer command: the spawned
/// server (with the root or key file written under the artifacts directory) serves it.
async fn replay_passes_against_spawned(kind: TargetKind) {
    let dir = tempfile::tempdir().unwrap();
    let artifacts = dir.path().join("artifacts");
    let started = run::start(kind, &exe(), &artifacts).await.unwrap();
    let target = &started.target;
    assert!(matches!(target.repro, TargetSpec::Spawn(_)));
    let workload = run::workload(Scale::quick());
    let profile = &run::parse_profiles("split").unwrap()[0];
    // conn 1 is an auth connection with the digest written a byte at a time; conn 2 one
    // with the wrong key: both must pass against a correct server.
    for conn in [1, 2] {
        let case = draw_case(&target.case, &workload, &profile.faults, 5, conn);
        let r = Reproducer {
            version: repro::VERSION,
            seed: 5,
            conn,
            target_name: target.name.clone(),
            target: target.repro.clone(),
            fault: profile.name.clone(),
            config: target.case.clone(),
            messages: payload::wrap(&case.messages),
            plan_line: case.plan.to_string(),
            plan: case.plan.clone(),
            failure: chopstick::campaign::Failure::new(FailureClass::Lost, None, "none"),
            expected: Vec::new(),
            seen: Vec::new(),
            seen_end: chopstick::campaign::End::Eof,
            original_messages: case.messages.len(),
            original_writes: case.plan.writes(),
            shrink_runs: None,
            replay: String::new(),
            timeouts: None,
            reproduced: None,
        };
        for p in &target.prepare {
            match p {
                run::Prepare::Dir(d) => std::fs::create_dir_all(d).unwrap(),
                run::Prepare::Secret(path, key) => {
                    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                    std::fs::write(path, key).unwrap();
                }
            }
        }
        // Through the file format, as `chopstick replay` reads it.
        let mut r2 = r.clone();
        let path = r2.write_to(&artifacts).unwrap();
        let back = Reproducer::read(&path).unwrap();
        let form = |o: &Arc<dyn Oracle>| (o.name().to_string(), o.config());
        assert_eq!(form(&back.config.oracle), form(&target.case.oracle));
        let outcome = repro::replay(&back, 1, Timing::default()).await.unwrap();
        assert!(
            outcome.failure.is_none(),
            "{kind:?} conn {conn}: {:?}",
            outcome.failure
        );
    }
    started.handle.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reproducer_commands_start_working_servers() {
    bounded(async {
        replay_passes_against_spawned(TargetKind::Auth).await;
        replay_passes_against_spawned(TargetKind::File).await;
    })
    .await;
}

/// Drives `target` with `faults` at quick scale, writing reproducers to a temp dir.
async fn campaign(target: &RunTarget, faults: &str) -> (Report, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut report = Report::new(9);
    run::campaign(
        target,
        Scale::quick(),
        &run::parse_profiles(faults).unwrap(),
        9,
        Some(dir.path()),
        &mut Quiet,
        &mut report,
    )
    .await;
    print!("{}", report.table());
    (report, dir)
}

/// The target as `run` would judge a server of this `kind`, but at `addr`; reproducers
/// connect back to it (the broken servers have no command to spawn).
fn broken_target(kind: TargetKind, addr: SocketAddr, oracle: Arc<dyn Oracle>) -> RunTarget {
    let framing = match kind {
        TargetKind::Exec | TargetKind::File => "hjson",
        _ => "u32be",
    };
    let mut case = run::case_config(framing.parse().unwrap(), oracle);
    if kind == TargetKind::Exec {
        case.mode = chopstick::workload::Mode::PingPong;
    }
    RunTarget {
        name: format!("broken-{}", kind.name()),
        addr,
        case,
        repro: TargetSpec::Connect(addr),
        prepare: Vec::new(),
    }
}

/// The report failed with `class`, wrote a reproducer for it, and replaying that
/// reproducer fails again.
async fn assert_caught(report: &Report, class: FailureClass) {
    let record = report
        .failures
        .iter()
        .find(|f| f.class == class)
        .unwrap_or_else(|| panic!("no {class} failure in {:#?}", report.failures));
    let path = record
        .reproducer
        .as_ref()
        .expect("a reproducer was written");
    let r = Reproducer::read(path).unwrap();
    let outcome = repro::replay(&r, 3, Timing::default()).await.unwrap();
    let failure = outcome.failure.expect("the reproducer still fails");
    assert_eq!(failure.class, class, "{failure:?}");
}

async fn listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.unwrap()
}

// ---------------------------------------------------------------------------------
// exec

#[derive(Clone, Copy, PartialEq)]
enum ExecBug {
    DropStderr,
    WrongExit,
}

/// Runs each request's argv like the exec server, but gets one thing wrong.
async fn broken_exec(listener: TcpListener, bug: ExecBug) {
    while let Ok((sock, _)) = listener.accept().await {
        tokio::spawn(async move {
            let mut frames = Framed::new(sock, HjsonCodec::new(16 << 20));
            while let Some(Ok(req)) = frames.next().await {
                let argv: Vec<String> =
                    serde_json::from_value(req.header["argv"].clone()).unwrap_or_default();
                let Some((prog, args)) = argv.split_first() else {
                    return;
                };
                let mut child = match tokio::process::Command::new(prog)
                    .args(args)
                    .env_clear()
                    .env("PATH", chopstick_targets::exec::FIXED_PATH)
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .kill_on_drop(true)
                    .spawn()
                {
                    Ok(c) => c,
                    Err(_) => return,
                };
                let mut stdin = child.stdin.take().unwrap();
                let body = req.body.clone();
                tokio::spawn(async move {
                    let _ = stdin.write_all(&body).await;
                });
                let Ok(Ok(out)) =
                    tokio::time::timeout(Duration::from_secs(5), child.wait_with_output()).await
                else {
                    return;
                };
                let mut exit = out.status.code().unwrap_or(-1);
                let mut stderr = out.stderr;
                match bug {
                    ExecBug::DropStderr => stderr.clear(),
                    ExecBug::WrongExit => exit = if exit == 0 { 1 } else { 0 },
                }
                let header = json!({
                    "exit": exit, "stdout": out.stdout.len(), "stderr": stderr.len(),
                    "timed_out": false, "truncated": false,
                });
                let mut body = out.stdout;
                body.extend_from_slice(&stderr);
                if frames.send(HjsonFrame::new(header, body)).await.is_err() {
                    return;
                }
            }
        });
    }
}

async fn exec_bug_is_caught(bug: ExecBug) {
    let l = listener().await;
    let addr = l.local_addr().unwrap();
    let server = tokio::spawn(broken_exec(l, bug));
    let target = broken_target(TargetKind::Exec, addr, Arc::new(Exec));
    let (report, _dir) = campaign(&target, "split").await;
    assert!(report.total_failures() > 0);
    assert_caught(&report, FailureClass::Corrupted).await;
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_reply_without_stderr_is_caught() {
    bounded(exec_bug_is_caught(ExecBug::DropStderr)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_wrong_exit_code_is_caught() {
    bounded(exec_bug_is_caught(ExecBug::WrongExit)).await;
}

// ---------------------------------------------------------------------------------
// file

fn sha_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// A file server whose put writes the body into the final file as it arrives: a put
/// cut short leaves a partial file (the bug the reference server avoids with temp
/// file + fsync + rename).
async fn in_place_file_server(listener: TcpListener, root: PathBuf) {
    while let Ok((sock, _)) = listener.accept().await {
        let root = root.clone();
        tokio::spawn(async move {
            let _ = serve_in_place(sock, &root).await;
        });
    }
}

async fn serve_in_place(mut sock: TcpStream, root: &Path) -> std::io::Result<()> {
    loop {
        let mut len = [0u8; 4];
        if sock.read_exact(&mut len).await.is_err() {
            return Ok(());
        }
        let mut raw = vec![0u8; u32::from_be_bytes(len) as usize];
        sock.read_exact(&mut raw).await?;
        let header: Value = serde_json::from_slice(&raw)?;
        let name = header["name"].as_str().unwrap_or("unnamed").to_string();
        let size = header["size"].as_u64().unwrap_or(0) as usize;
        let path = root.join(&name);
        let reply = match header["op"].as_str() {
            Some("put") => {
                tokio::fs::create_dir_all(path.parent().unwrap()).await?;
                let mut file = tokio::fs::File::create(&path).await?;
                let mut hasher = Sha256::new();
                let mut left = size;
                let mut buf = vec![0u8; 64 * 1024];
                while left > 0 {
                    let n = sock.read(&mut buf[..left.min(64 * 1024)]).await?;
                    if n == 0 {
                        // The client went away mid-body: what was written stays.
                        file.flush().await?;
                        return Ok(());
                    }
                    file.write_all(&buf[..n]).await?;
                    hasher.update(&buf[..n]);
                    left -= n;
                }
                file.flush().await?;
                HjsonFrame::new(
                    json!({"ok": true, "sha256": hex::encode(hasher.finalize())}),
                    Bytes::new(),
                )
            }
            Some("get") => match tokio::fs::read(&path).await {
                Ok(data) => HjsonFrame::new(json!({"ok": true, "sha256": sha_hex(&data)}), data),
                Err(_) => HjsonFrame::new(
                    json!({"ok": false, "error": format!("no such file: '{name}'")}),
                    Bytes::new(),
                ),
            },
            _ => HjsonFrame::new(json!({"ok": false, "error": "bad op"}), Bytes::new()),
        };
        let mut out = bytes::BytesMut::new();
        tokio_util::codec::Encoder::encode(&mut HjsonCodec::new(16 << 20), reply, &mut out)
            .map_err(std::io::Error::other)?;
        sock.write_all(&out).await?;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_put_written_in_place_is_caught() {
    bounded(async {
        let root = tempfile::tempdir().unwrap();
        let l = listener().await;
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(in_place_file_server(l, root.path().to_path_buf()));
        let target = broken_target(TargetKind::File, addr, Arc::new(File));
        // Without a cut the in-place server is indistinguishable from a correct one.
        let (clean, _d) = campaign(&target, "split").await;
        assert_eq!(clean.total_failures(), 0, "{:#?}", clean.failures);
        let (report, _dir) = campaign(&target, "disconnect:at=mid-body").await;
        assert_caught(&report, FailureClass::NotAtomic).await;
        server.abort();
    })
    .await;
}

// ---------------------------------------------------------------------------------
// auth

/// An auth server that sends a fresh nonce, reads a digest and accepts it whatever it
/// is, then speaks echo.
async fn accept_anything(listener: TcpListener) {
    while let Ok((mut sock, _)) = listener.accept().await {
        tokio::spawn(async move {
            let nonce: [u8; 32] = rand::random();
            let mut digest = [0u8; 32];
            if sock.write_all(&nonce).await.is_err() || sock.read_exact(&mut digest).await.is_err()
            {
                return;
            }
            if sock.write_all(&[1]).await.is_err() {
                return;
            }
            let _ = chopstick_targets::echo::serve_conn(
                sock,
                &chopstick_targets::echo::Config::default(),
            )
            .await;
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_that_accepts_any_digest_is_caught() {
    bounded(async {
        let l = listener().await;
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(accept_anything(l));
        let key = chopstick::oracle::auth::AuthKey::random();
        let target = broken_target(TargetKind::Auth, addr, Arc::new(Auth::new(key)));
        let (report, _dir) = campaign(&target, "split").await;
        // Conns 2 and 6 use the wrong key, 3 and 7 replay a digest: all four accepted.
        assert_eq!(report.total_failures(), 4, "{:#?}", report.failures);
        assert_caught(&report, FailureClass::AuthBypass).await;
        server.abort();
    })
    .await;
}
