//! Datagram faults: the parsed `--faults` list for UDP, and the [`Fate`] it gives each
//! datagram.
//!
//! Grammar: comma-separated items, each `name` or `name:key=value:key=value`:
//!
//! | item | default | effect on each datagram |
//! |---|---|---|
//! | `loss:p=P` | `p=0.1` | dropped with probability P |
//! | `dup:p=P` | `p=0.05` | a surviving datagram is sent twice with probability P |
//! | `reorder:window=W:p=P` | `window=4:p=0.2` | with probability P held back until 1..W-1 later datagrams have passed |
//! | `delay:us=D:jitter_us=J` | `us=1000:jitter_us=500` | delivered after D ± J microseconds (uniform, at least 0) |
//! | `truncate:size=N` | `size=512` | every datagram longer than N is cut to N bytes |
//!
//! A fate is a pure function of (seed, direction, datagram index): each datagram draws
//! from its own ChaCha stream ([`conn_rng`] with the index as the "connection"), and
//! always draws the same five numbers whatever faults are enabled. So datagram 7's fate
//! depends on nothing sent before it, and adding `delay` to a list does not change which
//! datagrams `loss` drops. Fates serialise, so reproducers store them as data.

use std::fmt;
use std::str::FromStr;

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::chaos::{conn_rng, Direction};

/// What happens to one datagram.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Fate {
    /// Copies delivered: 0 = lost, 1 = normal, 2 = duplicated.
    pub copies: u8,
    /// Held back until this many later datagrams have passed (0 = in order).
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub hold: u32,
    /// Delivered this many microseconds after it arrived.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub delay_us: u64,
    /// Cut to at most this many bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncate_to: Option<usize>,
}

fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}
fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}

impl Fate {
    /// Delivered once, unchanged, at once.
    pub const CLEAN: Fate = Fate {
        copies: 1,
        hold: 0,
        delay_us: 0,
        truncate_to: None,
    };

    /// Whether a datagram of `len` bytes is actually cut by this fate.
    pub fn cuts(&self, len: usize) -> bool {
        self.copies > 0 && self.truncate_to.is_some_and(|n| len > n)
    }
}

/// A parsed datagram `--faults` list. Absent faults are `None`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DatagramFaults {
    pub loss: Option<f64>,
    pub dup: Option<f64>,
    /// `(window, p)`.
    pub reorder: Option<(u32, f64)>,
    /// `(us, jitter_us)`.
    pub delay: Option<(u64, u64)>,
    pub truncate: Option<usize>,
}

/// A datagram `--faults` list that cannot be honoured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DatagramFaultError {
    #[error("unknown datagram fault `{0}` (expected loss, dup, reorder, delay or truncate)")]
    UnknownFault(String),
    #[error("fault `{fault}` has no parameter `{key}`")]
    UnknownKey { fault: String, key: String },
    #[error("fault `{fault}`: parameter `{item}` is not key=value")]
    NotKeyValue { fault: String, item: String },
    #[error("fault `{fault}`: `{key}={value}` {reason}")]
    BadValue {
        fault: String,
        key: String,
        value: String,
        reason: &'static str,
    },
    #[error("fault `{0}` is listed twice")]
    Repeated(String),
}

impl DatagramFaults {
    pub fn none() -> DatagramFaults {
        DatagramFaults::default()
    }

    pub fn is_empty(&self) -> bool {
        *self == DatagramFaults::default()
    }

    /// The fate of datagram `index` travelling in `dir` in a run seeded with `seed`.
    pub fn fate(&self, seed: u64, dir: Direction, index: u64) -> Fate {
        let mut rng = conn_rng(seed, index, dir);
        // Always draw all five, in this order, so faults are independent of each other.
        let u_loss: f64 = rng.random();
        let u_dup: f64 = rng.random();
        let u_reorder: f64 = rng.random();
        let u_hold: u32 = rng.random();
        let u_jitter: f64 = rng.random();
        let lost = self.loss.is_some_and(|p| u_loss < p);
        let dup = !lost && self.dup.is_some_and(|p| u_dup < p);
        let hold = match self.reorder {
            Some((window, p)) if !lost && u_reorder < p => {
                1 + u_hold % window.saturating_sub(1).max(1)
            }
            _ => 0,
        };
        let delay_us = match self.delay {
            Some((us, jitter)) => {
                // Uniform in [us - jitter, us + jitter], floored at zero.
                let offset = (u_jitter * (2 * jitter + 1) as f64) as u64;
                (us + offset.min(2 * jitter)).saturating_sub(jitter)
            }
            None => 0,
        };
        Fate {
            copies: if lost {
                0
            } else if dup {
                2
            } else {
                1
            },
            hold,
            delay_us,
            truncate_to: self.truncate,
        }
    }
}

fn prob(fault: &str, key: &str, value: &str) -> Result<f64, DatagramFaultError> {
    let bad = |reason| DatagramFaultError::BadValue {
        fault: fault.into(),
        key: key.into(),
        value: value.into(),
        reason,
    };
    let p: f64 = value.parse().map_err(|_| bad("is not a number"))?;
    if !(0.0..=1.0).contains(&p) {
        return Err(bad("must be a probability in 0..=1"));
    }
    Ok(p)
}

fn int<T: FromStr>(fault: &str, key: &str, value: &str) -> Result<T, DatagramFaultError> {
    value.parse().map_err(|_| DatagramFaultError::BadValue {
        fault: fault.into(),
        key: key.into(),
        value: value.into(),
        reason: "is not a non-negative integer",
    })
}

impl FromStr for DatagramFaults {
    type Err = DatagramFaultError;

    /// Parses the grammar in the module docs. An empty string or `none` is no fault.
    fn from_str(s: &str) -> Result<DatagramFaults, DatagramFaultError> {
        let mut f = DatagramFaults::default();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let mut parts = item.split(':');
            let name = parts.next().unwrap_or_default();
            if name == "none" {
                continue;
            }
            let mut params = Vec::new();
            for kv in parts {
                let (k, v) = kv
                    .split_once('=')
                    .ok_or_else(|| DatagramFaultError::NotKeyValue {
                        fault: name.into(),
                        item: kv.into(),
                    })?;
                params.push((k, v));
            }
            let unknown = |key: &str| DatagramFaultError::UnknownKey {
                fault: name.into(),
                key: key.into(),
            };
            let repeated = |set: bool| {
                if set {
                    Err(DatagramFaultError::Repeated(name.into()))
                } else {
                    Ok(())
                }
            };
            match name {
                "loss" | "dup" => {
                    let mut p = if name == "loss" { 0.1 } else { 0.05 };
                    for (k, v) in params {
                        match k {
                            "p" => p = prob(name, k, v)?,
                            _ => return Err(unknown(k)),
                        }
                    }
                    let slot = if name == "loss" {
                        &mut f.loss
                    } else {
                        &mut f.dup
                    };
                    repeated(slot.is_some())?;
                    *slot = Some(p);
                }
                "reorder" => {
                    let (mut window, mut p) = (4u32, 0.2);
                    for (k, v) in params {
                        match k {
                            "p" => p = prob(name, k, v)?,
                            "window" => window = int(name, k, v)?,
                            _ => return Err(unknown(k)),
                        }
                    }
                    if window < 2 {
                        return Err(DatagramFaultError::BadValue {
                            fault: name.into(),
                            key: "window".into(),
                            value: window.to_string(),
                            reason: "must be at least 2 (a window of 1 cannot reorder)",
                        });
                    }
                    repeated(f.reorder.is_some())?;
                    f.reorder = Some((window, p));
                }
                "delay" => {
                    let (mut us, mut jitter) = (1000u64, 500u64);
                    for (k, v) in params {
                        match k {
                            "us" => us = int(name, k, v)?,
                            "jitter_us" => jitter = int(name, k, v)?,
                            _ => return Err(unknown(k)),
                        }
                    }
                    // Bounded so a typo cannot park datagrams for hours.
                    if us > 10_000_000 || jitter > 10_000_000 {
                        return Err(DatagramFaultError::BadValue {
                            fault: name.into(),
                            key: "us".into(),
                            value: format!("{us}/{jitter}"),
                            reason: "must be at most 10 s",
                        });
                    }
                    repeated(f.delay.is_some())?;
                    f.delay = Some((us, jitter));
                }
                "truncate" => {
                    let mut size = 512usize;
                    for (k, v) in params {
                        match k {
                            "size" => size = int(name, k, v)?,
                            _ => return Err(unknown(k)),
                        }
                    }
                    repeated(f.truncate.is_some())?;
                    f.truncate = Some(size);
                }
                other => return Err(DatagramFaultError::UnknownFault(other.into())),
            }
        }
        Ok(f)
    }
}

impl fmt::Display for DatagramFaults {
    /// The canonical list, which parses back to the same value (`none` if empty).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut items = Vec::new();
        if let Some(p) = self.loss {
            items.push(format!("loss:p={p}"));
        }
        if let Some(p) = self.dup {
            items.push(format!("dup:p={p}"));
        }
        if let Some((w, p)) = self.reorder {
            items.push(format!("reorder:window={w}:p={p}"));
        }
        if let Some((us, j)) = self.delay {
            items.push(format!("delay:us={us}:jitter_us={j}"));
        }
        if let Some(n) = self.truncate {
            items.push(format!("truncate:size={n}"));
        }
        if items.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&items.join(","))
        }
    }
}

impl Serialize for DatagramFaults {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DatagramFaults {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<DatagramFaults, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_examples_parse_and_print_back() {
        let s = "loss:p=0.1,dup:p=0.05,reorder:window=4:p=0.2,delay:us=1000:jitter_us=500,truncate:size=512";
        let f: DatagramFaults = s.parse().unwrap();
        assert_eq!(f.loss, Some(0.1));
        assert_eq!(f.reorder, Some((4, 0.2)));
        assert_eq!(f.delay, Some((1000, 500)));
        assert_eq!(f.truncate, Some(512));
        assert_eq!(f.to_string(), s);
        assert_eq!(f.to_string().parse::<DatagramFaults>().unwrap(), f);
        let bare: DatagramFaults = "loss,truncate".parse().unwrap();
        assert_eq!((bare.loss, bare.truncate), (Some(0.1), Some(512)));
        assert!("".parse::<DatagramFaults>().unwrap().is_empty());
        assert_eq!(DatagramFaults::none().to_string(), "none");
    }

    #[test]
    fn bad_lists_are_typed_errors() {
        use DatagramFaultError::*;
        let err = |s: &str| s.parse::<DatagramFaults>().unwrap_err();
        assert!(matches!(err("split"), UnknownFault(_)));
        assert!(matches!(err("loss:q=1"), UnknownKey { .. }));
        assert!(matches!(err("loss:p"), NotKeyValue { .. }));
        assert!(matches!(err("loss:p=1.5"), BadValue { .. }));
        assert!(matches!(err("loss:p=x"), BadValue { .. }));
        assert!(matches!(err("reorder:window=1"), BadValue { .. }));
        assert!(matches!(err("truncate:size=-3"), BadValue { .. }));
        assert!(matches!(err("delay:us=99999999999"), BadValue { .. }));
        assert!(matches!(err("loss,loss:p=0.2"), Repeated(_)));
    }

    #[test]
    fn fates_are_pure_functions_of_seed_and_index() {
        let f: DatagramFaults = "loss:p=0.3,dup:p=0.3,reorder:window=4:p=0.3"
            .parse()
            .unwrap();
        let a: Vec<Fate> = (0..200).map(|i| f.fate(9, Direction::Up, i)).collect();
        let b: Vec<Fate> = (0..200)
            .rev()
            .map(|i| f.fate(9, Direction::Up, i))
            .collect();
        assert!(
            a.iter().eq(b.iter().rev()),
            "order of drawing does not matter"
        );
        assert_ne!(
            a,
            (0..200)
                .map(|i| f.fate(10, Direction::Up, i))
                .collect::<Vec<_>>()
        );
        assert!(a.iter().all(|x| x.hold < 4 && x.copies <= 2));
        assert!(a.iter().filter(|x| x.copies == 0).all(|x| x.hold == 0));
    }

    #[test]
    fn adding_a_fault_does_not_change_which_datagrams_another_drops() {
        let loss: DatagramFaults = "loss:p=0.2".parse().unwrap();
        let more: DatagramFaults = "loss:p=0.2,delay,reorder".parse().unwrap();
        for i in 0..500 {
            assert_eq!(
                loss.fate(1, Direction::Down, i).copies,
                more.fate(1, Direction::Down, i).copies
            );
        }
    }

    #[test]
    fn delay_stays_within_jitter_bounds() {
        let f: DatagramFaults = "delay:us=100:jitter_us=300".parse().unwrap();
        let delays: Vec<u64> = (0..2000)
            .map(|i| f.fate(3, Direction::Up, i).delay_us)
            .collect();
        assert!(delays.iter().all(|d| *d <= 400));
        assert!(delays.contains(&0), "negative delays floor at zero");
        assert!(delays.iter().any(|d| *d > 350));
    }
}
