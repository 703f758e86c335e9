#!/usr/bin/env bash
# The fuzz step of CI, kept cheap (about a minute cold on 2 cores; see
# fuzz/README.md, "Measurements"). On stable Rust, without libFuzzer and
# without the server crate (whose cold build takes about 20 minutes):
#
#  1. lints of the fuzz crate;
#  2. every committed input (fuzz/corpus/<target>/, fuzz/regressions/)
#     replayed through the targets' own functions (tests/corpus.rs);
#  3. only if FUZZ_SECONDS is set and cargo-fuzz is installed: each of the
#     core, kv and firmware targets fuzzed for FUZZ_SECONDS seconds.
#
#   fuzz/ci.sh                    1 and 2
#   FUZZ_SECONDS=10 fuzz/ci.sh    1, 2 and 3
#
# The server's WAL target (wal_decode) runs with scripts/fuzz.sh, or its
# corpus with `cargo test --manifest-path fuzz/Cargo.toml`.
set -euo pipefail
cd "$(dirname "$0")"

cargo fmt --check
cargo clippy --no-default-features --all-targets -- -D warnings
cargo test --no-default-features

seconds="${FUZZ_SECONDS:-0}"
[ "$seconds" -gt 0 ] || exit 0
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "timed fuzz runs skipped: cargo-fuzz is not installed (cargo install cargo-fuzz --locked)"
    exit 0
fi
# cargo fuzz needs nightly-only compiler flags (-Zsanitizer); stable rustc
# accepts them with this. Kept to the scripts on purpose.
export RUSTC_BOOTSTRAP=1
flags=(--fuzz-dir . -a --no-default-features --features libfuzzer)
cargo fuzz build "${flags[@]}"
work=$(mktemp -d)
for t in core_cluster kv_decode fw_wire fw_disk; do
    mkdir -p "$work/$t"
    # New inputs go to the scratch directory; the seeds are only read.
    if ! cargo fuzz run "${flags[@]}" "$t" "$work/$t" "corpus/$t" -- \
        -max_total_time="$seconds" -rss_limit_mb=1024 -malloc_limit_mb=256 \
        -timeout=10 >"$work/$t.log" 2>&1; then
        tail -n 60 "$work/$t.log"
        echo "=== fuzz $t FAILED: the crash input is in fuzz/artifacts/$t/ ==="
        exit 1
    fi
    grep -E '^#[0-9]+.*DONE' "$work/$t.log" | tail -n 1 | sed "s/^/$t: /"
done
