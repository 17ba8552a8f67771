//! What a child is confined to before it runs: a lower scheduling priority and
//! resource limits, so that many children at once cannot starve the server (whose
//! timeouts must keep firing on time) or the machine.
//!
//! | limit | default | why |
//! |---|---|---|
//! | nice | +10 | the server is scheduled first; its timeouts stay punctual |
//! | `RLIMIT_CPU` | timeout rounded up + 1 s | a backstop if the server could not kill in time |
//! | `RLIMIT_AS` | 1 GiB | one child cannot take the machine's memory |
//! | `RLIMIT_NOFILE` | 64 | enough for any filter program, not for fd exhaustion |
//! | `RLIMIT_NPROC` | 512 | a fork bomb stops there; Linux counts every process of the user, and root is exempt |
//!
//! The child also dies with the server, however the server dies (SIGKILL, the OOM
//! killer, a panic): it asks the kernel for SIGKILL when its parent goes
//! (`PR_SET_PDEATHSIG`), then checks the parent is still the server, in case it went
//! in between. Its own process group (so a kill reaches what it forks) takes it out of
//! the server's group, so nothing else would. Two limits: the kernel sends the signal
//! when the *thread* that forked exits, and children are started from the runtime's
//! worker threads, which live as long as the runtime; and a grandchild does not
//! inherit the request, so a program that forks (none of the default allow-list does)
//! can leave its own children behind if the server is killed outright (a timeout, a
//! disconnect or a shutdown kills the whole group).
//!
//! Everything here runs in the forked child before `execve`, so it only makes raw
//! system calls: no allocation, no locks (the server is multi-threaded).

use std::io;
use std::time::Duration;

/// Scheduling priority and resource limits of every child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Added niceness (0..=19): higher runs later.
    pub nice: i32,
    /// `RLIMIT_AS`, bytes of address space.
    pub address_space_bytes: u64,
    /// `RLIMIT_NOFILE`, open descriptors.
    pub open_files: u64,
    /// `RLIMIT_NPROC`, processes of the user (see the module table).
    pub processes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            nice: 10,
            address_space_bytes: 1 << 30,
            open_files: 64,
            processes: 512,
        }
    }
}

/// CPU seconds a child may use: its wall-clock timeout rounded up, plus one.
pub fn cpu_seconds(timeout: Duration) -> u64 {
    timeout.as_secs() + u64::from(timeout.subsec_nanos() > 0) + 1
}

/// Arranges for `cmd`'s child to take `limits` before it runs.
pub(crate) fn confine(cmd: &mut std::process::Command, limits: Limits, timeout: Duration) {
    use std::os::unix::process::CommandExt;
    let cpu = cpu_seconds(timeout);
    // SAFETY: getpid has no preconditions.
    let server = unsafe { libc::getpid() };
    // SAFETY: the closure runs between fork and exec in the child; it calls only
    // async-signal-safe system calls (prctl, getppid, nice, setrlimit) on values copied
    // in beforehand, and builds its error with `last_os_error`, which does not allocate.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The server died before the request took effect: we are an orphan now.
            if libc::getppid() != server {
                libc::_exit(127);
            }
            // Raising one's own niceness cannot fail; -1 is also a valid new value,
            // so the result says nothing.
            libc::nice(limits.nice);
            set_limit(libc::RLIMIT_CPU, cpu)?;
            set_limit(libc::RLIMIT_AS, limits.address_space_bytes)?;
            set_limit(libc::RLIMIT_NOFILE, limits.open_files)?;
            set_limit(libc::RLIMIT_NPROC, limits.processes)?;
            Ok(())
        });
    }
}

/// Sets soft and hard limit alike, so the child cannot raise it again; never above the
/// hard limit the server itself has (raising that needs privilege).
fn set_limit(resource: libc::__rlimit_resource_t, value: u64) -> io::Result<()> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read or fill the struct we pass.
    if unsafe { libc::getrlimit(resource, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let value = (value as libc::rlim_t).min(limit.rlim_max);
    limit.rlim_cur = value;
    limit.rlim_max = value;
    // SAFETY: as above.
    if unsafe { libc::setrlimit(resource, &limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
