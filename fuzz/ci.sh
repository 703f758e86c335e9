#!/usr/bin/env bash
# The fuzz step of CI, kept cheap (about a minute cold on 2 cores; see
# fuzz/README.md, "Measurements"). On stable Rust, without libFuzzer and
# without the server crate (whose cold build takes about 20 minutes):
#
#  1. lints of the fuzz crate;
#  2. every committed input (fuzz/corpus/<target>/, fuzz/regressions/)
#     replayed through the targets' own functions (tests/corpus.rs);
#  3. only if FUZZ_SMOKE or FUZZ_SECONDS is set: each of the core, kv and
#     firmware targets fuzzed (libFuzzer, built below with plain cargo on
#     stable Rust): FUZZ_SMOKE=1 with a fixed seed and number of runs
#     (the CI gate), FUZZ_SECONDS=N for N s with a random seed.
#
#   fuzz/ci.sh                    1 and 2
#   FUZZ_SMOKE=1 fuzz/ci.sh       1, 2 and 3 with a fixed seed (what CI runs)
#   FUZZ_SECONDS=10 fuzz/ci.sh    1, 2 and 3 with a random seed (finds new bugs)
#
# The server's WAL target (wal_decode) runs with scripts/fuzz.sh, or its
# corpus with `cargo test --manifest-path fuzz/Cargo.toml`.
set -euo pipefail
cd "$(dirname "$0")"

cargo fmt --check
cargo clippy --no-default-features --all-targets -- -D warnings
cargo test --no-default-features

seconds="${FUZZ_SECONDS:-0}"
smoke="${FUZZ_SMOKE:-}"
[ "$seconds" -gt 0 ] || [ -n "$smoke" ] || exit 0
# The libFuzzer binaries, built the way `cargo fuzz build -a -s none` builds
# them (coverage instrumentation for libFuzzer, `cfg(fuzzing)`, debug
# assertions and overflow checks), with plain cargo: stable rustc accepts
# these flags, so CI needs neither cargo-fuzz (a 1-3 minute install) nor
# RUSTC_BOOTSTRAP. Without AddressSanitizer, which needs a nightly flag:
# the fuzzed crates have no unsafe code of their own, and
# -malloc_limit_mb still catches unbounded allocation. scripts/fuzz.sh runs
# the longer campaigns with cargo fuzz and ASan.
export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module \
-Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
-Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares \
-Cdebug-assertions -Coverflow-checks"
host=$(rustc -vV | sed -n 's/^host: //p')
cargo build --release --no-default-features --features libfuzzer --bins \
    --target "$host" --target-dir target/timed
bin="target/timed/$host/release"
work=$(mktemp -d)
# FUZZ_SMOKE=1 (what CI runs): a fixed seed and a fixed number of runs per
# target (about 10 s each on the CI machine) instead of a random seed and a
# wall-clock limit. Not bit-for-bit reproducible (coverage feedback, and so
# the inputs kept, varies a little between builds and runs), but no longer
# a fresh random draw each time. Random, timed campaigns (FUZZ_SECONDS, or
# scripts/fuzz.sh) find new bugs; what they find goes into regressions/
# once fixed, or known-crashes/ (not replayed) while open.
declare -A smoke_runs=([core_cluster]=80000 [kv_decode]=1000000 [fw_wire]=3000000 [fw_disk]=70000)
for t in core_cluster kv_decode fw_wire fw_disk; do
    mkdir -p "$work/$t" "artifacts/$t"
    if [ -n "$smoke" ]; then
        limit=(-seed="${FUZZ_SEED:-20261206}" -runs="${smoke_runs[$t]}")
    else
        limit=(-max_total_time="$seconds")
    fi
    # New inputs go to the scratch directory; the seeds are only read.
    if ! "$bin/$t" "$work/$t" "corpus/$t" "${limit[@]}" \
        -rss_limit_mb=1024 -malloc_limit_mb=256 -timeout=10 \
        -artifact_prefix="artifacts/$t/" >"$work/$t.log" 2>&1; then
        tail -n 60 "$work/$t.log"
        echo "=== fuzz $t FAILED: the crash input is in fuzz/artifacts/$t/ ==="
        exit 1
    fi
    grep -E '^#[0-9]+.*DONE' "$work/$t.log" | tail -n 1 | sed "s/^/$t: /"
done
rm -rf "$work"
