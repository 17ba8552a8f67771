#![no_main]
//! See `chopstick::fuzzing::frame_roundtrip` for what this target asserts.

use chopstick::fuzzing::{frame_roundtrip, FrameRoundtripInput};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: FrameRoundtripInput| frame_roundtrip(input));
