#![no_main]
//! The README's `fuzz_decoder` example, on chopstick's own u16be codec: the fuzzer's bytes
//! choose messages, chunking, cut and end (see `chopstick::fuzzing::decoder`).

use std::sync::LazyLock;

use chopstick::fuzzing::fuzz_decoder;
use chopstick_targets::wire::Framing;
use libfuzzer_sys::fuzz_target;

static FRAMING: LazyLock<Framing> = LazyLock::new(|| "u16be".parse().unwrap());

fuzz_target!(|data: &[u8]| fuzz_decoder(data, || FRAMING.codec(), &FRAMING));
