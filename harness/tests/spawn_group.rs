//! `--spawn` targets run in their own process group and die with it: a shell script
//! that starts a helper process and then serves leaves nothing behind when chopstick
//! kills it, restarts it, or drops it.

use std::path::Path;
use std::time::{Duration, Instant};

use chopstick::campaign::target::{Target, TargetSpec};

/// Bound on waiting for a killed process to disappear.
const DEADLINE: Duration = Duration::from_secs(20);

/// A script that starts a grandchild (`sleep`), records its pid, then serves `{port}`.
fn script(dir: &Path) -> String {
    let path = dir.join("serve.sh");
    let pidfile = dir.join("grandchild.pid");
    std::fs::write(
        &path,
        format!(
            "sleep 300 &\necho $! > '{}'\nexec python3 -c 'import socket, sys, time\n\
             s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
             s.bind((\"127.0.0.1\", int(sys.argv[1]))); s.listen(16); time.sleep(300)' \"$1\"\n",
            pidfile.display()
        ),
    )
    .unwrap();
    format!("sh {} {{port}}", shell_quote(&path))
}

fn shell_quote(p: &Path) -> String {
    format!("'{}'", p.display())
}

fn grandchild(dir: &Path) -> i32 {
    let text = std::fs::read_to_string(dir.join("grandchild.pid")).expect("the script ran");
    text.trim().parse().expect("a pid")
}

/// Gone, or a zombie (dead, waiting for whoever inherited it to reap it).
fn is_dead(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // The state follows the command name in parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
    }
}

async fn wait_dead(pid: i32) -> bool {
    let start = Instant::now();
    while start.elapsed() < DEADLINE {
        if is_dead(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn killing_a_spawned_script_kills_the_process_it_started() {
    let dir = tempfile::tempdir().unwrap();
    let spec = TargetSpec::Spawn(script(dir.path()));
    let mut target = Target::start(&spec).await.expect("the script serves");
    let pid = grandchild(dir.path());
    assert!(!is_dead(pid), "the grandchild runs while the target does");
    target.kill().await;
    assert!(wait_dead(pid).await, "grandchild {pid} outlived the target");
}

#[tokio::test]
async fn a_restart_and_a_drop_leave_no_grandchild_behind() {
    let dir = tempfile::tempdir().unwrap();
    let spec = TargetSpec::Spawn(script(dir.path()));
    let mut target = Target::start(&spec).await.expect("the script serves");
    let first = grandchild(dir.path());
    target.restart().await.expect("the script serves again");
    assert!(wait_dead(first).await, "restart left grandchild {first}");
    let second = grandchild(dir.path());
    assert_ne!(first, second);
    drop(target);
    assert!(wait_dead(second).await, "drop left grandchild {second}");
}
