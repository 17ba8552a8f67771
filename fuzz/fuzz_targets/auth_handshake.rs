#![no_main]
//! See `targets::fuzzing::auth_handshake` for what this target asserts.

use libfuzzer_sys::fuzz_target;
use targets::fuzzing::{auth_handshake, AuthHandshakeInput};

fuzz_target!(|input: AuthHandshakeInput| auth_handshake(input));
