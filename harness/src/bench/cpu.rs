//! CPU time from /proc: the spawned server's (per process) and the load generator's
//! (per process and per thread), sampled at the edges of a measurement window.
//!
//! Per task, `/proc/PID/task/TID/schedstat` gives the time on CPU in nanoseconds.
//! `/proc/PID/stat` (utime + stime) also counts threads that have exited, but only in
//! clock ticks (10 ms at the usual 100 Hz), too coarse for a window of a second; it is
//! the fallback where schedstat is missing. A server thread that exits inside the
//! window takes its schedstat time with it, which only makes its cost look smaller.

use std::fs;
use std::io;

/// CPU time used so far by every live thread of process `pid`, in nanoseconds.
pub fn process_ns(pid: u32) -> io::Result<u64> {
    match threads_ns(pid) {
        Ok(ns) => Ok(ns),
        Err(_) => stat_ns(pid),
    }
}

/// CPU time of one thread `tid` of process `pid`, in nanoseconds.
pub fn thread_ns(pid: u32, tid: u32) -> io::Result<u64> {
    schedstat_ns(&fs::read_to_string(format!(
        "/proc/{pid}/task/{tid}/schedstat"
    ))?)
}

/// The calling thread's id (what /proc/PID/task/ lists).
pub fn current_tid() -> u32 {
    // SAFETY: gettid has no arguments and cannot fail.
    unsafe { libc::gettid() as u32 }
}

/// This process's id.
pub fn own_pid() -> u32 {
    std::process::id()
}

fn threads_ns(pid: u32) -> io::Result<u64> {
    let mut total = 0u64;
    for entry in fs::read_dir(format!("/proc/{pid}/task"))? {
        let path = entry?.path().join("schedstat");
        // A thread may exit between the listing and the read (the read fails or comes
        // back empty): it no longer counts.
        if let Some(ns) = fs::read_to_string(path)
            .ok()
            .and_then(|t| schedstat_ns(&t).ok())
        {
            total += ns;
        }
    }
    Ok(total)
}

/// The first field of a schedstat line: nanoseconds on CPU.
fn schedstat_ns(text: &str) -> io::Result<u64> {
    text.split_whitespace()
        .next()
        .and_then(|f| f.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unreadable schedstat"))
}

fn stat_ns(pid: u32) -> io::Result<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat_ns(&text, clock_ticks_per_s())
}

/// utime + stime of a /proc/PID/stat line, in nanoseconds.
fn parse_stat_ns(text: &str, ticks_per_s: u64) -> io::Result<u64> {
    let bad = || io::Error::new(io::ErrorKind::InvalidData, "unreadable /proc/PID/stat");
    // The command name (field 2) is in parentheses and may hold spaces: fields
    // are counted from the last ')'. utime and stime are fields 14 and 15.
    let rest = &text[text.rfind(')').ok_or_else(bad)? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> io::Result<u64> {
        fields
            .get(n - 3)
            .and_then(|f| f.parse().ok())
            .ok_or_else(bad)
    };
    let ticks = field(14)? + field(15)?;
    Ok(ticks.saturating_mul(1_000_000_000) / ticks_per_s.max(1))
}

fn clock_ticks_per_s() -> u64 {
    // SAFETY: sysconf only reads a configuration value.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// CPU time of this whole process (all threads, exited ones too), in nanoseconds.
pub fn self_ns() -> u64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct the pointer points at, a live local.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return 0;
    }
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    (us(usage.ru_utime) + us(usage.ru_stime)) * 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_loop_shows_up_in_own_and_thread_cpu_time() {
        let pid = own_pid();
        let tid = current_tid();
        let (p0, t0, s0) = (
            process_ns(pid).unwrap(),
            thread_ns(pid, tid).unwrap(),
            self_ns(),
        );
        let mut x = 0u64;
        let start = std::time::Instant::now();
        // Bounded: spin until 30 ms of wall time have passed.
        while start.elapsed() < std::time::Duration::from_millis(30) {
            x = x.wrapping_mul(31).wrapping_add(7);
            std::hint::black_box(x);
        }
        assert!(process_ns(pid).unwrap() > p0);
        assert!(thread_ns(pid, tid).unwrap() > t0);
        assert!(self_ns() > s0);
    }

    #[test]
    fn stat_lines_with_spaces_in_the_name_parse() {
        let line = "42 (my server) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0";
        assert_eq!(parse_stat_ns(line, 100).unwrap(), 3_000_000_000);
        assert!(parse_stat_ns("garbage", 100).is_err());
    }
}
