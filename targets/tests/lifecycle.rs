//! The accept loop's edges (issue 13, findings 7 and 8): a full connection limit is
//! counted (and logged), and a shutdown lets requests in flight finish within the
//! grace period while idle connections close at once.

mod common;

use std::time::Duration;

use chopstick_targets::echo;
use chopstick_targets::server::Handle;
use common::exec::{allowing, read_replies, request};
use common::*;
use serde_json::json;
use tokio::io::AsyncWriteExt;

#[tokio::test]
async fn a_full_connection_limit_is_counted() {
    let mut config = echo::Config::default();
    config.common.max_conns = 1;
    let counters = config.common.counters.clone();
    let server = Handle::spawn(listener(), move |l, stop| echo::run(l, config, stop)).unwrap();
    let _held = connect(server.addr).await;
    let _waiting = connect(server.addr).await;
    counters
        .wait_until(DEADLINE, |c| c.active == 1 && c.at_limit >= 1)
        .await
        .unwrap_or_else(|c| panic!("limit not counted: {c:?}"));
}

#[tokio::test]
async fn shutdown_answers_a_request_completed_after_it_and_closes_idle_connections() {
    let mut config = echo::Config::default();
    config.common.shutdown_grace = Duration::from_secs(8);
    let counters = config.common.counters.clone();
    let framing = config.framing;
    let server = Handle::spawn(listener(), move |l, stop| echo::run(l, config, stop)).unwrap();
    let mut idle = connect(server.addr).await;
    let mut busy = connect(server.addr).await;
    let (bytes, _) = framing.encode_all(&[b"finished after SIGTERM"]).unwrap();
    busy.write_all(&bytes[..6]).await.unwrap();
    counters
        .wait_until(DEADLINE, |c| c.active == 2)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stopping = tokio::spawn(server.shutdown());
    // The idle connection is closed without waiting for the grace...
    let (rest, _) = read_to_end_or_error(&mut idle).await;
    assert!(rest.is_empty());
    assert!(
        !stopping.is_finished(),
        "shutdown did not wait for the request in flight"
    );
    // ...and the request in flight completes and is answered.
    busy.write_all(&bytes[6..]).await.unwrap();
    let replies = read_frames(&mut busy, framing.codec(), 1).await;
    assert_eq!(&replies[0][..], b"finished after SIGTERM");
    tokio::time::timeout(DEADLINE, stopping)
        .await
        .expect("shutdown hung")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn shutdown_lets_a_running_exec_command_finish_and_reply() {
    let mut config = allowing(&["sleep"]);
    config.common.shutdown_grace = Duration::from_secs(8);
    let (server, _) = common::exec::start(config);
    let mut s = connect(server.addr).await;
    s.write_all(&request(&["sleep", "0.5"], b"")).await.unwrap();
    common::exec::wait_for_proc(&["sleep", "0.5"]).await;
    let stopping = tokio::spawn(server.shutdown());
    let reply = read_replies(&mut s, 1).await.pop().unwrap();
    assert_eq!(reply.header["exit"], json!(0), "{:?}", reply.header);
    tokio::time::timeout(DEADLINE, stopping)
        .await
        .expect("shutdown hung")
        .unwrap()
        .unwrap();
}
