//! The server-wide bound on running children: at most `max_children` commands run at
//! once, at most `max_waiting` more wait for a slot, answered in the order they
//! arrived (tokio's semaphore is fair), and a request that finds the queue full is
//! refused at once with a `busy` error reply instead of piling up.
//!
//! Without it every connection ran its command at once: 300 CPU-bound commands on two
//! cores starved the server itself, so timeouts fired 25 s late and a fresh `echo hi`
//! waited as long (issue 13). One [`Slots`] is shared by every connection of a server
//! (clones of an [`super::Config`] share it, auth's inner exec included).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Waiting requests allowed per running slot when the configuration names no queue
/// length: enough to smooth a burst, few enough that a queued request still runs
/// within a few timeouts.
pub const DEFAULT_WAITING_PER_CHILD: usize = 4;

/// The default number of children running at once: twice the CPUs this process may
/// use (CPU-bound children then keep every core busy while the server stays
/// responsive; I/O-bound ones still overlap), and at least 2.
pub fn default_max_children() -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    (2 * cpus).max(2)
}

/// Running and waiting commands of one server.
#[derive(Debug)]
pub struct Slots {
    running: Arc<Semaphore>,
    max_children: usize,
    max_waiting: usize,
    waiting: AtomicUsize,
    refused: AtomicU64,
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
