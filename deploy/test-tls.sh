#!/usr/bin/env bash
# Container test of mutual TLS: the Compose cluster with compose.tls.yaml,
# certificates generated here (deploy/gen-certs.sh), etcdctl from the host.
#
#   deploy/test-tls.sh            (SKIP_CARGO=1 reuses the built musl binary)
#
# Checks: every member becomes healthy (the image's probe on the plain
# metrics URL); etcdctl with the CA and a client certificate writes and reads
# through every published https port and lists the members with https peer
# URLs; etcdctl without a client certificate, with one from another CA, or
# over plain http is refused; a write through one member is read from
# another (replication over mTLS peer connections); the members still serve
# after the refused attempts. Removes its containers, network, volumes,
# image and certificates on exit, also on failure.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
RUN="mrtls$$"
export METALRAFT_IMAGE="metalraft:$RUN"
export METALRAFT_CLUSTER_TOKEN="$RUN"
export METALRAFT_HOST_IP=127.0.0.1
export ETCDCTL_API=3
WORK="$(mktemp -d)"
chmod 0755 "$WORK"
export METALRAFT_TLS_DIR="$WORK/tls"
IMAGE_BUILT=0
DC=(docker-compose -p "$RUN" -f "$ROOT/deploy/compose.yaml" -f "$ROOT/deploy/compose.tls.yaml")
# shellcheck source=deploy/lib.sh
. "$ROOT/deploy/lib.sh"
cleanup() {
    local rc=$?
    set +e
    if [ "$rc" != 0 ]; then
        log "test failed (status $rc); last container logs:"
        "${DC[@]}" logs --no-color --tail=30 2>&1 | tail -90
    fi
    local image=""
    if [ "$IMAGE_BUILT" = 1 ]; then image="$METALRAFT_IMAGE"; fi
    compose_remove "$RUN" "$image" "${DC[@]}"
    rm -rf "$WORK"
    log "cleaned up (status $rc)"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for tool in docker docker-compose etcdctl openssl python3; do
    command -v "$tool" >/dev/null || fail "$tool is missing"
done

read -r P1 P2 P3 < <(free_ports 3)
export METALRAFT_PORT1=$P1 METALRAFT_PORT2=$P2 METALRAFT_PORT3=$P3

"$ROOT/deploy/gen-certs.sh" "$METALRAFT_TLS_DIR" >/dev/null
T="$METALRAFT_TLS_DIR"
ok_ctl() { etcdctl --dial-timeout=2s --command-timeout=3s --cacert="$T/ca.crt" --cert="$T/client.crt" --key="$T/client.key" "$@"; }

log "building image $METALRAFT_IMAGE"
IMAGE_BUILT=1
"$ROOT/deploy/build-image.sh" "$METALRAFT_IMAGE" >/dev/null

log "compose up with mTLS (client ports $P1 $P2 $P3)"
"${DC[@]}" up -d >/dev/null 2>&1
deadline=$((SECONDS + 90))
for m in m1 m2 m3; do
    until [ "$(docker inspect -f '{{.State.Health.Status}}' "$("${DC[@]}" ps -q "$m")" 2>/dev/null)" = healthy ]; do
        [ $SECONDS -lt $deadline ] || fail "$m not healthy after 90 s"
        sleep 1
    done
done
log "all members healthy (probe on the plain metrics URL)"

ALL="https://127.0.0.1:$P1,https://127.0.0.1:$P2,https://127.0.0.1:$P3"
ok_ctl --endpoints="https://127.0.0.1:$P1" put tls/key through-m1 >/dev/null || fail "mTLS put through m1 failed"
for p in $P1 $P2 $P3; do
    [ "$(ok_ctl --endpoints="https://127.0.0.1:$p" get tls/key --print-value-only)" = through-m1 ] ||
        fail "linearizable get through port $p did not return the write"
done
ok_ctl --endpoints="https://127.0.0.1:$P3" put tls/key2 through-m3 >/dev/null || fail "mTLS put through m3 failed"
list=$(ok_ctl --endpoints="$ALL" member list)
[ "$(grep -c 'https://m[123]:2380' <<<"$list")" = 3 ] || fail "member list lacks https peer URLs: $list"
log "etcdctl with the client certificate: put/get through every member, member list with https peers"

refused() { # description, etcdctl args...
    local what="$1"
    shift
    if etcdctl --dial-timeout=2s --command-timeout=3s "$@" put tls/refused x >/dev/null 2>&1; then
        fail "$what was accepted"
    fi
}
refused "no client certificate" --endpoints="https://127.0.0.1:$P1" --cacert="$T/ca.crt"
refused "a client certificate from another CA" --endpoints="https://127.0.0.1:$P1" --cacert="$T/ca.crt" \
    --cert="$T/rogue-client.crt" --key="$T/rogue-client.key"
refused "plain http" --endpoints="http://127.0.0.1:$P1"
[ -z "$(ok_ctl --endpoints="$ALL" get tls/refused)" ] || fail "a refused client's write is present"
[ "$(ok_ctl --endpoints="https://127.0.0.1:$P2" get tls/key2 --print-value-only)" = through-m3 ] ||
    fail "members stopped serving after the refused attempts"
log "refused: no client certificate, another CA's certificate, plain http; the members still serve"
log "PASS ($((SECONDS - T0)) s)"
