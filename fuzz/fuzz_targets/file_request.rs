#![no_main]
//! See `chopstick_targets::fuzzing::file_request` for what this target asserts.

use chopstick_fuzz::file_request;
use chopstick_targets::fuzzing::FileRequestInput;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: FileRequestInput| file_request(input));
