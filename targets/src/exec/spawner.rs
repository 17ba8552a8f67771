//! Starting children off the async worker threads. Spawning blocks the calling
//! thread until the child has called `execve` (std waits on a close-on-exec pipe to
//! report exec errors), and on a machine full of CPU-bound children that takes a
//! scheduling round or two, 10-40 ms. Done on the runtime's workers, a burst of 300
//! requests kept both workers blocked for seconds: timers (deadlines, demotions) fired
//! late and nothing else was served (measured: 100 of 300 children started after 1.7
//! s, none demoted). Here a few dedicated threads do it, so the workers stay free.
//!
//! The threads are started once per process and never exit (they wait on a channel
//! whose sender is static): a child's parent-death signal (`PR_SET_PDEATHSIG`, see
//! [`super::sandbox`]) is sent when the *thread* that forked it exits, so a thread
//! that came and went (tokio's blocking pool retires idle threads after 10 s) would
//! kill the children it started. Each request carries its runtime's handle, so the
//! child is registered with the runtime that waits for it.

use std::io;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, OnceLock};

use tokio::process::{Child, Command};
use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// Children being started at once: spawning waits on the child rather than
/// working, so a few in parallel hide each other's waits.
pub const SPAWNER_THREADS: usize = 16;

type Request = (Command, Handle, oneshot::Sender<io::Result<Child>>);

/// `None` if not one spawner thread could be started (then spawning happens inline).
static SPAWNER: OnceLock<Option<Sender<Request>>> = OnceLock::new();

/// Starts `cmd` on a spawner thread, registered with the current runtime.
pub(crate) async fn spawn(mut cmd: Command) -> io::Result<Child> {
    let Some(sender) = SPAWNER.get_or_init(start_threads) else {
        return cmd.spawn();
    };
    let (reply, answer) = oneshot::channel();
    sender
        .send((cmd, Handle::current(), reply))
        .map_err(|_| io::Error::other("exec spawner threads are gone"))?;
    answer
        .await
        .map_err(|_| io::Error::other("exec spawner thread dropped the request"))?
}

fn start_threads() -> Option<Sender<Request>> {
    let (sender, requests) = mpsc::channel::<Request>();
    let requests = Arc::new(Mutex::new(requests));
    let started = (0..SPAWNER_THREADS)
        .filter(|i| {
            let requests = requests.clone();
            std::thread::Builder::new()
                .name(format!("exec-spawner-{i}"))
                .spawn(move || serve(&requests))
                .map_err(|e| tracing::warn!("cannot start exec spawner thread {i}: {e}"))
                .is_ok()
        })
        .count();
    (started > 0).then_some(sender)
}

fn serve(requests: &Mutex<Receiver<Request>>) {
    loop {
        // The lock is released at the end of this statement, before spawning.
        let next = match requests.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok((mut cmd, handle, reply)) = next else {
            return;
        };
        let _runtime = handle.enter();
        // A panic (a runtime shutting down under us) must not take the thread: the
        // request fails instead.
        let child = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cmd.spawn()))
            .unwrap_or_else(|_| Err(io::Error::other("spawning the child panicked")));
        // The requester gave up (its connection or runtime ended): the child is
        // dropped here, and `kill_on_drop` kills it.
        drop(reply.send(child));
    }
}
