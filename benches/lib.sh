# shellcheck shell=bash
# benches/lib.sh — helpers shared by the benchmark scripts (sourced, not run).
#
# The caller sets BENCH_NAME (log prefix) and KEEP_TMP, and may set
# READY_TRIES / READY_SLEEP / READY_CURL_TIMEOUT before sourcing. It assigns
# TMP once it has made its temp dir. Every background process started with
# start_bg (or added to PIDS) is stopped on exit, including on Ctrl-C.

log() { printf '[%s] %s\n' "$BENCH_NAME" "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

PIDS=()          # background processes we started
POLICY_RC_D=""   # set while a temporary policy-rc.d blocks service starts
TMP=""
READY_TRIES=${READY_TRIES:-100}
READY_SLEEP=${READY_SLEEP:-0.05}
READY_CURL_TIMEOUT=${READY_CURL_TIMEOUT:-0.5}

children_of() {
    if command -v pgrep >/dev/null 2>&1; then
        pgrep -P "$1" 2>/dev/null || true
    else
        cat /proc/"$1"/task/*/children 2>/dev/null | tr ' ' '\n' | sed '/^$/d' || true
    fi
}

descendants_of() {
    local p c
    for p in "$@"; do
        for c in $(children_of "$p"); do
            printf '%s\n' "$c"
            descendants_of "$c"
        done
    done
}

forget_pid() {
    local p keep=()
    for p in "${PIDS[@]}"; do
        [[ $p == "$1" ]] || keep+=("$p")
    done
    PIDS=("${keep[@]}")
}

stop_all() {
    ((${#PIDS[@]})) || return 0
    local all=() alive p
    # Collect the whole tree (e.g. nginx workers) before signalling, so that
    # nothing is orphaned even if a master dies first.
    mapfile -t all < <(printf '%s\n' "${PIDS[@]}"; descendants_of "${PIDS[@]}")
    kill -TERM "${all[@]}" 2>/dev/null || true
    for _ in $(seq 1 60); do
        alive=0
        for p in "${all[@]}"; do
            if kill -0 "$p" 2>/dev/null; then alive=1; break; fi
        done
        ((alive)) || break
        sleep 0.05
    done
    kill -KILL "${all[@]}" 2>/dev/null || true
    wait 2>/dev/null || true
    PIDS=()
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_all
    if [[ -n $POLICY_RC_D ]]; then rm -f -- "$POLICY_RC_D"; fi
    if [[ -n $TMP && -d $TMP ]]; then
        if [[ $KEEP_TMP == 1 ]]; then log "kept temp dir $TMP"; else rm -rf -- "$TMP"; fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Start "$@" in the background, output to $1; sets LAST_PID.
LAST_PID=""
start_bg() {
    local logf=$1
    shift
    "$@" >"$logf" 2>&1 </dev/null &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}

APT_UPDATED=0
apt_install() {
    command -v apt-get >/dev/null 2>&1 || return 1
    local sudo=()
    if [[ $EUID -ne 0 ]]; then
        command -v sudo >/dev/null 2>&1 || return 1
        sudo=(sudo)
    fi
    if ((!APT_UPDATED)); then
        log "apt-get update"
        "${sudo[@]}" apt-get update -qq >&2 || return 1
        APT_UPDATED=1
    fi
    # Debian's nginx/haproxy packages start their system service on install;
    # we never use it, so block that with a temporary policy-rc.d if none exists.
    if [[ $EUID -eq 0 && ! -e /usr/sbin/policy-rc.d ]]; then
        POLICY_RC_D=/usr/sbin/policy-rc.d
        printf '#!/bin/sh\nexit 101\n' >"$POLICY_RC_D"
        chmod 755 "$POLICY_RC_D"
    fi
    log "apt-get install $*"
    local rc=0
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "$@" >&2 || rc=$?
    if [[ -n $POLICY_RC_D ]]; then
        rm -f -- "$POLICY_RC_D"
        POLICY_RC_D=""
    fi
    return "$rc"
}

free_ports() {
    # Bind all sockets at once so the kernel hands out distinct ports.
    python3 - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks:
    s.close()
PY
}

render() {
    local tmpl=$1 out=$2 kv
    shift 2
    local expr=()
    for kv in "$@"; do expr+=(-e "s|@${kv%%=*}@|${kv#*=}|g"); done
    sed "${expr[@]}" "$tmpl" >"$out"
    if grep -q '@[A-Z_]*@' "$out"; then die "unrendered placeholder left in $out"; fi
}

# wait_http URL PID: until URL answers 2xx, while PID lives.
wait_http() {
    local url=$1 pid=$2 i
    for ((i = 0; i < READY_TRIES; i++)); do
        if curl -sf -o /dev/null --max-time "$READY_CURL_TIMEOUT" "$url"; then return 0; fi
        kill -0 "$pid" 2>/dev/null || return 1
        sleep "$READY_SLEEP"
    done
    return 1
}

dump_log() {
    local f
    for f in "$@"; do
        [[ -s $f ]] || continue
        log "---- $f"
        sed 's/^/    /' "$f" >&2
    done
}

# bench_license BIN DIR: an EdDSA key, the benchmark license's claims and a
# token signed with it (2 h) in DIR; sets TOKEN. Every benchmark enforcing
# benches/enforcing-policy.yaml sends this license as `Authorization: Bearer`.
TOKEN=""
bench_license() {
    local bin=$1 dir=$2
    "$bin" license keygen --kid bench --private "$dir/bench.key" --public "$dir/bench.pem" >/dev/null
    printf 'sub: lic-bench\nlic:\n  plan: pro\n  features: [reports]\n  seats: 100\n' >"$dir/claims.yaml"
    TOKEN=$("$bin" license issue --key "$dir/bench.key" --kid bench --claims "$dir/claims.yaml" --ttl 2h)
}
