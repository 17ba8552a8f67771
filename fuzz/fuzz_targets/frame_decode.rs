#![no_main]
//! See `chopstick_targets::fuzzing::frame_decode` for what this target asserts.

use libfuzzer_sys::fuzz_target;
use chopstick_targets::fuzzing::{frame_decode, FrameDecodeInput};

fuzz_target!(|input: FrameDecodeInput| frame_decode(input));
