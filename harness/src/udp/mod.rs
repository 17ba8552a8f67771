//! UDP: datagram chaos and the datagram check.
//!
//! - [`fault`]: the datagram `--faults` list (loss, dup, reorder, delay, truncate) and
//!   the seeded [`Fate`] of each datagram, plans as data.
//! - [`shaper`]: carries fates out in time; shared by everything below.
//! - [`channel`]: an in-process datagram channel with faults.
//! - [`relay`]: `chopstick proxy --udp`, a relay between real sockets.
//! - [`target`]: a UDP target to reach or spawn.
//! - [`exchange`]: one run of tagged requests through the faults to a target, and what came back.
//! - [`judge`]: the oracles, request tags and failure kinds; judging one exchange.
//! - [`check`]: `chopstick check --udp`: requests, exchange, judge, shrink, the report.
//! - [`repro`]: reproducer files and replay.
//! - [`error`]: why a check or replay cannot run.
//!
//! `check` and `repro` both build on `exchange` and `judge` and never import each other's
//! internals (`check` writes a `repro` file; `repro` knows nothing of `check`).

pub mod channel;
pub mod check;
pub mod error;
pub mod exchange;
pub mod fault;
pub mod judge;
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
