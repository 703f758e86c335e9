#!/usr/bin/env bash
# Runs the Kubernetes StatefulSet's pods as plain Docker containers, to check
# that the rendered manifest's configuration really forms a cluster with the
# image — without a Kubernetes cluster:
#   - the container env of `kubectl kustomize deploy/k8s` ($(POD_NAME)
#     expanded as the kubelet does) is passed unchanged;
#   - pod DNS is imitated: each container answers to
#     metalraft-N.metalraft-peer.<namespace>.svc.cluster.local, and its
#     resolv.conf has the kubelet's search domains and ndots:5, so the short
#     names in ETCD_INITIAL_CLUSTER are resolved the way they are in a pod
#     (by musl's resolver, through the search list);
#   - the pod's security context is imitated: the UID/GID of the manifest,
#     read-only root, no capabilities, no-new-privileges;
#   - the readiness probe's request (GET /health on the client port) must
#     answer 200 on every member, and etcdctl must write, read and list the
#     three members by their pod names;
#   - scaling as deploy/README.md documents it: member add --learner, a 4th
#     pod with ETCD_INITIAL_CLUSTER_STATE=existing, promote, member remove.
#
#   deploy/k8s/smoke.sh              (SKIP_CARGO=1 reuses the built binary)
#   OVERLAY=tls deploy/k8s/smoke.sh  the mTLS overlay (deploy/k8s/tls): one
#                                    certificate for every pod from
#                                    deploy/gen-certs.sh mounted where the
#                                    overlay mounts its Secret, probes on the
#                                    plain metrics port, etcdctl over https
#                                    with a client certificate
#
# Removes its containers, network, volumes and image on exit.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
RUN="mrk8s$$"
IMAGE="metalraft:$RUN"
NET="$RUN"
export ETCDCTL_API=3
WORK="$(mktemp -d)"
# `member list` polls (0.5 s apart) until every pod has published its name.
MEMBER_LIST_TRIES=40
# shellcheck source=deploy/lib.sh
. "$ROOT/deploy/lib.sh"
cleanup() {
    local rc=$?
    set +e
    local ids
    ids=$(docker ps -aq --filter "label=metalraft-smoke=$RUN")
    if [ "$rc" != 0 ] && [ -n "$ids" ]; then
        for c in $ids; do docker logs --tail 20 "$c" 2>&1 | sed "s|^|$(docker inspect -f '{{.Name}}' "$c"): |"; done
    fi
    [ -z "$ids" ] || docker rm -f $ids >/dev/null 2>&1
    docker volume ls -q --filter "label=metalraft-smoke=$RUN" | xargs -r docker volume rm >/dev/null 2>&1
    docker network rm "$NET" >/dev/null 2>&1
    docker rmi -f "$IMAGE" >/dev/null 2>&1
    rm -rf "$WORK"
    log "cleaned up (status $rc)"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

OVERLAY="${OVERLAY:-}"
kubectl kustomize "$ROOT/deploy/k8s${OVERLAY:+/$OVERLAY}" >"$WORK/rendered.yaml"
# One line per pod: name, namespace, uid, gid, then KEY=VALUE env pairs.
# PyYAML: the system's, else the virtualenv deploy/validate.sh creates.
PY=python3
python3 -c 'import yaml' 2>/dev/null || PY="${DEPLOY_VENV:-${CARGO_TARGET_DIR:-$ROOT/target}/deploy-venv}/bin/python3"
"$PY" - "$WORK/rendered.yaml" >"$WORK/pods" <<'EOF'
import re, sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
sts = next(d for d in docs if d["kind"] == "StatefulSet")
ns = sts["metadata"].get("namespace", "default")
pod = sts["spec"]["template"]["spec"]
c = pod["containers"][0]
sc = {**pod.get("securityContext", {}), **c.get("securityContext", {})}
assert sc.get("readOnlyRootFilesystem") and sc.get("capabilities", {}).get("drop") == ["ALL"]
for i in range(sts["spec"]["replicas"]):
    name = f'{sts["metadata"]["name"]}-{i}'
    env = {}
    for e in c["env"]:
        if "value" in e:
            v = re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], e["value"])
        elif e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name":
            v = name
        else:
            raise SystemExit(f"unsupported env source {e}")
        env[e["name"]] = v
    pairs = " ".join(f"{k}={v}" for k, v in env.items())
    print(name, sts["spec"]["serviceName"], ns, sc["runAsUser"], sc["runAsGroup"], pairs)
EOF

# Plain or TLS, as the rendered environment says.
SCHEME=http
HEALTH_PORT=2379
TLS_MOUNT=()
CTL_TLS=()
if grep -q 'ETCD_CERT_FILE=/tls/' "$WORK/pods"; then
    SCHEME=https
    grep -q 'ETCD_LISTEN_METRICS_URLS=http://0.0.0.0:2381' "$WORK/pods" || fail "TLS overlay without a plain metrics URL for the probes"
    HEALTH_PORT=2381
    read -r _ svc0 ns0 _ < "$WORK/pods"
    # As deploy/README.md generates it: each pod's short peer name spelled
    # out (a wildcard over a single-label parent like *.metalraft-peer is
    # refused by TLS clients), wildcards for the longer names.
    sans="DNS:*.$svc0.$ns0.svc,DNS:*.$svc0.$ns0.svc.cluster.local"
    for i in 0 1 2 3 4; do sans="$sans,DNS:metalraft-$i.$svc0"; done
    SAN_EXTRA="$sans" \
        "$ROOT/deploy/gen-certs.sh" "$WORK/tls" tls >/dev/null
    chmod 0755 "$WORK" "$WORK/tls"
    TLS_MOUNT=(-v "$WORK/tls:/tls:ro")
    # etcdctl on the host reaches the pods by container IP, which the pod
    # certificate (DNS names, as in a cluster) does not name: it skips the
    # server-name check but still must present its client certificate. The
    # members check each other's certificates by DNS name as in a cluster;
    # deploy/test-tls.sh covers full client-side verification.
    CTL_TLS=(--insecure-skip-tls-verify --cert="$WORK/tls/client.crt" --key="$WORK/tls/client.key")
fi
etcdctl() { command etcdctl "${CTL_TLS[@]}" "$@"; }

log "building image $IMAGE"
"$ROOT/deploy/build-image.sh" "$IMAGE" | grep -v -e buildx -e DEPRECATED -e '^$' || true
docker network create --label "metalraft-smoke=$RUN" "$NET" >/dev/null
# run_pod NAME SVC NS UID GID -e K=V...: one pod as a container, with its
# own volume, its stable DNS name, the kubelet's search list and the pod's
# security context.
run_pod() {
    local name="$1" svc="$2" ns="$3" uid="$4" gid="$5"
    shift 5
    docker volume create --label "metalraft-smoke=$RUN" "$RUN-data-$name" >/dev/null
    docker run -d --name "$RUN-$name" --label "metalraft-smoke=$RUN" \
        --network "$NET" --hostname "$name" \
        --network-alias "$name.$svc.$ns.svc.cluster.local" \
        --dns-search "$ns.svc.cluster.local" --dns-search svc.cluster.local \
        --dns-search cluster.local --dns-option ndots:5 \
        --user "$uid:$gid" --read-only --cap-drop ALL --security-opt no-new-privileges \
        -v "$RUN-data-$name:/data" "${TLS_MOUNT[@]}" "$@" "$IMAGE" >/dev/null
}
declare -a NAMES
while read -r name svc ns uid gid envs; do
    NAMES+=("$name")
    args=()
    for kv in $envs; do args+=(-e "$kv"); done
    run_pod "$name" "$svc" "$ns" "$uid" "$gid" "${args[@]}"
done <"$WORK/pods"
log "started ${NAMES[*]} with the StatefulSet's environment"

ips=()
for n in "${NAMES[@]}"; do
    ips+=("$(docker inspect -f "{{(index .NetworkSettings.Networks \"$NET\").IPAddress}}" "$RUN-$n")")
done
deadline=$((SECONDS + 60))
for ip in "${ips[@]}"; do
    until [ "$(curl -s -o /dev/null -w '%{http_code}' "http://$ip:$HEALTH_PORT/health")" = 200 ] &&
        curl -s "http://$ip:$HEALTH_PORT/health" | grep -q '"health":"true"'; do
        [ $SECONDS -lt $deadline ] || fail "readiness request GET http://$ip:$HEALTH_PORT/health not healthy within 60 s"
        sleep 1
    done
done
for ip in "${ips[@]}"; do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://$ip:$HEALTH_PORT/livez")" = 200 ] ||
        fail "liveness request GET http://$ip:$HEALTH_PORT/livez did not answer 200"
done
log "GET /health answers 200 {\"health\":\"true\"} and GET /livez 200 on every pod"
EP=$(printf "$SCHEME://%s:2379," "${ips[@]}")
EP=${EP%,}
etcdctl --endpoints="$EP" --command-timeout=5s put k8s/smoke ok >/dev/null || fail "put failed"
for ip in "${ips[@]}"; do
    [ "$(etcdctl --endpoints="$SCHEME://$ip:2379" get k8s/smoke --print-value-only)" = ok ] || fail "get through $ip failed"
done
# Each member publishes its name through the log once it follows a leader
# (as etcd does: until then `member list` shows it "unstarted", unnamed), so
# the list is polled for a while rather than read once.
named_all() {
    etcdctl --endpoints="$EP" member list >"$WORK/members" || return 1
    for n in "${NAMES[@]}"; do
        grep -q ", $n, $SCHEME://$n\.metalraft-peer:2380," "$WORK/members" || return 1
    done
}
for _ in $(seq 1 "$MEMBER_LIST_TRIES"); do
    named_all && break
    sleep 0.5
done
named_all || {
    cat "$WORK/members"
    fail "member list lacks a pod's name with its stable peer URL after $MEMBER_LIST_TRIES tries"
}
log "etcdctl put/get through every pod; member list names every pod with its stable DNS peer URL"

# Scaling as documented in deploy/README.md: member add --learner, the new
# pod with ETCD_INITIAL_CLUSTER_STATE=existing and the longer
# ETCD_INITIAL_CLUSTER (what `kubectl set env` gives it), promote; then
# member remove.
read -r name svc ns uid gid envs < <(tail -1 "$WORK/pods")
new="${name%-*}-${#NAMES[@]}"
newurl="$SCHEME://$new.$svc:2380"
ic=""
for n in "${NAMES[@]}" "$new"; do ic="$ic${ic:+,}$n=$SCHEME://$n.$svc:2380"; done
out=$(etcdctl --endpoints="$EP" member add "$new" --learner --peer-urls="$newurl") || fail "member add $new failed"
id=$(awk '/^Member/ {print $2; exit}' <<<"$out")
[ -n "$id" ] || fail "no member id in: $out"
args=()
for kv in ${envs//$name/$new}; do
    case "$kv" in
        ETCD_INITIAL_CLUSTER=*) args+=(-e "ETCD_INITIAL_CLUSTER=$ic") ;;
        ETCD_INITIAL_CLUSTER_STATE=*) args+=(-e ETCD_INITIAL_CLUSTER_STATE=existing) ;;
        *) args+=(-e "$kv") ;;
    esac
done
run_pod "$new" "$svc" "$ns" "$uid" "$gid" "${args[@]}"
nip=$(docker inspect -f "{{(index .NetworkSettings.Networks \"$NET\").IPAddress}}" "$RUN-$new")
deadline=$((SECONDS + 60))
until [ "$(etcdctl --endpoints="$SCHEME://$nip:2379" get k8s/smoke --consistency=s --print-value-only 2>/dev/null)" = ok ]; do
    [ $SECONDS -lt $deadline ] || fail "learner $new did not catch up within 60 s"
    sleep 1
done
deadline=$((SECONDS + 30))
until etcdctl --endpoints="$EP" member promote "$id" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || fail "member promote $new ($id) failed for 30 s"
    sleep 1
done
etcdctl --endpoints="$EP,$SCHEME://$nip:2379" --command-timeout=5s put k8s/scaled 4 >/dev/null || fail "put with 4 voters failed"
[ "$(etcdctl --endpoints="$EP" member list | grep -c ', false$')" = 4 ] || fail "not 4 voters after promote"
log "scaled up: member add --learner $new, started with state=existing, caught up, promoted; 4 voters"
etcdctl --endpoints="$EP" member remove "$id" >/dev/null || fail "member remove $new failed"
[ "$(etcdctl --endpoints="$EP" member list | wc -l)" = 3 ] || fail "member list after remove is not 3"
etcdctl --endpoints="$EP" put k8s/scaled 3 >/dev/null || fail "put after remove failed"
log "scaled down: member remove $new; 3 members serve"
log "PASS${OVERLAY:+ (overlay $OVERLAY)} ($((SECONDS - T0)) s)"
