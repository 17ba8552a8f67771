//! chopstick's library: the chaos engine, campaigns, oracles and reports behind the
//! `chopstick` binary.
//!
//! - [`builder`]: [`Check`], a campaign in a few lines (defaults for everything but the target).
//! - [`chaos`]: plans, faults, seeds and `ChaosStream` — how bytes are split, merged and cut.
//! - [`codec`]: check your own `tokio_util::codec` decoder under chaos, with proptest.
//! - [`bench`](mod@bench): `chopstick bench`, throughput and server CPU per fragmentation profile.
//! - [`campaign`]: drive real servers, judge replies, check liveness, shrink, reproduce.
//! - [`oracle`]: what a right reply is: the `Oracle` trait, one file per oracle, the registry.
//! - [`workload`]: the seeded messages a campaign sends.
//! - [`proxy`]: `chopstick proxy`, a TCP relay applying plans to either direction.
//! - [`report`]: summary table, JSON and JUnit.
//! - [`traffic`]: recorded traffic (`proxy --record`) and request corpora as session templates.
//! - [`repro_file`]: reading and writing reproducer files, TCP and UDP alike.
//! - [`udp`]: datagram faults, the UDP relay and `check --udp`.

pub mod bench;
pub mod builder;
pub mod campaign;
pub mod chaos;
pub mod codec;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod oracle;
pub mod proxy;
pub mod report;
pub mod repro_file;
pub mod soak;
pub mod traffic;
pub mod udp;
pub mod workload;

pub use builder::{Check, Target};
pub use oracle::codec::Codec;

// The README's Rust examples run as doctests (`cargo test --doc`), so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
