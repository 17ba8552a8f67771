#![no_main]
//! See `chopstick_targets::fuzzing::server_session` for what this target asserts.

use libfuzzer_sys::fuzz_target;
use chopstick_targets::fuzzing::{server_session, ServerSessionInput};

fuzz_target!(|input: ServerSessionInput| server_session(input));
