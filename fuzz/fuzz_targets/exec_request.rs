#![no_main]
//! See `targets::fuzzing::exec_request` for what this target asserts.

use libfuzzer_sys::fuzz_target;
use targets::fuzzing::{exec_request, ExecRequestInput};

fuzz_target!(|input: ExecRequestInput| exec_request(input));
