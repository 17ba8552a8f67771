//! Workloads: the seeded messages each connection of a campaign sends.
//!
//! Sizes are drawn to hit the cases receivers get wrong: empty messages, one byte,
//! sizes around the length field's width, and large messages (up to `max_size`) that
//! no single read returns whole. The same seed always gives the same messages.
//!
//! Or, for real servers that parse their requests, [`Sessions`]: templates (recorded
//! connections, or a corpus) each connection draws one of, seeded.

use std::sync::Arc;

use bytes::Bytes;
use rand::{Rng, RngCore};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::chaos::purpose_rng;

/// How a connection sends its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Everything is sent without waiting for replies (the coalescing case).
    #[default]
    Pipelined,
    /// Each message waits for its reply before the next is sent.
    PingPong,
}

/// What each connection of a campaign sends.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Workload {
    pub connections: usize,
    pub messages: usize,
    /// Largest message; 0..=max_size bytes are drawn.
    pub max_size: usize,
    /// Width of the framing's header, so sizes around it are drawn too.
    pub header_width: usize,
    /// Session templates to draw from instead of drawn payloads (`check --traffic`,
    /// `check --requests`); `messages` and `max_size` do not apply to them. Not stored
    /// in files: a reproducer keeps the requests it sends.
    #[serde(skip)]
    pub sessions: Option<Arc<Sessions>>,
}

/// Session templates: each the request payloads of one connection, in order. What a
/// traffic file or a request corpus gives a campaign.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Sessions(pub Vec<Vec<Bytes>>);

/// Session templates a campaign cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SessionsError {
    #[error("no session templates to draw from")]
    Empty,
}

impl Sessions {
    /// Checked templates: at least one.
    pub fn new(templates: Vec<Vec<Bytes>>) -> Result<Sessions, SessionsError> {
        if templates.is_empty() {
            return Err(SessionsError::Empty);
        }
        Ok(Sessions(templates))
    }

    /// Which template connection `conn` plays: every template once in each round of
    /// `len` connections, in an order shuffled per round from `seed`.
    pub fn pick(&self, seed: u64, conn: u64) -> usize {
        use rand::seq::SliceRandom;
        let n = self.0.len().max(1);
        let round = conn / n as u64;
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut purpose_rng(seed, &format!("sessions/{round}")));
        order[(conn % n as u64) as usize]
    }

    /// The requests connection `conn` sends.
    pub fn draw(&self, seed: u64, conn: u64) -> Vec<Bytes> {
        self.0
            .get(self.pick(seed, conn))
            .cloned()
            .unwrap_or_default()
    }
}

impl Workload {
    /// The messages connection `conn` sends in a run seeded with `seed`.
    pub fn messages(&self, seed: u64, conn: u64) -> Vec<Bytes> {
        if let Some(sessions) = &self.sessions {
            return sessions.draw(seed, conn);
        }
        // Independent of the plan RNGs, so changing a fault never changes the messages.
        let mut rng = purpose_rng(seed, &format!("workload/{conn}"));
        let n = self.messages;
        (0..n)
            .map(|i| {
                // Every connection of 4+ messages carries each edge size at least once, at
                // a position that moves with the connection; the rest are drawn.
                let edge = (i + n - (conn as usize % n.max(1))) % n.max(1);
                let len = match edge {
                    0 if n >= 4 => 0,
                    1 if n >= 4 => 1.min(self.max_size),
                    2 if n >= 4 => self.header_width.min(self.max_size),
                    3 if n >= 4 => rng
                        .random_range((self.max_size / 2).max(1)..=self.max_size.max(1))
                        .min(self.max_size),
                    _ => self.draw_size(&mut rng),
                };
                message(&mut rng, conn, i, len)
            })
            .collect()
    }

    fn draw_size(&self, rng: &mut ChaCha8Rng) -> usize {
        let max = self.max_size;
        let w = self.header_width.max(1);
        let size = match rng.random_range(0..100u32) {
            0..=9 => 0,
            10..=17 => 1,
            18..=34 => rng.random_range(w.saturating_sub(1)..=w + 1),
            35..=84 => rng.random_range(2..=64.min(max.max(2))),
            85..=92 => rng.random_range(65..=4096.min(max.max(65))),
            _ => rng.random_range((max / 2).max(1)..=max.max(1)),
        };
        size.min(max)
    }

    /// A seeded RNG for choices about the workload as a whole (e.g. which fault).
    pub fn rng(seed: u64) -> ChaCha8Rng {
        purpose_rng(seed, "workload")
    }
}

/// A message that says where it came from (`c3m7:`), padded with seeded lowercase
/// letters, so a misplaced reply is easy to spot in a reproducer and `upper` changes it.
fn message(rng: &mut ChaCha8Rng, conn: u64, index: usize, len: usize) -> Bytes {
    let tag = format!("c{conn}m{index}:");
    let mut out = vec![0u8; len];
    rng.fill_bytes(&mut out);
    for b in out.iter_mut() {
        *b = b'a' + *b % 26;
    }
    let n = tag.len().min(len);
    out[..n].copy_from_slice(&tag.as_bytes()[..n]);
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(max: usize) -> Workload {
        Workload {
            connections: 4,
            messages: 400,
            max_size: max,
            header_width: 4,
            sessions: None,
        }
    }

    #[test]
    fn same_seed_same_messages_other_conn_other_messages() {
        assert_eq!(w(1 << 20).messages(7, 1), w(1 << 20).messages(7, 1));
        assert_ne!(w(1 << 20).messages(7, 1), w(1 << 20).messages(7, 2));
        assert_ne!(w(1 << 20).messages(7, 1), w(1 << 20).messages(8, 1));
    }

    #[test]
    fn sizes_cover_empty_one_header_width_and_large() {
        let sizes: Vec<usize> = w(1 << 20).messages(1, 0).iter().map(|m| m.len()).collect();
        for want in [0, 1, 3, 4, 5] {
            assert!(sizes.contains(&want), "no {want}-byte message in {sizes:?}");
        }
        assert!(sizes.iter().any(|&s| s >= 1 << 19), "no large message");
        assert!(sizes.iter().all(|&s| s <= 1 << 20));
        assert!(w(10).messages(1, 0).iter().all(|m| m.len() <= 10));
    }

    #[test]
    fn every_connection_of_four_messages_has_the_edge_sizes() {
        let w = Workload {
            connections: 1,
            messages: 4,
            max_size: 1000,
            header_width: 4,
            sessions: None,
        };
        for conn in 0..20 {
            let mut sizes: Vec<usize> = w.messages(9, conn).iter().map(|m| m.len()).collect();
            sizes.sort_unstable();
            assert_eq!(&sizes[..3], &[0, 1, 4], "conn {conn}");
            assert!(sizes[3] >= 500, "conn {conn}: {sizes:?}");
        }
    }

    fn templates() -> Sessions {
        let t = |v: &[&str]| {
            v.iter()
                .map(|s| Bytes::copy_from_slice(s.as_bytes()))
                .collect()
        };
        Sessions::new(vec![t(&["a", "b"]), t(&["c"]), t(&[]), t(&["d", "e", "f"])]).unwrap()
    }

    #[test]
    fn sessions_are_drawn_whole_every_template_once_per_round_and_seeded() {
        let s = templates();
        let w = Workload {
            sessions: Some(Arc::new(s.clone())),
            ..w(10)
        };
        for round in 0..3u64 {
            let mut picked: Vec<usize> = (0..4).map(|i| s.pick(5, round * 4 + i)).collect();
            picked.sort_unstable();
            assert_eq!(picked, [0, 1, 2, 3], "round {round}");
        }
        for conn in 0..8 {
            assert_eq!(w.messages(5, conn), s.0[s.pick(5, conn)], "conn {conn}");
            assert_eq!(w.messages(5, conn), w.messages(5, conn));
        }
        let order = |seed| (0..8).map(|c| s.pick(seed, c)).collect::<Vec<_>>();
        assert!(
            (0..20).any(|seed| order(seed) != order(5)),
            "the seed changes the draw"
        );
        assert_eq!(Sessions::new(Vec::new()), Err(SessionsError::Empty));
    }
}
