#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 30), seeded from tests/fixtures, and fails
# on the first crash, leak or timeout libFuzzer reports. Findings land in tests/fuzz/artifacts/
# and each one should become a regression test.
#
#   tests/fuzz/run.sh 1800          # the 30 CPU-minutes per target asked of a development run
#   FUZZ_TARGETS="pdf email" tests/fuzz/run.sh 60
#
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`). It passes nightly-only flags, which the
# machine's stable compiler accepts with RUSTC_BOOTSTRAP=1. No AddressSanitizer: the code under
# test is safe Rust, and what we hunt for (panics, aborts, stack overflows, hangs, runaway
# memory) libFuzzer catches by itself; without ASan the build is several times faster, and so
# is every execution.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-30}"
targets="${FUZZ_TARGETS:-pdf auth_results workflow email}"
export RUSTC_BOOTSTRAP=1

seeds() {
  case "$1" in
    pdf) echo "../fixtures/pdf ../fixtures/pdf/hostile ../fixtures/blank" ;;
    email) echo "../fixtures/mail" ;;
    auth_results) echo "seeds/auth_results" ;;
    workflow) echo "../../workflows" ;;
  esac
}

for target in $targets; do
  mkdir -p "corpus/$target" "artifacts/$target"
  echo "== fuzzing $target for ${seconds}s"
  # shellcheck disable=SC2046
  cargo fuzz run --fuzz-dir . --sanitizer none "$target" "corpus/$target" $(seeds "$target") -- \
    -max_total_time="$seconds" -timeout=30 -rss_limit_mb=2048 -max_len=1048576 \
    -artifact_prefix="artifacts/$target/" -print_final_stats=1 2>&1 | tail -n 25
  status=${PIPESTATUS[0]}
  if [ "$status" -ne 0 ]; then
    echo "fuzz target $target failed (exit $status); see tests/fuzz/artifacts/$target/" >&2
    exit "$status"
  fi
done
echo "fuzzing: every target ran ${seconds}s with no crash"
