//! proxy_api: a proxy created through `chopstick proxy --api` (Toxiproxy's HTTP API,
//! in-process) against noxious (Toxiproxy's Rust port, in-process, its proxy runner:
//! what its API drives) and chopstick's fixed relay, in the same run; and what a
//! toxic change costs while connections are open.
//!
//! - `proxy_api_bulk`: one persistent connection; an iteration sends 8 MiB of 16 KiB
//!   `u32be` frames and waits for the sink's one-byte ack (as in `proxy.rs`).
//! - `proxy_api_pingpong`: one 64-byte round trip through a byte echo.
//! - `proxy_api_toxic_change`: one iteration = `POST /proxies/{name}/toxics` (a
//!   `latency` toxic of 0 ms) then `DELETE` it, each a fresh HTTP/1.1 connection, with
//!   0 or [`LIVE`] idle connections open through the proxy (each one's both directions
//!   re-read the toxic list).
//! - `proxy_api_bulk_churn`: the bulk row while another task adds and removes a
//!   toxic on the other stream every [`CHURN_EVERY`]: what a live change costs the
//!   traffic in flight.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use benches::nox;
use chopstick::proxy::api::{ApiHandle, ApiSettings};
use criterion::{criterion_group, Criterion, SamplingMode, Throughput};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Idle connections held open through the proxy for the toxic-change row.
const LIVE: usize = 200;
/// How often the churn task adds or removes a toxic.
const CHURN_EVERY: Duration = Duration::from_millis(10);

/// One HTTP/1.1 request (`Connection: close`); the status code.
async fn http(api: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(api).await.expect("api");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("request");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("response");
    let status = out[9..12].parse().expect("status");
    let body = out
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

/// Creates proxy `name` to `upstream` through the API; where it listens.
async fn create(api: SocketAddr, name: &str, upstream: SocketAddr) -> SocketAddr {
    let body = format!(r#"{{"name":"{name}","upstream":"{upstream}","listen":"127.0.0.1:0"}}"#);
    let (status, body) = http(api, "POST", "/proxies", &body).await;
    assert_eq!(status, 201, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    v["listen"].as_str().expect("listen").parse().expect("addr")
}

async fn toggle_toxic(api: SocketAddr, proxy: &str, stream: &str) {
    let body = format!(
        r#"{{"name":"t","type":"latency","stream":"{stream}","attributes":{{"latency":0}}}}"#
    );
    let (status, _) = http(api, "POST", &format!("/proxies/{proxy}/toxics"), &body).await;
    assert_eq!(status, 200);
    let (status, _) = http(api, "DELETE", &format!("/proxies/{proxy}/toxics/t"), "").await;
    assert_eq!(status, 204);
}

fn bench(c: &mut Criterion) {
    let rt = Arc::new(benches::runtime());
    let (api, bulk, ping, _keep) = rt.block_on(async {
        let sink = benches::spawn_sink().await;
        let echo = benches::spawn_byte_echo().await;
        let api = ApiHandle::spawn(benches::listen().await, ApiSettings::default()).expect("api");
        let addr = api.addr;
        let fixed_bulk = benches::spawn_chopstick_proxy(sink, "", None).await;
        let fixed_ping = benches::spawn_chopstick_proxy(echo, "", None).await;
        let nox_bulk = nox::spawn(sink, vec![]).await;
        let nox_ping = nox::spawn(echo, vec![]).await;
        let bulk = vec![
            ("direct", sink),
            ("chopstick_api", create(addr, "bulk", sink).await),
            ("chopstick_fixed", fixed_bulk.addr),
            ("noxious", nox_bulk.addr),
        ];
        let ping = vec![
            ("direct", echo),
            ("chopstick_api", create(addr, "ping", echo).await),
            ("chopstick_fixed", fixed_ping.addr),
            ("noxious", nox_ping.addr),
        ];
        let keep: Vec<Box<dyn std::any::Any + Send>> = vec![
            Box::new(fixed_bulk),
            Box::new(fixed_ping),
            Box::new(nox_bulk),
            Box::new(nox_ping),
        ];
        (api, bulk, ping, keep)
    });
    let api_addr = api.addr;
    let data = Arc::new(benches::bulk_data(8 << 20));

    let mut group = c.benchmark_group("proxy_api_bulk");
    group.measurement_time(Duration::from_secs(4));
    group.warm_up_time(Duration::from_secs(1));
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    group.throughput(Throughput::Bytes(data.len() as u64));
    for &(name, addr) in &bulk {
        let conn = Arc::new(tokio::sync::Mutex::new(rt.block_on(benches::connect(addr))));
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
    // The same transfer while toxics come and go on the other stream of this proxy.
    let conn = Arc::new(tokio::sync::Mutex::new(
        rt.block_on(benches::connect(bulk[1].1)),
    ));
    group.bench_function("chopstick_api_churn", |b| {
        b.iter_custom(|iters| {
            let (data, conn) = (data.clone(), conn.clone());
            rt.block_on(rt.spawn(async move {
                let churn = tokio::spawn(async move {
                    loop {
                        toggle_toxic(api_addr, "bulk", "downstream").await;
                        tokio::time::sleep(CHURN_EVERY).await;
                    }
                });
                let mut s = conn.lock().await;
                let start = Instant::now();
                for _ in 0..iters {
                    benches::bulk_once(&mut s, &data).await.expect("bulk");
                }
                let took = start.elapsed();
                churn.abort();
                took
            }))
            .expect("client task")
        })
    });
    group.finish();

    let mut group = c.benchmark_group("proxy_api_pingpong");
    group.measurement_time(Duration::from_secs(3));
    group.warm_up_time(Duration::from_secs(1));
    group.sample_size(30);
    for &(name, addr) in &ping {
        let conn = Arc::new(tokio::sync::Mutex::new(rt.block_on(benches::connect(addr))));
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

    let mut group = c.benchmark_group("proxy_api_toxic_change");
    group.measurement_time(Duration::from_secs(3));
    group.warm_up_time(Duration::from_secs(1));
    group.sample_size(20);
    for live in [0, LIVE] {
        let held: Vec<TcpStream> = rt.block_on(async {
            let mut v = Vec::new();
            for _ in 0..live {
                v.push(benches::connect(ping[1].1).await);
            }
            v
        });
        group.bench_function(format!("add_remove_{live}_live"), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        toggle_toxic(api_addr, "ping", "upstream").await;
                    }
                    start.elapsed()
                })
            })
        });
        drop(held);
    }
    group.finish();
    rt.block_on(api.shutdown()).expect("api shutdown");
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
