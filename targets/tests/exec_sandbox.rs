//! exec's children are confined (issue 13, finding 4): a working directory of their
//! own, removed after them, and where the kernel has Landlock no file access beyond
//! the system's binaries, libraries and harmless devices.

mod common;

use std::time::Duration;

use chopstick_targets::exec::{sandbox, Config};
use serde_json::json;

use common::exec::*;
use common::DEADLINE;

#[tokio::test]
async fn each_child_runs_in_a_fresh_directory_of_its_own_removed_after_it() {
    let (server, _) = start(allowing(&["pwd"]));
    let mut s = common::connect(server.addr).await;
    let mut dirs = Vec::new();
    for _ in 0..2 {
        let reply = roundtrip(&mut s, &["pwd"], b"").await;
        let dir = String::from_utf8(split_output(&reply).0.to_vec()).unwrap();
        dirs.push(std::path::PathBuf::from(dir.trim_end()));
    }
    assert_ne!(dirs[0], dirs[1], "two commands shared a directory");
    for dir in &dirs {
        assert!(
            dir.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("chopstick-exec-"),
            "{dir:?}"
        );
        assert_ne!(Some(dir.as_path()), std::env::current_dir().ok().as_deref());
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while dir.exists() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{dir:?} left behind"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[tokio::test]
async fn a_child_reads_system_programs_and_devices_but_nothing_else() {
    if !sandbox::landlock_enforced() {
        eprintln!("SKIPPED: this kernel has no Landlock; exec children are not confined");
        return;
    }
    let secret_dir = tempfile::tempdir().unwrap();
    let secret = secret_dir.path().join("secret.txt");
    std::fs::write(&secret, "readable by this user, outside the sandbox").unwrap();
    let environ = format!("/proc/{}/environ", std::process::id());
    let (server, _) = start(Config::default());
    let mut s = common::connect(server.addr).await;
    for path in [
        "/etc/shadow",
        secret.to_str().unwrap(),
        &environ,
        "/etc/passwd",
    ] {
        let reply = roundtrip(&mut s, &["head", "-c", "60", path], b"").await;
        let (out, err) = split_output(&reply);
        assert!(
            out.is_empty(),
            "{path}: read {:?}",
            String::from_utf8_lossy(out)
        );
        assert_ne!(reply.header["exit"], json!(0), "{path}");
        assert!(
            String::from_utf8_lossy(err).contains("Permission denied"),
            "{path}: {}",
            String::from_utf8_lossy(err)
        );
    }
    let reply = roundtrip(&mut s, &["head", "-c", "5", "/dev/zero"], b"").await;
    assert_eq!(split_output(&reply).0, [0u8; 5]);
    let reply = roundtrip(&mut s, &["wc", "-c", "/usr/bin/env"], b"").await;
    assert_eq!(reply.header["exit"], json!(0), "{:?}", reply.header);
}
