//! A library user's own oracle: written outside the crate against the public `Oracle`
//! trait (a custom expected-reply rule and custom messages), run by the ordinary
//! campaign over real loopback sockets. A real echo server that follows the rule
//! passes; a real echo server that breaks it, and a receiver that takes one read for
//! one message, are caught.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chopstick::campaign::check::{check, CheckConfig, Profile, Quiet};
use chopstick::campaign::{CaseConfig, FailureClass, TargetSpec, Timing};
use chopstick::oracle::Oracle;
use chopstick::report::Report;
use chopstick::workload::{Mode, Workload};
use chopstick_targets::echo::{self, Transform};
use chopstick_targets::server::Handle;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Upper bound for one campaign; nothing may hang CI.
const DEADLINE: Duration = Duration::from_secs(120);
const SEED: u64 = 11;

/// The user's rule: every message says who sent it, and the server shouts it back.
#[derive(Debug)]
struct Shouted;

impl Oracle for Shouted {
    fn name(&self) -> &str {
        "shouted"
    }

    fn expected(&self, _conn: u64, messages: &[Bytes]) -> Vec<Bytes> {
        messages
            .iter()
            .map(|m| Bytes::from(m.to_ascii_uppercase()))
            .collect()
    }

    // Per-connection variety from `conn` alone: the oracle keeps no state.
    fn messages(&self, payloads: Vec<Bytes>, conn: u64) -> Vec<Bytes> {
        payloads
            .into_iter()
            .enumerate()
            .map(|(i, p)| {
                let mut m = format!("from c{conn} m{i}: ").into_bytes();
                m.extend_from_slice(&p);
                Bytes::from(m)
            })
            .collect()
    }
}

fn config(addr: SocketAddr) -> CheckConfig {
    CheckConfig {
        target: TargetSpec::Connect(addr),
        target_name: "user".into(),
        case: CaseConfig {
            framing: "u32be".parse().unwrap(),
            reply_framing: None,
            oracle: Arc::new(Shouted),
            mode: Mode::Pipelined,
            half_close: true,
            timing: Timing::default(),
            liveness: Duration::from_secs(3),
        },
        workload: Workload {
            connections: 6,
            messages: 6,
            max_size: 4096,
            header_width: 4,
            sessions: None,
        },
        profiles: ["split", "boundary"]
            .iter()
            .map(|p| Profile {
                name: p.to_string(),
                faults: p.parse().unwrap(),
            })
            .collect(),
        seed: SEED,
        artifacts: None,
        shrink: false,
        shrink_budget: 0,
        shrink_time: Duration::ZERO,
        fail_fast: false,
        budget: None,
        shard: None,
        hostile: false,
        concurrency: chopstick::campaign::concurrency::Concurrency::Fixed(1),
        confirm: 0,
    }
}

async fn campaign(addr: SocketAddr) -> Report {
    let mut report = Report::new(SEED);
    tokio::time::timeout(DEADLINE, check(&config(addr), &mut Quiet, &mut report))
        .await
        .expect("the campaign ends within the deadline")
        .expect("the target is usable");
    print!("{}", report.table());
    report
}

fn echo_server(transform: Transform) -> Handle {
    let listener = chopstick_targets::server::bind(([127, 0, 0, 1], 0).into(), 64).unwrap();
    let config = echo::Config {
        transform,
        ..echo::Config::default()
    };
    Handle::spawn(listener, |l, stop| echo::run(l, config, stop)).unwrap()
}

/// Shouts back whatever one read returned as if it were one whole frame.
async fn one_read_is_one_message() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = sock.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let body = buf[..n].get(4..).unwrap_or_default().to_ascii_uppercase();
                    let mut reply = (body.len() as u32).to_be_bytes().to_vec();
                    reply.extend_from_slice(&body);
                    if sock.write_all(&reply).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (addr, task)
}

#[tokio::test]
async fn a_users_oracle_passes_a_server_that_follows_its_rule() {
    let server = echo_server(Transform::Upper);
    let report = campaign(server.addr).await;
    assert_eq!(report.total_failures(), 0, "{:#?}", report.failures);
    assert!(report.rows.iter().all(|r| r.connections == 6));
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_users_oracle_catches_a_server_that_breaks_its_rule() {
    // Plain echo: correct framing, wrong replies for this user's protocol.
    let server = echo_server(Transform::None);
    let report = campaign(server.addr).await;
    assert!(
        report
            .failures
            .iter()
            .any(|f| f.class == FailureClass::Corrupted),
        "{:#?}",
        report.failures
    );
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_users_oracle_catches_a_receiver_that_takes_one_read_for_one_message() {
    let (addr, task) = one_read_is_one_message().await;
    let report = campaign(addr).await;
    task.abort();
    assert!(report.total_failures() > 0, "{:#?}", report.rows);
    let split = report.rows.iter().find(|r| r.fault == "split").unwrap();
    assert!(split.failures > 0, "split cuts every message: {split:#?}");
}
