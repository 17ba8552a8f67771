//! proxy_api: proxies created over Toxiproxy's HTTP API, chopstick's (`chopstick proxy
//! --api`, in-process) against noxious's (Toxiproxy's Rust port behind the same routes,
//! [`benches::nox_api`], in-process), with no proxy (`direct`) and chopstick's fixed
//! relay as references, in the same run; and what a toxic change costs while
//! connections are open. Added latency = a proxy's round trip - `direct`'s.
//!
//! - `proxy_api_bulk`: one persistent connection; an iteration sends 8 MiB of 16 KiB
//!   `u32be` frames and waits for the sink's one-byte ack (as in `proxy.rs`).
//!   `*_churn`: the same while another task adds and removes a toxic on the proxy's
//!   downstream every [`CHURN_EVERY`] over HTTP: what a live change costs the traffic in
//!   flight. A churn row first probes one exchange under churn on a fresh connection
//!   and is skipped, saying so, if it does not complete within [`PROBE_TIMEOUT`] (a
//!   relay that stalls when a toxic changes must not hang the bench).
//! - `proxy_api_pingpong`: one 64-byte round trip through a byte echo; `*_churn` as
//!   above (probe: 100 round trips).
//! - `proxy_api_toxic_change`: one iteration = `POST /proxies/{name}/toxics` (a
//!   `latency` toxic of 0 ms) then `DELETE` it, each a fresh HTTP/1.1 connection, with
//!   0 or [`LIVE`] idle connections open through the proxy (chopstick answers once the
//!   list is swapped and every connection re-reads it on its own; noxious answers once
//!   it has rebuilt every connection's links).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chopstick::proxy::api::{ApiHandle, ApiSettings};
use criterion::measurement::WallTime;
use criterion::{criterion_group, BenchmarkGroup, Criterion, SamplingMode, Throughput};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Idle connections held open through the proxy for the toxic-change rows.
const LIVE: usize = 200;
/// How often the churn task adds or removes a toxic.
const CHURN_EVERY: Duration = Duration::from_millis(10);
/// Longest any one HTTP request of the bench may take; a stuck API fails the bench.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest one probe exchange under toxic churn may take before its row is skipped.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// One HTTP/1.1 request (`Connection: close`); the status code and body.
async fn http(api: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let exchange = async {
        let mut s = TcpStream::connect(api).await.expect("api");
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await.expect("request");
        let mut out = String::new();
        s.read_to_string(&mut out).await.expect("response");
        out
    };
    let out = tokio::time::timeout(HTTP_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| panic!("{method} {path}: no answer within {HTTP_TIMEOUT:?}"));
    let status = out[9..12].parse().expect("status");
    let body = out
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

/// Creates proxy `name` to `upstream` through the API at `api`, as a Toxiproxy client
/// does; where it listens.
async fn create(api: SocketAddr, name: &str, upstream: SocketAddr) -> SocketAddr {
    let body = format!(r#"{{"name":"{name}","upstream":"{upstream}","listen":"127.0.0.1:0"}}"#);
    let (status, body) = http(api, "POST", "/proxies", &body).await;
    assert_eq!(status, 201, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    v["listen"].as_str().expect("listen").parse().expect("addr")
}

/// Adds a 0 ms `latency` toxic named `name` on `stream` of `proxy`, then removes it.
async fn toggle_toxic(api: SocketAddr, proxy: &str, stream: &str, name: &str) {
    let body = format!(
        r#"{{"name":"{name}","type":"latency","stream":"{stream}","attributes":{{"latency":0}}}}"#
    );
    let (status, body) = http(api, "POST", &format!("/proxies/{proxy}/toxics"), &body).await;
    assert_eq!(status, 200, "{body}");
    let path = format!("/proxies/{proxy}/toxics/{name}");
    let (status, body) = http(api, "DELETE", &path, "").await;
    assert_eq!(status, 204, "{body}");
}

/// The churn task's toxic, apart from the one the toxic-change rows add.
const CHURN_TOXIC: &str = "churn";

/// A task adding and removing the toxic [`CHURN_TOXIC`] on one stream of a proxy every
/// [`CHURN_EVERY`].
struct Churn {
    api: SocketAddr,
    proxy: &'static str,
    task: tokio::task::JoinHandle<()>,
}

impl Churn {
    fn start(api: SocketAddr, proxy: &'static str, stream: &'static str) -> Churn {
        let task = tokio::spawn(async move {
            loop {
                toggle_toxic(api, proxy, stream, CHURN_TOXIC).await;
                tokio::time::sleep(CHURN_EVERY).await;
            }
        });
        Churn { api, proxy, task }
    }

    /// Stops the task and removes its toxic if the stop fell between add and remove.
    async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
        let path = format!("/proxies/{}/toxics/{CHURN_TOXIC}", self.proxy);
        let _ = http(self.api, "DELETE", &path, "").await;
    }
}

/// Whether one `exchange` on a fresh connection to `addr` completes within
/// [`PROBE_TIMEOUT`] while toxics churn on `stream` of `proxy`: a relay that stalls or
/// loses bytes when a toxic changes would hang its row, so the row is skipped, saying so.
fn survives_churn<F, Fut>(
    rt: &tokio::runtime::Runtime,
    row: &str,
    target: (SocketAddr, Api),
    proxy: &'static str,
    stream: &'static str,
    exchange: F,
) -> bool
where
    F: FnOnce(TcpStream) -> Fut,
    Fut: std::future::Future<Output = std::io::Result<()>>,
{
    let (addr, api) = target;
    rt.block_on(async {
        let s = benches::connect(addr).await;
        let churn = Churn::start(api.addr, proxy, stream);
        let done = tokio::time::timeout(PROBE_TIMEOUT, exchange(s)).await;
        churn.stop().await;
        match done {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                eprintln!("{row}: skipped: the connection failed under toxic churn: {e}");
                false
            }
            Err(_) => {
                eprintln!(
                    "{row}: skipped: one exchange under toxic churn did not complete within {PROBE_TIMEOUT:?}"
                );
                false
            }
        }
    })
}

/// What one iteration of a row does.
#[derive(Clone)]
enum Exchange {
    /// `bulk_once` of these bytes.
    Bulk(Arc<Vec<u8>>),
    /// One 64-byte round trip.
    Ping,
}

impl Exchange {
    async fn once(&self, s: &mut TcpStream) -> std::io::Result<()> {
        match self {
            Exchange::Bulk(data) => benches::bulk_once(s, data).await,
            Exchange::Ping => benches::ping_once(s, &[7u8; 64], &mut [0u8; 64]).await,
        }
    }

    /// How many make one probe under churn: enough to meet a toxic change.
    fn per_probe(&self) -> usize {
        match self {
            Exchange::Bulk(_) => 1,
            Exchange::Ping => 100,
        }
    }
}

/// One benchmark per row of `proxy` (its churn rows probed first), each iteration an
/// `exchange` on the row's persistent connection.
fn bench_rows(
    rt: &Arc<tokio::runtime::Runtime>,
    group: &mut BenchmarkGroup<'_, WallTime>,
    rows: &[Row],
    proxy: &'static str,
    exchange: Exchange,
) {
    for row in rows {
        if let Some(api) = row.churn {
            let probe = |mut s: TcpStream| {
                let exchange = exchange.clone();
                async move {
                    for _ in 0..exchange.per_probe() {
                        exchange.once(&mut s).await?;
                    }
                    Ok(())
                }
            };
            if !survives_churn(rt, &row.name, (row.addr, api), proxy, "downstream", probe) {
                continue;
            }
        }
        let conn = Arc::new(tokio::sync::Mutex::new(
            rt.block_on(benches::connect(row.addr)),
        ));
        let churn_on = row.churn;
        let stalled = Arc::new(AtomicBool::new(false));
        group.bench_function(&row.name, |b| {
            b.iter_custom(|iters| {
                let (conn, exchange) = (conn.clone(), exchange.clone());
                let (row_name, stalled) = (row.name.clone(), stalled.clone());
                rt.block_on(rt.spawn(async move {
                    let churning = churn_on.map(|api| Churn::start(api.addr, proxy, "downstream"));
                    let mut s = conn.lock().await;
                    let took = timed(&row_name, iters, &stalled, &mut s, &exchange).await;
                    if let Some(c) = churning {
                        c.stop().await;
                    }
                    took
                }))
                .expect("client task")
            })
        });
    }
}

/// Times `iters` exchanges on `s`, each bounded by [`PROBE_TIMEOUT`]: a relay that loses
/// bytes when a toxic changes can pass the probe and stall later, and must not hang the
/// bench. From the first stall on, the row's exchanges are not run but counted at
/// [`PROBE_TIMEOUT`] each, and the row says so: its figure then reads "stalls", not a
/// rate.
async fn timed(
    row: &str,
    iters: u64,
    stalled: &AtomicBool,
    s: &mut TcpStream,
    exchange: &Exchange,
) -> Duration {
    let stall_cost = |n: u64| PROBE_TIMEOUT.saturating_mul(u32::try_from(n).unwrap_or(u32::MAX));
    if stalled.load(Ordering::Relaxed) {
        return stall_cost(iters);
    }
    let start = Instant::now();
    for done in 0..iters {
        match tokio::time::timeout(PROBE_TIMEOUT, exchange.once(s)).await {
            Ok(r) => r.unwrap_or_else(|e| panic!("{row}: {e}")),
            Err(_) => {
                stalled.store(true, Ordering::Relaxed);
                eprintln!(
                    "{row}: STALLED: an exchange did not complete within {PROBE_TIMEOUT:?}; \
                     the row's remaining exchanges are counted at that each, not run"
                );
                return start.elapsed().saturating_add(stall_cost(iters - done - 1));
            }
        }
    }
    start.elapsed()
}

/// One API server under test: its row prefix and address.
#[derive(Clone, Copy)]
struct Api {
    name: &'static str,
    addr: SocketAddr,
}

/// A row: its name, where the client connects, and the API to churn toxics on.
struct Row {
    name: String,
    addr: SocketAddr,
    churn: Option<Api>,
}

fn rows(direct: SocketAddr, fixed: SocketAddr, proxied: &[(Api, SocketAddr)]) -> Vec<Row> {
    let mut rows = vec![
        Row {
            name: "direct".into(),
            addr: direct,
            churn: None,
        },
        Row {
            name: "chopstick_fixed".into(),
            addr: fixed,
            churn: None,
        },
    ];
    for &(api, addr) in proxied {
        rows.push(Row {
            name: api.name.into(),
            addr,
            churn: None,
        });
    }
    for &(api, addr) in proxied {
        rows.push(Row {
            name: format!("{}_churn", api.name),
            addr,
            churn: Some(api),
        });
    }
    rows
}

fn bench(c: &mut Criterion) {
    let rt = Arc::new(benches::runtime());
    let (chopstick, noxious, bulk, ping, ping_proxies, _keep) = rt.block_on(async {
        let sink = benches::spawn_sink().await;
        let echo = benches::spawn_byte_echo().await;
        let chopstick =
            ApiHandle::spawn(benches::listen().await, ApiSettings::default()).expect("api");
        let noxious = benches::nox_api::spawn().await;
        let apis = [
            Api {
                name: "chopstick_api",
                addr: chopstick.addr,
            },
            Api {
                name: "noxious_api",
                addr: noxious.addr,
            },
        ];
        let fixed_bulk = benches::spawn_chopstick_proxy(sink, "", None).await;
        let fixed_ping = benches::spawn_chopstick_proxy(echo, "", None).await;
        let (mut bulk_proxies, mut ping_proxies) = (Vec::new(), Vec::new());
        for api in apis {
            bulk_proxies.push((api, create(api.addr, "bulk", sink).await));
            ping_proxies.push((api, create(api.addr, "ping", echo).await));
        }
        let bulk = rows(sink, fixed_bulk.addr, &bulk_proxies);
        let ping = rows(echo, fixed_ping.addr, &ping_proxies);
        let keep = (fixed_bulk, fixed_ping);
        (chopstick, noxious, bulk, ping, ping_proxies, keep)
    });
    let data = Arc::new(benches::bulk_data(8 << 20));

    let mut group = c.benchmark_group("proxy_api_bulk");
    group.measurement_time(Duration::from_secs(4));
    group.warm_up_time(Duration::from_secs(1));
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    group.throughput(Throughput::Bytes(data.len() as u64));
    bench_rows(&rt, &mut group, &bulk, "bulk", Exchange::Bulk(data));
    group.finish();

    let mut group = c.benchmark_group("proxy_api_pingpong");
    group.measurement_time(Duration::from_secs(3));
    group.warm_up_time(Duration::from_secs(1));
    group.sample_size(30);
    bench_rows(&rt, &mut group, &ping, "ping", Exchange::Ping);
    group.finish();

    let mut group = c.benchmark_group("proxy_api_toxic_change");
    group.measurement_time(Duration::from_secs(3));
    group.warm_up_time(Duration::from_secs(1));
    group.sample_size(20);
    for (api, proxy_addr) in ping_proxies {
        for live in [0, LIVE] {
            let held: Vec<TcpStream> = rt.block_on(async {
                let mut v = Vec::new();
                for _ in 0..live {
                    v.push(benches::connect(proxy_addr).await);
                }
                v
            });
            group.bench_function(format!("{}/add_remove_{live}_live", api.name), |b| {
                b.iter_custom(|iters| {
                    rt.block_on(async {
                        let start = Instant::now();
                        for _ in 0..iters {
                            toggle_toxic(api.addr, "ping", "upstream", "t").await;
                        }
                        start.elapsed()
                    })
                })
            });
            drop(held);
        }
    }
    group.finish();
    drop(noxious);
    rt.block_on(chopstick.shutdown()).expect("api shutdown");
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
