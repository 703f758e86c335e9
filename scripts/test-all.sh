#!/usr/bin/env bash
# Runs every test of the project. This is the README's test command and what
# CI (.ci/run) calls. Installs what it needs first (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n=== %s ===\n' "$*"; }

step "setup"
scripts/setup.sh

step "format"
cargo fmt --all --check

step "no_std builds of the core and the kv state machine"
for t in thumbv6m-none-eabi thumbv7em-none-eabihf riscv32imac-unknown-none-elf; do
    cargo build --release -p metalraft-core -p metalraft-kv --target "$t"
    cargo build --release -p metalraft-core --features serde --target "$t"
done

step "workspace tests"
cargo test --workspace --all-targets
cargo test --workspace --doc
