//! Faults, one per file, and [`FaultSet`]: the parsed `--faults` list.
//!
//! Each fault is a small config struct (what `--faults` said) implementing [`Fault`];
//! everything that varies per connection lives in the RNG passed to [`Fault::plan`], so
//! one config serves every connection and a seed replays exactly.
//!
//! # `--faults` grammar
//!
//! ```text
//! LIST  := "" | "none" | ENTRY ("," ENTRY)*
//! ENTRY := NAME (":" KEY "=" VALUE)*
//! NAME  := split | boundary | coalesce | disconnect | latency | bandwidth | slow | mixed
//! ```
//!
//! e.g. `split:max=64:pause_us=1000,disconnect:mode=reset:at=mid-body,coalesce:p=0.5`.
//! The key `p` (probability that the entry applies to a given stream, default 1) is
//! understood by every entry; the other keys belong to the fault (see each file).
//! `mixed` picks one fault (with its defaults) per stream at random.
//!
//! # Composition
//!
//! When several entries apply to one stream their plans are merged ([`merge`]): the
//! stream is cut at the union of every plan's write boundaries, every pause stays at
//! the byte offset where its plan had it (pauses at the same offset add up), and the
//! earliest close/reset wins (a reset beats a close at the same offset). Merging never
//! drops or reorders bytes. A consequence: `coalesce` composed with a cutting fault
//! only contributes its own cut points, since the union of cuts splits its big writes.

mod bandwidth;
pub mod boundary;
mod coalesce;
mod disconnect;
mod latency;
mod slow;
mod split;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use chopstick_targets::wire::FrameLayout;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::{Ending, Fault, Plan, Step};

pub use bandwidth::Bandwidth;
pub use boundary::{Boundary, CutKind};
pub use coalesce::Coalesce;
pub use disconnect::{Disconnect, DisconnectAt, DisconnectMode};
pub use latency::Latency;
pub use slow::Slow;
pub use split::Split;

/// Longest single pause any fault accepts (10 s): every wait stays bounded.
pub const MAX_PAUSE_US: u64 = 10_000_000;

/// A `--faults` list that cannot be honoured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FaultSpecError {
    #[error("unknown fault `{0}` (expected split, boundary, coalesce, disconnect, latency, bandwidth, slow, mixed or none)")]
    Unknown(String),
    #[error("fault `{fault}` has no option `{key}`")]
    UnknownKey { fault: String, key: String },
    #[error("option `{option}` of fault `{fault}` is not of the form key=value")]
    MalformedOption { fault: String, option: String },
    #[error("option `{key}` given twice for fault `{fault}`")]
    DuplicateKey { fault: String, key: String },
    #[error("bad value `{value}` for `{fault}:{key}`: {reason}")]
    BadValue {
        fault: String,
        key: String,
        value: String,
        reason: &'static str,
    },
}

/// Why one `key=value` option was refused; [`FaultSet::from_str`] adds the fault's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OptError {
    UnknownKey,
    Bad(&'static str),
}

/// What every fault config does besides planning: take options, print its own.
pub(crate) trait Configure: Default + PartialEq {
    /// Applies one `key=value` option.
    fn set(&mut self, key: &str, value: &str) -> Result<(), OptError>;
    /// The options that differ from the defaults, in canonical order.
    fn options(&self) -> Vec<(&'static str, String)>;
}

/// One fault with its configuration. Serialises as `{"fault": "split", "max": 64, ...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "fault", rename_all = "snake_case")]
#[non_exhaustive]
pub enum FaultSpec {
    Split(Split),
    Boundary(Boundary),
    Coalesce(Coalesce),
    Disconnect(Disconnect),
    Latency(Latency),
    Bandwidth(Bandwidth),
    Slow(Slow),
    /// One of [`FaultSpec::roster`] per stream, picked at random.
    Mixed,
}

impl FaultSpec {
    /// The faults `mixed` chooses from, each with its default settings.
    pub fn roster() -> Vec<FaultSpec> {
        vec![
            FaultSpec::Split(Split::default()),
            FaultSpec::Boundary(Boundary::default()),
            FaultSpec::Coalesce(Coalesce::default()),
            FaultSpec::Disconnect(Disconnect {
                mode: DisconnectMode::Any,
                at: DisconnectAt::Any,
            }),
            FaultSpec::Latency(Latency::default()),
            FaultSpec::Bandwidth(Bandwidth::default()),
            FaultSpec::Slow(Slow::default()),
        ]
    }

    fn default_for(name: &str) -> Option<FaultSpec> {
        Some(match name {
            "split" => FaultSpec::Split(Split::default()),
            "boundary" => FaultSpec::Boundary(Boundary::default()),
            "coalesce" => FaultSpec::Coalesce(Coalesce::default()),
            "disconnect" => FaultSpec::Disconnect(Disconnect::default()),
            "latency" => FaultSpec::Latency(Latency::default()),
            "bandwidth" => FaultSpec::Bandwidth(Bandwidth::default()),
            "slow" => FaultSpec::Slow(Slow::default()),
            "mixed" => FaultSpec::Mixed,
            _ => return None,
        })
    }

    fn set(&mut self, key: &str, value: &str) -> Result<(), OptError> {
        match self {
            FaultSpec::Split(c) => c.set(key, value),
            FaultSpec::Boundary(c) => c.set(key, value),
            FaultSpec::Coalesce(c) => c.set(key, value),
            FaultSpec::Disconnect(c) => c.set(key, value),
            FaultSpec::Latency(c) => c.set(key, value),
            FaultSpec::Bandwidth(c) => c.set(key, value),
            FaultSpec::Slow(c) => c.set(key, value),
            FaultSpec::Mixed => Err(OptError::UnknownKey),
        }
    }

    fn options(&self) -> Vec<(&'static str, String)> {
        match self {
            FaultSpec::Split(c) => c.options(),
            FaultSpec::Boundary(c) => c.options(),
            FaultSpec::Coalesce(c) => c.options(),
            FaultSpec::Disconnect(c) => c.options(),
            FaultSpec::Latency(c) => c.options(),
            FaultSpec::Bandwidth(c) => c.options(),
            FaultSpec::Slow(c) => c.options(),
            FaultSpec::Mixed => vec![],
        }
    }

    fn as_fault(&self) -> Option<&dyn Fault> {
        Some(match self {
            FaultSpec::Split(c) => c,
            FaultSpec::Boundary(c) => c,
            FaultSpec::Coalesce(c) => c,
            FaultSpec::Disconnect(c) => c,
            FaultSpec::Latency(c) => c,
            FaultSpec::Bandwidth(c) => c,
            FaultSpec::Slow(c) => c,
            FaultSpec::Mixed => return None,
        })
    }
}

impl Fault for FaultSpec {
    fn name(&self) -> &'static str {
        self.as_fault().map_or("mixed", Fault::name)
    }

    fn plan(&self, len: usize, frames: &[FrameLayout], rng: &mut ChaCha8Rng) -> Plan {
        match self.as_fault() {
            Some(fault) => fault.plan(len, frames, rng),
            None => {
                let roster = FaultSpec::roster();
                let pick = rng.random_range(0..roster.len());
                roster[pick].plan(len, frames, rng)
            }
        }
    }
}

/// One entry of a `--faults` list: a fault and the probability it applies to a stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultEntry {
    #[serde(flatten)]
    pub spec: FaultSpec,
    /// Probability in [0, 1] that this entry applies to a given stream.
    pub p: f64,
}

/// A `--faults` list such as `split:max=64,disconnect:mode=reset:at=mid-body`.
///
/// Serialises as its canonical string (see `Display`), which parses back to the same set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct FaultSet {
    entries: Vec<FaultEntry>,
}

impl FaultSet {
    /// No fault: every stream is delivered in one piece.
    pub fn none() -> FaultSet {
        FaultSet::default()
    }

    /// A set of one fault that always applies.
    pub fn single(spec: FaultSpec) -> FaultSet {
        FaultSet {
            entries: vec![FaultEntry { spec, p: 1.0 }],
        }
    }

    /// The `mixed` profile: one random fault per stream.
    pub fn mixed() -> FaultSet {
        FaultSet::single(FaultSpec::Mixed)
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries, in list order.
    pub fn entries(&self) -> &[FaultEntry] {
        &self.entries
    }

    /// Whether some entry can end a connection early (a `disconnect`, possibly via `mixed`).
    pub fn may_disconnect(&self) -> bool {
        self.entries
            .iter()
            .any(|e| e.p > 0.0 && matches!(e.spec, FaultSpec::Disconnect(_) | FaultSpec::Mixed))
    }

    /// Draws the plan for one stream of `len` bytes with these frame layouts.
    ///
    /// Every entry draws its gate (`p`) and then its plan from `rng` in list order, so the
    /// same RNG state gives the same plan; the applicable plans are [`merge`]d.
    pub fn plan(&self, len: usize, frames: &[FrameLayout], rng: &mut ChaCha8Rng) -> Plan {
        let plans: Vec<Plan> = self
            .entries
            .iter()
            .filter_map(|e| {
                // Always draw the gate, even for p = 1, so editing one entry's p does not
                // shift the random numbers every later entry sees.
                let applies = rng.random_bool(e.p);
                let plan = e.spec.plan(len, frames, rng);
                applies.then_some(plan)
            })
            .collect();
        let plan = match plans.len() {
            0 => Plan::passthrough(len),
            1 => plans.into_iter().next().unwrap_or_default(),
            _ => merge(len, &plans),
        };
        cap_pauses(plan, MAX_PLAN_PAUSE_US)
    }
}

/// Most pause time one plan may hold (5 s): whatever the options, a connection of a
/// campaign ends in bounded time. Pauses past the budget are dropped (writes stay).
pub const MAX_PLAN_PAUSE_US: u64 = 5_000_000;

/// `plan` with its pauses kept in order until `budget_us` is spent, later ones dropped.
pub fn cap_pauses(plan: Plan, budget_us: u64) -> Plan {
    if plan.pause_us() <= budget_us {
        return plan;
    }
    let mut left = budget_us;
    let steps = plan
        .steps
        .into_iter()
        .filter_map(|s| match s {
            Step::Pause(us) | Step::Stall(us) if us > left => None,
            Step::Pause(us) | Step::Stall(us) => {
                left -= us;
                Some(s)
            }
            other => Some(other),
        })
        .collect();
    Plan::new(steps)
}

impl fmt::Display for FaultSet {
    /// The canonical list: options that differ from their defaults, in a fixed order.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.entries.is_empty() {
            return f.write_str("none");
        }
        for (i, e) in self.entries.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(e.spec.name())?;
            for (key, value) in e.spec.options() {
                write!(f, ":{key}={value}")?;
            }
            if e.p != 1.0 {
                write!(f, ":p={}", e.p)?;
            }
        }
        Ok(())
    }
}

impl FromStr for FaultSet {
    type Err = FaultSpecError;

    fn from_str(s: &str) -> Result<FaultSet, FaultSpecError> {
        let s = s.trim();
        if s.is_empty() || s == "none" {
            return Ok(FaultSet::none());
        }
        let mut entries = Vec::new();
        for entry in s.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let mut parts = entry.split(':').map(str::trim);
            let name = parts.next().unwrap_or_default();
            let mut spec =
                FaultSpec::default_for(name).ok_or_else(|| FaultSpecError::Unknown(name.into()))?;
            let mut p = None;
            let mut seen = BTreeSet::new();
            for option in parts {
                let (key, value) =
                    option
                        .split_once('=')
                        .ok_or_else(|| FaultSpecError::MalformedOption {
                            fault: name.into(),
                            option: option.into(),
                        })?;
                let (key, value) = (key.trim(), value.trim());
                if !seen.insert(key) {
                    return Err(FaultSpecError::DuplicateKey {
                        fault: name.into(),
                        key: key.into(),
                    });
                }
                let result = if key == "p" {
                    parse_probability(value).map(|v| p = Some(v))
                } else {
                    spec.set(key, value)
                };
                result.map_err(|e| match e {
                    OptError::UnknownKey => FaultSpecError::UnknownKey {
                        fault: name.into(),
                        key: key.into(),
                    },
                    OptError::Bad(reason) => FaultSpecError::BadValue {
                        fault: name.into(),
                        key: key.into(),
                        value: value.into(),
                        reason,
                    },
                })?;
            }
            entries.push(FaultEntry {
                spec,
                p: p.unwrap_or(1.0),
            });
        }
        Ok(FaultSet { entries })
    }
}

impl From<FaultSet> for String {
    fn from(set: FaultSet) -> String {
        set.to_string()
    }
}

impl TryFrom<String> for FaultSet {
    type Error = FaultSpecError;

    fn try_from(s: String) -> Result<FaultSet, FaultSpecError> {
        s.parse()
    }
}

/// A plan under construction as events at byte offsets: cuts (write boundaries),
/// pauses (before the byte at that offset) and at most one ending.
///
/// Faults describe what they want here and [`Events::into_plan`] turns it into steps;
/// it is also how [`merge`] composes plans.
#[derive(Debug, Clone, Default)]
pub struct Events {
    len: usize,
    cuts: BTreeSet<usize>,
    pauses: BTreeMap<usize, u64>,
    end: Option<(usize, Ending)>,
}

impl Events {
    /// No events yet for a stream of `len` bytes.
    pub fn new(len: usize) -> Events {
        Events {
            len,
            ..Events::default()
        }
    }

    /// Ends a write before the byte at `offset` (cuts at 0 or at/after the end are no-ops).
    pub fn cut(&mut self, offset: usize) -> &mut Events {
        if offset > 0 && offset < self.len {
            self.cuts.insert(offset);
        }
        self
    }

    /// Waits `us` before the byte at `offset` (added to any pause already there).
    pub fn pause(&mut self, offset: usize, us: u64) -> &mut Events {
        if us > 0 {
            let slot = self.pauses.entry(offset.min(self.len)).or_insert(0);
            *slot = slot.saturating_add(us);
        }
        self
    }

    /// Cuts and pauses before the byte at `offset`.
    pub fn cut_with_pause(&mut self, offset: usize, us: u64) -> &mut Events {
        if offset > 0 && offset < self.len {
            self.cut(offset).pause(offset, us);
        }
        self
    }

    /// Ends the connection after `offset` bytes; the earliest ending wins, and a reset
    /// beats a close at the same offset.
    pub fn end(&mut self, offset: usize, how: Ending) -> &mut Events {
        let offset = offset.min(self.len);
        let wins = match self.end {
            None => true,
            Some((at, prev)) => {
                offset < at || (offset == at && how == Ending::Reset && prev == Ending::Close)
            }
        };
        if wins {
            self.end = Some((offset, how));
        }
        self
    }

    /// Adds every event of `plan` (offsets counted by its `Write`/`Read` steps).
    pub fn add_plan(&mut self, plan: &Plan) -> &mut Events {
        let mut at = 0usize;
        for step in &plan.steps {
            match *step {
                Step::Write(n) | Step::Read(n) => {
                    at = at.saturating_add(n).min(self.len);
                    self.cut(at);
                }
                Step::Pause(us) | Step::Stall(us) => {
                    self.pause(at, us);
                }
                Step::Close => {
                    self.end(at, Ending::Close);
                    break;
                }
                Step::Reset => {
                    self.end(at, Ending::Reset);
                    break;
                }
            }
        }
        self
    }

    /// The plan: a write per segment between cuts, each preceded by its pause, then the
    /// ending. Bytes after the ending are never written.
    pub fn into_plan(self) -> Plan {
        let stop = self.end.map_or(self.len, |(at, _)| at);
        let mut steps = Vec::with_capacity(self.cuts.len() * 2 + 3);
        let mut at = 0;
        // `max(1)`: an empty range when the ending is at 0 (BTreeSet::range panics on 1..0).
        for pos in self.cuts.range(1..stop.max(1)).copied().chain([stop]) {
            if let Some(&us) = self.pauses.get(&at) {
                steps.push(Step::Pause(us));
            }
            if pos > at {
                steps.push(Step::Write(pos - at));
            }
            at = pos;
        }
        if stop > 0 {
            // A pause after the last byte delays the ending (or the end of the stream).
            if let Some(&us) = self.pauses.get(&stop) {
                steps.push(Step::Pause(us));
            }
        }
        match self.end {
            Some((_, Ending::Close)) => steps.push(Step::Close),
            Some((_, Ending::Reset)) => steps.push(Step::Reset),
            None => {}
        }
        Plan::new(steps)
    }
}

/// Composes plans for one stream of `len` bytes (see the module docs): union of cuts,
/// pauses kept at their offsets, earliest close/reset wins.
pub fn merge(len: usize, plans: &[Plan]) -> Plan {
    let mut events = Events::new(len);
    for plan in plans {
        events.add_plan(plan);
    }
    events.into_plan()
}

/// Random cut offsets strictly inside `0..len`: how frame-aware faults degrade when the
/// framing is unknown.
pub(crate) fn random_cuts(len: usize, count: usize, rng: &mut ChaCha8Rng) -> Vec<usize> {
    if len < 2 {
        return vec![];
    }
    (0..count).map(|_| rng.random_range(1..len)).collect()
}

pub(crate) fn parse_probability(value: &str) -> Result<f64, OptError> {
    let p: f64 = value
        .parse()
        .map_err(|_| OptError::Bad("expected a probability between 0 and 1"))?;
    if (0.0..=1.0).contains(&p) {
        Ok(p)
    } else {
        Err(OptError::Bad("expected a probability between 0 and 1"))
    }
}

pub(crate) fn parse_pause(value: &str) -> Result<u64, OptError> {
    let us: u64 = value
        .parse()
        .map_err(|_| OptError::Bad("expected microseconds"))?;
    if us > MAX_PAUSE_US {
        return Err(OptError::Bad("a pause is at most 10 s (10000000 us)"));
    }
    Ok(us)
}

/// A count in `min..=max`.
pub(crate) fn parse_count(value: &str, min: usize, max: usize) -> Result<usize, OptError> {
    let n: usize = value
        .parse()
        .map_err(|_| OptError::Bad("expected a whole number"))?;
    if n < min || n > max {
        return Err(OptError::Bad("out of range"));
    }
    Ok(n)
}

pub(crate) fn parse_bool(value: &str) -> Result<bool, OptError> {
    match value {
        "true" | "yes" | "1" => Ok(true),
        "false" | "no" | "0" => Ok(false),
        _ => Err(OptError::Bad("expected true or false")),
    }
}

#[cfg(test)]
mod tests;
