#![no_main]
//! See `chopstick_targets::fuzzing::frame_decode` for what this target asserts.

use chopstick_fuzz::frame_decode;
use chopstick_targets::fuzzing::FrameDecodeInput;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: FrameDecodeInput| frame_decode(input));
