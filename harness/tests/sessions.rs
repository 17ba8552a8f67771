//! Sessions from templates: a campaign whose connections replay request sequences
//! (as `check --traffic` / `check --requests` give them) instead of drawn payloads,
//! judged by the noise-filtering differential oracle against a real Python server
//! (`tests/zoo/noisy.py`, spawned). The correct server passes under every fault; its
//! one-recv-header variant is caught, shrunk, and its reproducer carries the requests
//! and replays without the templates.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chopstick::campaign::check::{check, CheckConfig, Profile, Quiet};
use chopstick::campaign::repro::{self, Reproducer};
use chopstick::campaign::{CaseConfig, Sessions, TargetSpec, Timing};
use chopstick::oracle::differential::Differential;
use chopstick::report::Report;
use chopstick::workload::{Mode, Workload};

/// Upper bound for one campaign; nothing may hang CI.
const DEADLINE: Duration = Duration::from_secs(180);
const SEED: u64 = 21;

/// Templates as a traffic file would give them: a login-like session, a pipelined
/// burst with an empty and a large request, and a one-request session.
fn templates() -> Sessions {
    let b = |s: &str| Bytes::copy_from_slice(s.as_bytes());
    Sessions::new(vec![
        vec![b("HELLO client=7"), b("GET /a"), b("GET /b"), b("BYE")],
        vec![
            b("PUT k1"),
            Bytes::new(),
            Bytes::from(vec![b'x'; 70_000]),
            b("GET k1"),
        ],
        vec![b("PING")],
    ])
    .unwrap()
}

fn noisy(bug: bool) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/zoo/noisy.py");
    let bug = if bug { " --bug" } else { "" };
    format!("python3 {} {{port}}{bug}", script.display())
}

fn config(cmd: String, artifacts: &Path) -> CheckConfig {
    CheckConfig {
        target: TargetSpec::Spawn(cmd),
        target_name: "noisy".into(),
        case: CaseConfig {
            framing: "u32be".parse().unwrap(),
            oracle: Arc::new(Differential::default()),
            mode: Mode::Pipelined,
            half_close: true,
            timing: Timing::default(),
            liveness: Duration::from_secs(2),
            reply_framing: None,
        },
        workload: Workload {
            connections: 6,
            messages: 0,
            max_size: 0,
            header_width: 4,
            sessions: Some(Arc::new(templates())),
        },
        profiles: ["split", "boundary", "coalesce", "disconnect"]
            .iter()
            .map(|p| Profile {
                name: p.to_string(),
                faults: p.parse().unwrap(),
            })
            .collect(),
        seed: SEED,
        artifacts: Some(artifacts.to_path_buf()),
        shrink: true,
        shrink_budget: chopstick::campaign::shrink::DEFAULT_BUDGET,
        shrink_time: Duration::from_secs(8),
        fail_fast: false,
        budget: None,
        shard: None,
        hostile: false,
        concurrency: chopstick::campaign::concurrency::Concurrency::Fixed(1),
        confirm: 0,
    }
}

async fn campaign(bug: bool, artifacts: &Path) -> Report {
    let mut report = Report::new(SEED);
    let config = config(noisy(bug), artifacts);
    tokio::time::timeout(DEADLINE, check(&config, &mut Quiet, &mut report))
        .await
        .expect("the campaign ends within the deadline")
        .expect("the target starts");
    print!("{}", report.table());
    report
}

#[tokio::test]
async fn recorded_sessions_pass_a_noisy_correct_server_under_every_fault() {
    let dir = tempfile::tempdir().unwrap();
    let report = campaign(false, dir.path()).await;
    assert_eq!(report.total_failures(), 0, "{:#?}", report.failures);
    // 6 connections per profile play the 3 templates twice: 2 x (4 + 4 + 1) requests.
    assert!(
        report
            .rows
            .iter()
            .all(|r| r.connections == 6 && r.messages == 18),
        "{:#?}",
        report.rows
    );
}

#[tokio::test]
async fn a_one_recv_header_is_caught_and_the_reproducer_replays_without_the_templates() {
    let dir = tempfile::tempdir().unwrap();
    let report = campaign(true, dir.path()).await;
    let record = report
        .failures
        .iter()
        .find(|f| f.reproducer.is_some())
        .unwrap_or_else(|| panic!("no failure with a reproducer: {:#?}", report.rows));
    let r = Reproducer::read(record.reproducer.as_ref().unwrap()).unwrap();
    // Its requests are a template's, in order, some dropped by shrinking.
    let sent = r.case().messages;
    assert!(!sent.is_empty());
    let from_a_template = templates().0.iter().any(|t| {
        let mut rest = t.iter();
        sent.iter().all(|m| rest.any(|x| x == m))
    });
    assert!(from_a_template, "{sent:?}");
    let outcome = repro::replay(&r, 3, Timing::default()).await.unwrap();
    assert!(outcome.failure.is_some(), "replay did not fail again");
}
