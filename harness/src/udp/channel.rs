//! An in-process datagram channel with seeded faults: what [`crate::chaos`]'s
//! `ChaosStream` is for byte streams, for datagrams. A Rust user tests a datagram
//! receiver against loss, duplication, reordering, delay and truncation without
//! sockets, and the same seed gives the same fates.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::Notify;

use super::fault::{DatagramFaults, Fate};
use super::shaper::Applied;
use super::shaper::{Datagram, Shaper};
use crate::chaos::Direction;

#[derive(Debug)]
struct Inner {
    shaper: Shaper,
    next_seq: u64,
    closed: bool,
}

#[derive(Debug)]
struct Shared {
    inner: Mutex<Inner>,
    ready: Notify,
    faults: DatagramFaults,
    seed: u64,
    dir: Direction,
}

/// The sending end; dropping it closes the channel (held datagrams are released).
#[derive(Debug)]
pub struct ChaosSender {
    shared: Arc<Shared>,
}

/// The receiving end.
#[derive(Debug)]
pub struct ChaosReceiver {
    shared: Arc<Shared>,
}

/// A channel whose `n`-th datagram gets `faults.fate(seed, dir, n)`.
pub fn channel(faults: DatagramFaults, seed: u64, dir: Direction) -> (ChaosSender, ChaosReceiver) {
    let shared = Arc::new(Shared {
        inner: Mutex::new(Inner {
            shaper: Shaper::default(),
            next_seq: 0,
            closed: false,
        }),
        ready: Notify::new(),
        faults,
        seed,
        dir,
    });
    (
        ChaosSender {
            shared: shared.clone(),
        },
        ChaosReceiver { shared },
    )
}

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Inner> {
    // A panic elsewhere while holding the lock leaves plain data behind; keep going.
    shared.inner.lock().unwrap_or_else(|e| e.into_inner())
}

impl ChaosSender {
    /// Sends one datagram; returns its sequence number, its fate and what was applied.
    pub fn send(&self, bytes: impl Into<Bytes>) -> (u64, Fate, Applied) {
        let mut inner = lock(&self.shared);
        let seq = inner.next_seq;
        inner.next_seq += 1;
        let fate = self
            .shared
            .faults
            .fate(self.shared.seed, self.shared.dir, seq);
        let applied = inner.shaper.push(
            Instant::now(),
            &fate,
            Datagram {
                seq,
                bytes: bytes.into(),
            },
        );
        drop(inner);
        self.shared.ready.notify_one();
        (seq, fate, applied)
    }
}

impl Drop for ChaosSender {
    fn drop(&mut self) {
        let mut inner = lock(&self.shared);
        inner.closed = true;
        inner.shaper.close(Instant::now());
        drop(inner);
        self.shared.ready.notify_one();
    }
}

impl ChaosReceiver {
    /// The next delivered datagram, or `None` once the sender is gone and nothing is
    /// left in flight. Every wait is bounded by the shaper's next due time.
    pub async fn recv(&mut self) -> Option<Datagram> {
        loop {
            let wake = {
                let mut inner = lock(&self.shared);
                if let Some(d) = inner.shaper.pop_due(Instant::now()) {
                    return Some(d);
                }
                if inner.closed && inner.shaper.is_empty() {
                    return None;
                }
                inner.shaper.next_wake()
            };
            match wake {
                Some(at) => {
                    tokio::select! {
                        _ = self.shared.ready.notified() => {}
                        _ = tokio::time::sleep_until(at.into()) => {}
                    }
                }
                None => self.shared.ready.notified().await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn collect(faults: &str, seed: u64, n: u64) -> Vec<Datagram> {
        let (tx, mut rx) = channel(faults.parse().unwrap(), seed, Direction::Up);
        for i in 0..n {
            tx.send(format!("datagram-{i:04}"));
        }
        drop(tx);
        let mut out = Vec::new();
        while let Some(d) = tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv())
            .await
            .expect("channel drains")
        {
            out.push(d);
        }
        out
    }

    #[tokio::test]
    async fn no_faults_delivers_everything_in_order() {
        let out = collect("", 1, 50).await;
        assert_eq!(
            out.iter().map(|d| d.seq).collect::<Vec<_>>(),
            (0..50).collect::<Vec<_>>()
        );
    }

    #[tokio::test]
    async fn same_seed_same_deliveries() {
        let faults = "loss:p=0.2,dup:p=0.2,reorder:window=4:p=0.3,truncate:size=8";
        let a = collect(faults, 7, 200).await;
        let b = collect(faults, 7, 200).await;
        assert_eq!(a, b);
        let lost = (0..200u64)
            .filter(|i| !a.iter().any(|d| d.seq == *i))
            .count();
        assert!(lost > 0 && a.len() != 200);
        assert!(a.iter().all(|d| d.bytes.len() == 8));
        assert!(
            a.windows(2).any(|w| w[1].seq < w[0].seq),
            "something reordered"
        );
    }
}
