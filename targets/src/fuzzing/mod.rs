//! Bodies of the cargo-fuzz targets in `fuzz/` (feature `fuzzing`).
//!
//! Each `fuzz/fuzz_targets/NAME.rs` is a thin `fuzz_target!(|input: Input| body(input))`;
//! the bodies live here so they are type-checked, linted and tested with the rest of the
//! crate, and `tests/fuzz_corpus.rs` replays every committed corpus and regression file
//! through them on stable, decoding each file exactly as libfuzzer-sys does
//! ([`run_as_libfuzzer`]).
//!
//! Inputs are a fixed-size header of small integers (derived [`Arbitrary`]) followed by
//! the raw [`Rest`] of the file, so a seed can be written by hand ([`seeds`]) and a crash
//! file can be read with `xxd`. A body returns normally for any input its code under test
//! handles correctly and panics (a libFuzzer crash) on a broken invariant.
//!
//! The `*_with` forms run a body's checks on a stand-in for the code under test: `fuzz/`
//! keeps copies of these decoder and validator paths with one known bug each
//! (`fuzz/src/planted.rs`) and `fuzz/planted.sh` shows each is found. The copies live
//! there, never in this crate.

mod frames;
mod requests;
mod session;

pub use arbitrary;
use arbitrary::{Arbitrary, Unstructured};

pub use frames::{
    frame_decode, frame_decode_with, hjson_decode, hjson_decode_with, FrameDecodeInput,
    HjsonDecodeInput, SpecInput, KINDS,
};
pub use requests::{
    exec_request, exec_request_with, file_request, file_request_with, Accepted, ExecRequestInput,
    FileRequestInput, ParseExec, ValidateName,
};
pub use session::{auth_handshake, server_session, AuthHandshakeInput, ServerSessionInput};

/// The raw tail of an input: every byte left after the fixed-size header.
///
/// Unlike `Vec<u8>` (whose `arbitrary_take_rest` interleaves "one more?" flags with the
/// bytes), the tail is taken as is, so a seed is its header followed by plain bytes.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Rest(pub Vec<u8>);

impl std::fmt::Debug for Rest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Rest({:?})", bytes::Bytes::copy_from_slice(&self.0))
    }
}

impl<'a> Arbitrary<'a> for Rest {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let len = u.arbitrary_len::<u8>()?;
        Ok(Rest(u.bytes(len)?.to_vec()))
    }

    fn arbitrary_take_rest(u: Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(Rest(u.take_rest().to_vec()))
    }

    fn size_hint(_depth: usize) -> (usize, Option<usize>) {
        (0, None)
    }
}

/// Decodes `data` the way `libfuzzer_sys::fuzz_target!(|x: T| ...)` does (libfuzzer-sys
/// 0.4.13): inputs shorter than `T::size_hint(0).0` are skipped, otherwise
/// `T::arbitrary_take_rest(Unstructured::new(data))`, skipped on `Err`. Returns whether
/// `body` ran.
pub fn run_as_libfuzzer<'a, T: Arbitrary<'a>>(data: &'a [u8], body: impl FnOnce(T)) -> bool {
    if data.len() < T::size_hint(0).0 {
        return false;
    }
    match T::arbitrary_take_rest(Unstructured::new(data)) {
        Ok(input) => {
            body(input);
            true
        }
        Err(_) => false,
    }
}

/// A fuzz target by name: decodes raw bytes like libfuzzer-sys and runs the body.
pub type Replay = fn(&[u8]) -> bool;

/// Every fuzz target in `fuzz/fuzz_targets/`, for replaying corpus files on stable.
pub const TARGETS: &[(&str, Replay)] = &[
    ("frame_decode", |d| run_as_libfuzzer(d, frame_decode)),
    ("hjson_decode", |d| run_as_libfuzzer(d, hjson_decode)),
    ("exec_request", |d| run_as_libfuzzer(d, exec_request)),
    ("file_request", |d| run_as_libfuzzer(d, file_request)),
    ("auth_handshake", |d| run_as_libfuzzer(d, auth_handshake)),
    ("server_session", |d| run_as_libfuzzer(d, server_session)),
];

/// The replay function of target `name`.
pub fn target(name: &str) -> Option<Replay> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}

/// Hand-written seed inputs: (target, file name, bytes). `tests/fuzz_corpus.rs` checks
/// that each is committed under `fuzz/corpus/TARGET/` (and writes them with
/// `CHOPSTICK_WRITE_SEEDS=1`).
pub fn seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let mut all = Vec::new();
    all.extend(frames::seeds());
    all.extend(requests::seeds());
    all.extend(session::seeds());
    all
}

/// Repeats a chunk plan over a byte count: yields chunk sizes (0 = a read with nothing
/// new) that always make progress and sum to `len`.
pub(crate) fn chunk_sizes(plan: &[u8], len: usize) -> Vec<usize> {
    let plan: Vec<usize> = if plan.iter().all(|&c| c == 0) {
        vec![1]
    } else {
        plan.iter().map(|&c| usize::from(c)).collect()
    };
    let mut sizes = Vec::new();
    let mut sent = 0;
    for &size in plan.iter().cycle() {
        if sent >= len {
            break;
        }
        let size = size.min(len - sent);
        sizes.push(size);
        sent += size;
    }
    sizes
}
