#![no_main]
//! See `targets::fuzzing::file_request` for what this target asserts.

use libfuzzer_sys::fuzz_target;
use targets::fuzzing::{file_request, FileRequestInput};

fuzz_target!(|input: FileRequestInput| file_request(input));
