#![no_main]
//! See `targets::fuzzing::frame_decode` for what this target asserts.

use libfuzzer_sys::fuzz_target;
use targets::fuzzing::{frame_decode, FrameDecodeInput};

fuzz_target!(|input: FrameDecodeInput| frame_decode(input));
