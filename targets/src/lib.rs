//! Wire formats and hardened reference servers for chopstick.
//!
//! - [`wire`]: framing specs (`u32be`, `i32le`, `line`, `hjson`, ...) and their codecs.
//! - [`activity`]: when bytes last moved on a connection (idle timeout, slow senders).
//! - [`memory`]: the server-wide memory budget (`--max-memory`).
//! - [`server`]: what every reference server shares: listener setup, connection limit,
//!   idle timeout, counters, graceful shutdown.
//! - [`echo`], [`exec`], [`file`](mod@file), [`auth`]: the reference servers, each a
//!   `run(listener, config, shutdown)` future and a `serve_conn(stream, config)` for one
//!   connection (auth runs the inner protocol's `serve_conn` after its handshake).

pub mod activity;
pub mod auth;
pub mod echo;
pub mod exec;
pub mod file;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod memory;
pub mod server;
pub mod udp;
pub mod wire;
