#!/usr/bin/env bash
# Installs everything the tests need on a fresh machine (Debian, root).
# Idempotent: skips what is already there.
set -euo pipefail

# no_std targets of the core, and musl for the static container image.
TARGETS=(thumbv6m-none-eabi thumbv7em-none-eabihf riscv32imac-unknown-none-elf x86_64-unknown-linux-musl)
installed=$(rustup target list --installed)
for t in "${TARGETS[@]}"; do
    grep -qx "$t" <<<"$installed" || rustup target add "$t"
done
rustup component list --installed | grep -q '^rustfmt' || rustup component add rustfmt
rustup component list --installed | grep -q '^clippy' || rustup component add clippy

APT_PACKAGES=()
command -v qemu-system-riscv32 >/dev/null || APT_PACKAGES+=(qemu-system-misc)
command -v qemu-system-arm >/dev/null || APT_PACKAGES+=(qemu-system-arm)
command -v etcdctl >/dev/null || APT_PACKAGES+=(etcd-client)
# etcd 3.4 itself: the backup test restores a metalraft backup into it.
command -v etcd >/dev/null || APT_PACKAGES+=(etcd-server)
# protoc: the etcd-client crate (a test dependency of the server) needs it.
command -v protoc >/dev/null || APT_PACKAGES+=(protobuf-compiler)
# fusermount3: the power-cut test mounts a FUSE file system (crates/powercut).
command -v fusermount3 >/dev/null || APT_PACKAGES+=(fuse3)
# The deployment tests (deploy/validate.sh, deploy/test.sh, deploy/k8s/smoke.sh):
# docker and docker-compose come with the machine; the rest from Debian.
command -v jq >/dev/null || APT_PACKAGES+=(jq)
command -v curl >/dev/null || APT_PACKAGES+=(curl)
command -v file >/dev/null || APT_PACKAGES+=(file)
command -v kubectl >/dev/null || APT_PACKAGES+=(kubernetes-client)
python3 -c 'import venv, ensurepip' 2>/dev/null || APT_PACKAGES+=(python3-venv)
if ((${#APT_PACKAGES[@]})); then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${APT_PACKAGES[@]}"
fi
# Debian's etcd-server package starts etcd as a service on 2379/2380; the
# tests start their own etcd on free ports, so a service left running would
# only hold ports the deployment tests publish.
if command -v systemctl >/dev/null && systemctl is-active --quiet etcd 2>/dev/null; then
    systemctl stop etcd || true
    systemctl disable etcd 2>/dev/null || true
fi
