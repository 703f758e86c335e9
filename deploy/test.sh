#!/usr/bin/env bash
# Container tests for metalraft: real image, real Docker Compose cluster,
# etcdctl from the host through the published client ports.
#
#   deploy/test.sh
#
# Needs docker, docker-compose, etcdctl (Debian etcd-client), jq, rustup
# target x86_64-unknown-linux-musl (build-image.sh adds it). Honours
# CARGO_TARGET_DIR. Everything it creates (image, containers, network,
# volumes) carries a per-run name and is removed on exit, also on failure.
#
# Steps: build image -> compose up -> put/get through every published port
# -> stop the leader's container, writes continue -> restart it -> network
# disconnect a member, the rest serve, reconnect, it catches up -> stop and
# start every container, every acknowledged write is still there -> same
# after SIGKILL of every container under a running writer.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
RUN="mrtest$$"
export METALRAFT_IMAGE="metalraft:$RUN"
export METALRAFT_CLUSTER_TOKEN="$RUN"
export METALRAFT_HOST_IP=127.0.0.1
export ETCDCTL_API=3
WORK="$(mktemp -d)"
ACKED="$WORK/acked"
: >"$ACKED"
WRITER_PID=""
IMAGE_BUILT=0
DC=(docker-compose -p "$RUN" -f "$ROOT/deploy/compose.yaml")
NET="${RUN}_raft"
# shellcheck source=deploy/lib.sh
. "$ROOT/deploy/lib.sh"

cleanup() {
    local rc=$?
    set +e
    if [ -n "$WRITER_PID" ]; then kill "$WRITER_PID" 2>/dev/null; wait "$WRITER_PID" 2>/dev/null; fi
    if [ "$rc" != 0 ]; then
        log "test failed (status $rc); last container logs:"
        "${DC[@]}" logs --no-color --tail=40 2>&1 | tail -120
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

for tool in docker docker-compose etcdctl jq; do
    command -v "$tool" >/dev/null || fail "$tool is missing (etcdctl: apt-get install etcd-client)"
done

# Three free host ports for the published client ports.
read -r P1 P2 P3 < <(free_ports 3)
export METALRAFT_PORT1=$P1 METALRAFT_PORT2=$P2 METALRAFT_PORT3=$P3
declare -A PORT=([m1]=$P1 [m2]=$P2 [m3]=$P3)
ALL="127.0.0.1:$P1,127.0.0.1:$P2,127.0.0.1:$P3"

ctl() { etcdctl --dial-timeout=2s --command-timeout=3s "$@"; }
cid() { "${DC[@]}" ps -q "$1"; }
endpoints_except() {
    local out="" m
    for m in m1 m2 m3; do
        if [ "$m" != "$1" ]; then out="$out${out:+,}127.0.0.1:${PORT[$m]}"; fi
    done
    echo "$out"
}
# put KEY VALUE ENDPOINTS TIMEOUT: retries until acknowledged, records it.
put_acked() {
    local deadline=$((SECONDS + $4))
    while [ $SECONDS -lt $deadline ]; do
        if ctl --endpoints="$3" put "$1" "$2" >/dev/null 2>&1; then
            printf '%s\t%s\n' "$1" "$2" >>"$ACKED"
            return 0
        fi
        sleep 0.3
    done
    return 1
}
wait_healthy() { # services... ; timeout 90 s
    local deadline=$((SECONDS + 90)) m st ok
    while :; do
        ok=1
        for m in "$@"; do
            st=$(docker inspect -f '{{.State.Health.Status}}' "$(cid "$m")" 2>/dev/null || echo none)
            [ "$st" = healthy ] || ok=0
        done
        [ $ok = 1 ] && return 0
        [ $SECONDS -lt $deadline ] || fail "members $* not healthy after 90 s (last: $m=$st)"
        sleep 1
    done
}
# check_acked WHEN: every acknowledged write is readable (reported as lost
# "after WHEN" otherwise); sets CHECKED to how many were checked. (Not run
# in $(...): a failure must print its message and stop the script.)
check_acked() {
    ctl --endpoints="$ALL" get "" --prefix >"$WORK/all" || fail "reading everything after $1 failed"
    paste - - <"$WORK/all" | sort >"$WORK/got"
    sort -u "$ACKED" >"$WORK/want"
    local missing
    missing=$(comm -23 "$WORK/want" "$WORK/got" | wc -l)
    [ "$missing" = 0 ] || {
        comm -23 "$WORK/want" "$WORK/got" | head -20
        fail "$missing acknowledged writes lost after $1"
    }
    CHECKED=$(wc -l <"$WORK/want")
}
leader() { # prints the service name of the current leader, as the members see it
    local ep
    ep=$(ctl --endpoints="$1" endpoint status -w json 2>/dev/null |
        jq -r '.[] | select(.Status.header.member_id == .Status.leader) | .Endpoint' | head -1 || true)
    for m in m1 m2 m3; do
        if [ "$ep" = "127.0.0.1:${PORT[$m]}" ]; then echo "$m"; fi
    done
}

# 1. Image.
log "building image $METALRAFT_IMAGE"
IMAGE_BUILT=1
"$ROOT/deploy/build-image.sh" "$METALRAFT_IMAGE"
[ "$(docker image inspect -f '{{.Config.User}}' "$METALRAFT_IMAGE")" = "65532:65532" ] || fail "image does not run as 65532:65532"
docker image inspect -f '{{json .Config.Healthcheck}}' "$METALRAFT_IMAGE" | grep -q healthcheck || fail "image has no HEALTHCHECK"
docker image inspect -f '{{json .Config.Volumes}}' "$METALRAFT_IMAGE" | grep -q '"/data"' || fail "image declares no /data volume"

# 2. Cluster.
log "compose up (client ports $P1 $P2 $P3)"
"${DC[@]}" up -d
wait_healthy m1 m2 m3
log "all members healthy"
for v in m1-data m2-data m3-data; do
    docker volume inspect "${RUN}_$v" >/dev/null || fail "named volume ${RUN}_$v missing"
done

# 3. Writes and reads through every published port.
for m in m1 m2 m3; do
    put_acked "basic/$m" "hello-$m" "127.0.0.1:${PORT[$m]}" 15 || fail "put through $m's port failed"
done
for m in m1 m2 m3; do
    for k in m1 m2 m3; do
        got=$(ctl --endpoints="127.0.0.1:${PORT[$m]}" get "basic/$k" --print-value-only 2>&1 || true)
        [ "$got" = "hello-$k" ] || fail "get basic/$k through $m: '$got'"
    done
done
n=$(ctl --endpoints="$ALL" member list | wc -l)
[ "$n" = 3 ] || fail "member list shows $n members"
log "put/get through all published ports OK; member list has 3 members"

# A background writer through all endpoints for the rest of the test;
# every acknowledged write must survive to the end.
(
    i=0
    while :; do
        i=$((i + 1))
        if ctl --endpoints="$ALL" put "bg/$i" "v$i" >/dev/null 2>&1; then
            printf 'bg/%s\tv%s\n' "$i" "$i" >>"$ACKED"
        fi
        sleep 0.05
    done
) &
WRITER_PID=$!

# 4. Stop the leader's container: writes continue.
L=$(leader "$ALL")
[ -n "$L" ] || fail "no leader found"
log "leader is $L; stopping its container"
"${DC[@]}" stop -t 5 "$L" >/dev/null 2>&1
t=$SECONDS
REST=$(endpoints_except "$L")
for i in 1 2 3 4 5; do
    put_acked "noleader/$i" "x$i" "$REST" 30 || fail "write $i after stopping leader $L did not succeed within 30 s"
done
log "writes continue without $L (first 5 acknowledged in $((SECONDS - t)) s)"
got=$(ctl --endpoints="$REST" get noleader/5 --print-value-only 2>&1 || true)
[ "$got" = x5 ] || fail "read after leader stop: '$got'"
NL=$(leader "$REST")
[ -n "$NL" ] && [ "$NL" != "$L" ] || fail "no new leader among the rest (got '$NL')"
log "new leader: $NL; starting $L again"
"${DC[@]}" start "$L" >/dev/null 2>&1
wait_healthy m1 m2 m3
got=$(ctl --endpoints="127.0.0.1:${PORT[$L]}" get noleader/5 --print-value-only 2>&1 || true)
[ "$got" = x5 ] || fail "restarted $L does not serve noleader/5: '$got'"
log "$L is back and serves the writes made while it was down"

# 5. Network partition: disconnect one member (the current leader).
D=$(leader "$ALL")
[ -n "$D" ] || D=m1
C=$(cid "$D")
log "disconnecting $D from $NET"
docker network disconnect "$NET" "$C"
REST=$(endpoints_except "$D")
for i in $(seq 1 20); do
    put_acked "part/$i" "p$i" "$REST" 30 || fail "write part/$i while $D is disconnected failed"
done
got=$(ctl --endpoints="$REST" get part/20 --print-value-only 2>&1 || true)
[ "$got" = p20 ] || fail "read while $D is disconnected: '$got'"
log "the other two serve reads and writes while $D is disconnected"
docker network connect --alias "$D" "$NET" "$C"
log "reconnected $D; waiting for it to catch up"
IP=$(docker inspect -f "{{(index .NetworkSettings.Networks \"$NET\").IPAddress}}" "$C")
deadline=$((SECONDS + 60))
caught=""
while [ $SECONDS -lt $deadline ]; do
    # Serializable read: answered from the member's own state, so it shows
    # what this member has applied. Published port first, container IP next.
    for ep in "127.0.0.1:${PORT[$D]}" "$IP:2379"; do
        if [ "$(ctl --endpoints="$ep" get part/20 --consistency=s --print-value-only 2>/dev/null)" = p20 ]; then
            caught=$ep
            break 2
        fi
    done
    sleep 1
done
[ -n "$caught" ] || fail "$D did not catch up within 60 s of reconnecting"
log "$D caught up (read part/20 from its own state via $caught)"
wait_healthy m1 m2 m3

# 6. Restart everything: every acknowledged write is still there.
kill "$WRITER_PID" 2>/dev/null
wait "$WRITER_PID" 2>/dev/null || true
WRITER_PID=""
log "stopping and starting all containers ($(wc -l <"$ACKED") acknowledged writes)"
"${DC[@]}" stop -t 10 >/dev/null 2>&1
"${DC[@]}" start >/dev/null 2>&1
wait_healthy m1 m2 m3
check_acked "restarting all containers"
put_acked after/restart ok "$ALL" 30 || fail "write after full restart failed"
log "all $CHECKED acknowledged writes present after restarting every container"

# 7. Crash everything (SIGKILL) under a running writer: acknowledged writes
# were fsynced before they were acknowledged, so they survive.
(
    i=0
    while :; do
        i=$((i + 1))
        if ctl --endpoints="$ALL" put "crash/$i" "c$i" >/dev/null 2>&1; then
            printf 'crash/%s\tc%s\n' "$i" "$i" >>"$ACKED"
        fi
    done
) &
WRITER_PID=$!
sleep 3
"${DC[@]}" kill -s KILL >/dev/null 2>&1
sleep 1
kill "$WRITER_PID" 2>/dev/null
wait "$WRITER_PID" 2>/dev/null || true
WRITER_PID=""
log "killed every container with SIGKILL under load ($(grep -c '^crash/' "$ACKED") crash/ writes acknowledged); starting them"
"${DC[@]}" start >/dev/null 2>&1
wait_healthy m1 m2 m3
check_acked "SIGKILL of every container"
log "all $CHECKED acknowledged writes present after SIGKILL of every container"
log "PASS ($((SECONDS - T0)) s)"
