//! chopstick's library: the chaos engine, campaigns, oracles and reports behind the
//! `chopstick` binary.

pub mod chaos;
pub mod udp;
