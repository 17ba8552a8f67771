//! campaign: messages verified per second by `campaign::check::check` vs the raw framed
//! echo rate, against the same in-process echo server over real loopback sockets.
//!
//! Both sides send the same seeded messages (`Workload::messages`, up to 1 KiB, empty
//! and 1-byte ones included), one connection after another, pipelined, FIN after the
//! last request. `check` draws a `coalesce` plan per connection (zero pause: this
//! measures the harness, not the pauses), writes per plan, decodes every reply and
//! judges it with the echo oracle. The raw peer writes the encoded stream in one go and
//! counts reply bytes until EOF: no plan, no decoding, no judging.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chopstick::campaign::check::{check, CheckConfig, Profile, Quiet};
use chopstick::campaign::{CaseConfig, TargetSpec, Timing};
use chopstick::report::Report;
use chopstick::workload::{Mode, Workload};
use chopstick_targets::server::Handle;
use chopstick_targets::wire::Framing;
use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CONNECTIONS: usize = 4;
const MESSAGES: usize = 500;
const SEED: u64 = 6;

fn workload() -> Workload {
    Workload {
        connections: CONNECTIONS,
        messages: MESSAGES,
        max_size: 1024,
        header_width: 4,
        sessions: None,
    }
}

fn config(addr: SocketAddr, framing: Framing) -> CheckConfig {
    CheckConfig {
        target: TargetSpec::Connect(addr),
        target_name: "echo".into(),
        case: CaseConfig {
            framing,
            reply_framing: None,
            oracle: std::sync::Arc::new(chopstick::oracle::echo::Echo),
            mode: Mode::Pipelined,
            half_close: true,
            // No enforced gap between writes: this measures checking throughput, not
            // the 1 ms a campaign leaves between writes so cuts survive on loopback.
            timing: Timing {
                min_pause: Duration::ZERO,
                ..Timing::default()
            },
            liveness: Duration::from_secs(3),
        },
        workload: workload(),
        profiles: vec![Profile {
            name: "coalesce".into(),
            faults: "coalesce:pause_us=0".parse().expect("fault"),
        }],
        seed: SEED,
        artifacts: None,
        shrink: false,
        shrink_budget: 0,
        shrink_time: chopstick::campaign::shrink::DEFAULT_TIME,
        fail_fast: false,
        budget: None,
        shard: None,
        hostile: false,
        concurrency: chopstick::campaign::concurrency::Concurrency::Fixed(1),
        confirm: 0,
    }
}

async fn raw_echo(addr: SocketAddr, streams: &[Vec<u8>]) {
    let mut buf = vec![0u8; 64 * 1024];
    for stream in streams {
        let mut s = benches::connect(addr).await;
        let (mut r, mut w) = s.split();
        let writer = async {
            w.write_all(stream).await.expect("write");
            w.shutdown().await.expect("fin");
        };
        let reader = async {
            let mut got = 0;
            loop {
                match r.read(&mut buf).await.expect("read") {
                    0 => break,
                    n => got += n,
                }
            }
            assert_eq!(got, stream.len(), "echo returned every byte");
        };
        tokio::join!(writer, reader);
    }
}

fn campaign(c: &mut Criterion) {
    let rt = benches::runtime();
    let framing: Framing = "u32be".parse().unwrap();
    let (_server, addr) = rt.block_on(async {
        let listener =
            chopstick_targets::server::bind("127.0.0.1:0".parse().unwrap(), 1024).unwrap();
        let cfg = chopstick_targets::echo::Config {
            framing,
            ..Default::default()
        };
        let h = Handle::spawn(listener, move |l, stop| {
            chopstick_targets::echo::run(l, cfg, stop)
        })
        .unwrap();
        let addr = h.addr;
        (h, addr)
    });
    let w = workload();
    let streams: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..CONNECTIONS as u64)
            .map(|conn| {
                framing
                    .encode_all(&w.messages(SEED, conn))
                    .unwrap()
                    .0
                    .to_vec()
            })
            .collect(),
    );
    let config = Arc::new(config(addr, framing));

    let mut group = c.benchmark_group("campaign");
    group.measurement_time(Duration::from_secs(4));
    group.warm_up_time(Duration::from_secs(1));
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    group.throughput(Throughput::Elements((CONNECTIONS * MESSAGES) as u64));
    group.bench_function("raw_echo", |b| {
        b.iter_custom(|iters| {
            let streams = streams.clone();
            rt.block_on(rt.spawn(async move {
                let start = Instant::now();
                for _ in 0..iters {
                    raw_echo(addr, &streams).await;
                }
                start.elapsed()
            }))
            .unwrap()
        })
    });
    group.bench_function("check_coalesce", |b| {
        b.iter_custom(|iters| {
            let config = config.clone();
            rt.block_on(rt.spawn(async move {
                let start = Instant::now();
                for _ in 0..iters {
                    let mut report = Report::new(SEED);
                    check(&config, &mut Quiet, &mut report)
                        .await
                        .expect("check runs");
                    assert_eq!(
                        report.total_failures(),
                        0,
                        "echo passes: {}",
                        report.table()
                    );
                    assert_eq!(report.rows[0].messages, (CONNECTIONS * MESSAGES) as u64);
                }
                start.elapsed()
            }))
            .unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, campaign);
criterion_main!(benches);
