//! memory: resident set size of a relay process holding idle connections and relaying
//! concurrent bulk transfers, read from `/proc/<pid>/status` (VmRSS, VmHWM).
//!
//! Not a criterion benchmark (criterion times things; this measures a process). The
//! binary re-executes itself as the relay (`benches::RelayProcess`), so
//! the measured process holds only the relay: clients and the sink stay in the parent.
//! Per idle connection = (RSS with N idle connections - RSS before) / N; each idle
//! connection is a client socket the relay accepted plus its upstream connection.
//! Results go to stdout and, in a full run, to `target/criterion/memory.json` for
//! `bench-report`. `--test` (criterion's quick mode, used by `ci/bench`) runs small.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn main() {
    if benches::relay_child() {
        return;
    }
    if std::env::args().any(|a| a == "--list") {
        return; // criterion-style listing: nothing to list
    }
    let quick = benches::test_mode();
    let (idle_conns, bulk_conns, bulk_mib) = if quick { (100, 10, 1) } else { (1000, 100, 16) };
    let nofile = benches::raise_nofile();
    if nofile < (2 * idle_conns + 64) as u64 {
        eprintln!(
            "memory: RLIMIT_NOFILE is {nofile}; too low for {idle_conns} connections, skipping"
        );
        return;
    }
    let rt = benches::runtime();
    let mut relays = serde_json::Map::new();
    for role in ["chopstick", "noxious"] {
        let m = rt.block_on(measure(role, idle_conns, bulk_conns, bulk_mib));
        println!("memory/{role}: {m}");
        relays.insert(role.into(), m);
    }
    let out = serde_json::json!({
        "idle_conns": idle_conns,
        "bulk_conns": bulk_conns,
        "bulk_mib": bulk_mib,
        "relays": relays,
    });
    if !quick {
        let dir = std::env::var_os("CARGO_TARGET_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
            .join("criterion");
        let _ = std::fs::create_dir_all(&dir);
        std::fs::write(
            dir.join("memory.json"),
            serde_json::to_string_pretty(&out).unwrap(),
        )
        .expect("write memory.json");
    }
}

/// A sink counting accepted connections (bulk transfers as in `benches::spawn_sink`).
async fn counting_sink() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let inner = benches::spawn_sink().await;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            // Hand the connection to a regular sink by splicing it through.
            tokio::spawn(async move {
                let Ok(mut t) = tokio::net::TcpStream::connect(inner).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut s, &mut t).await;
            });
        }
    });
    (addr, accepted)
}

async fn wait_for(what: &str, deadline: Duration, mut ok: impl FnMut() -> bool) {
    let end = Instant::now() + deadline;
    while !ok() {
        assert!(
            Instant::now() < end,
            "memory bench: timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn measure(
    role: &str,
    idle_conns: usize,
    bulk_conns: usize,
    bulk_mib: usize,
) -> serde_json::Value {
    let (sink, accepted) = counting_sink().await;
    let relay = benches::RelayProcess::spawn(role, sink);
    let (addr, pid) = (relay.addr, relay.pid());
    let rss = || benches::proc_status_kib(pid, "VmRSS").unwrap_or(0);

    // Warm the relay up with one transfer so lazily built state is in the baseline.
    {
        let mut s = benches::connect(addr).await;
        benches::bulk_once(&mut s, &benches::bulk_data(1 << 20))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = accepted.load(Ordering::SeqCst);
    let baseline = rss();

    let mut idle = Vec::with_capacity(idle_conns);
    for _ in 0..idle_conns {
        idle.push(benches::connect(addr).await);
    }
    wait_for("idle connections upstream", Duration::from_secs(30), || {
        accepted.load(Ordering::SeqCst) >= before + idle_conns
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_rss = rss();

    let data = Arc::new(benches::bulk_data(bulk_mib << 20));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..bulk_conns {
        let data = data.clone();
        tasks.spawn(async move {
            let mut s = benches::connect(addr).await;
            benches::bulk_once(&mut s, &data)
                .await
                .expect("bulk through relay");
        });
    }
    let mut peak_sampled = 0;
    while !tasks.is_empty() {
        peak_sampled = peak_sampled.max(rss());
        tokio::select! {
            r = tasks.join_next() => { r.unwrap().expect("bulk task"); }
            () = tokio::time::sleep(Duration::from_millis(5)) => {}
        }
    }
    let bulk_secs = started.elapsed().as_secs_f64();
    let hwm = benches::proc_status_kib(pid, "VmHWM").unwrap_or(0);
    drop(idle);
    drop(relay);
    serde_json::json!({
        "baseline_kib": baseline,
        "idle_kib": idle_rss,
        "per_idle_conn_kib": (idle_rss.saturating_sub(baseline)) as f64 / idle_conns as f64,
        "bulk_peak_kib": hwm.max(peak_sampled),
        "bulk_seconds": bulk_secs,
    })
}
