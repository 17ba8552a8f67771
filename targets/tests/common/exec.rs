//! Exec-server helpers shared by the exec test binaries: starting a server, building
//! requests, reading replies, and finding child processes in `/proc`.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use chopstick_targets::exec::{self, Config};
use chopstick_targets::server::{Counters, Handle};
use chopstick_targets::wire::{HjsonCodec, HjsonFrame};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::codec::Encoder;

use super::DEADLINE;

pub fn start(config: Config) -> (Handle, Arc<Counters>) {
    let counters = config.common.counters.clone();
    let handle = Handle::spawn(super::listener(), move |listener, shutdown| {
        exec::run(listener, config, shutdown)
    })
    .expect("spawn exec");
    (handle, counters)
}

pub fn allowing(extra: &[&str]) -> Config {
    let mut config = Config::default();
    config.allow.extend(extra.iter().map(|s| s.to_string()));
    config
}

/// One encoded request frame with an arbitrary header.
pub fn raw_request(header: Value, stdin: &[u8]) -> BytesMut {
    let mut buf = BytesMut::new();
    HjsonCodec::new(usize::MAX)
        .encode(HjsonFrame::new(header, stdin.to_vec()), &mut buf)
        .expect("encode request");
    buf
}

pub fn request(argv: &[&str], stdin: &[u8]) -> BytesMut {
    raw_request(json!({ "argv": argv }), stdin)
}

pub async fn read_replies(s: &mut TcpStream, n: usize) -> Vec<HjsonFrame> {
    super::read_frames(s, HjsonCodec::new(64 * 1024 * 1024), n).await
}

pub async fn roundtrip(s: &mut TcpStream, argv: &[&str], stdin: &[u8]) -> HjsonFrame {
    s.write_all(&request(argv, stdin)).await.unwrap();
    read_replies(s, 1).await.pop().unwrap()
}

/// The reply's stdout and stderr, checked against the header's byte counts.
pub fn split_output(reply: &HjsonFrame) -> (&[u8], &[u8]) {
    assert!(
        reply.header.get("error").is_none(),
        "refused: {:?}",
        reply.header
    );
    let out = reply.header["stdout"].as_u64().expect("stdout count") as usize;
    let err = reply.header["stderr"].as_u64().expect("stderr count") as usize;
    assert_eq!(out + err, reply.body.len(), "{:?}", reply.header);
    (&reply.body[..out], &reply.body[out..])
}

pub fn assert_refused(reply: &HjsonFrame, needle: &str) {
    let error = reply.header.get("error").and_then(Value::as_str);
    let error = error.unwrap_or_else(|| panic!("expected a refusal, got {:?}", reply.header));
    assert!(
        error.contains(needle),
        "error {error:?} does not mention {needle:?}"
    );
    assert!(reply.body.is_empty());
}

/// Proves the connection still runs commands.
pub async fn assert_usable(s: &mut TcpStream) {
    let reply = roundtrip(s, &["echo", "still", "here"], b"").await;
    assert_eq!(split_output(&reply).0, b"still here\n");
}

/// A process found by its exact command line, remembered with its start time so a
/// reused pid is not mistaken for it.
pub struct Proc {
    pub pid: u32,
    pub starttime: String,
}

/// `/proc/PID/stat` fields after the `(comm)`: state is [0], starttime is [19].
pub fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 1..];
    Some(after_comm.split_whitespace().map(String::from).collect())
}

pub fn find_proc(argv: &[&str]) -> Option<Proc> {
    let mut want = Vec::new();
    for a in argv {
        want.extend_from_slice(a.as_bytes());
        want.push(0);
    }
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if std::fs::read(entry.path().join("cmdline")).ok().as_deref() == Some(&want[..]) {
            let fields = stat_fields(pid)?;
            return Some(Proc {
                pid,
                starttime: fields.get(19)?.clone(),
            });
        }
    }
    None
}

pub async fn wait_for_proc(argv: &[&str]) -> Proc {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(p) = find_proc(argv) {
            return p;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{argv:?} never started"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the process is reaped: its pid gone (or reused). A zombie still has a
/// stat entry with state `Z`, so it does not count as gone.
pub async fn wait_until_reaped(p: &Proc) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        match stat_fields(p.pid) {
            None => return,
            Some(f) if f.get(19) != Some(&p.starttime) => return,
            Some(f) => assert!(
                tokio::time::Instant::now() < deadline,
                "pid {} still there, state {:?}",
                p.pid,
                f.first()
            ),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// How many live (not zombie) processes have exactly this command line.
pub fn count_procs(argv: &[&str]) -> usize {
    let mut want = Vec::new();
    for a in argv {
        want.extend_from_slice(a.as_bytes());
        want.push(0);
    }
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .ok()
                .as_deref()
                == Some(&want[..])
                && stat_fields(*pid).is_some_and(|f| f.first().map(String::as_str) != Some("Z"))
        })
        .count()
}

/// Waits (bounded) until `pred` holds for the server's slot counters.
pub async fn wait_slots(
    slots: &chopstick_targets::exec::Slots,
    pred: impl Fn(&chopstick_targets::exec::SlotsSnapshot) -> bool,
) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let s = slots.snapshot();
        if pred(&s) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "slots never got there: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
