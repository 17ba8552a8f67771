//! The chaos engine: seeded, frame-aware plans for splitting, coalescing and cutting a
//! byte stream, and the executors that carry them out.
//!
//! - [`plan`]: plans as data (`write`, `pause`, `close`, `reset`, `read`, `stall`).
//! - [`faults`] (one per file, behind [`Fault`]): turn a stream and its frame layouts into a
//!   plan; [`FaultSet`] is a parsed `--faults` list.
//! - [`seed`]: master seed -> per-connection ChaCha RNGs.
//! - [`stream`]: [`ChaosStream`], which plays plans in-process on any async stream.
//! - [`tcp`]: plans executed over a real `TcpStream` (NODELAY, one write per chunk,
//!   pauses, FIN or RST).

pub mod faults;
pub mod peer_queue;
pub mod plan;
pub mod seed;
pub mod stream;
pub mod tcp;

pub use faults::{FaultSet, FaultSpec, FaultSpecError};
pub use plan::{Ending, Plan, PlanParseError, Step};
pub use seed::{conn_rng, purpose_rng, Direction};
pub use stream::ChaosStream;

use chopstick_targets::wire::FrameLayout;
use rand_chacha::ChaCha8Rng;

/// A fault turns one direction's byte stream into a plan.
///
/// `len` is the stream length and `frames` the layouts of the frames in it (absolute
/// offsets; empty when the framing is unknown). A fault never drops or reorders bytes:
/// the plan's writes add up to `len`, unless it ends the connection early.
pub trait Fault: Send + Sync + std::fmt::Debug {
    /// The fault's name as used in `--faults` lists.
    fn name(&self) -> &'static str;

    /// Draws a plan for this stream from `rng`.
    fn plan(&self, len: usize, frames: &[FrameLayout], rng: &mut ChaCha8Rng) -> Plan;
}
