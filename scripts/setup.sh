#!/usr/bin/env bash
# Installs everything the tests need on a fresh machine (Debian, root).
# Idempotent: skips what is already there.
set -euo pipefail

TARGETS=(thumbv6m-none-eabi thumbv7em-none-eabihf riscv32imac-unknown-none-elf)
installed=$(rustup target list --installed)
for t in "${TARGETS[@]}"; do
    grep -qx "$t" <<<"$installed" || rustup target add "$t"
done
rustup component list --installed | grep -q '^rustfmt' || rustup component add rustfmt
rustup component list --installed | grep -q '^clippy' || rustup component add clippy

APT_PACKAGES=()
command -v qemu-system-riscv32 >/dev/null || APT_PACKAGES+=(qemu-system-misc)
command -v etcdctl >/dev/null || APT_PACKAGES+=(etcd-client)
# protoc: the etcd-client crate (a test dependency of the server) needs it.
command -v protoc >/dev/null || APT_PACKAGES+=(protobuf-compiler)
if ((${#APT_PACKAGES[@]})); then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${APT_PACKAGES[@]}"
fi
