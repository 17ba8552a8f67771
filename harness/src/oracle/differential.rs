//! `differential` (`--oracle differential`): each reply equals the reply the same
//! server gives to the same request on an unfaulted connection (a baseline run), so a
//! server whose replies chopstick cannot predict can still be checked.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;

use super::{no_config, Baseline, Oracle, OracleError, Probe};
use crate::campaign::drive::Fin;
use crate::campaign::judge::{self, Failure, Seen};

/// The differential oracle.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Differential;

impl Differential {
    pub fn build(config: Option<&Value>) -> Result<Arc<dyn Oracle>, OracleError> {
        no_config("differential", config)?;
        Ok(Arc::new(Differential))
    }
}

impl Oracle for Differential {
    fn name(&self) -> &str {
        "differential"
    }

    /// Only the baselines know; the campaign asks [`Baseline::judge`] instead.
    fn expected(&self, _conn: u64, _messages: &[Bytes]) -> Vec<Bytes> {
        Vec::new()
    }

    // Any reply proves the server still serves: what it should be is unknown.
    fn probe(&self, _session: &[Bytes]) -> Probe {
        Probe {
            message: Bytes::from_static(super::PROBE_MESSAGE),
            reply: None,
            fin: Fin::Never,
        }
    }

    fn baseline(&self) -> Option<&dyn Baseline> {
        Some(self)
    }
}

impl Baseline for Differential {
    fn runs(&self) -> (usize, usize) {
        (1, 0)
    }

    fn judge(
        &self,
        baselines: &[Seen],
        seen: &Seen,
        must_finish: bool,
    ) -> (Vec<Bytes>, Option<Failure>) {
        let expected = baselines
            .first()
            .map(|b| b.replies.clone())
            .unwrap_or_default();
        let failure = judge::judge(&expected, seen, must_finish);
        (expected, failure)
    }
}
