#![no_main]
//! See `chopstick_targets::fuzzing::file_request` for what this target asserts.

use libfuzzer_sys::fuzz_target;
use chopstick_targets::fuzzing::{file_request, FileRequestInput};

fuzz_target!(|input: FileRequestInput| file_request(input));
