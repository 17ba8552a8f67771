//! The server-wide bound on running children: at most `max_children` commands run at
//! once, at most `max_waiting` more wait for a slot, answered in the order they
//! arrived (tokio's semaphore is fair), and a request that finds the queue full is
//! refused at once with a `busy` error reply instead of piling up.
//!
//! Without a bound every connection ran its command at once, at the server's own
//! priority: 300 CPU-bound commands on two cores starved the server itself, so
//! timeouts fired 25 s late and a fresh `echo hi` waited as long (issue 13). The
//! bound is about resources, not CPU: CPU is shared by priority ([`super::priority`]:
//! the server first, then fresh commands, then hogs), so the default lets hundreds
//! run at once (sized to the machine's memory and process ids, see
//! [`default_max_children`]) and a short command is answered at once however many
//! hogs run; it only waits in the queue when that many are running. One [`Slots`] is
//! shared by every connection of a server (clones of an [`super::Config`] share it,
//! auth's inner exec included).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Waiting requests allowed per running slot when the configuration names no queue
/// length: enough to smooth a burst; a waiting request's timeout runs while it waits,
/// so the queue can never hold anyone longer than that.
pub const DEFAULT_WAITING_PER_CHILD: usize = 4;

/// The most children the default allows on any machine.
pub const MAX_DEFAULT_CHILDREN: usize = 512;

/// Memory set aside per running child when sizing the default. A filter program
/// from the allow-list costs about 1 MiB (private pages, kernel stack, page tables,
/// three pipe buffers); the margin covers larger programs. Its output is accounted
/// separately, in the server's memory budget (`--max-memory`).
pub const MEMORY_PER_CHILD: u64 = 8 << 20;

/// Share of the process ids (the smallest of `pid_max`, the cgroup's `pids.max` and
/// `RLIMIT_NPROC`) the default may take: the rest is left to everything else.
pub const PID_SHARE_DIVISOR: u64 = 4;

/// Open descriptors set aside per running child when sizing the default: five (three
/// pipes, its Landlock ruleset, its connection), doubled so that connections without
/// a child keep room too.
pub const DESCRIPTORS_PER_CHILD: u64 = 10;

/// The default number of children running at once: the machine's memory (the
/// cgroup's limit if lower) divided by [`MEMORY_PER_CHILD`], a quarter of the process
/// ids it allows, the open-files limit divided by [`DESCRIPTORS_PER_CHILD`], and
/// [`MAX_DEFAULT_CHILDREN`], whichever is smallest; never below twice the CPUs (and
/// 2). 512 on a 24 GiB, 2-core machine with 20 000 descriptors.
pub fn default_max_children() -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let by_memory = machine::memory_bytes().map(|m| m / MEMORY_PER_CHILD);
    let by_pids = machine::process_ids().map(|p| p / PID_SHARE_DIVISOR);
    let by_fds = machine::soft_limit(libc::RLIMIT_NOFILE).map(|f| f / DESCRIPTORS_PER_CHILD);
    let cap = [by_memory, by_pids, by_fds]
        .into_iter()
        .flatten()
        .fold(MAX_DEFAULT_CHILDREN as u64, u64::min);
    (cap as usize).max(2 * cpus).max(2)
}

/// What the machine allows, read from the kernel; `None` where it cannot be read.
mod machine {
    /// The smallest of the physical memory and the cgroup (v2) memory limit.
    pub(super) fn memory_bytes() -> Option<u64> {
        // SAFETY: sysconf only reads its argument.
        let (pages, page) = unsafe {
            (
                libc::sysconf(libc::_SC_PHYS_PAGES),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        let physical = (pages > 0 && page > 0).then(|| pages as u64 * page as u64);
        min_known([physical, number("/sys/fs/cgroup/memory.max")])
    }

    /// The smallest of the kernel's pid range, the cgroup (v2) pid limit and this
    /// user's process limit.
    pub(super) fn process_ids() -> Option<u64> {
        min_known([
            number("/proc/sys/kernel/pid_max"),
            number("/sys/fs/cgroup/pids.max"),
            soft_limit(libc::RLIMIT_NPROC),
        ])
    }

    /// The soft limit of `resource`, unless unlimited.
    pub(super) fn soft_limit(resource: libc::__rlimit_resource_t) -> Option<u64> {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit only fills the struct we pass.
        let ok = unsafe { libc::getrlimit(resource, &mut limit) } == 0;
        (ok && limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
    }

    /// A file holding one number (`max`, meaning no limit, reads as `None`).
    fn number(path: &str) -> Option<u64> {
        std::fs::read_to_string(path).ok()?.trim().parse().ok()
    }

    fn min_known<const N: usize>(values: [Option<u64>; N]) -> Option<u64> {
        values.into_iter().flatten().min()
    }
}

/// Running and waiting commands of one server.
#[derive(Debug)]
pub struct Slots {
    running: Arc<Semaphore>,
    max_children: usize,
    max_waiting: usize,
    waiting: AtomicUsize,
    refused: AtomicU64,
    /// Children at the starting priority now ([`super::priority::Start`]).
    fresh: Arc<AtomicUsize>,
}

/// What [`Slots::snapshot`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct SlotsSnapshot {
    pub max_children: usize,
    pub max_waiting: usize,
    /// Commands running now.
    pub running: usize,
    /// Requests waiting for a slot now.
    pub waiting: usize,
    /// Requests refused as busy since the server started.
    pub refused: u64,
}

impl Default for Slots {
    fn default() -> Self {
        let max = default_max_children();
        Slots::new(max, max * DEFAULT_WAITING_PER_CHILD)
    }
}

impl Slots {
    /// `max_children` is raised to 1 (a server that can run nothing is useless).
    pub fn new(max_children: usize, max_waiting: usize) -> Slots {
        let max_children = max_children.max(1);
        Slots {
            running: Arc::new(Semaphore::new(max_children)),
            max_children,
            max_waiting,
            waiting: AtomicUsize::new(0),
            refused: AtomicU64::new(0),
            fresh: Arc::default(),
        }
    }

    pub fn snapshot(&self) -> SlotsSnapshot {
        SlotsSnapshot {
            max_children: self.max_children,
            max_waiting: self.max_waiting,
            running: self.max_children - self.running.available_permits(),
            waiting: self.waiting.load(Ordering::SeqCst),
            refused: self.refused.load(Ordering::SeqCst),
        }
    }

    /// Joins the queue, or `None` (counted as refused) if it is full. A free slot
    /// with nobody waiting admits at once whatever the queue length.
    pub fn enter(self: &Arc<Self>) -> Option<Ticket> {
        let idle_slot = self.running.available_permits() > 0;
        let joined = self
            .waiting
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |w| {
                (w < self.max_waiting || (idle_slot && w == 0)).then_some(w + 1)
            })
            .is_ok();
        if joined {
            Some(Ticket {
                slots: self.clone(),
                waiting: true,
            })
        } else {
            self.refused.fetch_add(1, Ordering::SeqCst);
            None
        }
    }
}

/// A place in the queue. Dropping it (client gone, deadline passed) leaves the queue.
#[derive(Debug)]
pub struct Ticket {
    slots: Arc<Slots>,
    waiting: bool,
}

impl Ticket {
    /// The count of this server's children at the starting priority.
    pub(crate) fn fresh(&self) -> Arc<AtomicUsize> {
        self.slots.fresh.clone()
    }

    /// Waits for a running slot; the permit frees it when dropped (after the reap).
    pub async fn admit(mut self) -> OwnedSemaphorePermit {
        let permit = self
            .slots
            .running
            .clone()
            .acquire_owned()
            .await
            .expect("the slot semaphore is never closed");
        self.leave();
        permit
    }

    fn leave(&mut self) {
        if std::mem::take(&mut self.waiting) {
            self.slots.waiting.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.leave();
    }
}
