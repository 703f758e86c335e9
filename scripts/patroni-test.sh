#!/usr/bin/env bash
# Patroni end to end: Debian's `patroni` package with Debian's PostgreSQL 15,
# two PostgreSQL nodes on this machine, with a 3-member metalraft cluster on
# loopback as Patroni's etcd3 DCS (etcd's HTTP/JSON gateway). Checks, in order:
#
#   1. bootstrap: the first node initialises the cluster and leads, the
#      second joins as a streaming replica (a row written on the primary is
#      read on the replica); `patronictl list` shows both;
#   2. `patronictl switchover --force` to the replica;
#   3. kill -9 of the primary's Patroni and PostgreSQL: the replica takes the
#      leader key within ttl + loop_wait and is promoted;
#   4. the old primary, restarted, rejoins as a replica, while the metalraft
#      leader is killed with -9 (and restarted): Patroni keeps its primary
#      throughout;
#   5. Auth: root and a `patroni` user whose role may read and write only
#      Patroni's prefix, `auth enable`; Patroni restarted with that username
#      and password runs the cluster again (and a wrong password is refused).
#
#   scripts/patroni-test.sh                 against metalraft (cargo build -p metalraft, the debug binary)
#   METALRAFT_BIN=path scripts/patroni-test.sh
#   DCS=etcd scripts/patroni-test.sh        the same checks against etcd 3.4 (Debian's etcd-server):
#                                           tells a test bug from a server bug
#   KEEP_LOGS=1 scripts/patroni-test.sh     keep the logs (and data) of a passing run too
#
# Needs root to install packages; as root, Patroni and PostgreSQL run as the
# `postgres` user (PostgreSQL refuses root). Every wait is a bounded poll;
# every process started here is killed on exit; on failure the logs are
# kept and their directory printed.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

DCS="${DCS:-metalraft}"
PG_BIN="${PG_BIN:-/usr/lib/postgresql/15/bin}"
# Patroni's timings (short, so the run is quick) and the bounds derived
# from them.
TTL=15
LOOP_WAIT=2
RETRY_TIMEOUT=5
# Bootstrap (initdb, the first leader) and a replica's base backup.
BOOT_WAIT=90
# A member of the DCS cluster answering /health.
MEMBER_WAIT=30
# A switchover, or a restarted node becoming a streaming replica.
ROLE_WAIT=60
# A row written on the primary showing up on a replica.
REPLICATION_WAIT=30
# Poll interval of every wait.
POLL=0.5

started=$(date +%s)
step() { printf '\n=== [%3ds] %s ===\n' "$(($(date +%s) - started))" "$*"; }

# --- packages -----------------------------------------------------------
need=()
command -v patroni >/dev/null || need+=(patroni)
[ -x "$PG_BIN/postgres" ] || need+=(postgresql-15)
command -v etcdctl >/dev/null || need+=(etcd-client)
command -v curl >/dev/null || need+=(curl)
if [ "$DCS" = etcd ]; then command -v etcd >/dev/null || need+=(etcd-server); fi
if ((${#need[@]})); then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    # The packages' own services are not wanted (and a container has no init).
    apt-get install -y -q --no-install-recommends "${need[@]}"
fi

case "$DCS" in
metalraft)
    if [ -n "${METALRAFT_BIN:-}" ]; then
        dcs_bin=$METALRAFT_BIN
    else
        cargo build -q -p metalraft
        dcs_bin="${CARGO_TARGET_DIR:-$root/target}/debug/metalraft"
    fi
    ;;
etcd) dcs_bin=$(command -v etcd) ;;
*)
    echo "DCS must be metalraft or etcd, not '$DCS'" >&2
    exit 2
    ;;
esac

# The checks' clock (installing and building above are not counted).
started=$(date +%s)

# --- the work directory, cleanup ----------------------------------------
work=$(mktemp -d /tmp/patroni-test.XXXXXX)
chmod 755 "$work"
if [ "$(id -u)" = 0 ]; then
    pg_user=postgres
    # setpriv execs: the pid of the background job is Patroni's own.
    as_pg=(setpriv --reuid=postgres --regid=postgres --init-groups --)
else
    pg_user=$(id -un)
    as_pg=()
fi

declare -A member_pid=() patroni_pid=()
ok=""
# Kills what this script started: Patroni, each node's postmaster and its
# children, the DCS members.
kill_node() {
    local n=$1 pids=""
    [ -n "${patroni_pid[$n]:-}" ] && pids="${patroni_pid[$n]}"
    local pm
    pm=$(head -1 "$work/$n/data/postmaster.pid" 2>/dev/null || true)
    # Only the postmaster of this node's data directory (a stale pid file
    # may name a recycled pid).
    if [ -n "$pm" ] && tr '\0' ' ' 2>/dev/null <"/proc/$pm/cmdline" | grep -qF "$work/$n/data"; then
        pids="$pids $pm $(pgrep -P "$pm" | tr '\n' ' ')"
    else
        pm=""
    fi
    # shellcheck disable=SC2086
    [ -n "${pids// /}" ] && kill -9 $pids 2>/dev/null || true
    [ -n "${patroni_pid[$n]:-}" ] && wait "${patroni_pid[$n]}" 2>/dev/null || true
    patroni_pid[$n]=""
    # A killed postmaster is not our child: wait for it to be gone.
    if [ -n "$pm" ]; then
        for _ in $(seq 100); do [ -d "/proc/$pm" ] || break; sleep 0.1; done
    fi
}
kill_member() {
    local i=$1
    [ -n "${member_pid[$i]:-}" ] || return 0
    kill -9 "${member_pid[$i]}" 2>/dev/null || true
    wait "${member_pid[$i]}" 2>/dev/null || true
    member_pid[$i]=""
}
cleanup() {
    set +e
    for n in pg1 pg2 bad; do kill_node "$n"; done
    for i in 0 1 2; do kill_member "$i"; done
    if [ -n "$ok" ] && [ -z "${KEEP_LOGS:-}" ]; then
        rm -rf "$work"
    elif [ -n "$ok" ]; then
        echo "logs kept: $work"
    else
        # Keep the logs, not the bulky data (WAL segments, databases).
        rm -rf "$work"/m[0-2]/ "$work"/pg[12]/data/base "$work"/pg[12]/data/pg_wal
        echo
        echo "FAILED after $(($(date +%s) - started)) s against $DCS. Logs (kept): $work"
        echo "  DCS members: $work/m{0,1,2}.log   Patroni: $work/pg{1,2}.log   PostgreSQL: $work/pg{1,2}/data/log/"
        for f in "$work"/pg1.log "$work"/pg2.log; do
            [ -f "$f" ] && { echo "--- last lines of $f"; tail -15 "$f"; }
        done
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
fail() {
    echo "FAIL: $*" >&2
    exit 1
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# --- the DCS cluster ----------------------------------------------------
declare -a client_port peer_port
for i in 0 1 2; do
    client_port[i]=$(free_port)
    peer_port[i]=$(free_port)
done
initial_cluster="m0=http://127.0.0.1:${peer_port[0]},m1=http://127.0.0.1:${peer_port[1]},m2=http://127.0.0.1:${peer_port[2]}"
endpoints="127.0.0.1:${client_port[0]},127.0.0.1:${client_port[1]},127.0.0.1:${client_port[2]}"

start_member() {
    local i=$1
    "$dcs_bin" --name "m$i" --data-dir "$work/m$i" \
        --listen-client-urls "http://127.0.0.1:${client_port[i]}" \
        --advertise-client-urls "http://127.0.0.1:${client_port[i]}" \
        --listen-peer-urls "http://127.0.0.1:${peer_port[i]}" \
        --initial-advertise-peer-urls "http://127.0.0.1:${peer_port[i]}" \
        --initial-cluster "$initial_cluster" --initial-cluster-token patroni-test \
        --heartbeat-interval 100 --election-timeout 1000 >>"$work/m$i.log" 2>&1 &
    member_pid[$i]=$!
}
wait_member() {
    local i=$1 deadline=$(($(date +%s) + MEMBER_WAIT))
    until curl -sf -m 2 "http://127.0.0.1:${client_port[i]}/health" >/dev/null; do
        (($(date +%s) < deadline)) || fail "member m$i not healthy within ${MEMBER_WAIT}s (log: $work/m$i.log)"
        sleep "$POLL"
    done
}
ctl() { etcdctl --endpoints="$endpoints" --command-timeout=10s --dial-timeout=3s "$@"; }
# The index (0..2) of the member that leads the DCS cluster.
dcs_leader() {
    local i st
    for i in 0 1 2; do
        [ -n "${member_pid[$i]:-}" ] || continue
        st=$(etcdctl --endpoints="127.0.0.1:${client_port[i]}" --command-timeout=3s endpoint status -w json 2>/dev/null) || continue
        python3 -c 'import json,sys; s=json.load(sys.stdin)[0]["Status"]; sys.exit(0 if s["header"]["member_id"]==s["leader"] else 1)' <<<"$st" && {
            echo "$i"
            return 0
        }
    done
    return 1
}

# --- Patroni nodes --------------------------------------------------------
declare -A rest_port pg_port
for n in pg1 pg2 bad; do
    rest_port[$n]=$(free_port)
    pg_port[$n]=$(free_port)
    mkdir -p "$work/$n"
    chown "$pg_user" "$work/$n"
    chmod 700 "$work/$n"
done
SCOPE=metalraft-patroni
SUPERUSER_PASSWORD=pg-super-secret
REPLICATOR_PASSWORD=pg-repl-secret

# write_config NODE [ETCD_USER ETCD_PASSWORD]
write_config() {
    local n=$1 user=${2:-} password=${3:-} auth=""
    if [ -n "$user" ]; then
        auth="  username: $user
  password: $password"
    fi
    cat >"$work/$n.yml" <<EOF
scope: $SCOPE
namespace: /service/
name: $n
log:
  level: INFO
restapi:
  listen: 127.0.0.1:${rest_port[$n]}
  connect_address: 127.0.0.1:${rest_port[$n]}
etcd3:
  hosts: $endpoints
  protocol: http
$auth
bootstrap:
  dcs:
    ttl: $TTL
    loop_wait: $LOOP_WAIT
    retry_timeout: $RETRY_TIMEOUT
    maximum_lag_on_failover: 1048576
    postgresql:
      use_pg_rewind: true
      parameters:
        wal_log_hints: "on"
        max_wal_senders: 5
        max_replication_slots: 5
  initdb:
  - encoding: UTF8
  - auth: scram-sha-256
  pg_hba:
  - local all all trust
  - host replication replicator 127.0.0.1/32 scram-sha-256
  - host all all 127.0.0.1/32 scram-sha-256
postgresql:
  listen: 127.0.0.1:${pg_port[$n]}
  connect_address: 127.0.0.1:${pg_port[$n]}
  data_dir: $work/$n/data
  bin_dir: $PG_BIN
  pgpass: $work/$n/pgpass
  authentication:
    superuser:
      username: postgres
      password: $SUPERUSER_PASSWORD
    replication:
      username: replicator
      password: $REPLICATOR_PASSWORD
    rewind:
      username: postgres
      password: $SUPERUSER_PASSWORD
  parameters:
    unix_socket_directories: '$work/$n'
    shared_buffers: 16MB
    logging_collector: "on"
    log_directory: log
EOF
    chmod 644 "$work/$n.yml"
}
start_patroni() {
    local n=$1
    "${as_pg[@]}" patroni "$work/$n.yml" >>"$work/$n.log" 2>&1 &
    patroni_pid[$n]=$!
}
# The HTTP status of Patroni's REST API check PATH on NODE (000: no answer).
rest() { curl -s -o /dev/null -m 2 -w '%{http_code}' "http://127.0.0.1:${rest_port[$1]}$2" || true; }
# wait_role NODE primary|replica SECONDS
wait_role() {
    local n=$1 role=$2 secs=$3 deadline=$(($(date +%s) + $3))
    until [ "$(rest "$n" "/$role")" = 200 ]; do
        (($(date +%s) < deadline)) || fail "$n is not a running $role after ${secs}s (log: $work/$n.log)"
        sleep "$POLL"
    done
}
psql_on() {
    local n=$1
    shift
    PGPASSWORD=$SUPERUSER_PASSWORD PGCONNECT_TIMEOUT=3 PGOPTIONS="-c client_min_messages=warning" "$PG_BIN/psql" -h 127.0.0.1 -p "${pg_port[$n]}" \
        -U postgres -d postgres -XAtq -v ON_ERROR_STOP=1 "$@"
}
# check_replication PRIMARY REPLICA: a row written on PRIMARY is read on REPLICA.
check_replication() {
    local p=$1 r=$2 v deadline
    v="written-on-$p-$(date +%s%N)"
    psql_on "$p" -c "CREATE TABLE IF NOT EXISTS replication_check(v text); INSERT INTO replication_check VALUES ('$v')" ||
        fail "cannot write on the primary $p"
    deadline=$(($(date +%s) + REPLICATION_WAIT))
    until [ "$(psql_on "$r" -c "SELECT count(*) FROM replication_check WHERE v = '$v'" 2>/dev/null)" = 1 ]; do
        (($(date +%s) < deadline)) || fail "the row written on $p did not reach $r within ${REPLICATION_WAIT}s"
        sleep "$POLL"
    done
    [ "$(psql_on "$r" -c 'SELECT pg_is_in_recovery()')" = t ] || fail "$r is not in recovery"
    echo "replication $p -> $r: ok"
}
patronictl_() { patronictl -c "$work/pg1.yml" "$@"; }
# The leader key's holder, as the DCS stores it (empty: none).
leader_key() { ctl "$@" get --print-value-only "/service/$SCOPE/leader" 2>/dev/null || true; }
# check_list LEADER REPLICA: `patronictl list` shows LEADER leading and
# REPLICA running (polled: a member's state lags its REST API by a loop).
check_list() {
    local out="" deadline=$(($(date +%s) + ROLE_WAIT))
    until python3 -c '
import json, sys
leader, replica, rows = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
roles = {r["Member"]: (r["Role"], r["State"]) for r in rows}
ok = roles.get(leader) == ("Leader", "running") and roles.get(replica) in (("Replica", "running"), ("Replica", "streaming"))
sys.exit(0 if ok and len(rows) == 2 else 1)' "$1" "$2" "${out:-[]}"; do
        (($(date +%s) < deadline)) || fail "patronictl list does not show $1 leading and $2 replicating: $out"
        sleep "$POLL"
        out=$(patronictl_ list -f json) || fail "patronictl list failed"
    done
    patronictl_ list
}

# --- 0. the DCS cluster -------------------------------------------------
step "a 3-member $DCS cluster on loopback ($dcs_bin)"
for i in 0 1 2; do start_member "$i"; done
for i in 0 1 2; do wait_member "$i"; done
ctl endpoint status -w table

# --- 1. bootstrap ---------------------------------------------------------
step "1. bootstrap: pg1 initialises and leads, pg2 joins as a streaming replica"
for n in pg1 pg2; do write_config "$n"; done
start_patroni pg1
wait_role pg1 primary "$BOOT_WAIT"
start_patroni pg2
wait_role pg2 replica "$BOOT_WAIT"
check_replication pg1 pg2
check_list pg1 pg2

# --- 2. switchover ----------------------------------------------------------
step "2. patronictl switchover --force to the replica pg2"
patronictl_ switchover --leader pg1 --candidate pg2 --force
wait_role pg2 primary "$ROLE_WAIT"
wait_role pg1 replica "$ROLE_WAIT"
check_replication pg2 pg1
check_list pg2 pg1

# --- 3. failover --------------------------------------------------------------
step "3. kill -9 the primary pg2 (Patroni and PostgreSQL): pg1 takes over within ttl + loop_wait = $((TTL + LOOP_WAIT))s"
killed=$(date +%s.%N)
kill_node pg2
"$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "${pg_port[pg2]}" -t 2 && fail "pg2's PostgreSQL still answers after kill -9"
deadline=$(($(date +%s) + TTL + LOOP_WAIT + ROLE_WAIT))
until [ "$(leader_key)" = pg1 ]; do
    (($(date +%s) < deadline)) || fail "pg1 did not take the leader key (log: $work/pg1.log)"
    sleep 0.2
done
took=$(python3 -c "import time; print(round(time.time() - $killed, 1))")
echo "pg1 holds the leader key ${took}s after the kill"
python3 -c "import sys; sys.exit(0 if $took <= $((TTL + LOOP_WAIT)) else 1)" ||
    fail "the failover took ${took}s, more than ttl + loop_wait = $((TTL + LOOP_WAIT))s"
wait_role pg1 primary "$ROLE_WAIT"
echo "pg1 is a running primary $(python3 -c "import time; print(round(time.time() - $killed, 1))")s after the kill"

# --- 4. rejoin, with the DCS leader killed meanwhile ---------------------------
step "4. pg2 restarted rejoins as a replica; meanwhile kill -9 the $DCS leader: pg1 stays primary throughout"
start_patroni pg2
victim=$(dcs_leader) || fail "no $DCS leader found"
echo "killing $DCS member m$victim (the leader)"
kill_member "$victim"
# Watch Patroni's primary through the DCS outage and for longer than a ttl
# after the kill (so the leader's lease was kept alive through the other
# members), until pg2 is back as a replica. The killed member restarts
# after DCS_DOWN seconds.
DCS_DOWN=$((LOOP_WAIT + RETRY_TIMEOUT))
killed=$(date +%s)
deadline=$((killed + TTL + ROLE_WAIT))
restarted=""
polls=0
while :; do
    now=$(date +%s)
    [ "$(rest pg1 /primary)" = 200 ] || fail "pg1 lost its primary role $((now - killed))s after the $DCS leader was killed (log: $work/pg1.log)"
    polls=$((polls + 1))
    if [ -z "$restarted" ] && ((now >= killed + DCS_DOWN)); then
        echo "restarting m$victim after ${DCS_DOWN}s"
        start_member "$victim"
        restarted=1
    fi
    if ((now >= killed + TTL + RETRY_TIMEOUT)) && [ "$(rest pg2 /replica)" = 200 ]; then
        break
    fi
    ((now < deadline)) || fail "pg2 did not rejoin as a replica within $((TTL + ROLE_WAIT))s (log: $work/pg2.log)"
    sleep "$POLL"
done
echo "pg1 answered as primary at all $polls polls over $(($(date +%s) - killed))s; pg2 is a running replica"
wait_member "$victim"
[ "$(leader_key)" = pg1 ] || fail "the leader key moved away from pg1"
check_replication pg1 pg2
check_list pg1 pg2

# --- 5. Auth ----------------------------------------------------------------------
step "5. Auth: a patroni user with a role on /service/ only; auth enable; Patroni with username and password"
# Patroni stops its PostgreSQL on SIGTERM; its leader key is released.
for n in pg1 pg2; do
    kill -TERM "${patroni_pid[$n]}"
done
for n in pg1 pg2; do
    for _ in $(seq $((ROLE_WAIT * 10))); do [ -d "/proc/${patroni_pid[$n]}" ] || break; sleep 0.1; done
    [ -d "/proc/${patroni_pid[$n]}" ] && fail "$n's Patroni did not stop on SIGTERM within ${ROLE_WAIT}s"
    wait "${patroni_pid[$n]}" 2>/dev/null || true
    patroni_pid[$n]=""
done
ctl user add root:root-secret
ctl role add root
ctl user grant-role root root
ctl role add patroni
ctl role grant-permission patroni --prefix=true readwrite /service/
ctl user add patroni:patroni-secret
ctl user grant-role patroni patroni
ctl auth enable
# Without credentials the prefix is closed; the patroni user may read it,
# and nothing else.
ctl get --prefix /service/ >/dev/null 2>&1 && fail "an anonymous read succeeded with auth enabled"
ctl --user patroni:patroni-secret get --prefix --keys-only /service/ >/dev/null ||
    fail "the patroni user cannot read its prefix"
ctl --user patroni:patroni-secret put /elsewhere x >/dev/null 2>&1 &&
    fail "the patroni user wrote outside its prefix"

write_config bad patroni wrong-password
start_patroni bad
for _ in $(seq $((MEMBER_WAIT * 10))); do [ -d "/proc/${patroni_pid[bad]}" ] || break; sleep 0.1; done
[ -d "/proc/${patroni_pid[bad]}" ] && fail "Patroni with a wrong password did not exit"
wait "${patroni_pid[bad]}" 2>/dev/null || true
patroni_pid[bad]=""
grep -q 'authentication failed' "$work/bad.log" || fail "Patroni with a wrong password did not report the refusal ($work/bad.log)"
echo "a wrong password is refused: $(grep -o 'Etcd3 authentication failed.*' "$work/bad.log" | head -1)"

for n in pg1 pg2; do write_config "$n" patroni patroni-secret; done
start_patroni pg1
wait_role pg1 primary "$ROLE_WAIT"
start_patroni pg2
wait_role pg2 replica "$ROLE_WAIT"
check_replication pg1 pg2
check_list pg1 pg2
[ "$(leader_key --user root:root-secret)" = pg1 ] || fail "the leader key is not pg1's"
# Kill the member pg1's Patroni talks to: it moves to another member with
# its token, which (as in etcd) every member knows; pg1 stays primary.
port=$(grep -o 'Selected new etcd server http://127.0.0.1:[0-9]*' "$work/pg1.log" | tail -1 | sed 's/.*://')
victim=""
for i in 0 1 2; do [ "${client_port[i]}" = "$port" ] && victim=$i; done
[ -n "$victim" ] || fail "cannot tell which $DCS member pg1's Patroni uses (log: $work/pg1.log)"
echo "killing $DCS member m$victim, the one pg1's Patroni uses"
lines=$(wc -l <"$work/pg1.log")
kill_member "$victim"
killed=$(date +%s)
until (($(date +%s) >= killed + 2 * LOOP_WAIT + RETRY_TIMEOUT)); do
    [ "$(rest pg1 /primary)" = 200 ] || fail "pg1 lost its primary role after its $DCS member was killed (log: $work/pg1.log)"
    sleep "$POLL"
done
tail -n +"$((lines + 1))" "$work/pg1.log" | grep -q "Selected new etcd server" ||
    fail "pg1's Patroni did not move to another member"
start_member "$victim"
wait_member "$victim"
# Patroni logs "Invalid auth token" when a member refuses its token.
! grep -q 'Invalid auth token' "$work/pg1.log" "$work/pg2.log" ||
    fail "a member refused Patroni's token: $(grep -h 'Invalid auth token' "$work/pg1.log" "$work/pg2.log" | head -2)"
patronictl_ switchover --leader pg1 --candidate pg2 --force
wait_role pg2 primary "$ROLE_WAIT"
wait_role pg1 replica "$ROLE_WAIT"
check_replication pg2 pg1

ok=1
step "done: Patroni end to end against $DCS passed in $(($(date +%s) - started))s"
