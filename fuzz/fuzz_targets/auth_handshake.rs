#![no_main]
//! See `chopstick_targets::fuzzing::auth_handshake` for what this target asserts.

use chopstick_targets::fuzzing::{auth_handshake, AuthHandshakeInput};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: AuthHandshakeInput| auth_handshake(input));
