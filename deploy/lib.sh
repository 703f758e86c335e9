# Helpers sourced by deploy/test.sh, deploy/test-tls.sh and
# deploy/k8s/smoke.sh (not run on its own).

T0=$SECONDS
log() { printf '[%4ds] %s\n' $((SECONDS - T0)) "$*"; }
fail() {
    log "FAIL: $*"
    exit 1
}

# free_ports N: N free TCP ports on 127.0.0.1, space-separated.
free_ports() {
    python3 -c '
import socket, sys
s = [socket.socket() for _ in range(int(sys.argv[1]))]
for x in s:
    x.bind(("127.0.0.1", 0))
print(*[x.getsockname()[1] for x in s])' "$1"
}

# compose_remove PROJECT IMAGE_OR_EMPTY COMPOSE_COMMAND...: removes every
# container, volume and network of the Compose project (also ones `down`
# missed) and the image if one is named.
compose_remove() {
    local project="$1" image="$2"
    shift 2
    "$@" down -v --remove-orphans -t 5 >/dev/null 2>&1
    docker ps -aq --filter "label=com.docker.compose.project=$project" | xargs -r docker rm -f >/dev/null 2>&1
    docker volume ls -q --filter "label=com.docker.compose.project=$project" | xargs -r docker volume rm >/dev/null 2>&1
    docker network rm "${project}_raft" >/dev/null 2>&1
    if [ -n "$image" ]; then docker rmi -f "$image" >/dev/null 2>&1; fi
    return 0
}
