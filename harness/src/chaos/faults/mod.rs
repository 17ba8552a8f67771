//! Faults, one per file, and [`FaultSet`]: the parsed `--faults` list.
//!
//! SKELETON: the fault bodies and the list grammar are being implemented (issue 3).
//! The `FaultSet` API below (FromStr, `plan`) is what the proxy and campaigns use.

use std::str::FromStr;

use rand_chacha::ChaCha8Rng;
use targets::wire::FrameLayout;

use super::Plan;

/// A `--faults` list such as `split:max=64,disconnect:mode=reset:at=mid-body`.
#[derive(Debug, Default)]
pub struct FaultSet {
    names: Vec<String>,
}

/// A `--faults` list that cannot be honoured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FaultSpecError {
    #[error("unknown fault `{0}`")]
    Unknown(String),
}

impl FaultSet {
    /// No fault: every stream is delivered in one piece.
    pub fn none() -> FaultSet {
        FaultSet::default()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Draws the plan for one stream of `len` bytes with these frame layouts.
    pub fn plan(&self, len: usize, _frames: &[FrameLayout], _rng: &mut ChaCha8Rng) -> Plan {
        Plan::passthrough(len)
    }
}

impl FromStr for FaultSet {
    type Err = FaultSpecError;

    fn from_str(s: &str) -> Result<FaultSet, FaultSpecError> {
        Ok(FaultSet {
            names: s
                .split(',')
                .filter(|n| !n.is_empty())
                .map(str::to_string)
                .collect(),
        })
    }
}
