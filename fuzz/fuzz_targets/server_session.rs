#![no_main]
//! See `targets::fuzzing::server_session` for what this target asserts.

use libfuzzer_sys::fuzz_target;
use targets::fuzzing::{server_session, ServerSessionInput};

fuzz_target!(|input: ServerSessionInput| server_session(input));
