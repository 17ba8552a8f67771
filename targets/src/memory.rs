//! The server-wide memory budget (`--max-memory`, issue 13 finding 2): every byte a
//! server buffers for its peers is reserved here first, so many connections together
//! cannot hold more than the budget, whatever each is allowed alone.
//!
//! | what is reserved | when the budget is exhausted |
//! |---|---|
//! | each connection's read buffer (request frames being received) | the connection is closed, counted `memory` |
//! | exec: stdin of queued requests | the request is refused with an error reply |
//! | exec: output collected, until its reply is written (counted twice: the body and its encoded copy) | backpressure: the child blocks on its pipe until memory frees or its deadline kills it |
//! | file: a `get` body, until written (twice, likewise) | refused with an error reply |
//! | echo: a reply, until written | backpressure: the connection stops reading until memory frees (the idle timeout bounds the wait) |
//!
//! The counter is exact for what it covers; socket buffers (the kernel's) and small
//! per-connection state (a few KiB, see RELIABILITY.md) are outside it.

use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio_util::codec::{Decoder, Encoder};

use crate::wire::WireError;

/// Default budget: 1 GiB.
pub const DEFAULT_MAX_MEMORY: usize = 1 << 30;

/// How often a reservation that waits (backpressure) looks again.
const RETRY: Duration = Duration::from_millis(5);

/// One server's budget; shared by every connection (clones of its `Common`).
#[derive(Debug)]
pub struct Memory {
    max: usize,
    used: AtomicUsize,
    peak: AtomicUsize,
    refused: AtomicU64,
}

/// What [`Memory::snapshot`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct MemorySnapshot {
    pub max: usize,
    pub used: usize,
    /// Highest `used` seen.
    pub peak: usize,
    /// Reservations refused (connections closed, requests refused).
    pub refused: u64,
}

impl Default for Memory {
    fn default() -> Self {
        Memory::new(DEFAULT_MAX_MEMORY)
    }
}

impl Memory {
    pub fn new(max: usize) -> Memory {
        Memory {
            max,
            used: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            refused: AtomicU64::new(0),
        }
    }

    pub fn snapshot(&self) -> MemorySnapshot {
        MemorySnapshot {
            max: self.max,
            used: self.used.load(Ordering::SeqCst),
            peak: self.peak.load(Ordering::SeqCst),
            refused: self.refused.load(Ordering::SeqCst),
        }
    }

    /// An empty reservation, to grow later.
    pub fn empty(self: &Arc<Self>) -> Reservation {
        Reservation {
            memory: self.clone(),
            bytes: 0,
        }
    }

    fn take(&self, n: usize) -> bool {
        let ok = self
            .used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |u| {
                u.checked_add(n).filter(|&t| t <= self.max)
            });
        match ok {
            Ok(before) => {
                self.peak.fetch_max(before + n, Ordering::SeqCst);
                true
            }
            Err(_) => false,
        }
    }

    fn give(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::SeqCst);
    }

    /// Reserves `n` bytes now, or `None` (counted as refused).
    pub fn try_reserve(self: &Arc<Self>, n: usize) -> Option<Reservation> {
        let mut r = self.empty();
        r.try_grow(n).then_some(r)
    }

    /// Reserves `n` bytes (at most the whole budget), waiting until they are free:
    /// backpressure. Callers bound the wait (a deadline, the idle timeout).
    pub async fn reserve(self: &Arc<Self>, n: usize) -> Reservation {
        let mut r = self.empty();
        r.grow(n.min(self.max)).await;
        r
    }
}

/// Bytes held in a [`Memory`] budget; given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    memory: Arc<Memory>,
    bytes: usize,
}

impl Reservation {
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Adds `n` bytes if the budget has them (else counts a refusal).
    pub fn try_grow(&mut self, n: usize) -> bool {
        if self.memory.take(n) {
            self.bytes += n;
            true
        } else {
            self.memory.refused.fetch_add(1, Ordering::SeqCst);
            false
        }
    }

    /// Adds `n` bytes, waiting until the budget has them.
    pub async fn grow(&mut self, n: usize) {
        while !self.memory.take(n) {
            tokio::time::sleep(RETRY).await;
        }
        self.bytes += n;
    }

    /// Makes the reservation exactly `n` bytes; `false` (nothing changed) if growing
    /// would exceed the budget.
    pub fn resize(&mut self, n: usize) -> bool {
        if n > self.bytes {
            self.try_grow(n - self.bytes)
        } else {
            self.memory.give(self.bytes - n);
            self.bytes = n;
            true
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.memory.give(self.bytes);
    }
}

/// The error a [`Budgeted`] decoder gives when its buffer would exceed the budget
/// (counted under the kind `memory`).
pub fn exhausted() -> WireError {
    WireError::Io(io::Error::new(
        io::ErrorKind::OutOfMemory,
        "server memory budget exhausted",
    ))
}

/// A codec whose read buffer is reserved in a [`Memory`] budget: its capacity is
/// accounted after every decode step (the codec and the framed reader grow it).
#[derive(Debug)]
pub struct Budgeted<C> {
    inner: C,
    held: Reservation,
}

impl<C> Budgeted<C> {
    pub fn new(inner: C, memory: &Arc<Memory>) -> Budgeted<C> {
        Budgeted {
            inner,
            held: memory.empty(),
        }
    }

    fn account(&mut self, src: &BytesMut) -> Result<(), WireError> {
        if self.held.resize(src.capacity()) {
            Ok(())
        } else {
            Err(exhausted())
        }
    }
}

impl<C: Decoder<Error = WireError>> Decoder for Budgeted<C> {
    type Item = C::Item;
    type Error = WireError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<C::Item>, WireError> {
        self.account(src)?;
        let frame = self.inner.decode(src);
        self.account(src)?;
        frame
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<C::Item>, WireError> {
        self.account(src)?;
        let frame = self.inner.decode_eof(src);
        self.account(src)?;
        frame
    }
}

impl<T, C: Encoder<T, Error = WireError>> Encoder<T> for Budgeted<C> {
    type Error = WireError;

    fn encode(&mut self, item: T, dst: &mut BytesMut) -> Result<(), WireError> {
        self.inner.encode(item, dst)
    }
}
