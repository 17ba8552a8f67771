//! Two-level feedback scheduling of exec's children (issue 13, finding 1): a child
//! starts at a moderate priority ([`super::Limits::nice`], +10 over the server) and
//! is demoted to nice [`DEMOTED_NICE`] once it is a long job: it has used
//! [`super::Limits::demote_after`] (default 50 ms) of CPU, or it is that old and still
//! wants a core (runnable, `R` in `/proc/PID/stat`). Short commands (`echo hi`) end
//! before that, so under a crowd of hogs a fresh one still gets a core almost at once;
//! the hogs share what is left; the server, at its own priority, comes before all of
//! them and its timeouts fire on time.
//!
//! Why not CPU used alone: 300 hogs started together on two cores each *use* about
//! 7 ms of CPU a second, so a threshold on CPU used would leave them at +10 for
//! seconds, where they slow everything the server does (measured: starting 100 of
//! them took 3x longer than at nice 19) and a fresh command queues behind all of them
//! at the same priority. Each of them is runnable all the time, so each is demoted
//! once it is 50 ms old. A child that sleeps or waits on a pipe is not runnable and
//! keeps its priority. (The kernel's own run-queue wait, `/proc/PID/schedstat`, is no
//! substitute: it is only brought up to date when the task next gets a core, so it
//! stays low for exactly the starved children it should count.) Where the stat file
//! cannot be read (no /proc), the child's age alone decides.
//!
//! Both levels are set from the server right after the child starts (not in the child
//! before `execve`): a low-priority child would otherwise hold up the server thread
//! that waits for its `execve`. The level applies to the child's whole process group.
//! (A [`super::trampoline`] also lowers itself to the starting level first thing, once
//! that thread is free: its own start-up then runs below the server too.)
//! Checks back off (from [`FIRST_CHECK`], doubling up to [`MAX_CHECK`]), so a child
//! that waits on I/O until its deadline costs a handful of reads.
//!
//! At most [`FRESH_PER_CORE`] children per core of a server start at the starting
//! level within any `demote_after`; a child started beyond that starts at
//! [`DEMOTED_NICE`]. The demotions are the server's own timers, and in a burst the
//! server is late for them: 300 hogs arriving together left 169 of them at +10 after
//! 0.6 s, where their weight (110 each against the server's 1024 per thread) kept the
//! server from reading the rest of the burst for up to 3 s. With the cap, the +10 crowd
//! is a few children whatever the server's lateness. A child gives its place back when
//! it is demoted, ends, or is `demote_after` old and not a long job (a sleeper keeps its
//! level, not its place: a few sleepers must not leave every later child demoted), so a
//! short command arriving after a burst finds a place.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::sandbox::Limits;

/// The priority of a long job.
pub const DEMOTED_NICE: i32 = 19;
/// First look at a child's CPU demand after it starts.
pub const FIRST_CHECK: Duration = Duration::from_millis(20);
/// Longest gap between two looks at a child that keeps its priority.
pub const MAX_CHECK: Duration = Duration::from_millis(500);

/// Children per core that may hold the starting level at once, per server (see the
/// module doc).
pub const FRESH_PER_CORE: usize = 2;

/// The level a child starts at, chosen before it is started (a trampoline sets it on
/// itself): the starting level while one of the server's [`FRESH_PER_CORE`] places is
/// free, else [`DEMOTED_NICE`].
#[derive(Debug)]
pub(crate) struct Start {
    /// The absolute niceness.
    pub(crate) nice: i32,
    /// The place at the starting level, given back when the child is demoted or ends.
    fresh: Option<Fresh>,
}

/// A place at the starting level, counted in the server's `fresh`.
#[derive(Debug)]
struct Fresh(Arc<AtomicUsize>);

impl Drop for Fresh {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Start {
    /// The server's own niceness plus `limits.nice` (at most 19), if one of the places
    /// counted in `fresh` is free.
    pub(crate) fn claim(limits: &Limits, fresh: Arc<AtomicUsize>) -> Start {
        let level = own_nice().saturating_add(limits.nice).min(DEMOTED_NICE);
        let cap = FRESH_PER_CORE
            * std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        let claimed = level < DEMOTED_NICE
            && fresh
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    (n < cap).then_some(n + 1)
                })
                .is_ok();
        Start {
            nice: if claimed { level } else { DEMOTED_NICE },
            fresh: claimed.then(|| Fresh(fresh)),
        }
    }
}

/// The scheduling priority of one running child (its process group).
#[derive(Debug)]
pub(crate) struct Priority {
    /// The child's pid, which is also its process group id (`process_group(0)`).
    pid: i32,
    started: Instant,
    demote_after: Duration,
    /// Started at, or demoted to, [`DEMOTED_NICE`].
    demoted: bool,
    /// Its place at the starting level, held until its first `demote_after`.
    fresh: Option<Fresh>,
}

impl Priority {
    /// Sets the level `start` chose on the child `pid`. Call right after it started,
    /// while it is unreaped.
    pub(crate) fn start(pid: u32, start: Start, limits: &Limits) -> Option<Priority> {
        let pid = i32::try_from(pid).ok()?;
        let priority = Priority {
            pid,
            started: Instant::now(),
            demote_after: limits.demote_after,
            demoted: start.nice == DEMOTED_NICE,
            fresh: start.fresh,
        };
        priority.set(start.nice);
        Some(priority)
    }

    /// Never resolves; demotes the child once it is a long job (see the module doc).
    /// Poll it only while the child is unreaped (so its group id cannot have been
    /// reused): alongside the I/O and the wait, never after them.
    pub(crate) async fn demote_when_due(&mut self) -> Infallible {
        let mut backoff = FIRST_CHECK;
        // Started demoted: nothing to watch.
        while !self.demoted {
            let age = self.started.elapsed();
            if self.is_long_job(age) {
                self.set(DEMOTED_NICE);
                self.demoted = true;
                self.fresh = None;
                break;
            }
            if age >= self.demote_after {
                // A sleeper keeps its level, not its place (see the module doc).
                self.fresh = None;
            }
            // Neither rule can hold before `demote_after` has passed; the cap keeps a
            // long threshold (or `Duration::MAX`) a plain periodic check.
            let due_in = self.demote_after.saturating_sub(age);
            tokio::time::sleep(backoff.max(due_in).min(MAX_CHECK)).await;
            backoff = (backoff * 2).min(MAX_CHECK);
        }
        std::future::pending().await
    }

    fn is_long_job(&self, age: Duration) -> bool {
        match sample(self.pid) {
            Some(s) => s.cpu >= self.demote_after || (s.runnable && age >= self.demote_after),
            None => age >= self.demote_after,
        }
    }

    fn set(&self, nice: i32) {
        // SAFETY: setpriority only reads its arguments. The group is the child's own
        // and its leader is not reaped yet (see `demote_when_due`), so the id cannot
        // name an unrelated group. Failure (the group already gone) changes nothing.
        unsafe {
            libc::setpriority(libc::PRIO_PGRP, self.pid as libc::id_t, nice);
        }
    }
}

/// What `/proc/PID/stat` says about a child now.
#[derive(Debug, Clone, Copy)]
struct Sample {
    /// Running or waiting for a core (state `R`).
    runnable: bool,
    /// CPU used, user and system.
    cpu: Duration,
}

fn sample(pid: i32) -> Option<Sample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after `(comm)`, which may itself hold spaces and parentheses: state is
    // [0], utime [11] and stime [12], in clock ticks.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf only reads its argument.
    let per_second = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
        .ok()
        .filter(|&t| t > 0)?;
    Some(Sample {
        runnable: *fields.first()? == "R",
        cpu: Duration::from_millis(ticks.saturating_mul(1000) / per_second),
    })
}

/// The server's own niceness (0 if it cannot be read).
fn own_nice() -> i32 {
    // getpriority may legitimately return -1, so errno tells an error apart.
    // SAFETY: errno is thread-local; getpriority only reads its arguments.
    unsafe {
        *libc::__errno_location() = 0;
        let nice = libc::getpriority(libc::PRIO_PROCESS, 0);
        if nice == -1 && *libc::__errno_location() != 0 {
            0
        } else {
            nice
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_child_is_seen_runnable_and_using_cpu_and_a_sleeping_one_is_not() {
        let mut busy = std::process::Command::new("yes")
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut idle = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let (mut seen_runnable, mut cpu) = (false, Duration::ZERO);
        while !(seen_runnable && cpu >= Duration::from_millis(50))
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(10));
            let s = sample(busy.id() as i32).expect("/proc/PID/stat readable");
            seen_runnable |= s.runnable;
            cpu = s.cpu;
        }
        let sleeper = sample(idle.id() as i32).unwrap();
        for c in [&mut busy, &mut idle] {
            c.kill().unwrap();
            c.wait().unwrap();
        }
        assert!(seen_runnable && cpu >= Duration::from_millis(50), "{cpu:?}");
        assert!(!sleeper.runnable, "{sleeper:?}");
    }
}
