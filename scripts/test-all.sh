#!/usr/bin/env bash
# Runs every test of the project. This is the README's test command and what
# CI (.ci/run) calls. Installs what it needs first (scripts/setup.sh).
#
#   scripts/test-all.sh            everything
#   QUICK=1 scripts/test-all.sh    skip the long simulator swarm
#
# The deployment step needs a running Docker engine and docker-compose (the
# CI machine has both).
set -euo pipefail
cd "$(dirname "$0")/.."

started=$(date +%s)
step() { printf '\n=== [%4ds] %s ===\n' "$(( $(date +%s) - started ))" "$*"; }

step "setup"
scripts/setup.sh

step "format"
cargo fmt --all --check

step "no_std builds of the core and the kv state machine"
for t in thumbv6m-none-eabi thumbv7em-none-eabihf riscv32imac-unknown-none-elf; do
    cargo build --release -p metalraft-core -p metalraft-kv -p metalraft-replica --target "$t"
    cargo build --release -p metalraft-core --features serde --target "$t"
done

step "lints"
cargo clippy --workspace --all-targets -- -D warnings

step "workspace tests (core, kv, sim, server processes with etcdctl, QEMU firmware cluster, bench checks)"
cargo test --workspace

step "a real client library's own test suite: the etcd-client crate's tests against one member"
scripts/client-suite.sh

step "another client library's own suite: python-etcd3 (PyPI etcd3 0.12.0, gRPC) against a 3-member cluster"
scripts/python-client-suite.sh

step "etcdctl 3.4 side by side: every etcdctl command against etcd 3.4.23 and metalraft, outputs compared"
scripts/etcdctl-compare.sh

step "Patroni end to end: Debian's patroni and PostgreSQL 15 on a 3-member metalraft cluster (bootstrap, replication, switchover, failover, kill -9 of the metalraft leader, Auth)"
scripts/patroni-test.sh

step "full disk (mounts a tmpfs: root only)"
if [ "$(id -u)" = 0 ]; then
    # --workspace: the same features as the workspace tests above, so the
    # already-built test binary is reused (-p metalraft rebuilt the server).
    cargo test --workspace --test disk_full -- --ignored
else
    echo "skipped: not root (run: sudo cargo test -p metalraft --test disk_full -- --ignored)"
fi

# The container image's static binary (a release build of the server for
# musl, ~3-4 min) is compiled in the background, at the lowest priority,
# from here on: every step between here and the deployment step is
# deterministic and has no wall-clock limit (host tests of the firmware
# crates, clippy, fixed-count libFuzzer runs, the seeded simulator, the
# core benchmark's checks), so sharing the cores only fills their idle
# moments (single-threaded fuzz runs, links). Its own target directory,
# so it never waits on the build directory lock of the steps it overlaps.
image_target="$PWD/target/image"
image_log="$(mktemp)"
CARGO_TARGET_DIR="$image_target" nice -n 19 \
    cargo build --release -q -p metalraft --target x86_64-unknown-linux-musl \
    >"$image_log" 2>&1 &
image_build=$!
trap 'kill "$image_build" 2>/dev/null || true' EXIT

step "firmware wire formats and block store (the firmware's own workspace; the QEMU cluster test runs above)"
(cd crates/firmware && cargo test -p metalraft-fw-proto --target x86_64-unknown-linux-gnu)
# The store's host tests: recovery after power cuts at every subset of the
# sectors in flight (tests/power_loss.rs), fuzz regressions, held messages.
(cd crates/firmware && cargo test -p metalraft-fw-store --target x86_64-unknown-linux-gnu)

step "firmware lints: clippy of both boards' builds (RISC-V virt; Cortex-M4F mps2-an386, its own platform code)"
(cd crates/firmware && cargo clippy --release --locked -- -D warnings)
(cd crates/firmware && cargo clippy --release --locked --target thumbv7em-none-eabihf -- -D warnings)

step "fuzz: fmt, clippy, every committed fuzz input replayed, then a fixed-seed libFuzzer run per core/kv/firmware target (~10 s each; stable; no server)"
FUZZ_SMOKE=1 fuzz/ci.sh

step "simulator: fixed seed ranges, then fresh random seeds (a failure prints its replay command)"
sim() { cargo run --release -q -p metalraft-sim -- "$@"; }
sim swarm --seeds 0..1000 --jobs 2
sim swarm --seeds 0..500 --snapshots --jobs 2
sim swarm --seeds 0..1000 --no-membership --jobs 2
# Lease clients and the lease checker (opt-in for their cost: crates/sim/README.md).
sim swarm --seeds 0..500 --leases --jobs 2
sim swarm --seeds 0..300 --snapshots --leases --jobs 2
sim swarm --seeds 0..300 --leases --no-membership --jobs 2
# Sector tearing and bit rot repaired from peers (crates/sim/README.md);
# 120 seeds took 6 s with 2 jobs (18-28 s while other builds ran).
sim swarm --seeds 0..120 --torn-sectors --bit-rot --jobs 2
if [ -z "${QUICK:-}" ]; then
    # Fresh seeds every run: a range no earlier run is likely to have tried.
    start=$(( $(date +%s) % 1000000 * 1000 ))
    sim swarm --seeds "$start..$((start + 300))" --jobs 2
    sim swarm --seeds "$start..$((start + 200))" --no-membership --jobs 2
    sim swarm --seeds "$start..$((start + 200))" --snapshots --jobs 2
    sim swarm --seeds "$start..$((start + 200))" --leases --no-membership --jobs 2
fi

step "benchmark smoke run (checks every applied entry on every node; a debug build: its numbers mean nothing, the release run is the benchmark)"
cargo run -q -p metalraft-bench -- core --quick

step "deployment: manifests validated (yamllint, kustomize, checkov), container image, Compose cluster (plain and mTLS), Kubernetes pods in Docker"
deploy/validate.sh
if ! wait "$image_build"; then
    cat "$image_log"
    echo "the container image's musl build failed" >&2
    exit 1
fi
trap - EXIT
export CARGO_TARGET_DIR="$image_target" SKIP_CARGO=1 DEPLOY_VENV="$PWD/target/deploy-venv"
deploy/test.sh
deploy/test-tls.sh
deploy/k8s/smoke.sh
OVERLAY=tls deploy/k8s/smoke.sh

step "done"
