//! Replays every committed fuzz input on stable: `fuzz/corpus/TARGET/*` and
//! `fuzz/regressions/TARGET/*` go through the same bodies as the cargo-fuzz targets
//! (`chopstick_targets::fuzzing`), decoded exactly as libfuzzer-sys decodes them. The targets in
//! [`HARNESS_TARGETS`] have their bodies in `chopstick::fuzzing` and are replayed by
//! `harness/tests/fuzz_corpus.rs` and `harness/tests/fuzz_decoder.rs`.

use std::io::Write;
use std::path::{Path, PathBuf};

use chopstick_targets::fuzzing;

/// Fuzz targets whose bodies live in `chopstick::fuzzing`; `harness/tests/fuzz_corpus.rs`
/// (frame_roundtrip) and `harness/tests/fuzz_decoder.rs` (fuzz_decoder) replay their inputs.
const HARNESS_TARGETS: &[&str] = &["frame_roundtrip", "fuzz_decoder"];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// Every file under `fuzz/KIND/TARGET/`, as (target, path), sorted.
fn inputs(kind: &str) -> Vec<(String, PathBuf)> {
    let mut all = Vec::new();
    let Ok(dirs) = std::fs::read_dir(fuzz_dir().join(kind)) else {
        return all;
    };
    for dir in dirs {
        let dir = dir.expect("read fuzz dir").path();
        if !dir.is_dir() {
            continue;
        }
        let target = dir.file_name().unwrap().to_string_lossy().into_owned();
        if HARNESS_TARGETS.contains(&target.as_str()) {
            continue;
        }
        assert!(
            fuzzing::target(&target).is_some(),
            "{} is not a fuzz target (known: {:?})",
            dir.display(),
            fuzzing::TARGETS.iter().map(|t| t.0).collect::<Vec<_>>()
        );
        for file in std::fs::read_dir(&dir).expect("read target dir") {
            let path = file.expect("read entry").path();
            if path.is_file() && !path.file_name().unwrap().to_string_lossy().starts_with('.') {
                all.push((target.clone(), path));
            }
        }
    }
    all.sort();
    all
}

fn replay(kind: &str) -> (usize, usize) {
    let (mut ran, mut skipped) = (0, 0);
    for (target, path) in inputs(kind) {
        let data = std::fs::read(&path).expect("read input");
        let run = fuzzing::target(&target).expect("checked above");
        eprintln!("replaying {}", path.display());
        if run(&data) {
            ran += 1;
        } else {
            // Too short for the input type, or Arbitrary refused it: libFuzzer skips it too.
            skipped += 1;
        }
    }
    // Straight to the stream, past the test harness's capture, so `cargo test` shows it.
    let _ = writeln!(
        std::io::stderr(),
        "fuzz_corpus: replayed {ran} {kind} files ({skipped} skipped as libfuzzer-sys would)"
    );
    (ran, skipped)
}

#[test]
fn corpus_replays_cleanly() {
    let (ran, _) = replay("corpus");
    assert!(ran >= fuzzing::seeds().len(), "the seed corpus is missing");
}

#[test]
fn regressions_replay_cleanly() {
    replay("regressions");
}

/// The hand-written seeds are committed as they are generated (`CHOPSTICK_WRITE_SEEDS=1`
/// writes them).
#[test]
fn seeds_are_committed() {
    let write = std::env::var_os("CHOPSTICK_WRITE_SEEDS").is_some();
    for (target, name, bytes) in fuzzing::seeds() {
        let path = fuzz_dir()
            .join("corpus")
            .join(target)
            .join(format!("seed-{name}"));
        if write {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &bytes).unwrap();
        }
        let committed = std::fs::read(&path).unwrap_or_else(|e| {
            panic!("{}: {e} (run with CHOPSTICK_WRITE_SEEDS=1)", path.display())
        });
        assert_eq!(committed, bytes, "{} is stale", path.display());
    }
}

#[test]
fn every_fuzz_target_has_a_body() {
    let dir = fuzz_dir().join("fuzz_targets");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .expect("fuzz/fuzz_targets")
        .map(|e| {
            e.unwrap()
                .path()
                .file_stem()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    files.sort();
    let owned = fuzzing::TARGETS
        .iter()
        .map(|t| t.0)
        .chain(HARNESS_TARGETS.iter().copied());
    let mut known: Vec<String> = owned.map(str::to_string).collect();
    known.sort();
    assert_eq!(files, known);
}

/// libfuzzer-sys skips inputs shorter than the type's minimum size; so does the replay.
#[test]
fn too_short_inputs_are_skipped_like_libfuzzer_sys() {
    use fuzzing::arbitrary::Arbitrary;
    let min = fuzzing::FrameDecodeInput::size_hint(0).0;
    assert_eq!(min, 17);
    let run = fuzzing::target("frame_decode").unwrap();
    assert!(!run(&[0; 16]));
    assert!(run(&[0; 17]));
}
