//! `boundary`: cut exactly where receivers break (`boundary:all=true`).
//!
//! [`cuts`] lists, for every frame, the offsets where a receiver that assumes "one read
//! = one message" goes wrong: each offset inside the length field, the end of the length
//! field when more header follows (hjson), inside the rest of the header, the header's
//! end, inside the body (first byte, middle, last byte), just before a trailer (line's
//! newline), the frame's end, and one byte into the next frame. A plan cuts at all of
//! them (`all=true`) or at a random non-empty subset (each kept with probability 1/2),
//! each piece its own write, so a real peer reads the pieces apart (the executors' gap;
//! `pause_us`, default 0, adds a fixed pause at each cut). Without layouts it
//! falls back to a few random offsets.

use chopstick_targets::wire::FrameLayout;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::{parse_bool, parse_pause, random_cuts, Configure, Events, OptError};
use crate::chaos::{Fault, Plan};

/// Where a cut falls relative to its frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum CutKind {
    /// After `byte` (1..width) bytes of the length field.
    InLengthField { byte: usize },
    /// After the length field, when more header follows (hjson's JSON).
    LengthFieldEnd,
    /// Inside the header after the length field.
    InHeader,
    /// After the whole header, before the body.
    HeaderEnd,
    /// Inside the body.
    InBody,
    /// After the body, before a trailer (line's newline).
    BodyEnd,
    /// After the whole frame.
    FrameEnd,
    /// One byte into the next frame.
    IntoNextFrame,
}

/// Every boundary cut of `frames` as `(kind, absolute offset)`, sorted by offset.
///
/// Only offsets strictly inside the stream (`0 < offset < last frame's end`) are listed,
/// since a cut at either end changes nothing. One offset may be listed with several
/// kinds (an empty body's header end is also its frame end).
pub fn cuts(frames: &[FrameLayout]) -> Vec<(CutKind, usize)> {
    let Some(stream_end) = frames.iter().map(|f| f.end).max() else {
        return vec![];
    };
    let mut out = Vec::new();
    for (i, f) in frames.iter().enumerate() {
        let lf = &f.length_field;
        for byte in 1..lf.len() {
            out.push((CutKind::InLengthField { byte }, lf.start + byte));
        }
        if !lf.is_empty() && lf.end < f.body.start {
            out.push((CutKind::LengthFieldEnd, lf.end));
            if f.body.start - lf.end >= 2 {
                out.push((CutKind::InHeader, lf.end + (f.body.start - lf.end) / 2));
            }
        }
        if f.body.start > f.start {
            out.push((CutKind::HeaderEnd, f.body.start));
        }
        if f.body.len() >= 2 {
            out.push((CutKind::InBody, f.body.start + 1));
            out.push((CutKind::InBody, f.body.start + f.body.len() / 2));
            out.push((CutKind::InBody, f.body.end - 1));
        }
        if f.body.end < f.end && f.body.end > f.start {
            out.push((CutKind::BodyEnd, f.body.end));
        }
        out.push((CutKind::FrameEnd, f.end));
        if frames.get(i + 1).is_some_and(|next| next.len() > 1) {
            out.push((CutKind::IntoNextFrame, f.end + 1));
        }
    }
    out.retain(|&(_, at)| at > 0 && at < stream_end);
    out.sort_by_key(|&(kind, at)| (at, kind));
    out.dedup();
    out
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Boundary {
    /// Cut at every listed offset instead of a random subset.
    pub all: bool,
    /// Extra pause at each cut in microseconds (0: only the executor's gap).
    pub pause_us: u64,
}

impl Fault for Boundary {
    fn name(&self) -> &'static str {
        "boundary"
    }

    fn plan(&self, len: usize, frames: &[FrameLayout], rng: &mut ChaCha8Rng) -> Plan {
        let mut events = Events::new(len);
        let mut offsets: Vec<usize> = cuts(frames).into_iter().map(|(_, at)| at).collect();
        offsets.dedup();
        if offsets.is_empty() {
            offsets = random_cuts(len, 4, rng);
        }
        let chosen: Vec<usize> = if self.all {
            offsets
        } else {
            let mut some: Vec<usize> = offsets
                .iter()
                .copied()
                .filter(|_| rng.random_bool(0.5))
                .collect();
            if some.is_empty() && !offsets.is_empty() {
                some.push(offsets[rng.random_range(0..offsets.len())]);
            }
            some
        };
        for at in chosen {
            events.cut_with_pause(at, self.pause_us);
        }
        events.into_plan()
    }
}

impl Configure for Boundary {
    fn set(&mut self, key: &str, value: &str) -> Result<(), OptError> {
        match key {
            "all" => self.all = parse_bool(value)?,
            "pause_us" => self.pause_us = parse_pause(value)?,
            _ => return Err(OptError::UnknownKey),
        }
        Ok(())
    }

    fn options(&self) -> Vec<(&'static str, String)> {
        let d = Boundary::default();
        let mut out = vec![];
        if self.all != d.all {
            out.push(("all", self.all.to_string()));
        }
        if self.pause_us != d.pause_us {
            out.push(("pause_us", self.pause_us.to_string()));
        }
        out
    }
}
