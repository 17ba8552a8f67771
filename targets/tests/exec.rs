//! The exec server over real loopback sockets, with real child processes.

mod common;

use std::time::Duration;

use bytes::{BufMut, BytesMut};
use chopstick_targets::exec::{self, Config};
use chopstick_targets::server::ServerError;
use chopstick_targets::wire::{FrameLayout, HjsonCodec};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use common::exec::*;
use common::DEADLINE;

#[tokio::test]
async fn seq_1_3_prints_three_lines_and_exits_0() {
    let (server, _) = start(Config::default());
    let mut s = common::connect(server.addr).await;
    let reply = roundtrip(&mut s, &["seq", "1", "3"], b"").await;
    assert_eq!(split_output(&reply), (&b"1\n2\n3\n"[..], &b""[..]));
    assert_eq!(reply.header["exit"], json!(0));
    assert_eq!(reply.header["timed_out"], json!(false));
    assert_eq!(reply.header["truncated"], json!(false));
    assert!(reply.header.get("signal").is_none());
}

#[tokio::test]
async fn false_exits_1() {
    let (server, _) = start(Config::default());
    let mut s = common::connect(server.addr).await;
    let reply = roundtrip(&mut s, &["false"], b"").await;
    assert_eq!(reply.header["exit"], json!(1));
    assert!(reply.body.is_empty());
}

#[tokio::test]
async fn cat_echoes_a_1mib_stdin_exactly() {
    let (server, _) = start(Config::default());
    let mut s = common::connect(server.addr).await;
    let stdin: Vec<u8> = (0..1024 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    let reply = roundtrip(&mut s, &["cat"], &stdin).await;
    assert_eq!(reply.header["exit"], json!(0));
    let (out, err) = split_output(&reply);
    assert!(err.is_empty());
    assert!(out == stdin, "cat output differs from its 1 MiB input");
}

#[tokio::test]
async fn stderr_is_captured_after_stdout() {
    let (server, _) = start(Config::default());
    let mut s = common::connect(server.addr).await;
    let reply = roundtrip(
        &mut s,
        &["cat", "-", "/nonexistent-chopstick"],
        b"from stdin",
    )
    .await;
    assert_ne!(reply.header["exit"], json!(0));
    let (out, err) = split_output(&reply);
    assert_eq!(out, b"from stdin");
    let err = String::from_utf8_lossy(err);
    assert!(err.contains("/nonexistent-chopstick"), "stderr: {err:?}");
}

#[tokio::test]
async fn child_gets_only_the_fixed_path_in_its_environment() {
    let (server, _) = start(allowing(&["env"]));
    let mut s = common::connect(server.addr).await;
    let reply = roundtrip(&mut s, &["env"], b"").await;
    assert_eq!(
        split_output(&reply).0,
        format!("PATH={}\n", exec::FIXED_PATH).as_bytes()
    );
}

#[tokio::test]
async fn request_written_one_byte_at_a_time_is_served() {
    let (server, _) = start(Config::default());
    let mut s = common::connect(server.addr).await;
    common::write_bytewise(&mut s, &request(&["wc", "-c"], b"twelve bytes")).await;
    let reply = read_replies(&mut s, 1).await.pop().unwrap();
    assert_eq!(split_output(&reply).0, b"12\n");
}

#[tokio::test]
async fn coalesced_requests_in_one_write_are_answered_in_order() {
    let (server, counters) = start(Config::default());
    let mut s = common::connect(server.addr).await;
    let mut all = BytesMut::new();
    all.put(request(&["echo", "first"], b""));
    all.put(request(&["sh", "-c", "id"], b""));
    all.put(request(&["cat"], b"third"));
    all.put(request(&["false"], b""));
    all.put(request(&["printf", "%s-%s", "fifth", "x"], b""));
    s.write_all(&all).await.unwrap();
    let replies = read_replies(&mut s, 5).await;
    assert_eq!(split_output(&replies[0]).0, b"first\n");
    assert_refused(&replies[1], "not allowed");
    assert_eq!(split_output(&replies[2]).0, b"third");
    assert_eq!(replies[3].header["exit"], json!(1));
    assert_eq!(split_output(&replies[4]).0, b"fifth-x");
    let c = counters.snapshot();
    assert_eq!((c.frames_in, c.frames_out), (5, 5));
}

#[tokio::test]
async fn disconnect_matrix_then_new_client_is_served() {
    let (server, counters) = start(Config::default());
    let addr = server.addr;
    let req = request(&["cat"], b"a body to cut in half");
    let body_len = b"a body to cut in half".len();
    let layout = FrameLayout {
        start: 0,
        length_field: 0..4,
        body: req.len() - body_len..req.len(),
        end: req.len(),
    };
    common::disconnect_matrix(addr, &counters, &req, &layout, || async move {
        let mut s = common::connect(addr).await;
        assert_usable(&mut s).await;
    })
    .await;
    let c = counters.snapshot();
    assert_eq!(c.aborted, 6, "{c:?}");
    assert!(
        c.errors.get("truncated").copied().unwrap_or(0) >= 3,
        "{c:?}"
    );
    assert!(!server.is_finished());
}

#[tokio::test]
async fn huge_header_length_closes_connection_and_counts_too_large() {
    let (server, counters) = start(Config::default());
    let mut s = common::connect(server.addr).await;
    s.write_all(&[0xFF, 0xFF, 0xFF, 0xFF, b'{']).await.unwrap();
    let (rest, _) = common::read_to_end_or_error(&mut s).await;
    assert!(rest.is_empty(), "no reply to a corrupt stream");
    let c = counters
        .wait_until(DEADLINE, |c| c.errors.get("too_large") == Some(&1))
        .await
        .unwrap_or_else(|c| panic!("too_large not counted: {c:?}"));
    assert_eq!(c.aborted, 1);
    let mut s = common::connect(server.addr).await;
    assert_usable(&mut s).await;
}

#[tokio::test]
async fn bad_header_behind_a_request_gets_that_reply_then_closes() {
    let (server, counters) = start(Config::default());
    let mut s = common::connect(server.addr).await;
    let mut all = request(&["echo", "answered"], b"");
    all.put_u32(7);
    all.put_slice(b"garbage");
    s.write_all(&all).await.unwrap();
    let (rest, _) = common::read_to_end_or_error(&mut s).await;
    let reply = common::read_frames(&rest[..], HjsonCodec::new(1024), 1).await;
    assert_eq!(split_output(&reply[0]).0, b"answered\n");
    counters
        .wait_until(DEADLINE, |c| c.errors.get("bad_header") == Some(&1))
        .await
        .unwrap_or_else(|c| panic!("bad_header not counted: {c:?}"));
}

#[tokio::test]
async fn programs_off_the_allow_list_are_refused_and_connection_stays_usable() {
    let (server, _) = start(Config::default());
    let mut s = common::connect(server.addr).await;
    for argv in [
        &["sh", "-c", "id"][..],
        &["/bin/sh", "-c", "id"],
        &["bash"],
        &["../../bin/sh"],
        &["rm", "-rf", "/tmp/chopstick-never"],
        &["/usr/bin/echo", "hi"],
    ] {
        let reply = roundtrip(&mut s, argv, b"").await;
        let needle = if argv[0].contains('/') {
            "is a path"
        } else {
            "not allowed"
        };
        assert_refused(&reply, needle);
        assert_usable(&mut s).await;
    }
}

#[tokio::test]
async fn malformed_requests_are_refused_and_connection_stays_usable() {
    let (server, _) = start(Config::default());
    let mut s = common::connect(server.addr).await;
    let many = vec!["x"; exec::MAX_ARGS + 1];
    let long = "x".repeat(exec::MAX_ARG_LEN + 1);
    for (header, needle) in [
        (json!({}), "no `argv`"),
        (json!({"argv": "echo hi"}), "array of strings"),
        (json!({"argv": []}), "empty"),
        (json!({"argv": ["echo", 7]}), "not a string"),
        (json!({"argv": ["echo", "a\u{0}b"]}), "NUL"),
        (json!({ "argv": many }), "too many"),
        (json!({"argv": ["echo", long]}), "bytes long"),
    ] {
        s.write_all(&raw_request(header, b"ignored stdin"))
            .await
            .unwrap();
        let reply = read_replies(&mut s, 1).await.pop().unwrap();
        assert_refused(&reply, needle);
        assert_usable(&mut s).await;
    }
}

#[tokio::test]
async fn shell_syntax_in_argv_runs_literally() {
    let (server, _) = start(Config::default());
    let mut s = common::connect(server.addr).await;
    let args = [
        "$(id)", ";", "`whoami`", "&&", "ls", "|", "cat", ">", "/tmp/x", "*",
    ];
    let mut argv = vec!["echo"];
    argv.extend(args);
    let reply = roundtrip(&mut s, &argv, b"").await;
    assert_eq!(
        split_output(&reply).0,
        format!("{}\n", args.join(" ")).as_bytes()
    );
}

#[tokio::test]
async fn long_command_is_killed_at_timeout() {
    let mut config = allowing(&["sleep"]);
    config.timeout = Duration::from_millis(300);
    let (server, _) = start(config);
    let mut s = common::connect(server.addr).await;
    let reply = roundtrip(&mut s, &["sleep", "30"], b"").await;
    assert_eq!(reply.header["timed_out"], json!(true));
    assert_eq!(reply.header["exit"], Value::Null);
    assert_eq!(reply.header["signal"], json!(libc::SIGKILL));
    assert_usable(&mut s).await;
}

#[tokio::test]
async fn output_beyond_cap_is_truncated() {
    let config = Config {
        output_cap: 1000,
        ..Config::default()
    };
    let (server, _) = start(config);
    let mut s = common::connect(server.addr).await;
    let reply = roundtrip(&mut s, &["seq", "1", "10000000"], b"").await;
    assert_eq!(reply.header["truncated"], json!(true));
    // Killed by the server, not by a SIGPIPE from a closed pipe.
    assert_eq!(reply.header["signal"], json!(libc::SIGKILL));
    let (out, _) = split_output(&reply);
    assert!(reply.body.len() <= 1000, "{} bytes", reply.body.len());
    let full: String = (1..=1000).map(|i| format!("{i}\n")).collect();
    assert!(
        full.as_bytes().starts_with(out),
        "not a prefix of seq's output"
    );
    assert_usable(&mut s).await;
}

#[tokio::test]
async fn output_exactly_at_cap_is_not_truncated() {
    let config = Config {
        output_cap: 6,
        ..Config::default()
    };
    let (server, _) = start(config);
    let mut s = common::connect(server.addr).await;
    let reply = roundtrip(&mut s, &["seq", "1", "3"], b"").await;
    assert_eq!(reply.header["truncated"], json!(false));
    assert_eq!(split_output(&reply).0, b"1\n2\n3\n");
}

#[tokio::test]
async fn client_rst_mid_command_kills_and_reaps_child() {
    let mut config = allowing(&["sleep"]);
    config.timeout = Duration::from_secs(60);
    let (server, counters) = start(config);
    let argv = ["sleep", "47.32"];
    let mut s = common::connect(server.addr).await;
    s.write_all(&request(&argv, b"")).await.unwrap();
    let child = wait_for_proc(&argv).await;
    common::reset(s);
    wait_until_reaped(&child).await;
    assert!(find_proc(&argv).is_none());
    counters
        .wait_until(DEADLINE, |c| c.aborted == 1 && c.active == 0)
        .await
        .unwrap_or_else(|c| panic!("disconnect not counted as aborted: {c:?}"));
    let mut s = common::connect(server.addr).await;
    assert_usable(&mut s).await;
}

/// `nc -N` and many clients send their requests, then `shutdown(SHUT_WR)`, then read:
/// a FIN at a frame boundary means "no more requests", not "gone".
#[tokio::test]
async fn half_close_after_pipelined_requests_still_gets_every_reply() {
    let mut config = allowing(&["sleep"]);
    config.timeout = Duration::from_secs(30);
    let (server, counters) = start(config);
    let mut s = common::connect(server.addr).await;
    let mut batch = request(&["sleep", "0.3"], b"");
    for i in 0..3 {
        batch.extend_from_slice(&request(&["echo", &format!("reply {i}")], b""));
    }
    s.write_all(&batch).await.unwrap();
    s.shutdown().await.unwrap();
    let (bytes, err) = common::read_to_end_or_error(&mut s).await;
    assert!(err.is_none(), "{err:?}");
    let replies = common::read_frames(&bytes[..], HjsonCodec::new(1 << 20), 4).await;
    assert_eq!(
        replies[0].header["exit"],
        json!(0),
        "{:?}",
        replies[0].header
    );
    for (i, reply) in replies[1..].iter().enumerate() {
        assert_eq!(split_output(reply).0, format!("reply {i}\n").as_bytes());
    }
    counters
        .wait_until(DEADLINE, |c| c.completed == 1 && c.active == 0)
        .await
        .unwrap_or_else(|c| panic!("a half-close is a clean end: {c:?}"));
}

/// A peer that closed entirely (FIN, then gone) is only found out when its reply cannot
/// be delivered; the command's deadline bounds what it costs, and the child is reaped.
#[tokio::test]
async fn client_gone_after_fin_costs_at_most_the_deadline() {
    let mut config = allowing(&["sleep"]);
    config.timeout = Duration::from_millis(500);
    let (server, counters) = start(config);
    let argv = ["sleep", "47.31"];
    let mut s = common::connect(server.addr).await;
    s.write_all(&request(&argv, b"")).await.unwrap();
    let child = wait_for_proc(&argv).await;
    s.shutdown().await.unwrap();
    drop(s);
    wait_until_reaped(&child).await;
    counters
        .wait_until(DEADLINE, |c| c.active == 0)
        .await
        .unwrap_or_else(|c| panic!("connection never ended: {c:?}"));
    let mut s = common::connect(server.addr).await;
    assert_usable(&mut s).await;
}

#[tokio::test]
async fn server_shutdown_kills_and_reaps_running_child() {
    let mut config = allowing(&["sleep"]);
    config.timeout = Duration::from_secs(60);
    // Beyond the grace, in-flight commands are cut.
    config.common.shutdown_grace = Duration::from_millis(300);
    let (server, _) = start(config);
    let argv = ["sleep", "47.33"];
    let mut s = common::connect(server.addr).await;
    s.write_all(&request(&argv, b"")).await.unwrap();
    let child = wait_for_proc(&argv).await;
    tokio::time::timeout(DEADLINE, server.shutdown())
        .await
        .expect("shutdown timed out")
        .expect("shutdown");
    wait_until_reaped(&child).await;
}

#[tokio::test]
async fn run_refuses_a_non_loopback_listener() {
    let listener = chopstick_targets::server::bind("0.0.0.0:0".parse().unwrap(), 16).expect("bind");
    let result = tokio::time::timeout(
        DEADLINE,
        exec::run(listener, Config::default(), std::future::pending()),
    )
    .await
    .expect("run should return at once");
    assert!(
        matches!(result, Err(ServerError::NotLoopback { server: "exec", .. })),
        "{result:?}"
    );
}

#[tokio::test]
async fn timed_out_command_is_reaped() {
    let mut config = allowing(&["sleep"]);
    config.timeout = Duration::from_millis(300);
    let (server, _) = start(config);
    let argv = ["sleep", "47.34"];
    let mut s = common::connect(server.addr).await;
    s.write_all(&request(&argv, b"")).await.unwrap();
    let child = wait_for_proc(&argv).await;
    let reply = read_replies(&mut s, 1).await.pop().unwrap();
    assert_eq!(reply.header["timed_out"], json!(true));
    wait_until_reaped(&child).await;
}

/// The whole process group goes, not only the direct child: a backgrounded grandchild
/// that would otherwise outlive its parent is killed too.
#[tokio::test]
async fn client_disconnect_kills_grandchildren_too() {
    let mut config = allowing(&["sh"]);
    config.timeout = Duration::from_secs(60);
    let (server, counters) = start(config);
    let script = "sleep 47.35 & sleep 47.36; wait";
    let mut s = common::connect(server.addr).await;
    s.write_all(&request(&["sh", "-c", script], b""))
        .await
        .unwrap();
    let shell = wait_for_proc(&["sh", "-c", script]).await;
    let bg = wait_for_proc(&["sleep", "47.35"]).await;
    let fg = wait_for_proc(&["sleep", "47.36"]).await;
    common::reset(s);
    for p in [&shell, &bg, &fg] {
        wait_until_reaped_or_orphaned_gone(p).await;
    }
    counters
        .wait_until(DEADLINE, |c| c.aborted == 1 && c.active == 0)
        .await
        .unwrap_or_else(|c| panic!("disconnect not counted: {c:?}"));
}

/// A grandchild is reaped by init (or a subreaper), not by us: it counts as gone once
/// it is dead, zombie or not.
async fn wait_until_reaped_or_orphaned_gone(p: &Proc) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        match stat_fields(p.pid) {
            None => return,
            Some(f) if f.get(19) != Some(&p.starttime) => return,
            Some(f) if f.first().map(String::as_str) == Some("Z") => return,
            Some(f) => assert!(
                tokio::time::Instant::now() < deadline,
                "pid {} still alive, state {:?}",
                p.pid,
                f.first()
            ),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
