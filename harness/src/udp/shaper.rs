//! The shaper: carries out datagram fates in time. It is a plain data structure driven
//! by the caller's clock (`now` is always an argument), so the relay, the in-process
//! channel and the check all share one implementation, and its unit tests need no
//! sleeping and make no timing assertions.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::fault::Fate;

/// How long a reordered datagram waits for the later datagrams it should let pass
/// before it is released anyway: a quiet sender must not strand it forever.
pub const DEFAULT_MAX_HOLD: Duration = Duration::from_millis(50);

/// One datagram and its sequence number (the index its fate was drawn for).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    pub seq: u64,
    pub bytes: Bytes,
}

/// Which faults a [`Shaper::push`] actually applied to one datagram.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    pub lost: bool,
    pub duplicated: bool,
    pub reordered: bool,
    pub truncated: bool,
    pub delayed: bool,
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Queued {
    at: Instant,
    /// Ties on `at` leave in arrival order.
    order: u64,
    seq: u64,
    bytes: Bytes,
}

#[derive(Debug)]
struct Held {
    remaining: u32,
    deadline: Instant,
    delay: Duration,
    copies: u8,
    datagram: Datagram,
}

/// Datagrams in flight under their fates.
#[derive(Debug)]
pub struct Shaper {
    queue: BinaryHeap<Reverse<Queued>>,
    held: Vec<Held>,
    order: u64,
    max_hold: Duration,
}

impl Default for Shaper {
    fn default() -> Self {
        Shaper::new(DEFAULT_MAX_HOLD)
    }
}

impl Shaper {
    pub fn new(max_hold: Duration) -> Shaper {
        Shaper {
            queue: BinaryHeap::new(),
            held: Vec::new(),
            order: 0,
            max_hold,
        }
    }

    fn enqueue(&mut self, at: Instant, copies: u8, datagram: &Datagram) {
        for _ in 0..copies {
            self.order += 1;
            self.queue.push(Reverse(Queued {
                at,
                order: self.order,
                seq: datagram.seq,
                bytes: datagram.bytes.clone(),
            }));
        }
    }

    /// Accepts a datagram arriving at `now` with fate `fate`.
    pub fn push(&mut self, now: Instant, fate: &Fate, mut datagram: Datagram) -> Applied {
        let applied = Applied {
            lost: fate.copies == 0,
            duplicated: fate.copies > 1,
            reordered: fate.copies > 0 && fate.hold > 0,
            truncated: fate.cuts(datagram.bytes.len()),
            delayed: fate.copies > 0 && fate.delay_us > 0,
        };
        if applied.truncated {
            datagram
                .bytes
                .truncate(fate.truncate_to.unwrap_or(usize::MAX));
        }
        // Every arrival lets the held datagrams count one more passer-by; this one is
        // queued first so a datagram released now really leaves after it.
        let delay = Duration::from_micros(fate.delay_us);
        if fate.copies > 0 && fate.hold == 0 {
            self.enqueue(now + delay, fate.copies, &datagram);
        }
        let mut i = 0;
        while i < self.held.len() {
            self.held[i].remaining -= 1;
            if self.held[i].remaining == 0 {
                let h = self.held.remove(i);
                self.enqueue(now + h.delay, h.copies, &h.datagram);
            } else {
                i += 1;
            }
        }
        if applied.reordered {
            self.held.push(Held {
                remaining: fate.hold,
                deadline: now + self.max_hold,
                delay,
                copies: fate.copies,
                datagram,
            });
        }
        applied
    }

    /// The next datagram due at or before `now`, if any.
    pub fn pop_due(&mut self, now: Instant) -> Option<Datagram> {
        self.release_held_until(now);
        match self.queue.peek() {
            Some(Reverse(q)) if q.at <= now => {
                let Reverse(q) = self.queue.pop()?;
                Some(Datagram {
                    seq: q.seq,
                    bytes: q.bytes,
                })
            }
            _ => None,
        }
    }

    fn release_held_until(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.held.len() {
            if self.held[i].deadline <= now {
                let h = self.held.remove(i);
                self.enqueue(now + h.delay, h.copies, &h.datagram);
            } else {
                i += 1;
            }
        }
    }

    /// The input has ended: nothing more will pass the held datagrams, so they go now.
    pub fn close(&mut self, now: Instant) {
        for h in std::mem::take(&mut self.held) {
            self.enqueue(now + h.delay, h.copies, &h.datagram);
        }
    }

    /// When the next datagram falls due (or a held one times out).
    pub fn next_wake(&self) -> Option<Instant> {
        let queued = self.queue.peek().map(|Reverse(q)| q.at);
        let held = self.held.iter().map(|h| h.deadline).min();
        match (queued, held) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty() && self.held.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dg(seq: u64, bytes: &'static [u8]) -> Datagram {
        Datagram {
            seq,
            bytes: Bytes::from_static(bytes),
        }
    }

    fn drain(s: &mut Shaper, now: Instant) -> Vec<u64> {
        std::iter::from_fn(|| s.pop_due(now))
            .map(|d| d.seq)
            .collect()
    }

    #[test]
    fn clean_fates_pass_in_order() {
        let (mut s, now) = (Shaper::default(), Instant::now());
        for i in 0..5 {
            s.push(now, &Fate::CLEAN, dg(i, b"x"));
        }
        assert_eq!(drain(&mut s, now), [0, 1, 2, 3, 4]);
        assert!(s.is_empty());
    }

    #[test]
    fn loss_dup_and_truncation_apply_to_the_bytes() {
        let (mut s, now) = (Shaper::default(), Instant::now());
        let lost = s.push(
            now,
            &Fate {
                copies: 0,
                ..Fate::CLEAN
            },
            dg(0, b"a"),
        );
        let dup = s.push(
            now,
            &Fate {
                copies: 2,
                ..Fate::CLEAN
            },
            dg(1, b"b"),
        );
        let cut = Fate {
            truncate_to: Some(3),
            ..Fate::CLEAN
        };
        assert!(s.push(now, &cut, dg(2, b"abcdef")).truncated);
        assert!(
            !s.push(now, &cut, dg(3, b"abc")).truncated,
            "short enough: untouched"
        );
        assert!(lost.lost && dup.duplicated);
        let out: Vec<Datagram> = std::iter::from_fn(|| s.pop_due(now)).collect();
        assert_eq!(
            out,
            [dg(1, b"b"), dg(1, b"b"), dg(2, b"abc"), dg(3, b"abc")]
        );
    }

    #[test]
    fn held_datagram_leaves_after_the_given_number_of_later_ones() {
        let (mut s, now) = (Shaper::default(), Instant::now());
        s.push(
            now,
            &Fate {
                hold: 2,
                ..Fate::CLEAN
            },
            dg(0, b"x"),
        );
        for i in 1..5 {
            s.push(now, &Fate::CLEAN, dg(i, b"x"));
        }
        assert_eq!(drain(&mut s, now), [1, 2, 0, 3, 4]);
    }

    #[test]
    fn held_datagram_is_released_by_timeout_or_close() {
        let (mut s, now) = (Shaper::new(Duration::from_millis(50)), Instant::now());
        s.push(
            now,
            &Fate {
                hold: 3,
                ..Fate::CLEAN
            },
            dg(0, b"x"),
        );
        assert_eq!(drain(&mut s, now), Vec::<u64>::new());
        assert_eq!(s.next_wake(), Some(now + Duration::from_millis(50)));
        assert_eq!(drain(&mut s, now + Duration::from_millis(50)), [0]);
        s.push(
            now,
            &Fate {
                hold: 3,
                ..Fate::CLEAN
            },
            dg(1, b"x"),
        );
        s.close(now);
        assert_eq!(drain(&mut s, now), [1]);
    }

    #[test]
    fn delayed_datagram_waits_for_its_time() {
        let (mut s, now) = (Shaper::default(), Instant::now());
        s.push(
            now,
            &Fate {
                delay_us: 1000,
                ..Fate::CLEAN
            },
            dg(0, b"x"),
        );
        s.push(now, &Fate::CLEAN, dg(1, b"x"));
        assert_eq!(drain(&mut s, now), [1]);
        assert_eq!(s.next_wake(), Some(now + Duration::from_micros(1000)));
        assert_eq!(drain(&mut s, now + Duration::from_micros(1000)), [0]);
    }
}
