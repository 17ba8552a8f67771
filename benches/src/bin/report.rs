//! `bench-report`: turns criterion's estimates (under `target/criterion`) and the memory
//! bench's `memory.json` into the Markdown tables of BENCHMARKS.md: medians per group,
//! then the ratios the benchmark issue sets as goals, each marked met or missed.
//!
//! Run after `cargo bench -p benches` (that is what `ci/bench --full` does).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

#[derive(Debug, Clone)]
struct Est {
    /// Median time of one iteration, ns.
    median_ns: f64,
    /// Bytes or elements per iteration.
    bytes: Option<f64>,
    elements: Option<f64>,
}

impl Est {
    fn per_sec(&self) -> Option<f64> {
        self.bytes
            .or(self.elements)
            .map(|n| n / (self.median_ns / 1e9))
    }
}

fn criterion_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .expect("workspace")
                .join("target")
        });
    target.join("criterion")
}

/// Every `<group>/<function>/<param>/new` (or `<group>/<function>/new`) under `dir`.
fn load(dir: &Path, out: &mut BTreeMap<String, Est>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        if !path.is_dir() {
            continue;
        }
        if path.file_name().is_some_and(|n| n == "new") {
            let read = |f: &str| -> Option<Value> {
                serde_json::from_str(&std::fs::read_to_string(path.join(f)).ok()?).ok()
            };
            let (Some(est), Some(bench)) = (read("estimates.json"), read("benchmark.json")) else {
                continue;
            };
            let Some(median) = est["median"]["point_estimate"].as_f64() else {
                continue;
            };
            let id = bench["full_id"].as_str().unwrap_or_default().to_string();
            let tp = &bench["throughput"];
            out.insert(
                id,
                Est {
                    median_ns: median,
                    bytes: tp["Bytes"].as_f64().or(tp["BytesDecimal"].as_f64()),
                    elements: tp["Elements"].as_f64(),
                },
            );
        } else if path.file_name().is_some_and(|n| n != "report") {
            load(&path, out);
        }
    }
}

fn rate(x: f64, bytes: bool) -> String {
    if bytes {
        format!("{:.1} MiB/s", x / (1024.0 * 1024.0))
    } else if x >= 1e6 {
        format!("{:.2} M/s", x / 1e6)
    } else {
        format!("{:.1} k/s", x / 1e3)
    }
}

fn time(ns: f64) -> String {
    if ns >= 1e9 {
        format!("{:.2} s", ns / 1e9)
    } else if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.1} µs", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

struct Goals {
    rows: Vec<String>,
    met: usize,
    missed: usize,
}

impl Goals {
    /// `num / den` (throughputs) against `min`.
    fn ratio(&mut self, all: &BTreeMap<String, Est>, what: &str, num: &str, den: &str, min: f64) {
        let (Some(a), Some(b)) = (all.get(num), all.get(den)) else {
            self.rows
                .push(format!("| {what} | ≥ {min} | not measured | |"));
            return;
        };
        let (Some(x), Some(y)) = (a.per_sec(), b.per_sec()) else {
            return;
        };
        let r = x / y;
        let ok = r >= min;
        if ok {
            self.met += 1;
        } else {
            self.missed += 1;
        }
        self.rows.push(format!(
            "| {what} | ≥ {min} | {r:.2} | {} |",
            if ok { "met" } else { "**missed**" }
        ));
    }
}

fn main() {
    let dir = criterion_dir();
    let mut all = BTreeMap::new();
    load(&dir, &mut all);
    if all.is_empty() {
        eprintln!(
            "no criterion estimates under {}; run `cargo bench -p benches` first",
            dir.display()
        );
        std::process::exit(2);
    }
    let mut goals = Goals {
        rows: Vec::new(),
        met: 0,
        missed: 0,
    };

    // decode
    println!("### decode (u32be; hjson for reference)\n");
    println!("| frame | chunk | bare LDC | chopstick | ratio | chopstick frames/s | hjson | hjson / bare |");
    println!("|---|---|---|---|---|---|---|---|");
    for frame in [64usize, 1024, 65536] {
        for chunk in [1usize, 7, 64, 1460, 65536] {
            let p = format!("{frame}B/chunk{chunk}");
            let get = |f: &str| all.get(&format!("decode/{f}/{p}"));
            let (Some(bare), Some(ours)) = (get("bare_ldc"), get("chopstick")) else {
                continue;
            };
            let (b, o) = (bare.per_sec().unwrap_or(0.0), ours.per_sec().unwrap_or(0.0));
            let hj = get("chopstick_hjson").and_then(Est::per_sec);
            println!(
                "| {frame} B | {chunk} | {} | {} | {:.2} | {} | {} | {} |",
                rate(b, true),
                rate(o, true),
                o / b,
                rate(o / (frame as f64 + 4.0), false),
                hj.map_or("-".into(), |h| rate(h, true)),
                hj.map_or("-".into(), |h| format!("{:.2}", h / b)),
            );
            goals.ratio(
                &all,
                &format!("decode {frame} B, chunk {chunk}: chopstick / bare LDC"),
                &format!("decode/chopstick/{p}"),
                &format!("decode/bare_ldc/{p}"),
                0.95,
            );
        }
    }

    let table = |title: &str, prefix: &str, base: Option<&str>| {
        println!("\n### {title}\n");
        println!(
            "| benchmark | median / iteration | throughput | vs {} |",
            base.unwrap_or("-")
        );
        println!("|---|---|---|---|");
        let base_rate = base
            .and_then(|b| all.get(&format!("{prefix}/{b}")))
            .and_then(Est::per_sec);
        for (id, e) in all.range(format!("{prefix}/")..format!("{prefix}0")) {
            let name = &id[prefix.len() + 1..];
            let r = e.per_sec();
            println!(
                "| {name} | {} | {} | {} |",
                time(e.median_ns),
                r.map_or("-".into(), |r| rate(r, e.bytes.is_some())),
                match (r, base_rate) {
                    (Some(r), Some(b)) => format!("{:.2}", r / b),
                    _ => "-".into(),
                }
            );
        }
    };
    table(
        "chaos_stream (1 MiB through tokio::io::duplex)",
        "chaos_stream",
        Some("bare_duplex"),
    );
    goals.ratio(
        &all,
        "ChaosStream pass-through / bare duplex",
        "chaos_stream/chaos_passthrough",
        "chaos_stream/bare_duplex",
        0.90,
    );
    goals.ratio(
        &all,
        "ChaosStream no plan / bare duplex",
        "chaos_stream/chaos_no_plan",
        "chaos_stream/bare_duplex",
        0.90,
    );

    table(
        "proxy bulk (loopback, one connection)",
        "proxy_bulk",
        Some("direct"),
    );
    goals.ratio(
        &all,
        "proxy pass-through / noxious (own processes)",
        "proxy_bulk/chopstick",
        "proxy_bulk/noxious",
        1.1,
    );
    goals.ratio(
        &all,
        "proxy pass-through / noxious (both in-process)",
        "proxy_bulk/chopstick_inproc",
        "proxy_bulk/noxious_inproc",
        1.1,
    );
    goals.ratio(
        &all,
        "proxy pass-through / socat (own processes)",
        "proxy_bulk/chopstick",
        "proxy_bulk/socat",
        1.0,
    );
    goals.ratio(
        &all,
        "proxy pass-through (own process) / direct loopback",
        "proxy_bulk/chopstick",
        "proxy_bulk/direct",
        0.6,
    );
    goals.ratio(
        &all,
        "proxy pass-through (in-process) / direct loopback",
        "proxy_bulk/chopstick_inproc",
        "proxy_bulk/direct",
        0.6,
    );
    goals.ratio(
        &all,
        "proxy split 1460 / noxious slicer 1460",
        "proxy_bulk/chopstick_split1460",
        "proxy_bulk/noxious_slicer1460",
        50.0,
    );

    println!("\n### proxy ping-pong (64 B round trip)\n");
    println!("| relay | median RTT | added vs direct |");
    println!("|---|---|---|");
    let direct = all.get("proxy_pingpong/direct").map(|e| e.median_ns);
    for (id, e) in all.range("proxy_pingpong/".to_string().."proxy_pingpong0".to_string()) {
        println!(
            "| {} | {} | {} |",
            &id["proxy_pingpong/".len()..],
            time(e.median_ns),
            direct.map_or("-".into(), |d| time(e.median_ns - d))
        );
    }
    if let (Some(d), Some(ours), Some(socat)) = (
        direct,
        all.get("proxy_pingpong/chopstick"),
        all.get("proxy_pingpong/socat"),
    ) {
        let (a, s) = (ours.median_ns - d, socat.median_ns - d);
        let ok = a <= s;
        if ok {
            goals.met += 1;
        } else {
            goals.missed += 1;
        }
        goals.rows.push(format!(
            "| proxy ping-pong added latency ≤ socat's | ≤ {} | {} | {} |",
            time(s),
            time(a),
            if ok { "met" } else { "**missed**" }
        ));
    }

    table(
        "campaign (verified echo messages)",
        "campaign",
        Some("raw_echo"),
    );
    goals.ratio(
        &all,
        "campaign verified msgs/s / raw framed echo",
        "campaign/check_coalesce",
        "campaign/raw_echo",
        0.25,
    );

    // memory (written by the memory bench)
    if let Ok(text) = std::fs::read_to_string(dir.join("memory.json")) {
        if let Ok(v) = serde_json::from_str::<Value>(&text) {
            println!("\n### memory (proxy process RSS, from /proc)\n");
            println!("| relay | baseline RSS | RSS with idle conns | per idle conn | peak RSS during bulk |");
            println!("|---|---|---|---|---|");
            for (name, m) in v["relays"].as_object().into_iter().flatten() {
                println!(
                    "| {name} | {} KiB | {} KiB ({} conns) | {:.1} KiB | {} KiB ({} × {} MiB) |",
                    m["baseline_kib"],
                    m["idle_kib"],
                    v["idle_conns"],
                    m["per_idle_conn_kib"].as_f64().unwrap_or(0.0),
                    m["bulk_peak_kib"],
                    v["bulk_conns"],
                    v["bulk_mib"]
                );
            }
            if let Some(per) = v["relays"]["chopstick"]["per_idle_conn_kib"].as_f64() {
                let ok = per <= 64.0;
                if ok {
                    goals.met += 1;
                } else {
                    goals.missed += 1;
                }
                goals.rows.push(format!(
                    "| proxy memory per idle connection | ≤ 64 KiB | {per:.1} KiB | {} |",
                    if ok { "met" } else { "**missed**" }
                ));
            }
        }
    }

    println!("\n### goals ({} met, {} missed)\n", goals.met, goals.missed);
    println!("| ratio | goal | measured | |");
    println!("|---|---|---|---|");
    for r in &goals.rows {
        println!("{r}");
    }
}
