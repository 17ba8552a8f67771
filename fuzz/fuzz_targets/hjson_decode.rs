#![no_main]
//! See `chopstick_targets::fuzzing::hjson_decode` for what this target asserts.

use chopstick_fuzz::hjson_decode;
use chopstick_targets::fuzzing::HjsonDecodeInput;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: HjsonDecodeInput| hjson_decode(input));
