//! What a child is confined to: resource limits (set before it runs) and a lower
//! scheduling priority (set by the server as soon as it runs, [`super::priority`]),
//! so that many children at once cannot starve the server (whose timeouts must keep
//! firing on time) or the machine.
//!
//! | limit | default | why |
//! |---|---|---|
//! | nice | +10 at start (at most 2 per core in their first 50 ms, the rest start at 19; a trampoline sets it on itself first thing), 19 once a long job: 50 ms of CPU, or 50 ms old and still runnable ([`super::priority`]) | the server is scheduled first, its timeouts stay punctual; short commands come before hogs |
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
//! when the *thread* that forked exits, so children are started from dedicated
//! threads that live as long as the process (`spawner.rs`); and a grandchild does not
//! inherit the request, so a program that forks (none of the default allow-list does)
//! can leave its own children behind if the server is killed outright (a timeout, a
//! disconnect or a shutdown kills the whole group).
//!
//! And it is confined to what an allow-listed filter program needs (a `Cell`): a
//! fresh, empty working directory of its own (created before the child starts,
//! removed after it is reaped), and, where the kernel has Landlock (Linux 5.13 and
//! later, enabled at boot), a ruleset that lets it read and execute only the system's
//! binaries and libraries ([`SYSTEM_READ`]), use the harmless devices ([`DEVICES`]),
//! do anything inside its own directory, and open no TCP connection (ABI 4+).
//! Everything else is refused with `EACCES`: `/etc/shadow`, `/proc/<server>/environ`,
//! the file server's root, the user's home. Where the kernel has no Landlock the
//! server logs one warning at the first command and children run with the server's
//! own file access (the allow-list, the empty environment and the working directory
//! still apply); [`landlock_enforced`] says which case holds.
//!
//! The confinement is applied by the child itself before it runs the program, in one
//! of two ways ([`super::Launch`]): in a forked copy of the server between fork and
//! `execve` (`confine`: raw system calls only, no allocation, no locks, since the
//! server is multi-threaded), or by the trampoline, a fresh process of its own started
//! without a fork ([`super::trampoline`], which builds its own ruleset). The steps and
//! the limits are the same (`confine_now`).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use landlock::{
    path_beneath_rules, Access, AccessFs, AccessNet, Ruleset, RulesetAttr, RulesetCreatedAttr, ABI,
};

/// Default threshold of a long job (demoted to nice 19): far more than a short
/// command needs (`echo hi` takes ~1 ms of CPU), little enough that a crowd of hogs
/// is out of the way of fresh commands within a tenth of a second.
pub const DEFAULT_DEMOTE_AFTER: Duration = Duration::from_millis(50);

/// Scheduling priority and resource limits of every child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Niceness added to the server's own at start (0..=19): higher runs later.
    pub nice: i32,
    /// A child that has used this much CPU, or is this old and still runnable, is
    /// demoted to nice 19 ([`super::priority`]); `Duration::MAX`: never.
    pub demote_after: Duration,
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
            demote_after: DEFAULT_DEMOTE_AFTER,
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

/// Directories (and files) a child may read and execute from: programs, the dynamic
/// loader's cache, shared libraries. Paths that do not exist here are skipped.
pub const SYSTEM_READ: &[&str] = &[
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/localtime",
];

/// Devices a child may read and write (`wc -c /dev/zero`, `cat > /dev/null`).
pub const DEVICES: &[&str] = &[
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/urandom",
    "/dev/random",
];

/// The newest Landlock ABI asked for; an older kernel enforces what it knows.
const LANDLOCK_ABI: ABI = ABI::V5;

/// One child's confinement: its working directory and its Landlock ruleset.
#[derive(Debug)]
pub(crate) struct Cell {
    dir: tempfile::TempDir,
    /// `None` where the kernel has no Landlock.
    ruleset: Option<Rules>,
}

/// A cell's Landlock ruleset.
#[derive(Debug)]
enum Rules {
    /// Built by the server, for a forked child to enter.
    Built(OwnedFd),
    /// Left to the trampoline to build and enter.
    Deferred,
}

impl Cell {
    /// Creates the working directory and, with `ruleset`, the Landlock ruleset (in
    /// the parent: this allocates and opens files, which a forked child may not do
    /// between fork and exec). Without it (a trampoline builds its own), the cell only
    /// records whether the kernel has Landlock.
    pub(crate) fn new(build_ruleset: bool) -> io::Result<Cell> {
        use std::os::unix::fs::PermissionsExt;
        // Private: what a child writes there is nobody else's business.
        let dir = tempfile::Builder::new()
            .prefix("chopstick-exec-")
            .permissions(std::fs::Permissions::from_mode(0o700))
            .tempdir()?;
        let ruleset = if build_ruleset {
            ruleset(dir.path())
                .map_err(io::Error::other)?
                .map(Rules::Built)
        } else {
            landlock_enforced().then_some(Rules::Deferred)
        };
        if ruleset.is_none() && !LANDLOCK_WARNED.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "this kernel has no Landlock: exec children can read whatever the server \
                 can (allow-list, empty environment and own working directory still apply)"
            );
        }
        Ok(Cell { dir, ruleset })
    }

    /// The child's working directory.
    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Whether the child gets Landlock rules (this kernel has Landlock).
    pub(crate) fn landlock(&self) -> bool {
        self.ruleset.is_some()
    }
}

static LANDLOCK_WARNED: AtomicBool = AtomicBool::new(false);

/// Whether this kernel enforces the Landlock rules children get (asked once).
pub fn landlock_enforced() -> bool {
    static ENFORCED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENFORCED.get_or_init(|| ruleset(Path::new("/")).is_ok_and(|r| r.is_some()))
}

fn ruleset(dir: &Path) -> Result<Option<OwnedFd>, landlock::RulesetError> {
    let abi = LANDLOCK_ABI;
    let existing = |paths: &'static [&'static str]| {
        paths
            .iter()
            .copied()
            .filter(|p| Path::new(p).exists())
            .collect::<Vec<_>>()
    };
    let created = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))?
        .handle_access(AccessNet::from_all(abi))?
        .create()?
        .add_rules(path_beneath_rules(
            existing(SYSTEM_READ),
            AccessFs::from_read(abi),
        ))?
        .add_rules(path_beneath_rules(
            existing(DEVICES),
            AccessFs::ReadFile | AccessFs::WriteFile,
        ))?
        .add_rules(path_beneath_rules([dir], AccessFs::from_all(abi)))?;
    Ok(created.into())
}

/// Arranges for `cmd`'s child to take `limits` and enter `cell` before it runs.
pub(crate) fn confine(
    cmd: &mut std::process::Command,
    limits: Limits,
    timeout: Duration,
    cell: &Cell,
) {
    use std::os::unix::process::CommandExt;
    cmd.current_dir(cell.dir());
    let ruleset = match &cell.ruleset {
        Some(Rules::Built(fd)) => Some(fd.as_raw_fd()),
        _ => None,
    };
    let cpu = cpu_seconds(timeout);
    // SAFETY: getpid has no preconditions.
    let server = unsafe { libc::getpid() };
    // The priority is set by the server once the child runs (`super::priority`): a
    // child lowered here would hold up the server thread waiting for its execve.
    // SAFETY: the closure runs between fork and exec in the child; it calls only
    // async-signal-safe system calls (prctl, getppid, setrlimit, landlock) on values copied
    // in beforehand, and builds its error with `last_os_error`, which does not allocate.
    unsafe {
        cmd.pre_exec(move || confine_now(server, cpu, limits, ruleset));
    }
}

/// What [`confine`] does between fork and exec, done by the process itself: the
/// trampoline ([`super::trampoline`]), a fresh process of its own that may allocate,
/// so it builds its Landlock ruleset for `cell` here (`None`: no Landlock).
pub(crate) fn confine_self(
    server: u64,
    cpu: u64,
    limits: Limits,
    cell: Option<&Path>,
) -> io::Result<()> {
    let server = libc::pid_t::try_from(server).map_err(io::Error::other)?;
    let ruleset = match cell {
        Some(dir) => Some(ruleset(dir).map_err(io::Error::other)?.ok_or_else(|| {
            io::Error::other("the server saw Landlock but this process does not")
        })?),
        None => None,
    };
    confine_now(
        server,
        cpu,
        limits,
        ruleset.as_ref().map(|fd| fd.as_raw_fd()),
    )
}

/// Dies with the server, takes the limits, enters the ruleset. Only raw,
/// async-signal-safe system calls on values copied in beforehand (it runs between fork
/// and exec in [`confine`]); its error comes from `last_os_error`, which does not
/// allocate.
fn confine_now(
    server: libc::pid_t,
    cpu: u64,
    limits: Limits,
    ruleset: Option<std::os::fd::RawFd>,
) -> io::Result<()> {
    // SAFETY: prctl, getppid and landlock_restrict_self take plain integers.
    unsafe {
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
            return Err(io::Error::last_os_error());
        }
        // The server died before the request took effect: we are an orphan now.
        if libc::getppid() != server {
            libc::_exit(127);
        }
    }
    set_limit(libc::RLIMIT_CPU, cpu)?;
    set_limit(libc::RLIMIT_AS, limits.address_space_bytes)?;
    set_limit(libc::RLIMIT_NOFILE, limits.open_files)?;
    set_limit(libc::RLIMIT_NPROC, limits.processes)?;
    if let Some(fd) = ruleset {
        // SAFETY: as above. Landlock needs no_new_privs (or CAP_SYS_ADMIN); a setuid
        // program could not have been made to run with more rights anyway.
        unsafe {
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::syscall(libc::SYS_landlock_restrict_self, fd, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok(())
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
