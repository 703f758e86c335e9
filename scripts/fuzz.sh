#!/usr/bin/env bash
# Builds every cargo-fuzz target (fuzz/) and runs each for a fixed time,
# failing on the first crash, leak, timeout or out-of-memory. Installs
# cargo-fuzz if it is missing. See fuzz/README.md.
#
#   scripts/fuzz.sh            every target, 30 s each
#   scripts/fuzz.sh 300        every target, 300 s each
#   scripts/fuzz.sh 60 kv_decode wal_decode    only these targets
#
# The committed seed corpus (fuzz/corpus/<target>/) is read, never written:
# new inputs go to a scratch directory (FUZZ_WORK_DIR, default a temporary
# one). A crash input is left in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-30}"
shift || true
all=(core_cluster kv_decode wal_decode fw_wire fw_disk)
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=("${all[@]}")

# cargo fuzz needs nightly-only compiler flags (-Zsanitizer); stable rustc
# accepts them with this. Kept to this script on purpose.
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/fuzz/target}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

# -a: debug assertions and overflow checks on, so an arithmetic overflow on
# untrusted input is a crash, as in the tests.
build_flags=(--fuzz-dir fuzz -a)
cargo fuzz build "${build_flags[@]}"

work="${FUZZ_WORK_DIR:-$(mktemp -d)}"
status=0
for t in "${targets[@]}"; do
    mkdir -p "$work/$t"
    echo "=== fuzz $t for ${seconds}s ==="
    log="$work/$t.log"
    # -rss_limit_mb / -malloc_limit_mb: an input of a few KiB that makes a
    # decoder allocate more than this is a bug (unbounded allocation).
    if cargo fuzz run "${build_flags[@]}" "$t" "$work/$t" "fuzz/corpus/$t" -- \
        -max_total_time="$seconds" -rss_limit_mb=1024 -malloc_limit_mb=256 \
        -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
        grep -E '^#[0-9]+.*(DONE|pulse)|^stat::number_of_executed_units|cov:' "$log" | tail -n 2
    else
        status=1
        tail -n 60 "$log"
        echo "=== fuzz $t FAILED (log: $log) ==="
    fi
done
exit "$status"
