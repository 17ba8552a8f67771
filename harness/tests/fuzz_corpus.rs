//! Replays the committed inputs of the cargo-fuzz target `frame_roundtrip` on stable:
//! `fuzz/corpus/frame_roundtrip/*` and `fuzz/regressions/frame_roundtrip/*` go through
//! `chopstick::fuzzing`, decoded exactly as libfuzzer-sys decodes them. (The other targets'
//! inputs are replayed by `targets/tests/fuzz_corpus.rs`.)

use std::io::Write;
use std::path::{Path, PathBuf};

use chopstick::fuzzing;

fn dir(kind: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz")
        .join(kind)
        .join("frame_roundtrip")
}

/// Replays every file in `fuzz/KIND/frame_roundtrip/`: (ran, skipped).
fn replay(kind: &str) -> (usize, usize) {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir(kind))
        .map(|d| d.map(|e| e.expect("read entry").path()).collect())
        .unwrap_or_default();
    files.retain(|p| p.is_file() && !p.file_name().unwrap().to_string_lossy().starts_with('.'));
    files.sort();
    let (mut ran, mut skipped) = (0, 0);
    for path in files {
        eprintln!("replaying {}", path.display());
        if fuzzing::replay(&std::fs::read(&path).expect("read input")) {
            ran += 1;
        } else {
            // Too short for the input type, or Arbitrary refused it: libFuzzer skips it too.
            skipped += 1;
        }
    }
    // Straight to the stream, past the test harness's capture, so `cargo test` shows it.
    let _ = writeln!(
        std::io::stderr(),
        "fuzz_corpus: replayed {ran} frame_roundtrip {kind} files ({skipped} skipped as libfuzzer-sys would)"
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

/// The hand-written seeds are committed as generated (`CHOPSTICK_WRITE_SEEDS=1` writes them).
#[test]
fn seeds_are_committed() {
    let write = std::env::var_os("CHOPSTICK_WRITE_SEEDS").is_some();
    for (name, bytes) in fuzzing::seeds() {
        let path = dir("corpus").join(format!("seed-{name}"));
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
