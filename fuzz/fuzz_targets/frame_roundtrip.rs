#![no_main]
//! See `harness::fuzzing::frame_roundtrip` for what this target asserts.

use harness::fuzzing::{frame_roundtrip, FrameRoundtripInput};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: FrameRoundtripInput| frame_roundtrip(input));
