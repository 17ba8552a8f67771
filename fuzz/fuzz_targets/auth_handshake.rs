#![no_main]
//! See `chopstick_targets::fuzzing::auth_handshake` for what this target asserts.

use libfuzzer_sys::fuzz_target;
use chopstick_targets::fuzzing::{auth_handshake, AuthHandshakeInput};

fuzz_target!(|input: AuthHandshakeInput| auth_handshake(input));
