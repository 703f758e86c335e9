#!/usr/bin/env bash
# etcdctl 3.4 end to end, side by side: the commands of `etcdctl --help`
# run in the same order against a fresh etcd 3.4 (Debian's etcd-server) and
# a fresh metalraft member, both single-member clusters named m0. Each
# command's output (stdout and stderr) and exit status must be the same on
# both, modulo what differs between any two clusters: member, cluster and
# lease ids, ports, timings, sizes, the patch version, hashes, Raft
# indexes and terms.
#
# A difference that is known and explained is listed in
# scripts/etcdctl-compare.known (one command name per line, `#` comments
# give the reason); any other difference fails the script, and so does a
# listed difference that has gone away (so the list stays true).
#
#   scripts/etcdctl-compare.sh          uses target/debug/metalraft (builds it if missing)
#   METALRAFT_BIN=path scripts/etcdctl-compare.sh
#   VERBOSE=1 scripts/etcdctl-compare.sh   prints every command's output
#
# Not covered: `check perf` and `check datascale` (minute-long load tests
# whose output is measured numbers), `make-mirror` (runs until stopped)
# and `migrate` (an offline v2-to-v3 data conversion of etcd's own files).
set -uo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

command -v etcd >/dev/null || apt-get -o DPkg::Lock::Timeout=300 install -y -q etcd-server >/dev/null
command -v etcdctl >/dev/null || apt-get -o DPkg::Lock::Timeout=300 install -y -q etcd-client >/dev/null
bin="${METALRAFT_BIN:-$root/target/debug/metalraft}"
[ -x "$bin" ] || cargo build -q -p metalraft
known_file="$root/scripts/etcdctl-compare.known"

work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
    wait 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start NAME BINARY: one single-member cluster; sets EP_<NAME>.
start() {
    local side=$1 exe=$2 cport pport
    cport=$(free_port)
    pport=$(free_port)
    "$exe" --name m0 --data-dir "$work/$side" \
        --listen-client-urls "http://127.0.0.1:$cport" --advertise-client-urls "http://127.0.0.1:$cport" \
        --listen-peer-urls "http://127.0.0.1:$pport" --initial-advertise-peer-urls "http://127.0.0.1:$pport" \
        --initial-cluster "m0=http://127.0.0.1:$pport" --initial-cluster-token compare \
        >"$work/$side.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 150); do
        curl -sf "http://127.0.0.1:$cport/health" >/dev/null && break
        sleep 0.2
    done
    curl -sf "http://127.0.0.1:$cport/health" >/dev/null || { echo "$side did not start"; cat "$work/$side.log"; exit 1; }
    printf -v "EP_$side" '%s' "127.0.0.1:$cport"
}
start etcd "$(command -v etcd)"
start metalraft "$bin"

# What differs between any two clusters, replaced by placeholders. etcd
# derives a new member's ID from its peer URLs and the time, so a second
# member with the same peer URL is refused as either "member ID already
# exist" or "Peer URLs already exists", depending on the run; both count as
# the same answer. ETCD_INITIAL_CLUSTER lists members in ID order, which
# is random: its entries are sorted.
sort_initial_cluster() {
    local line
    while IFS= read -r line; do
        if [[ $line =~ ^ETCD_INITIAL_CLUSTER=\"(.*)\"$ ]]; then
            printf 'ETCD_INITIAL_CLUSTER="%s"\n' "$(tr ',' '\n' <<<"${BASH_REMATCH[1]}" | sort | paste -sd,)"
        else
            printf '%s\n' "$line"
        fi
    done
}
# etcdctl prints member and cluster IDs with Go's %16x: an ID below 2^60 is
# padded with leading spaces, so the run of spaces before an ID is random (1 in
# 16 per ID) and is collapsed after the ID itself is replaced. Decimal JSON
# fields are replaced before hex IDs: a decimal ID of 12-16 digits would
# otherwise read as a hex one on one side only.
norm() {
    sed -E \
        -e 's/client-[0-9a-f-]{36}/client-<UUID>/g' \
        -e 's/"(ClusterID|MemberID|RaftTerm|Lease)" : [0-9]+/"\1" : <N>/g' \
        -e 's/"(cluster_id|member_id|ID|id|leader|raft_term|raft_index|raft_applied_index|hash|hash_revision|dbSize|dbSizeInUse|ttl|TTL|grantedTTL)":-?[0-9]+/"\1":<N>/g' \
        -e 's/\b[0-9a-f]{12,16}\b/<ID>/g' \
        -e 's/memberID:[0-9]+/memberID:<ID>/g' \
        -e 's/"(took|size)":[^,}]*/"\1":<T>/g' \
        -e 's/"(raftIndex|raftAppliedIndex|raftTerm)":[0-9]+/"\1":<N>/g' \
        -e 's/(true|false), (true|false), [0-9]+, [0-9]+, [0-9]+,/\1, \2, <TERM>, <INDEX>, <INDEX>,/g' \
        -e 's/\| +(true|false) \| +(true|false) \| +[0-9]+ \| +[0-9]+ \| +[0-9]+ \|/| \1 | \2 | <TERM> | <INDEX> | <INDEX> |/g' \
        -e 's/127\.0\.0\.1:[0-9]+/127.0.0.1:<PORT>/g' \
        -e 's/took = [0-9.]+[mµn]?s/took = <T>/g' \
        -e 's/[0-9.]+ (kB|MB|B)\b/<SIZE>/g' \
        -e 's/\b3\.4\.[0-9]+\b/3.4.x/g' \
        -e 's/remaining\([0-9]+s\)/remaining(<N>s)/g' \
        -e 's/TTL\([0-9]+s\)/TTL(<N>s)/g' \
        -e 's/"ts":[^,]*,//g' \
        -e 's/ +<ID>/ <ID>/g' \
        -e '/^[|+]/s/ +/ /g' -e '/^\+/s/-+/-/g' \
        -e 's/etcdserver: (member ID already exist|Peer URLs already exists)/etcdserver: <PEER URL CONFLICT>/g' \
        -e 's/^(http:\/\/)?127\.0\.0\.1:<PORT>, [0-9]+$/\1127.0.0.1:<PORT>, <HASH>/'
}

declare -A known=()
while read -r name _; do
    [ -n "$name" ] && known[$name]=1
done < <(grep -v '^\s*#' "$known_file" | grep -v '^\s*$')

declare -A var_etcd=() var_metalraft=()
same=0
differ=0
listed=0
failures=()

# cmp NAME [etcdctl args...]: runs on both sides (stdin from $IN), with
# `{VAR}` replaced by the side's captured variable VAR. The raw outputs are
# kept in $work/NAME.<side>.
# etcdctl's per-request deadline (its default is 5 s). This script compares
# answers, not latency: a CI disk that stalls an fdatasync for seconds
# must not turn one answer into "context deadline exceeded" on one side.
COMMAND_TIMEOUT=20s
cmp() {
    local name=$1
    shift
    local side out rc
    for side in etcd metalraft; do
        local ep_var="EP_$side" args=() a k
        for a in "$@"; do
            if [ "$side" = etcd ]; then
                for k in "${!var_etcd[@]}"; do a=${a//\{$k\}/${var_etcd[$k]}}; done
            else
                for k in "${!var_metalraft[@]}"; do a=${a//\{$k\}/${var_metalraft[$k]}}; done
            fi
            args+=("$a")
        done
        out=$(printf '%s' "${IN:-}" | timeout "${T:-30}" env ETCDCTL_API=3 ETCDCTL_COMMAND_TIMEOUT="$COMMAND_TIMEOUT" etcdctl --endpoints "${!ep_var}" "${args[@]}" 2>&1)
        rc=$?
        printf '%s\nexit %s\n' "$out" "$rc" >"$work/$name.$side"
    done
    if diff <(norm <"$work/$name.etcd" | sort_initial_cluster) <(norm <"$work/$name.metalraft" | sort_initial_cluster) >"$work/$name.diff"; then
        same=$((same + 1))
        if [ -n "${known[$name]:-}" ]; then
            echo "FIXED   $name (listed in $(basename "$known_file") but now the same: remove it there)"
            failures+=("$name")
        else
            echo "same    $name"
        fi
        [ -n "${VERBOSE:-}" ] && sed 's/^/        /' "$work/$name.etcd"
    else
        differ=$((differ + 1))
        if [ -n "${known[$name]:-}" ]; then
            listed=$((listed + 1))
            echo "known   $name"
        else
            echo "DIFFERS $name (< etcd, > metalraft, normalized)"
            failures+=("$name")
        fi
        sed 's/^/        /' "$work/$name.diff"
    fi
    return 0
}

# capture NAME VAR REGEX: stores the first match of REGEX's group 1 in each
# side's output of NAME as VAR.
capture() {
    local name=$1 var=$2 re=$3
    var_etcd[$var]=$(sed -nE "s/.*$re.*/\1/p" "$work/$name.etcd" | head -1)
    var_metalraft[$var]=$(sed -nE "s/.*$re.*/\1/p" "$work/$name.metalraft" | head -1)
}

# --- key-value ---
cmp put put foo bar
cmp put-second put foo2 bar2
cmp put-prev-kv put foo baz --prev-kv
cmp put-ignore-value-no-key put nokey --ignore-value
cmp get get foo
cmp get-json get foo -w json
cmp get-fields get foo -w fields
cmp get-prefix get foo --prefix
cmp get-keys-only get "" --prefix --keys-only
cmp get-print-value-only get foo --print-value-only
cmp get-rev get foo --rev=2
cmp get-future-rev get foo --rev=100
cmp get-from-key get a --from-key
cmp get-limit-sort get foo --prefix --limit=1 --sort-by=MODIFY --order=DESCEND
cmp get-count-only get foo --prefix --count-only -w json
cmp get-consistency-s get foo --consistency=s
cmp get-missing get nothing-here
cmp del-prev-kv del foo2 --prev-kv
cmp del-missing del foo2
cmp del-prefix put foo3 x
cmp del-prefix-do del foo3 --prefix
IN=$'value("foo") = "baz"\n\nput foo won\n\nget nothing-here\n\n' cmp txn txn
IN=$'mod("foo") > "1000"\n\nput foo never\n\nget foo\n\n' cmp txn-failure txn -w json
IN=$'value("foo") = "won"\n\nput foo again\n\nget foo\n\n' cmp txn-simple txn -w simple
cmp compaction compaction 3
cmp get-compacted get foo --rev=2
cmp compaction-again compaction 2
cmp compaction-physical compaction 4 --physical
T=2 cmp watch-history watch foo --rev=1 --prefix
T=2 cmp watch-prev-kv watch foo --rev=4 --prev-kv

# --- leases ---
cmp lease-grant lease grant 100
capture lease-grant LEASE 'lease ([0-9a-f]+) granted'
cmp lease-put put leased v --lease={LEASE}
cmp lease-list lease list
cmp lease-ttl lease timetolive {LEASE}
cmp lease-ttl-keys lease timetolive {LEASE} --keys
cmp lease-ttl-json lease timetolive {LEASE} --keys -w json
cmp lease-keep-alive-once lease keep-alive --once {LEASE}
cmp lease-revoke lease revoke {LEASE}
cmp lease-revoked-key get leased
cmp lease-ttl-unknown lease timetolive {LEASE}
cmp lease-revoke-unknown lease revoke {LEASE}
cmp lease-put-unknown put leased v --lease={LEASE}
cmp lease-grant-zero lease grant 0

# --- concurrency ---
cmp lock lock mylock echo held
cmp lock-no-cmd-fail lock mylock false
T=2 cmp elect elect myelection proposal-one
T=2 cmp elect-listen elect myelection -l

# --- cluster ---
cmp member-list member list
cmp member-list-json member list -w json
cmp member-list-table member list -w table
cmp member-add member add m9 --peer-urls=http://127.0.0.1:9 --learner
capture member-add NEW 'Member +([0-9a-f]+) added'
cmp member-add-dup-url member add m8 --peer-urls=http://127.0.0.1:9
cmp member-promote-unstarted member promote {NEW}
cmp member-update member update {NEW} --peer-urls=http://127.0.0.1:10
cmp member-remove member remove {NEW}
cmp member-remove-unknown member remove {NEW}
cmp member-add-bad-url member add m7 --peer-urls=not-a-url

# --- maintenance ---
cmp endpoint-health endpoint health
cmp endpoint-status endpoint status
cmp endpoint-status-json endpoint status -w json
cmp endpoint-status-cluster endpoint status --cluster -w table
cmp endpoint-hashkv endpoint hashkv
cmp endpoint-hashkv-cluster endpoint hashkv --cluster
cmp alarm-list alarm list
cmp alarm-disarm alarm disarm
# Alarm ACTIVATE has no etcdctl command: raise NOSPACE for each side's own
# member through its gateway, then see what etcdctl makes of it.
for side in etcd metalraft; do
    ep_var="EP_$side"
    id=$(curl -sf -X POST "http://${!ep_var}/v3/maintenance/status" -d '{}' |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["header"]["member_id"])')
    curl -sf -X POST "http://${!ep_var}/v3/maintenance/alarm" \
        -d "{\"action\":\"ACTIVATE\",\"memberID\":\"$id\",\"alarm\":\"NOSPACE\"}" >/dev/null ||
        echo "alarm ACTIVATE failed on $side"
done
cmp alarm-list-nospace alarm list
cmp put-nospace put k-nospace v
cmp del-nospace del k-nospace
cmp endpoint-status-nospace endpoint status
cmp endpoint-health-nospace endpoint health
cmp alarm-disarm-nospace alarm disarm
cmp alarm-list-disarmed alarm list
cmp put-disarmed put k-nospace v
cmp defrag defrag
cmp defrag-cluster defrag --cluster
cmp move-leader-self move-leader 1
cmp snapshot-save snapshot save "$work/snap.db"
cmp version version

# --- auth ---
cmp user-add-root user add root:rootpw
cmp role-add-root role add root
cmp grant-root user grant-role root root
cmp user-add-alice user add alice:apw
cmp role-add-r role add r
cmp role-grant role grant-permission r --prefix=true readwrite foo
cmp role-grant-read role grant-permission r read bar
cmp role-grant-range role grant-permission r write a z
cmp user-grant user grant-role alice r
cmp user-list user list
cmp role-list role list
cmp user-get user get alice
cmp user-get-detail user get alice --detail
cmp role-get role get r
cmp role-get-json role get r -w json
cmp user-add-dup user add alice:x
cmp role-add-dup role add r
cmp user-get-missing user get nobody
cmp role-get-missing role get nobody
cmp auth-enable auth enable
cmp auth-no-user get foo
cmp auth-bad-password get foo --user=alice:nope
cmp auth-alice-get get foo --user=alice:apw
cmp auth-alice-denied put zzz v --user=alice:apw
cmp auth-alice-read-only put bar v --user=alice:apw
cmp auth-root-get get foo --user=root:rootpw
cmp auth-alice-user-list user list --user=alice:apw
cmp auth-root-lease-grant lease grant 100 --user=root:rootpw
capture auth-root-lease-grant RL 'lease ([0-9a-f]+) granted'
cmp auth-root-put-leased put zz/leased v --lease={RL} --user=root:rootpw
cmp auth-alice-revoke-denied lease revoke {RL} --user=alice:apw
cmp auth-alice-put-lease-denied put foo/l v --lease={RL} --user=alice:apw
IN=$'\n\nput foo/l v --lease={RL}\n\n' cmp auth-alice-txn-lease-denied txn --user=alice:apw
cmp auth-alice-ttl-other lease timetolive {RL} --keys --user=alice:apw
cmp auth-alice-lease-grant lease grant 100 --user=alice:apw
capture auth-alice-lease-grant AL 'lease ([0-9a-f]+) granted'
cmp auth-alice-put-own-lease put foo/l v --lease={AL} --user=alice:apw
cmp auth-alice-revoke-own lease revoke {AL} --user=alice:apw
cmp auth-anon-lease-grant lease grant 100
cmp auth-anon-lease-list lease list
cmp auth-root-revoke lease revoke {RL} --user=root:rootpw
IN=$'newpw\n' cmp user-passwd user passwd alice --interactive=false --user=root:rootpw
cmp auth-alice-new-password get foo --user=alice:newpw
cmp role-revoke role revoke-permission r bar --user=root:rootpw
cmp role-revoke-missing role revoke-permission r nothing --user=root:rootpw
cmp user-revoke user revoke-role alice r --user=root:rootpw
cmp auth-alice-no-role get foo --user=alice:newpw
cmp user-delete user delete alice --user=root:rootpw
cmp role-delete role delete r --user=root:rootpw
cmp delete-root-role role delete root --user=root:rootpw
cmp auth-disable auth disable --user=root:rootpw
cmp after-auth get foo

echo
echo "$same same, $differ different ($listed of them known and explained in $(basename "$known_file"))"
if [ "${#failures[@]}" -gt 0 ]; then
    echo "unexpected: ${failures[*]}"
    echo "--- last 40 lines of the metalraft member's log ---"
    tail -n 40 "$work/metalraft.log"
    exit 1
fi
