#!/usr/bin/env bash
# Proof that the fuzz targets find bugs: builds the targets with the `planted-bugs`
# feature (copies of decoder/validator paths with one known bug each, see
# fuzz/src/planted.rs; never compiled in normal builds, never in the product crates) and runs each bug's
# target until it crashes or PLANTED_SECONDS (default 60) pass. It starts from an EMPTY
# corpus: the committed seeds include inputs that trigger some of these bugs at once.
# Prints one line per bug: found or not, after how long, and the failed assertion.
#
#   fuzz/planted.sh              # every bug
#   fuzz/planted.sh exec-nul     # one bug
set -euo pipefail
cd "$(dirname "$0")"
secs="${PLANTED_SECONDS:-60}"
flags=(--sanitizer none -O --debug-assertions --features planted-bugs)

# bug name -> target
declare -A target=(
  [frame-max-off-by-one]=frame_decode
  [frame-short-header]=frame_decode
  [frame-one-read]=frame_decode
  [hjson-no-max]=hjson_decode
  [exec-nul]=exec_request
  [file-dotdot]=file_request
)
bugs=("$@")
[ ${#bugs[@]} -gt 0 ] || bugs=(frame-max-off-by-one frame-short-header frame-one-read hjson-no-max exec-nul file-dotdot)

cargo fuzz build "${flags[@]}" >/dev/null
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
failed=0
for bug in "${bugs[@]}"; do
  t="${target[$bug]:?unknown bug $bug}"
  mkdir -p "$work/$bug/corpus" "$work/$bug/artifacts"
  start=$(date +%s.%N)
  set +e
  CHOPSTICK_PLANTED="$bug" cargo fuzz run "${flags[@]}" "$t" "$work/$bug/corpus" -- \
    -max_total_time="$secs" -artifact_prefix="$work/$bug/artifacts/" >"$work/$bug/log" 2>&1
  rc=$?
  set -e
  took=$(echo "$(date +%s.%N) - $start" | bc)
  artifact=$(ls "$work/$bug/artifacts" 2>/dev/null | head -1)
  if [ $rc -ne 0 ] && [ -n "$artifact" ]; then
    why=$( (grep -m1 -A1 -E "panicked at" "$work/$bug/log" || grep -m1 "ERROR: libFuzzer" "$work/$bug/log" || true) | tail -1 | cut -c1-100)
    printf 'FOUND     %-22s %-13s after %5.1fs: %s\n' "$bug" "$t" "$took" "$why"
  else
    printf 'NOT FOUND %-22s %-15s in %ss\n' "$bug" "$t" "$secs"
    failed=1
  fi
done
exit $failed
