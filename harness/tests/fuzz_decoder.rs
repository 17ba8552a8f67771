//! `chopstick::fuzzing::fuzz_decoder` on stable, by corpus replay: the committed inputs
//! of the cargo-fuzz target `fuzz_decoder` (`fuzz/corpus/fuzz_decoder/`) catch a planted
//! bug in a decoder written the way a user writes one, and pass its fixed version and
//! chopstick's own codec.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use bytes::{Buf, BytesMut};
use chopstick::codec::Verdict;
use chopstick::fuzzing::{decoder_seeds, fuzz_decoder, fuzz_decoder_verdict};
use chopstick_targets::wire::Framing;
use tokio_util::codec::Decoder;

/// Header bytes of the u16be framing the decoder speaks.
const HEADER: usize = 2;

/// A hand-written u16be decoder. `planted`: it checks that the *body* is buffered but
/// forgets the header in the count, the classic slip that works whenever a frame
/// arrives in one read.
struct UserDecoder {
    planted: bool,
}

impl Decoder for UserDecoder {
    type Item = BytesMut;
    type Error = std::io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> std::io::Result<Option<BytesMut>> {
        if src.len() < HEADER {
            return Ok(None);
        }
        let len = usize::from(u16::from_be_bytes([src[0], src[1]]));
        let needed = if self.planted { len } else { HEADER + len };
        if src.len() < needed {
            return Ok(None);
        }
        src.advance(HEADER);
        Ok(Some(src.split_to(len)))
    }
}

fn framing() -> Framing {
    "u16be".parse().unwrap()
}

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/fuzz_decoder")
}

/// Every committed input of `fuzz/corpus/fuzz_decoder/`, sorted, as (file name, bytes).
fn committed() -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus())
        .expect("fuzz/corpus/fuzz_decoder exists")
        .map(|e| e.expect("read entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).expect("read input"))
        })
        .collect()
}

#[test]
fn corpus_replay_catches_a_decoder_that_forgets_the_header_in_its_length_check() {
    let framing = framing();
    let caught: Vec<(String, Verdict)> = committed()
        .into_iter()
        .map(|(name, data)| {
            let v = fuzz_decoder_verdict(&data, || UserDecoder { planted: true }, &framing);
            (name, v)
        })
        .filter(|(_, v)| !v.is_pass())
        .collect();
    assert!(
        !caught.is_empty(),
        "no committed input caught the planted bug"
    );
    for (name, verdict) in &caught {
        eprintln!("{name}: {verdict}");
        // Splitting `split_to(len)` with fewer than `len` bytes left panics inside the
        // decoder; the checker reports it instead of unwinding through the test.
        assert_eq!(verdict.kind(), "panicked", "{name}: {verdict}");
    }
}

#[test]
fn fuzz_decoder_panics_on_the_planted_bug_as_libfuzzer_needs() {
    let framing = framing();
    let (_, data) = decoder_seeds()
        .into_iter()
        .find(|(name, _)| *name == "bytewise")
        .expect("a bytewise seed");
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        fuzz_decoder(&data, || UserDecoder { planted: true }, &framing)
    }));
    let message = outcome.expect_err("the planted bug must panic");
    let message = message
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(message.contains("decoder panicked"), "{message}");
    assert!(message.contains("plan w1x"), "{message}");
}

#[test]
fn corpus_replay_passes_the_fixed_decoder_and_the_reference_codec() {
    let framing = framing();
    let inputs = committed();
    assert!(inputs.len() >= decoder_seeds().len());
    for (name, data) in inputs {
        fuzz_decoder(&data, || UserDecoder { planted: false }, &framing);
        fuzz_decoder(&data, || framing.codec(), &framing);
        eprintln!("{name}: pass");
    }
}

/// The seeds are committed as generated (`CHOPSTICK_WRITE_SEEDS=1` writes them).
#[test]
fn decoder_seeds_are_committed() {
    let write = std::env::var_os("CHOPSTICK_WRITE_SEEDS").is_some();
    for (name, bytes) in decoder_seeds() {
        let path = corpus().join(format!("seed-{name}"));
        if write {
            std::fs::create_dir_all(corpus()).unwrap();
            std::fs::write(&path, &bytes).unwrap();
        }
        let committed = std::fs::read(&path).unwrap_or_else(|e| {
            panic!("{}: {e} (run with CHOPSTICK_WRITE_SEEDS=1)", path.display())
        });
        assert_eq!(committed, bytes, "{} is stale", path.display());
    }
}

/// The README shows `fuzz/fuzz_targets/fuzz_decoder.rs` verbatim (it cannot be a doctest:
/// it needs libfuzzer-sys), so the copy is checked here.
#[test]
fn the_readme_shows_the_fuzz_decoder_target_verbatim() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::fs::read_to_string(root.join("fuzz/fuzz_targets/fuzz_decoder.rs")).unwrap();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    assert!(
        readme.contains(&format!("```rust,ignore\n{target}```")),
        "README.md's fuzz_decoder example differs from fuzz/fuzz_targets/fuzz_decoder.rs"
    );
}
