#![no_main]
//! See `chopstick_targets::fuzzing::server_session` for what this target asserts.

use chopstick_targets::fuzzing::{server_session, ServerSessionInput};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: ServerSessionInput| server_session(input));
