//! What the cargo-fuzz targets in `fuzz_targets/` call: the bodies in
//! `chopstick_targets::fuzzing` and `chopstick::fuzzing`, or, built with the
//! `planted-bugs` feature and run with `CHOPSTICK_PLANTED=NAME`, the same checks on a
//! copy of the code under test with that bug ([`planted`], used by `planted.sh`).

#[cfg(feature = "planted-bugs")]
pub mod planted;

use chopstick_targets::fuzzing::{
    self as bodies, ExecRequestInput, FileRequestInput, FrameDecodeInput, HjsonDecodeInput,
};
#[cfg(feature = "planted-bugs")]
use planted::{chosen, Bug};

/// `frame_decode`: every framing's decoder under chunking, cuts and EOF.
pub fn frame_decode(input: FrameDecodeInput) {
    #[cfg(feature = "planted-bugs")]
    if chosen().is_some() {
        return bodies::frame_decode_with(input, planted::frame_codec);
    }
    bodies::frame_decode(input)
}

/// `hjson_decode`: the header-JSON decoder.
pub fn hjson_decode(input: HjsonDecodeInput) {
    #[cfg(feature = "planted-bugs")]
    if chosen().is_some() {
        return bodies::hjson_decode_with(input, planted::hjson_codec);
    }
    bodies::hjson_decode(input)
}

/// `exec_request`: the exec request parser and validator.
pub fn exec_request(input: ExecRequestInput) {
    #[cfg(feature = "planted-bugs")]
    if chosen() == Some(Bug::ExecNul) {
        return bodies::exec_request_with(input, planted::parse_exec_request);
    }
    bodies::exec_request(input)
}

/// `file_request`: the file name validator.
pub fn file_request(input: FileRequestInput) {
    #[cfg(feature = "planted-bugs")]
    if chosen() == Some(Bug::FileDotDot) {
        return bodies::file_request_with(input, planted::validate_name);
    }
    bodies::file_request(input)
}
