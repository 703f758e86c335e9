#!/usr/bin/env bash
# Runs a real etcd client library's own test suite against metalraft: the
# `etcd-client` crate (Rust), fetched from crates.io at test time (never
# committed), against one metalraft member on localhost:2379, which is
# where its suite expects an etcd. Every test the suite runs against etcd
# 3.4 must pass (it marks the ones that need a newer etcd or 4 members
# #[ignore] itself).
#
#   scripts/client-suite.sh                 uses target/debug/metalraft (builds it if missing)
#   METALRAFT_BIN=path scripts/client-suite.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

VERSION=0.16.1
bin="${METALRAFT_BIN:-$root/target/debug/metalraft}"
[ -x "$bin" ] || cargo build -q -p metalraft
work=$(mktemp -d)
pid=""
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

curl -sSfL "https://static.crates.io/crates/etcd-client/etcd-client-$VERSION.crate" | tar xz -C "$work"

"$bin" --name client-suite --data-dir "$work/data" \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster client-suite=http://127.0.0.1:2380 >"$work/member.log" 2>&1 &
pid=$!
for _ in $(seq 100); do
    curl -sf http://127.0.0.1:2379/health >/dev/null && break
    sleep 0.2
done
curl -sf http://127.0.0.1:2379/health >/dev/null || { cat "$work/member.log"; exit 1; }

# One thread: the suite's tests share the one member and some assume
# they run alone (e.g. alarm, move leader).
(cd "$work/etcd-client-$VERSION" && CARGO_TARGET_DIR="$root/target/client-suite" \
    cargo test -q -- --test-threads=1) || { tail -50 "$work/member.log"; exit 1; }
