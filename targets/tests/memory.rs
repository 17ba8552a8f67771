//! The server-wide memory budget (issue 13, finding 2) against clients that never
//! read and clients that stall inside a large request: the in-process counter stays
//! within the budget, is really used by those paths, and returns to zero.

mod common;

use std::sync::Arc;
use std::time::Duration;

use chopstick_targets::echo;
use chopstick_targets::exec::Slots;
use chopstick_targets::memory::Memory;
use chopstick_targets::server::Handle;
use common::exec::{allowing, request, start};
use common::*;
use tokio::io::AsyncWriteExt;

const BUDGET: usize = 24 << 20;

#[tokio::test]
async fn exec_output_held_for_clients_that_never_read_stays_within_the_budget() {
    let mut config = allowing(&[]);
    config.common.memory = Arc::new(Memory::new(BUDGET));
    config.common.idle_timeout = Duration::from_secs(1);
    config.timeout = Duration::from_secs(2);
    config.slots = Arc::new(Slots::new(16, 16));
    let memory = config.common.memory.clone();
    let (server, counters) = start(config);
    let mut clients = Vec::new();
    for _ in 0..8 {
        let mut s = connect(server.addr).await;
        // 8 MiB each, 64 MiB in all: more than twice the budget.
        s.write_all(&request(&["head", "-c", "8388608", "/dev/zero"], b""))
            .await
            .unwrap();
        clients.push(s); // never read
    }
    counters
        .wait_until(DEADLINE, |c| c.accepted == 8 && c.active == 0)
        .await
        .unwrap_or_else(|c| panic!("non-reading clients never released: {c:?}"));
    let m = memory.snapshot();
    assert!(m.peak <= BUDGET, "{m:?}");
    assert!(m.peak >= BUDGET / 2, "exec output is not accounted: {m:?}");
    assert_eq!(m.used, 0, "reservations leaked: {m:?}");
}

#[tokio::test]
async fn echo_requests_stalled_mid_body_cannot_buffer_beyond_the_budget() {
    let mut config = echo::Config::default();
    config.common.memory = Arc::new(Memory::new(8 << 20));
    config.common.idle_timeout = Duration::from_secs(1);
    let memory = config.common.memory.clone();
    let counters = config.common.counters.clone();
    let framing = config.framing;
    let server = Handle::spawn(listener(), move |l, stop| echo::run(l, config, stop)).unwrap();
    let (bytes, _) = framing.encode_all(&[&vec![7u8; 2 << 20]]).unwrap();
    let mut stalled = Vec::new();
    for _ in 0..16 {
        let mut s = connect(server.addr).await;
        // Half of a 2 MiB frame, then silence: 16 MiB asked of an 8 MiB budget.
        let _ = s.write_all(&bytes[..1 << 20]).await;
        stalled.push(s);
    }
    let c = counters
        .wait_until(DEADLINE, |c| c.accepted == 16 && c.active == 0)
        .await
        .unwrap_or_else(|c| panic!("stalled clients never released: {c:?}"));
    assert!(c.errors.get("memory").copied().unwrap_or(0) >= 1, "{c:?}");
    let m = memory.snapshot();
    assert!(m.peak <= 8 << 20 && m.refused >= 1, "{m:?}");
    assert_eq!(m.used, 0, "{m:?}");
    // Once they are gone, a client is served as before.
    let mut s = connect(server.addr).await;
    let (hello, _) = framing.encode_all(&[b"hello"]).unwrap();
    s.write_all(&hello).await.unwrap();
    assert_eq!(
        &read_frames(&mut s, framing.codec(), 1).await[0][..],
        b"hello"
    );
}
