#!/usr/bin/env bash
# Runs another real client library's own test suite against metalraft:
# python-etcd3 (PyPI `etcd3` 0.12.0, gRPC), its sdist's tests/test_etcd3.py,
# fetched from PyPI at test time (never committed). The suite expects what
# its CI (pifpaf) starts: a 3-member cluster whose members are named
# pifpaf, pifpaf1 and pifpaf2 (it SIGSTOPs the last two to test losing
# quorum), the first on localhost:2379, and etcdctl on PATH (it checks its
# reads with etcdctl and `etcdctl snapshot status`).
#
# One test is deselected, for a reason in the suite, not in the server:
# TestClient::test_user_pwd_auth patches the module path `etcdrpc`, which
# does not exist in the installed package; it fails the same way against
# etcd 3.4.23 (79 passed, this one failed, 2 skipped, on 2026-12-07).
#
#   scripts/python-client-suite.sh              uses target/debug/metalraft (builds it if missing)
#   METALRAFT_BIN=path scripts/python-client-suite.sh
#   METALRAFT_BIN=/usr/bin/etcd scripts/python-client-suite.sh   the same against etcd 3.4
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

VERSION=0.12.0
bin="${METALRAFT_BIN:-$root/target/debug/metalraft}"
[ -x "$bin" ] || cargo build -q -p metalraft
command -v etcdctl >/dev/null || apt-get -o DPkg::Lock::Timeout=300 install -y -q etcd-client >/dev/null
work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -CONT "$p" 2>/dev/null; kill "$p" 2>/dev/null; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

python3 -m venv "$work/venv"
py="$work/venv/bin/python"
# The versions this was run with: the suite's own pins are for 2019's
# Python; hypothesis < 5.37 still allows its function-scoped fixtures,
# tenacity 6.1 is the version its lock helper is written for.
"$py" -m pip install -q --disable-pip-version-check \
    "etcd3==$VERSION" grpcio==1.85.4 protobuf==7.36.2 pytest==9.2.0 \
    hypothesis==5.36.2 tenacity==6.1.0 six==1.17.0 mock==5.2.0
"$py" -m pip download -q --disable-pip-version-check --no-binary :all: --no-deps \
    "etcd3==$VERSION" -d "$work"
tar xzf "$work/etcd3-$VERSION.tar.gz" -C "$work"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
names=(pifpaf pifpaf1 pifpaf2)
cports=(2379 "$(free_port)" "$(free_port)")
pports=("$(free_port)" "$(free_port)" "$(free_port)")
cluster=""
for i in 0 1 2; do
    cluster+="${cluster:+,}${names[$i]}=http://127.0.0.1:${pports[$i]}"
done
for i in 0 1 2; do
    "$bin" --name "${names[$i]}" --data-dir "$work/${names[$i]}" \
        --listen-client-urls "http://127.0.0.1:${cports[$i]}" \
        --advertise-client-urls "http://127.0.0.1:${cports[$i]}" \
        --listen-peer-urls "http://127.0.0.1:${pports[$i]}" \
        --initial-advertise-peer-urls "http://127.0.0.1:${pports[$i]}" \
        --initial-cluster "$cluster" --initial-cluster-state new \
        >"$work/${names[$i]}.log" 2>&1 &
    pids+=($!)
done
for _ in $(seq 150); do
    ETCDCTL_API=3 etcdctl --endpoints 127.0.0.1:2379 endpoint health >/dev/null 2>&1 && break
    sleep 0.2
done
ETCDCTL_API=3 etcdctl --endpoints 127.0.0.1:2379 endpoint health || { tail -20 "$work"/*.log; exit 1; }

# The generated protobuf modules of etcd3 0.12 predate protobuf 4's C++
# descriptors: the pure-Python implementation loads them.
(cd "$work/etcd3-$VERSION" && \
    PYTHON_ETCD_HTTP_URL=http://127.0.0.1:2379 PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python \
    "$py" -m pytest -q -p no:cacheprovider -W ignore tests/test_etcd3.py \
        --deselect tests/test_etcd3.py::TestClient::test_user_pwd_auth) \
    || { tail -30 "$work"/*.log; exit 1; }
