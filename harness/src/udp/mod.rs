//! UDP: datagram chaos and the datagram check.
//!
//! - [`fault`]: the datagram `--faults` list (loss, dup, reorder, delay, truncate) and
//!   the seeded [`Fate`] of each datagram, plans as data.
//! - [`shaper`]: carries fates out in time; shared by everything below.
//! - [`channel`]: an in-process datagram channel with faults.
//! - [`relay`]: `chopstick proxy --udp`, a relay between real sockets.
//! - [`target`]: a UDP target to reach or spawn.
//! - [`check`]: `chopstick check --udp`, the oracles and the report.
//! - [`repro`]: reproducer files and replay.

pub mod channel;
pub mod check;
pub mod fault;
pub mod relay;
pub mod repro;
pub mod shaper;
pub mod target;

pub use check::{
    run_check, FailureKind, FaultCounts, UdpCheckConfig, UdpCheckError, UdpCheckReport, UdpFailure,
    UdpOracle,
};
pub use fault::{DatagramFaultError, DatagramFaults, Fate};
pub use relay::{FaultDirection, RelayConfig, RelayError, RelaySnapshot, RelayStats};
pub use repro::{replay, UdpReplayOutcome, UdpReproError, UdpReproducer};
pub use shaper::Applied;
pub use target::{UdpTarget, UdpTargetError};
