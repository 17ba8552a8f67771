//! [`UdpCheckError`]: why a UDP check or replay could not run at all.

use super::target::UdpTargetError;
use crate::repro_file::ReproFileError;

/// Why a check could not run (a usage or environment error, not a finding).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UdpCheckError {
    #[error(transparent)]
    Target(#[from] UdpTargetError),
    #[error("bad check configuration: {0}")]
    Config(String),
    #[error("socket error: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Repro(#[from] ReproFileError),
}
