#!/bin/bash -eu
# ClusterFuzzLite / OSS-Fuzz build: every cargo-fuzz target in fuzz/, with the sanitizer
# the base image selects (RUSTFLAGS/SANITIZER come from base-builder-rust), plus each
# target's committed seed corpus.
cd "$SRC/chopstick"
cargo fuzz build -O --debug-assertions
release=fuzz/target/x86_64-unknown-linux-gnu/release
for target in $(cargo fuzz list); do
  cp "$release/$target" "$OUT/"
  if compgen -G "fuzz/corpus/$target/*" >/dev/null; then
    zip -jq "$OUT/${target}_seed_corpus.zip" fuzz/corpus/"$target"/*
  fi
done
