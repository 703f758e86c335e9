#!/usr/bin/env bash
# Prints the .text bytes metalraft-core adds to a minimal no_std binary for
# thumbv7em-none-eabihf (opt-level "s", LTO), as reported in
# crates/core/README.md. Needs the rustup component llvm-tools.
set -euo pipefail
cd "$(dirname "$0")/../crates/core/size-probe"
rustup component list --installed | grep -q '^llvm-tools' || rustup component add llvm-tools
size_tool=$(find "$(rustc --print sysroot)" -name llvm-size -type f | head -n 1)
text() { "$size_tool" -A "$1" | awk '$1 == ".text" { print $2 }'; }
export CARGO_TARGET_DIR=target
cargo build -q --release
cp target/thumbv7em-none-eabihf/release/metalraft-core-size-probe target/baseline.elf
cargo build -q --release --features with-core
base=$(text target/baseline.elf)
full=$(text target/thumbv7em-none-eabihf/release/metalraft-core-size-probe)
echo "baseline .text: $base bytes"
echo "with metalraft-core .text: $full bytes"
echo "metalraft-core adds: $((full - base)) bytes ($(( (full - base + 512) / 1024 )) KiB)"
