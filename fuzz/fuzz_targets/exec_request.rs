#![no_main]
//! See `chopstick_targets::fuzzing::exec_request` for what this target asserts.

use libfuzzer_sys::fuzz_target;
use chopstick_targets::fuzzing::{exec_request, ExecRequestInput};

fuzz_target!(|input: ExecRequestInput| exec_request(input));
