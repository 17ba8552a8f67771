#![no_main]
//! See `chopstick_targets::fuzzing::exec_request` for what this target asserts.

use chopstick_fuzz::exec_request;
use chopstick_targets::fuzzing::ExecRequestInput;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: ExecRequestInput| exec_request(input));
