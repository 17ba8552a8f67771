//! Telling a stuck server from a slow one before a deadline runs out, from what the
//! kernel shows about it: whether it takes connections off its listen socket (the
//! accept queue in `/proc/net/tcp`) and, for a server chopstick started, whether it
//! burns CPU meanwhile (its processes' CPU time).
//!
//! Waiting out a deadline is the only proof of a hang that holds for any server, and
//! it has to be generous (3 s by default) so that a slow server on a busy machine is
//! not called hung. It is also what made a check slow: every hang cost a deadline to
//! find, one to shrink and one to confirm. Two things the kernel knows settle most
//! cases early, each only in the direction that cannot raise a false alarm:
//!
//! - **Not accepting.** A connection that sits in the accept queue was never taken by
//!   the server. While others of ours are open, that means it serves one client at a
//!   time: [`Watch::not_accepting`] lets the concurrency probe choose 1 at once instead
//!   of after its whole wait (choosing 1 wrongly only makes a check slower).
//! - **Spinning.** A fresh connection unaccepted *and* the server's processes using at
//!   least [`SPIN_SHARE`] of a core for [`SPIN_WINDOW`]: it is busy, but not with any
//!   client ([`Watch::spinning`]). A slow server on a busy machine does not do that: it
//!   waits for a core, it does not use one. A server that is stuck but idle (blocked
//!   on a read that never completes) still costs the whole deadline.
//!
//! Where nothing can be seen (no `/proc`, a target that is not a TCP listener, a
//! server chopstick did not start, for the CPU part) both say "don't know" and the
//! deadlines decide, as before.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

use super::process::{hex_ip, process_tree};
use super::target::{Target, TargetSpec};
use crate::bench::cpu;

/// How long a fresh connection must sit unaccepted while the server burns CPU before
/// it is called spinning.
pub const SPIN_WINDOW: Duration = Duration::from_millis(200);
/// The share of one core the server must use over [`SPIN_WINDOW`] (a spinning loop
/// uses all of one; half leaves room for a busy machine's scheduler).
pub const SPIN_SHARE: f64 = 0.5;
/// How often the kernel's tables are read while waiting.
pub const LOOK_EVERY: Duration = Duration::from_millis(25);

/// What can be seen of one target while a connection to it waits.
#[derive(Debug)]
pub(crate) struct Watch {
    addr: SocketAddr,
    pid: Option<u32>,
    /// [`SPIN_SHARE`], but for tests.
    spin_share: f64,
    /// When the accept queue was first seen non-empty in the current unbroken run of
    /// looks, and the server's CPU time then.
    queued_since: Option<(Instant, Option<u64>)>,
}

impl Watch {
    /// `None` for targets that are not a TCP server (a client under test, an
    /// in-process handler). Nothing is read until the first look, one [`LOOK_EVERY`]
    /// in: most connections are served sooner, and the table costs ~3 us per socket
    /// on the machine (a check leaves thousands in TIME_WAIT).
    pub(crate) fn new(target: &Target) -> Option<Watch> {
        if !matches!(target.spec, TargetSpec::Connect(_) | TargetSpec::Spawn(_)) {
            return None;
        }
        Some(Watch {
            addr: target.addr,
            pid: target.pid(),
            spin_share: SPIN_SHARE,
            queued_since: None,
        })
    }

    /// Takes one look; returns how long the accept queue has been non-empty, with the
    /// server's CPU time used in that span (`None` if it cannot be read).
    fn look(&mut self) -> Option<(Duration, Option<Duration>)> {
        let now = Instant::now();
        if accept_queue(self.addr).unwrap_or(0) == 0 {
            self.queued_since = None;
            return None;
        }
        let cpu = self.pid.and_then(tree_cpu_ns);
        let (since, cpu_then) = *self.queued_since.get_or_insert((now, cpu));
        let used = match (cpu_then, cpu) {
            (Some(a), Some(b)) => Some(Duration::from_nanos(b.saturating_sub(a))),
            _ => None,
        };
        Some((now - since, used))
    }

    /// Resolves once connections have waited unaccepted for `stall` without a break;
    /// never otherwise (race it against the wait it shortens).
    pub(crate) async fn not_accepting(&mut self, stall: Duration) -> Duration {
        loop {
            tokio::time::sleep(LOOK_EVERY).await;
            if let Some((queued, _)) = self.look() {
                if queued >= stall {
                    return queued;
                }
            }
        }
    }

    /// Resolves, with what was seen, once the server is spinning (see the module
    /// doc); never for a server chopstick did not start.
    pub(crate) async fn spinning(&mut self) -> String {
        if self.pid.is_none() {
            return std::future::pending().await;
        }
        loop {
            tokio::time::sleep(LOOK_EVERY).await;
            if let Some((queued, Some(used))) = self.look() {
                if queued >= SPIN_WINDOW
                    && used.as_secs_f64() >= self.spin_share * queued.as_secs_f64()
                {
                    return format!(
                        "the server left a fresh connection unaccepted for {queued:.1?} while \
                         using {used:.1?} of CPU (spinning, not slow)"
                    );
                }
            }
        }
    }
}

/// CPU time used so far by `pid` and its descendants, in nanoseconds.
fn tree_cpu_ns(pid: u32) -> Option<u64> {
    let pids = process_tree(pid)?;
    Some(
        pids.into_iter()
            .filter_map(|p| cpu::process_ns(p).ok())
            .sum(),
    )
}

/// Connections waiting in the accept queue of whatever listens on `addr` (a listener
/// on the wildcard address counts, in IPv4 and IPv6 alike), from `/proc/net/tcp` and
/// `/proc/net/tcp6`; `None` if neither can be read or nothing listens there.
pub(crate) fn accept_queue(addr: SocketAddr) -> Option<u64> {
    let mut found = None;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for waiting in text.lines().skip(1).filter_map(|l| listener_queue(l, addr)) {
            *found.get_or_insert(0) += waiting;
        }
    }
    found
}

/// For a LISTEN line of a `/proc/net/tcp{,6}` table on `addr`'s port and address (or
/// the wildcard), its accept queue: the kernel prints it as the `rx_queue` of a
/// listening socket.
fn listener_queue(line: &str, addr: SocketAddr) -> Option<u64> {
    const LISTEN: &str = "0A";
    let f: Vec<&str> = line.split_whitespace().collect();
    let (local, state, queues) = (f.get(1)?, f.get(3)?, f.get(4)?);
    if *state != LISTEN {
        return None;
    }
    let (ip, port) = local.rsplit_once(':')?;
    if u16::from_str_radix(port, 16).ok()? != addr.port() {
        return None;
    }
    let wildcard = ip.bytes().all(|b| b == b'0');
    if !wildcard && !ip.eq_ignore_ascii_case(&hex_ip(addr)) {
        return None;
    }
    u64::from_str_radix(queues.split_once(':')?.1, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_not_yet_accepted_is_counted_and_one_accepted_is_not() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let Some(before) = accept_queue(addr) else {
            eprintln!("no /proc/net/tcp here: nothing to check");
            return;
        };
        assert_eq!(before, 0);
        let _a = std::net::TcpStream::connect(addr).unwrap();
        let _b = std::net::TcpStream::connect(addr).unwrap();
        // The handshake completes in the kernel before connect returns.
        assert_eq!(accept_queue(addr), Some(2));
        let _taken = listener.accept().unwrap();
        assert_eq!(accept_queue(addr), Some(1));
        drop(listener);
        assert_eq!(accept_queue(addr), None);
    }

    /// A listener that never accepts, in a process that spins (`busy`) or sleeps.
    fn never_accepting(busy: bool) -> (std::process::Child, SocketAddr) {
        let tail = if busy {
            "while True: pass"
        } else {
            "time.sleep(60)"
        };
        let script = format!(
            "import socket, sys, time\ns = socket.socket()\ns.bind(('127.0.0.1', 0))\n\
             s.listen(8)\nprint(s.getsockname()[1], flush=True)\n{tail}\n"
        );
        let mut child = std::process::Command::new("python3")
            .args(["-c", &script])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let port: u16 = line.trim().parse().unwrap();
        (child, SocketAddr::from(([127, 0, 0, 1], port)))
    }

    fn watch(addr: SocketAddr, pid: u32) -> Watch {
        Watch {
            addr,
            pid: Some(pid),
            // The mechanism, not the threshold: a busy machine may give the spinner
            // less than half a core.
            spin_share: 0.05,
            queued_since: None,
        }
    }

    #[tokio::test]
    async fn a_server_that_spins_without_accepting_is_seen_and_one_that_sleeps_is_not() {
        if std::fs::metadata("/proc/net/tcp").is_err() {
            eprintln!("no /proc/net/tcp here: nothing to check");
            return;
        }
        let bound = Duration::from_secs(60);
        for busy in [true, false] {
            let (mut child, addr) = never_accepting(busy);
            let _waiting = tokio::net::TcpStream::connect(addr).await.unwrap();
            let mut w = watch(addr, child.id());
            let unaccepted = tokio::time::timeout(bound, w.not_accepting(SPIN_WINDOW)).await;
            let seen =
                tokio::time::timeout(if busy { bound } else { 4 * SPIN_WINDOW }, w.spinning())
                    .await;
            child.kill().unwrap();
            child.wait().unwrap();
            assert!(
                unaccepted.is_ok(),
                "busy {busy}: the queued connection was not seen"
            );
            if busy {
                let seen = seen.expect("a spinning server not seen within a minute");
                assert!(seen.contains("spinning"), "{seen}");
            } else {
                assert!(seen.is_err(), "a sleeping server called spinning: {seen:?}");
            }
        }
    }

    #[tokio::test]
    async fn a_server_that_accepts_is_never_seen_stalled() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        if accept_queue(addr).is_none() {
            eprintln!("no /proc/net/tcp here: nothing to check");
            return;
        }
        let _conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        let _taken = listener.accept().unwrap();
        let mut w = watch(addr, std::process::id());
        // This process burns CPU (the test runner), but nothing waits unaccepted.
        let stalled = tokio::time::timeout(4 * SPIN_WINDOW, w.not_accepting(SPIN_WINDOW)).await;
        assert!(stalled.is_err());
    }

    #[test]
    fn listen_lines_match_their_port_and_address_or_the_wildcard() {
        let v4: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let line = |local: &str, state: &str, queues: &str| {
            format!("   0: {local} 00000000:0000 {state} {queues} 00:00000000 00000000  1000 0 123")
        };
        assert_eq!(
            listener_queue(&line("0100007F:1F90", "0A", "00000000:00000003"), v4),
            Some(3)
        );
        assert_eq!(
            listener_queue(&line("00000000:1F90", "0A", "00000000:00000001"), v4),
            Some(1)
        );
        // Established, another port, another address: not the listener.
        assert_eq!(
            listener_queue(&line("0100007F:1F90", "01", "00000000:00000003"), v4),
            None
        );
        assert_eq!(
            listener_queue(&line("0100007F:1F91", "0A", "00000000:00000003"), v4),
            None
        );
        assert_eq!(
            listener_queue(&line("0200007F:1F90", "0A", "00000000:00000003"), v4),
            None
        );
        let v6: SocketAddr = "[::1]:8080".parse().unwrap();
        let local = "00000000000000000000000001000000:1F90";
        assert_eq!(
            listener_queue(&line(local, "0A", "00000000:00000002"), v6),
            Some(2)
        );
        assert_eq!(hex_ip(v6), "00000000000000000000000001000000");
    }
}
