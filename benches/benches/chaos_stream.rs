//! chaos_stream: `ChaosStream` vs bare `tokio::io::duplex`.
//!
//! 1 MiB goes from a writer (16 KiB writes) through a 64 KiB duplex pipe to a reader
//! (64 KiB reads), both in one task on a current-thread runtime, so the figure is the
//! CPU cost of the stream layers and not thread hand-offs. The writer side is wrapped in
//! a `ChaosStream` with no plan, with a pass-through plan (one `Write(len)` step), and
//! with `split` plans (cuts of 1..=1460 and 1..=64 bytes; pauses become `Pending` + wake,
//! no timer), against the bare duplex half.

use std::time::Duration;

use chopstick::chaos::{conn_rng, ChaosStream, Direction, FaultSet, Plan};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const LEN: usize = 1024 * 1024;

async fn transfer<W: AsyncWrite + Unpin, R: AsyncRead + Unpin>(mut w: W, mut r: R, data: &[u8]) {
    let writer = async {
        for chunk in data.chunks(16 * 1024) {
            w.write_all(chunk).await.expect("write");
        }
        w.shutdown().await.expect("shutdown");
    };
    let reader = async {
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0;
        loop {
            let n = r.read(&mut buf).await.expect("read");
            if n == 0 {
                break;
            }
            got += n;
        }
        assert_eq!(got, data.len());
    };
    tokio::join!(writer, reader);
}

fn split_plan(spec: &str) -> Plan {
    let faults: FaultSet = spec.parse().expect("fault");
    faults.plan(LEN, &[], &mut conn_rng(7, 0, Direction::Up))
}

fn chaos_stream(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let data = benches::filler(LEN);
    let mut group = c.benchmark_group("chaos_stream");
    group.measurement_time(Duration::from_secs(3));
    group.warm_up_time(Duration::from_secs(1));
    group.throughput(Throughput::Bytes(LEN as u64));
    let pipe = || tokio::io::duplex(64 * 1024);

    group.bench_function("bare_duplex", |b| {
        b.iter_batched(
            pipe,
            |(w, r)| rt.block_on(transfer(w, r, &data)),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("chaos_no_plan", |b| {
        b.iter_batched(
            || {
                let (w, r) = pipe();
                (ChaosStream::new(w), r)
            },
            |(w, r)| rt.block_on(transfer(w, r, &data)),
            BatchSize::SmallInput,
        )
    });
    let plans = [
        ("chaos_passthrough", Plan::passthrough(LEN)),
        (
            "chaos_split1460",
            split_plan("split:max=1460:coarse=0:pause_us=0"),
        ),
        (
            "chaos_split1460_paused",
            split_plan("split:max=1460:coarse=0"),
        ),
        (
            "chaos_split64",
            split_plan("split:max=64:coarse=0:pause_us=0"),
        ),
    ];
    for (name, plan) in plans {
        group.bench_function(name, |b| {
            b.iter_batched(
                || {
                    let (w, r) = pipe();
                    (ChaosStream::writer(w, plan.clone()), r)
                },
                |(w, r)| rt.block_on(transfer(w, r, &data)),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, chaos_stream);
criterion_main!(benches);
