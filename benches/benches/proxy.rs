//! proxy: bulk transfer and ping-pong over loopback, direct vs through relays.
//!
//! Relays, all measured in this run. In processes of their own, the way they are
//! deployed: the chopstick proxy (`chopstick`: this binary re-executed as the relay,
//! see `benches::RelayProcess`), noxious (Toxiproxy's Rust port) and socat where
//! installed. In-process, on the runtime that also runs the client and the sink
//! (`_inproc`, and every faulted row): the chopstick proxy plain, with `split` at 1460
//! and 64 byte pieces (zero pause, `min_pause` 0) and with frame-aware `coalesce`;
//! noxious plain and with its slicer toxic at 1460 bytes. Pass-through goals compare
//! processes with processes; fault goals compare in-process relays with each other.
//!
//! Bulk: one persistent connection; an iteration announces N bytes of 16 KiB `u32be`
//! frames, writes them (64 KiB writes) and waits for the sink's one-byte ack.
//! Ping-pong: one persistent connection; an iteration is one 64-byte round trip
//! through a byte echo.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use benches::nox;
use criterion::{criterion_group, Criterion, SamplingMode, Throughput};
use tokio::runtime::Runtime;

const SPLIT1460: &str = "split:max=1460:coarse=0:pause_us=0";
const SPLIT64: &str = "split:max=64:coarse=0:pause_us=0";
const COALESCE: &str = "coalesce:pause_us=0";

/// Keeps whatever relay an address belongs to alive.
type Keep = Box<dyn std::any::Any + Send>;

struct Relays {
    /// (name, address, bytes per bulk iteration)
    bulk: Vec<(&'static str, SocketAddr, usize)>,
    ping: Vec<(&'static str, SocketAddr)>,
    _keep: Vec<Keep>,
}

fn relays(rt: &Runtime) -> Relays {
    rt.block_on(async {
        let sink = benches::spawn_sink().await;
        let echo = benches::spawn_byte_echo().await;
        let mut keep: Vec<Keep> = Vec::new();
        let mut bulk = vec![("direct", sink, 8 << 20)];
        let mut ping = vec![("direct", echo)];

        for role in ["chopstick", "noxious"] {
            let p = benches::RelayProcess::spawn(role, sink);
            bulk.push((role, p.addr, 8 << 20));
            keep.push(Box::new(p));
            let p = benches::RelayProcess::spawn(role, echo);
            ping.push((role, p.addr));
            keep.push(Box::new(p));
        }
        let p = benches::spawn_chopstick_proxy(sink, "", None).await;
        bulk.push(("chopstick_inproc", p.addr, 8 << 20));
        keep.push(Box::new(p));
        let p = benches::spawn_chopstick_proxy(sink, SPLIT1460, None).await;
        bulk.push(("chopstick_split1460", p.addr, 4 << 20));
        keep.push(Box::new(p));
        let p = benches::spawn_chopstick_proxy(sink, SPLIT64, None).await;
        bulk.push(("chopstick_split64", p.addr, 512 << 10));
        keep.push(Box::new(p));
        let p = benches::spawn_chopstick_proxy(sink, COALESCE, Some("u32be")).await;
        bulk.push(("chopstick_coalesce", p.addr, 8 << 20));
        keep.push(Box::new(p));
        let p = benches::spawn_chopstick_proxy(echo, "", None).await;
        ping.push(("chopstick_inproc", p.addr));
        keep.push(Box::new(p));

        let n = nox::spawn(sink, vec![]).await;
        bulk.push(("noxious_inproc", n.addr, 8 << 20));
        keep.push(Box::new(n));
        let n = nox::spawn(sink, vec![nox::slicer(1460)]).await;
        bulk.push(("noxious_slicer1460", n.addr, 128 << 10));
        keep.push(Box::new(n));

        if let Some(s) = benches::Socat::spawn(sink) {
            bulk.push(("socat", s.addr, 8 << 20));
            keep.push(Box::new(s));
        }
        if let Some(s) = benches::Socat::spawn(echo) {
            ping.push(("socat", s.addr));
            keep.push(Box::new(s));
        }
        Relays {
            bulk,
            ping,
            _keep: keep,
        }
    })
}

fn proxy(c: &mut Criterion) {
    let rt = Arc::new(benches::runtime());
    let relays = relays(&rt);

    let mut group = c.benchmark_group("proxy_bulk");
    group.measurement_time(Duration::from_secs(4));
    group.warm_up_time(Duration::from_secs(1));
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    for &(name, addr, len) in &relays.bulk {
        let data = Arc::new(benches::bulk_data(len));
        group.throughput(Throughput::Bytes(data.len() as u64));
        let conn = rt.block_on(benches::connect(addr));
        let conn = Arc::new(tokio::sync::Mutex::new(conn));
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let (data, conn) = (data.clone(), conn.clone());
                rt.block_on(rt.spawn(async move {
                    let mut s = conn.lock().await;
                    let start = Instant::now();
                    for _ in 0..iters {
                        benches::bulk_once(&mut s, &data).await.expect("bulk");
                    }
                    start.elapsed()
                }))
                .expect("client task")
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("proxy_pingpong");
    group.measurement_time(Duration::from_secs(3));
    group.warm_up_time(Duration::from_secs(1));
    group.sample_size(30);
    for &(name, addr) in &relays.ping {
        let conn = rt.block_on(benches::connect(addr));
        let conn = Arc::new(tokio::sync::Mutex::new(conn));
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let conn = conn.clone();
                rt.block_on(rt.spawn(async move {
                    let mut s = conn.lock().await;
                    let msg = [7u8; 64];
                    let mut back = [0u8; 64];
                    let start = Instant::now();
                    for _ in 0..iters {
                        benches::ping_once(&mut s, &msg, &mut back)
                            .await
                            .expect("ping");
                    }
                    start.elapsed()
                }))
                .expect("client task")
            })
        });
    }
    group.finish();
}

criterion_group!(benches, proxy);

// criterion_main!, plus the relay-process role of this binary.
fn main() {
    if benches::relay_child() {
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
