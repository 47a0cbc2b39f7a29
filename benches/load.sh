#!/usr/bin/env bash
# benches/load.sh — loopback load benchmark: licensegate vs nginx vs HAProxy.
#
# Usage (from anywhere; paths are resolved relative to the repository root):
#
#   benches/load.sh
#   SKIP_BUILD=1 ROUNDS=1 DURATION=2 benches/load.sh
#   WORKERS=2 CONNECTIONS=128 DURATION=10 ROUNDS=5 benches/load.sh
#
# What it measures
#   A trivial upstream (nginx, 1 worker, `return 200 "ok\n"`, keep-alive on,
#   access_log off) is put behind each reverse proxy in turn, and wrk drives
#   the same plain HTTP/1.1 keep-alive GET load at each target:
#     1. direct       wrk -> upstream (no proxy; reference only)
#     2. licensegate  wrk -> licensegate -> upstream (no license, no policy)
#     2b. hyper       the same with `http1: hyper` (hyper's HTTP/1 server and
#                     client instead of the relay) — with HYPER=1 (default)
#     3. enforcing    wrk -> licensegate enforcing a demo-like policy -> upstream:
#                     a header license (verification cache hit), a feature
#                     check, a seat check by `x-user` and a per-license rate
#                     limit set high enough never to trigger (ENFORCE=0 skips)
#     3a. enforcing-hyper  the same enforcing proxy with `http1: hyper` — with HYPER=1
#     4. nginx        wrk -> nginx proxy_pass (upstream keepalive 64) -> upstream
#     5. haproxy      wrk -> HAProxy (mode http, http-reuse always) -> upstream
#                     (skipped with a note when HAProxy cannot be installed)
#     3b. redis       enforcing, counters in Redis, accurate mode (one round
#                     trip per decision) — with REDIS=1 (default when
#                     redis-server is installed)
#     3c. leased      enforcing, counters in Redis, leased mode
#     3d. metered     enforcing plus metering (benches/metered-policy.yaml:
#                     two meters on the route, a 10 s window, a JSON-lines
#                     sink) — with METERING=1 (default); the report adds its
#                     throughput against enforcing and the journal's disk
#                     writes per second against the requests per second
#   Every target receives byte-identical requests: the license and `x-user`
#   headers are sent to all of them.
#
#   Then, with H2=1 (default when h2load is installed), the same rounds over
#   HTTP/2 with prior knowledge (h2c): h2load -t1 -c CONNECTIONS -m H2_STREAMS
#   against licensegate (same port), enforcing, nginx (`listen ... http2`) and
#   HAProxy (`bind ... proto h2`); upstreams stay HTTP/1.1. h2load reports no
#   percentiles: the table shows req/s and the mean time per request.
#   Every proxy gets the same worker/thread budget (WORKERS): licensegate
#   --workers, nginx worker_processes, HAProxy nbthread. All servers are started
#   once up front and kept running; after a 1 s warm-up per target, ROUNDS
#   rounds run every target once each, in the order above (alternating, so
#   slow drift such as thermal throttling or noisy neighbours hits all targets
#   alike). The report is the median over rounds of req/s, p50, p99 and p99.9
#   latency (medians of the per-round wrk percentiles; p99.9 from a wrk Lua
#   `done` hook), CPU seconds per 100k requests of the proxy under test (user +
#   system ticks of the process and its children, nginx workers included,
#   during the run), peak RSS of every proxy over all runs (VmHWM summed over
#   its processes), the ratio
#   licensegate req/s / target req/s, and licensegate's resident memory:
#   idle (VmRSS right after readiness, before any load) and peak (VmHWM after
#   all runs).
#
#   A Markdown table goes to stdout; progress and logs go to stderr. A JSON
#   file with every round's raw figures and the medians is written to OUT_JSON.
#
# Environment
#   WORKERS      worker threads/processes for every proxy under test (default 1)
#   ROUNDS       measured rounds (default 3)
#   DURATION     seconds per wrk run (default 5)
#   CONNECTIONS  wrk connections, always with one wrk thread (default 64)
#   SKIP_BUILD   1 = do not run `cargo build --release` first (default 0)
#   BIN          licensegate binary (default <repo>/target/release/licensegate);
#                called as: BIN run --listen A --upstream URL --admin A --workers N
#   PIN          1 = pin with taskset: wrk on CPU 0, the proxy under test on
#                CPU 1 (CPUs 1..WORKERS when WORKERS > 1). Default 1 when
#                taskset exists, nproc >= 2 and WORKERS = 1; otherwise 0.
#   OUT_JSON     JSON output path (default <repo>/target/bench/load.json)
#   UPSTREAM_CPUS  taskset CPU list for the upstream nginx when PIN=1 (default:
#                a spare core if there is one, else CPU 0, shared with wrk)
#   LICENSEGATE_LOG  licensegate's log filter (default "warn", so that logging
#                costs nothing under load; its log is shown when it fails)
#   LG_EXTRA_ARGS  extra arguments appended to the licensegate command line
#   KEEP_TMP     1 = keep the temp dir (configs, logs, raw wrk output)
#   ENFORCE      0 = skip the enforcing licensegate target (default 1)
#   REDIS        0 = skip the Redis-backed targets (default 1 when redis-server exists)
#   METERING     0 = skip the metered target (default 1)
#   HYPER        0 = skip the plain and the enforcing licensegate with `http1: hyper`
#                (default 1)
#   H2           0 = skip the HTTP/2 pass (default 1 when h2load exists)
#   H2_STREAMS   concurrent streams per HTTP/2 connection (default 10)
#
# Requirements: wrk, nginx, curl, python3 (and optionally haproxy, taskset).
# Missing packages are installed with apt-get (wrk, nginx-light or nginx,
# haproxy, curl, python3), after a single `apt-get update`.
#
# Everything listens on 127.0.0.1 only, on ports the kernel reports free.
# nginx and HAProxy run as foreground children of this script with configs,
# pid files and logs in a private temp dir (never the system services), and
# every background process is killed on exit, including on Ctrl-C.
set -euo pipefail

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd -- "$SCRIPT_DIR/.." && pwd)
# nginx and haproxy live in /usr/sbin, which is not on every user's PATH.
PATH=$PATH:/usr/local/sbin:/usr/sbin:/sbin
export PATH

WORKERS=${WORKERS:-1}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
CONNECTIONS=${CONNECTIONS:-64}
SKIP_BUILD=${SKIP_BUILD:-0}
BIN=${BIN:-$ROOT/target/release/licensegate}
OUT_JSON=${OUT_JSON:-$ROOT/target/bench/load.json}
KEEP_TMP=${KEEP_TMP:-0}
ENFORCE=${ENFORCE:-1}
METERING=${METERING:-1}
HYPER=${HYPER:-1}
if command -v redis-server >/dev/null 2>&1; then REDIS=${REDIS:-1}; else REDIS=0; fi
if command -v h2load >/dev/null 2>&1; then H2=${H2:-1}; else H2=0; fi
H2_STREAMS=${H2_STREAMS:-10}
LG_LOG_FILTER=${LICENSEGATE_LOG:-warn}
WARMUP_SECONDS=1
READY_TRIES=100    # x READY_SLEEP = 5 s upper bound per server
READY_SLEEP=0.05

BENCH_NAME=load.sh
# shellcheck source=benches/lib.sh
source "$SCRIPT_DIR/lib.sh"

for var in WORKERS ROUNDS DURATION CONNECTIONS; do
    [[ ${!var} =~ ^[1-9][0-9]*$ ]] || die "$var must be a positive integer (got '${!var}')"
done

# --------------------------------------------------------------------------
# Dependencies
# --------------------------------------------------------------------------

ensure_tools() {
    local t missing=()
    for t in wrk nginx curl python3 haproxy; do
        command -v "$t" >/dev/null 2>&1 || missing+=("$t")
    done
    ((${#missing[@]})) || return 0
    log "missing: ${missing[*]}"
    for t in "${missing[@]}"; do
        case $t in
            nginx) apt_install nginx-light || apt_install nginx || true ;;
            *) apt_install "$t" || true ;;
        esac
    done
    for t in wrk nginx curl python3; do
        command -v "$t" >/dev/null 2>&1 || die "$t is required and could not be installed"
    done
}

ensure_tools
HAVE_HAPROXY=0
if command -v haproxy >/dev/null 2>&1; then HAVE_HAPROXY=1; fi

# --------------------------------------------------------------------------
# Build
# --------------------------------------------------------------------------
if [[ $SKIP_BUILD != 1 ]]; then
    log "cargo build --release (set SKIP_BUILD=1 to skip)"
    (cd "$ROOT" && cargo build --release) >&2
fi
[[ -x $BIN ]] || die "licensegate binary not found or not executable: $BIN (build it, or set BIN=...)"

# --------------------------------------------------------------------------
# Setup: temp dir, ports, CPU pinning
# --------------------------------------------------------------------------
TMP=$(mktemp -d "${TMPDIR:-/tmp}/licensegate-load.XXXXXX")
# nginx started as root runs its workers as "nobody": let them traverse.
chmod 755 "$TMP"
mkdir -p "$TMP/wrk"
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

PORTS=$(free_ports 20)
read -r UP_PORT LG_PORT LG_ADMIN_PORT NGX_PORT HAP_PORT EN_PORT EN_ADMIN_PORT \
    RD_PORT RA_PORT RA_ADMIN_PORT RL_PORT RL_ADMIN_PORT NGX_H2_PORT HAP_H2_PORT \
    MT_PORT MT_ADMIN_PORT HY_PORT HY_ADMIN_PORT EH_PORT EH_ADMIN_PORT <<<"$PORTS"
[[ -n $EH_ADMIN_PORT ]] || die "could not pick free loopback ports"

NPROC=$(nproc)
if [[ -z ${PIN:-} ]]; then
    if ((NPROC >= 2 && WORKERS == 1)) && command -v taskset >/dev/null 2>&1; then PIN=1; else PIN=0; fi
fi
if [[ $PIN == 1 ]] && ! command -v taskset >/dev/null 2>&1; then
    log "PIN=1 but taskset is missing; not pinning"
    PIN=0
fi
if [[ $PIN == 1 ]] && ((NPROC < WORKERS + 1)); then
    log "PIN=1 needs at least WORKERS+1=$((WORKERS + 1)) CPUs (have $NPROC); not pinning"
    PIN=0
fi
WRK_PFX=()
PROXY_PFX=()
UP_PFX=()
PIN_DESC="off"
if [[ $PIN == 1 ]]; then
    WRK_CPUS=0
    if ((WORKERS == 1)); then PROXY_CPUS=1; else PROXY_CPUS="1-$WORKERS"; fi
    # The upstream gets a core of its own only when there is one to spare.
    # Otherwise (e.g. 2 cores) it shares CPU 0 with wrk: that leaves the proxy
    # under test a dedicated core, identical for every proxy, at the price of
    # load generator and upstream competing for CPU 0 — so the "direct" row is
    # a reference point, not an upper bound for what the proxies could reach.
    if ((NPROC >= WORKERS + 2)); then UP_CPUS=$((WORKERS + 1)); else UP_CPUS=0; fi
    UP_CPUS=${UPSTREAM_CPUS:-$UP_CPUS}
    WRK_PFX=(taskset -c "$WRK_CPUS")
    PROXY_PFX=(taskset -c "$PROXY_CPUS")
    UP_PFX=(taskset -c "$UP_CPUS")
    PIN_DESC="wrk CPU $WRK_CPUS, proxy CPU $PROXY_CPUS, upstream CPU $UP_CPUS"
fi
# Other load on the machine skews everything; record it for the report.
LOADAVG_START=$(cut -d' ' -f1-3 /proc/loadavg)
log "workers=$WORKERS rounds=$ROUNDS duration=${DURATION}s connections=$CONNECTIONS pin: $PIN_DESC"

# Render a template: render TEMPLATE OUT KEY=VALUE... (replaces @KEY@).

# Poll URL until it answers 2xx; fail early if PID died. Bounded.

rss_kb() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }

META="$TMP/meta"
: >"$META"
meta() { printf '%s=%s\n' "$1" "$2" >>"$META"; }

declare -A URL=()
TARGETS=()

# --------------------------------------------------------------------------
# Start servers (once; they stay up across all rounds)
# --------------------------------------------------------------------------
# 1. upstream
mkdir "$TMP/upstream"
render "$SCRIPT_DIR/nginx-upstream.conf.tmpl" "$TMP/upstream/nginx.conf" \
    DIR="$TMP/upstream" PORT="$UP_PORT"
start_bg "$TMP/upstream/stdout.log" "${UP_PFX[@]}" \
    nginx -p "$TMP/upstream/" -e "$TMP/upstream/error.log" -c "$TMP/upstream/nginx.conf"
UP_PID=$LAST_PID
if ! wait_http "http://127.0.0.1:$UP_PORT/" "$UP_PID"; then
    dump_log "$TMP/upstream/stdout.log" "$TMP/upstream/error.log"
    die "upstream nginx did not come up on 127.0.0.1:$UP_PORT"
fi
URL[direct]="http://127.0.0.1:$UP_PORT/"
TARGETS+=(direct)
log "upstream nginx ready on 127.0.0.1:$UP_PORT"

# 2. licensegate
mkdir "$TMP/licensegate"
LG_EXTRA=()
if [[ -n ${LG_EXTRA_ARGS:-} ]]; then read -r -a LG_EXTRA <<<"$LG_EXTRA_ARGS"; fi
LG_LOG="$TMP/licensegate/licensegate.log"
start_bg "$LG_LOG" env LICENSEGATE_LOG="$LG_LOG_FILTER" "${PROXY_PFX[@]}" "$BIN" run \
    --listen "127.0.0.1:$LG_PORT" \
    --upstream "http://127.0.0.1:$UP_PORT" \
    --admin "127.0.0.1:$LG_ADMIN_PORT" \
    --workers "$WORKERS" \
    "${LG_EXTRA[@]}"
LG_PID=$LAST_PID # env and taskset exec, so this is licensegate itself
if ! wait_http "http://127.0.0.1:$LG_ADMIN_PORT/readyz" "$LG_PID"; then
    if kill -0 "$LG_PID" 2>/dev/null; then
        log "licensegate did not become ready within 5 s (GET http://127.0.0.1:$LG_ADMIN_PORT/readyz); its log:"
    else
        lg_rc=0
        wait "$LG_PID" || lg_rc=$?
        forget_pid "$LG_PID"
        log "licensegate exited with status $lg_rc before becoming ready; its log:"
    fi
    dump_log "$LG_LOG"
    exit 1
fi
LG_RSS_IDLE_KB=$(rss_kb "$LG_PID" VmRSS)
meta lg_rss_idle_kb "$LG_RSS_IDLE_KB"
URL[licensegate]="http://127.0.0.1:$LG_PORT/"
declare -A TARGET_PID=()
TARGET_PID[licensegate]=$LG_PID
TARGETS+=(licensegate)
log "licensegate ready on 127.0.0.1:$LG_PORT (admin $LG_ADMIN_PORT), idle RSS ${LG_RSS_IDLE_KB} kB"

# 2b. the same plain licensegate with `http1: hyper` (hyper's server and
# client instead of the relay), so the table shows what the relay changes.
if [[ $HYPER == 1 ]]; then
    HY="$TMP/hyper"
    mkdir "$HY"
    cat >"$HY/config.yaml" <<YAML
listen: 127.0.0.1:$HY_PORT
admin: 127.0.0.1:$HY_ADMIN_PORT
workers: $WORKERS
upstream: {url: "http://127.0.0.1:$UP_PORT"}
http1: hyper
YAML
    start_bg "$HY/licensegate.log" env LICENSEGATE_LOG="$LG_LOG_FILTER" "${PROXY_PFX[@]}" "$BIN" run \
        --config "$HY/config.yaml" "${LG_EXTRA[@]}"
    HY_PID=$LAST_PID
    if ! wait_http "http://127.0.0.1:$HY_ADMIN_PORT/readyz" "$HY_PID"; then
        dump_log "$HY/licensegate.log"
        die "licensegate (http1: hyper) did not become ready"
    fi
    URL[hyper]="http://127.0.0.1:$HY_PORT/"
    TARGET_PID[hyper]=$HY_PID
    TARGETS+=(hyper)
    log "licensegate (http1: hyper) ready on 127.0.0.1:$HY_PORT"
fi

# 3. licensegate enforcing a policy (same worker budget and pinning)
WRK_HEADERS=()
declare -A ENFORCING_PIDS=()
if [[ $ENFORCE == 1 ]]; then
    EN="$TMP/enforcing"
    mkdir "$EN"
    bench_license "$BIN" "$EN"
    cp "$SCRIPT_DIR/enforcing-policy.yaml" "$EN/policy.yaml"
    # start_enforcing NAME PORT ADMIN_PORT [STORE_YAML]: one enforcing
    # licensegate with the shared key, license and policy.
    start_enforcing() {
        local name=$1 port=$2 admin=$3 store=${4:-} policy=${5:-$EN/policy.yaml} dir="$EN/$1" pid
        mkdir -p "$dir"
        cat >"$dir/config.yaml" <<YAML
listen: 127.0.0.1:$port
admin: 127.0.0.1:$admin
workers: $WORKERS
upstream: {url: "http://127.0.0.1:$UP_PORT"}
license: {keys: "$EN/bench.pem", source: header}
policy: {paths: ["$policy"]}
$store
YAML
        start_bg "$dir/licensegate.log" env LICENSEGATE_LOG="$LG_LOG_FILTER" "${PROXY_PFX[@]}" "$BIN" run \
            --config "$dir/config.yaml"
        pid=$LAST_PID
        if ! wait_http "http://127.0.0.1:$admin/readyz" "$pid"; then
            dump_log "$dir/licensegate.log"
            die "$name licensegate did not become ready"
        fi
        ENFORCING_PIDS[$name]=$pid
        TARGET_PID[$name]=$pid
        URL[$name]="http://127.0.0.1:$port/"
        TARGETS+=("$name")
        log "$name licensegate ready on 127.0.0.1:$port"
    }
    start_enforcing enforcing "$EN_PORT" "$EN_ADMIN_PORT"
    EN_PID=${ENFORCING_PIDS[enforcing]}
    EN_LOG="$EN/enforcing/licensegate.log"
    if [[ $HYPER == 1 ]]; then
        # The same enforcing proxy with hyper's server and client.
        start_enforcing enforcing-hyper "$EH_PORT" "$EH_ADMIN_PORT" "http1: hyper"
    fi
    if [[ $REDIS == 1 ]]; then
        start_bg "$EN/redis.log" "${UP_PFX[@]}" redis-server --port "$RD_PORT" --bind 127.0.0.1 \
            --save "" --appendonly no
        for ((i = 0; i < READY_TRIES; i++)); do
            redis-cli -p "$RD_PORT" ping >/dev/null 2>&1 && break
            sleep "$READY_SLEEP"
        done
        meta redis_version "$(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p')"
        start_enforcing redis "$RA_PORT" "$RA_ADMIN_PORT" \
            "store: {url: \"redis://127.0.0.1:$RD_PORT\", mode: accurate, timeout: 50ms}"
        start_enforcing leased "$RL_PORT" "$RL_ADMIN_PORT" \
            "store: {url: \"redis://127.0.0.1:$RD_PORT\", mode: leased, timeout: 50ms}"
    fi
    if [[ $METERING == 1 ]]; then
        # The same enforcing proxy with meters on its route, journalled and
        # exported to a file: what metering costs, with no network in it.
        cp "$SCRIPT_DIR/metered-policy.yaml" "$EN/metered-policy.yaml"
        start_enforcing metered "$MT_PORT" "$MT_ADMIN_PORT" "$(
            printf '%s\n' \
                'metering:' \
                '  source: licensegate/bench' \
                '  window: 10s' \
                "  journal: {dir: \"$EN/metered/journal\"}" \
                "  sinks: [{name: file, kind: jsonl, path: \"$EN/metered/usage.jsonl\"}]"
        )" "$EN/metered-policy.yaml"
        MT_STARTED=$(date +%s.%N)
    fi
    WRK_HEADERS=(-H "Authorization: Bearer $TOKEN" -H "x-user: alice")
    # The licensegate row idles from here on while enforcing runs, and the
    # other way round: both are started up front, like every target.
fi

# 4. nginx reverse proxy
mkdir "$TMP/nginx"
render "$SCRIPT_DIR/nginx-proxy.conf.tmpl" "$TMP/nginx/nginx.conf" \
    DIR="$TMP/nginx" PORT="$NGX_PORT" H2_PORT="$NGX_H2_PORT" UPSTREAM_PORT="$UP_PORT" WORKERS="$WORKERS" \
    WORKER_CONNECTIONS=4096
start_bg "$TMP/nginx/stdout.log" "${PROXY_PFX[@]}" \
    nginx -p "$TMP/nginx/" -e "$TMP/nginx/error.log" -c "$TMP/nginx/nginx.conf"
NGX_PID=$LAST_PID
if ! wait_http "http://127.0.0.1:$NGX_PORT/" "$NGX_PID"; then
    dump_log "$TMP/nginx/stdout.log" "$TMP/nginx/error.log"
    die "nginx proxy did not come up on 127.0.0.1:$NGX_PORT"
fi
URL[nginx]="http://127.0.0.1:$NGX_PORT/"
declare -A H2_URL=()
H2_URL[nginx]="http://127.0.0.1:$NGX_H2_PORT/"
TARGET_PID[nginx]=$NGX_PID
TARGETS+=(nginx)
meta nginx_version "$(nginx -v 2>&1 | sed 's/^nginx version: //')"
log "nginx proxy ready on 127.0.0.1:$NGX_PORT"

# 5. HAProxy (optional)
if ((HAVE_HAPROXY)); then
    mkdir "$TMP/haproxy"
    render "$SCRIPT_DIR/haproxy.cfg.tmpl" "$TMP/haproxy/haproxy.cfg" \
        PORT="$HAP_PORT" H2_PORT="$HAP_H2_PORT" UPSTREAM_PORT="$UP_PORT" WORKERS="$WORKERS" \
        MAXCONN=8192
    start_bg "$TMP/haproxy/haproxy.log" "${PROXY_PFX[@]}" \
        haproxy -db -f "$TMP/haproxy/haproxy.cfg"
    HAP_PID=$LAST_PID
    if wait_http "http://127.0.0.1:$HAP_PORT/" "$HAP_PID"; then
        URL[haproxy]="http://127.0.0.1:$HAP_PORT/"
        H2_URL[haproxy]="http://127.0.0.1:$HAP_H2_PORT/"
        TARGET_PID[haproxy]=$HAP_PID
        TARGETS+=(haproxy)
        meta haproxy_version "$(haproxy -v 2>&1 | sed -n '1s/^HAProxy version \([^ ]*\).*/\1/p')"
        log "haproxy ready on 127.0.0.1:$HAP_PORT"
    else
        dump_log "$TMP/haproxy/haproxy.log"
        log "haproxy did not come up; skipping it"
        kill -TERM "$HAP_PID" 2>/dev/null || true
        meta skipped_haproxy "failed to start (see stderr)"
    fi
else
    log "haproxy not available; skipping it"
    meta skipped_haproxy "not installed and could not be installed"
fi

CURL_HEADERS=("${WRK_HEADERS[@]}")
# Sanity: every target must answer 200 before it is measured; a non-200 (e.g.
# a licence rejection) would make its req/s meaningless, so warn loudly.
for t in "${TARGETS[@]}"; do
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "${CURL_HEADERS[@]}" "${URL[$t]}" || true)
    if [[ $code != 200 ]]; then
        log "WARNING: $t answered HTTP $code to GET ${URL[$t]} (expected 200)"
    fi
    meta "probe_status_$t" "$code"
done

# --------------------------------------------------------------------------
# Load
# --------------------------------------------------------------------------
# CPU time (clock ticks, user + system) of a process and its children
# (nginx workers under the master).
cpu_ticks() {
    local pid=$1 total=0 p
    for p in $pid $(pgrep -P "$pid" 2>/dev/null); do
        [[ -r /proc/$p/stat ]] || continue
        total=$((total + $(awk '{ print $14 + $15 }' "/proc/$p/stat")))
    done
    echo "$total"
}
CLK_TCK=$(getconf CLK_TCK)
meta clk_tck "$CLK_TCK"

# wrk prints p50..p99 only; this script adds p99.9 in microseconds.
cat >"$TMP/p999.lua" <<'LUA'
done = function(summary, latency, requests)
  io.write(string.format("P99.9_US %d\n", latency:percentile(99.9)))
end
LUA

# run_wrk TARGET SECONDS OUTFILE: one wrk thread, fixed duration.
run_wrk() {
    local url=${URL[$1]} secs=$2 out=$3 rc=0 pid
    start_bg "$out" "${WRK_PFX[@]}" \
        wrk -t1 -c"$CONNECTIONS" -d"${secs}s" --timeout 5s --latency -s "$TMP/p999.lua" "${WRK_HEADERS[@]}" "$url"
    pid=$LAST_PID
    wait "$pid" || rc=$?
    forget_pid "$pid"
    if ((rc != 0)) || ! grep -q '^Requests/sec:' "$out"; then
        dump_log "$out"
        if [[ $1 == licensegate ]]; then dump_log "$LG_LOG"; fi
        if [[ -n ${ENFORCING_PIDS[$1]:-} ]]; then dump_log "$EN/$1/licensegate.log"; fi
        die "wrk against $1 ($url) failed (exit $rc)"
    fi
}

check_licensegate_alive() {
    if ! kill -0 "$LG_PID" 2>/dev/null; then
        log "licensegate (pid $LG_PID) exited during the benchmark; its log:"
        dump_log "$LG_LOG"
        exit 1
    fi
    if [[ -n ${HY_PID:-} ]] && ! kill -0 "$HY_PID" 2>/dev/null; then
        log "licensegate (http1: hyper) exited during the benchmark; its log:"
        dump_log "$HY/licensegate.log"
        exit 1
    fi
    local name
    for name in "${!ENFORCING_PIDS[@]}"; do
        if ! kill -0 "${ENFORCING_PIDS[$name]}" 2>/dev/null; then
            log "$name licensegate exited during the benchmark; its log:"
            dump_log "$EN/$name/licensegate.log"
            exit 1
        fi
    done
}

log "warm-up: ${WARMUP_SECONDS}s per target"
for t in "${TARGETS[@]}"; do
    run_wrk "$t" "$WARMUP_SECONDS" "$TMP/wrk/warmup.$t.txt"
done
check_licensegate_alive

MANIFEST="$TMP/manifest.tsv"
: >"$MANIFEST"
for ((r = 1; r <= ROUNDS; r++)); do
    for t in "${TARGETS[@]}"; do
        out="$TMP/wrk/round$r.$t.txt"
        sleep 0.5 # let the previous run's connections close
        before=$([[ -n ${TARGET_PID[$t]:-} ]] && cpu_ticks "${TARGET_PID[$t]}" || echo "")
        run_wrk "$t" "$DURATION" "$out"
        if [[ -n $before ]]; then echo "CPU_TICKS $(($(cpu_ticks "${TARGET_PID[$t]}") - before))" >>"$out"; fi
        check_licensegate_alive
        printf '%s\t%s\t%s\n' "$t" "$r" "$out" >>"$MANIFEST"
        log "round $r/$ROUNDS $(printf '%-12s' "$t") $(awk '/^Requests\/sec:/ { print $2 }' "$out") req/s"
    done
done
H2_MANIFEST="$TMP/h2manifest.tsv"
: >"$H2_MANIFEST"
if [[ $H2 == 1 ]]; then
    # licensegate and the enforcing variants serve h2c on their own port.
    for t in licensegate enforcing redis leased metered; do
        if [[ -n ${URL[$t]:-} ]]; then H2_URL[$t]=${URL[$t]}; fi
    done
    H2_TARGETS=()
    for t in "${TARGETS[@]}"; do
        if [[ -n ${H2_URL[$t]:-} ]]; then H2_TARGETS+=("$t"); fi
    done
    meta h2_streams "$H2_STREAMS"
    meta h2load_version "$(h2load --version 2>&1 | sed -n '1s/.*nghttp2\/\([^ ]*\).*/\1/p')"
    for ((r = 1; r <= ROUNDS; r++)); do
        for t in "${H2_TARGETS[@]}"; do
            out="$TMP/wrk/h2.round$r.$t.txt"
            sleep 0.5
            before=$([[ -n ${TARGET_PID[$t]:-} ]] && cpu_ticks "${TARGET_PID[$t]}" || echo "")
            rc=0
            "${WRK_PFX[@]}" h2load -t1 -c"$CONNECTIONS" -m"$H2_STREAMS" -D"$DURATION" \
                --warm-up-time=1 "${WRK_HEADERS[@]}" "${H2_URL[$t]}" >"$out" 2>&1 || rc=$?
            if ((rc != 0)) || ! grep -q 'req/s' "$out"; then
                dump_log "$out"
                die "h2load against $t (${H2_URL[$t]}) failed (exit $rc)"
            fi
            if [[ -n $before ]]; then echo "CPU_TICKS $(($(cpu_ticks "${TARGET_PID[$t]}") - before))" >>"$out"; fi
            printf '%s\t%s\t%s\n' "$t" "$r" "$out" >>"$H2_MANIFEST"
            log "h2 round $r/$ROUNDS $(printf '%-12s' "$t") $(sed -n 's/.*finished in [^,]*, \([0-9.]*\) req\/s.*/\1/p' "$out") req/s"
        done
    done
fi

check_licensegate_alive
# Peak resident memory of every proxy under test over all runs: VmHWM summed
# over the process and its children (nginx workers; their shared pages are
# counted once per process, so nginx's figure is an upper bound).
for t in "${!TARGET_PID[@]}"; do
    hwm=0
    for p in ${TARGET_PID[$t]} $(pgrep -P "${TARGET_PID[$t]}" 2>/dev/null); do
        hwm=$((hwm + $(rss_kb "$p" VmHWM || echo 0)))
    done
    meta "peak_rss_kb_$t" "$hwm"
done
# Requests each licensegate did not answer with a forwarded response (denials
# and upstream errors), from its own metrics: the load generators' error
# counts can be off by one around warm-up, these are exact.
declare -A ADMIN_PORT=([licensegate]=$LG_ADMIN_PORT [hyper]=$HY_ADMIN_PORT [enforcing]=$EN_ADMIN_PORT
    [redis]=$RA_ADMIN_PORT [leased]=$RL_ADMIN_PORT [metered]=$MT_ADMIN_PORT)
for t in "${!ADMIN_PORT[@]}"; do
    [[ -n ${TARGET_PID[$t]:-} ]] || continue
    meta "not_allowed_$t" "$(curl -s "http://127.0.0.1:${ADMIN_PORT[$t]}/metrics" |
        awk '/^licensegate_requests_total/ && !/decision="allow"/ { s += $2 } END { print s + 0 }')"
done
LG_RSS_PEAK_KB=$(rss_kb "$LG_PID" VmHWM)
meta lg_rss_peak_kb "$LG_RSS_PEAK_KB"
if [[ $ENFORCE == 1 ]]; then meta lg_rss_enforcing_peak_kb "$(rss_kb "$EN_PID" VmHWM)"; fi
if [[ -n ${ENFORCING_PIDS[metered]:-} ]]; then
    # Disk writes of the metering journal against requests served, over the
    # metered proxy's whole life so far: writes follow the window, not the
    # request rate.
    mt_metrics=$(curl -s "http://127.0.0.1:$MT_ADMIN_PORT/metrics")
    meta metered_seconds "$(python3 -c "import time; print(f'{time.time() - $MT_STARTED:.1f}')")"
    meta metered_journal_writes "$(awk '/^licensegate_metering_journal_writes_total/ { print $2 }' <<<"$mt_metrics")"
    meta metered_requests "$(awk '/^licensegate_requests_total/ && /decision="allow"/ { s += $2 } END { print s + 0 }' <<<"$mt_metrics")"
fi
if [[ -n ${ENFORCING_PIDS[redis]:-} ]]; then
    # Round trips per decision, from the accurate-mode proxy's own metrics.
    rt=$(curl -s "http://127.0.0.1:$RA_ADMIN_PORT/metrics" | awk '/^licensegate_store_round_trips_total/ { print $2 }')
    dec=$(curl -s "http://127.0.0.1:$RA_ADMIN_PORT/metrics" | awk '/^licensegate_decisions_total/ { s += $2 } END { print s }')
    meta redis_round_trips "$rt"
    meta redis_decisions "$dec"
    rt=$(curl -s "http://127.0.0.1:$RL_ADMIN_PORT/metrics" | awk '/^licensegate_store_round_trips_total/ { print $2 }')
    dec=$(curl -s "http://127.0.0.1:$RL_ADMIN_PORT/metrics" | awk '/^licensegate_decisions_total/ { s += $2 } END { print s }')
    meta leased_round_trips "$rt"
    meta leased_decisions "$dec"
fi

# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------
meta workers "$WORKERS"
meta rounds "$ROUNDS"
meta duration_s "$DURATION"
meta connections "$CONNECTIONS"
meta wrk_threads 1
meta pin "$PIN"
meta pin_desc "$PIN_DESC"
meta nproc "$NPROC"
meta licensegate_bin "$BIN"
meta git_rev "$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
meta date "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
meta loadavg_start "$LOADAVG_START"

mkdir -p -- "$(dirname -- "$OUT_JSON")"
python3 - "$MANIFEST" "$META" "$OUT_JSON" "$H2_MANIFEST" <<'PY'
import json
import re
import statistics
import sys

manifest_path, meta_path, out_json, h2_manifest_path = sys.argv[1:5]

meta = {}
with open(meta_path) as f:
    for line in f:
        key, _, value = line.rstrip("\n").partition("=")
        meta[key] = value

UNIT_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}

def to_ms(token):
    m = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)(us|ms|s|m|h)", token)
    if not m:
        raise SystemExit(f"cannot parse wrk latency {token!r}")
    return float(m.group(1)) * UNIT_MS[m.group(2)]

def parse_wrk(path):
    with open(path) as f:
        text = f.read()
    rps = re.search(r"^Requests/sec:\s+([0-9.]+)", text, re.M)
    if not rps:
        raise SystemExit(f"no 'Requests/sec:' in {path}:\n{text}")
    pct = {p: to_ms(v) for p, v in
           re.findall(r"^\s+(50|75|90|99)%\s+(\S+)\s*$", text, re.M)}
    for p in ("50", "99"):
        if p not in pct:
            raise SystemExit(f"no {p}% latency in {path} (was --latency passed?):\n{text}")
    total = re.search(r"^\s*(\d+) requests in", text, re.M)
    p999 = re.search(r"^P99.9_US (\d+)", text, re.M)
    ticks = re.search(r"^CPU_TICKS (\d+)", text, re.M)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    return {
        "requests_per_sec": float(rps.group(1)),
        "p50_ms": pct["50"],
        "p75_ms": pct.get("75"),
        "p90_ms": pct.get("90"),
        "p99_ms": pct["99"],
        "p999_ms": int(p999.group(1)) / 1000 if p999 else None,
        "cpu_s_per_100k": (int(ticks.group(1)) / int(meta.get("clk_tck", "100"))) * 100000 / int(total.group(1))
                          if ticks and total and int(total.group(1)) else None,
        "requests": int(total.group(1)) if total else None,
        "non_2xx_3xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": dict(zip(("connect", "read", "write", "timeout"),
                                  map(int, sock.groups()))) if sock else
                         {"connect": 0, "read": 0, "write": 0, "timeout": 0},
    }

def read_manifest(manifest, parse):
    """Every round's figures by target, from a manifest of (target, round, output file)."""
    by_target = {}
    with open(manifest) as f:
        for line in f:
            name, rnd, path = line.rstrip("\n").split("\t")
            fig = parse(path)
            fig["round"] = int(rnd)
            by_target.setdefault(name, {"rounds": []})["rounds"].append(fig)
    return by_target

targets = read_manifest(manifest_path, parse_wrk)

for t in targets.values():
    rs = t["rounds"]
    t["median"] = {k: statistics.median(r[k] for r in rs)
                   for k in ("requests_per_sec", "p50_ms", "p99_ms")}
    for k in ("p999_ms", "cpu_s_per_100k"):
        vals = [r[k] for r in rs if r[k] is not None]
        t["median"][k] = statistics.median(vals) if vals else None
    t["errors"] = {
        "non_2xx_3xx": sum(r["non_2xx_3xx"] for r in rs),
        "socket_errors": sum(sum(r["socket_errors"].values()) for r in rs),
    }

lg = targets.get("licensegate")
lg_rps = lg["median"]["requests_per_sec"] if lg else None
en = targets.get("enforcing")
en_rps = en["median"]["requests_per_sec"] if en else None
for name, t in targets.items():
    peak = meta.get(f"peak_rss_kb_{name}", "")
    t["peak_rss_kb"] = int(peak) if peak.isdigit() else None
    refused = meta.get(f"not_allowed_{name}", "")
    # Over the whole run, HTTP/1.1 and HTTP/2 passes and warm-ups included.
    t["licensegate_not_allowed"] = int(refused) if refused.isdigit() else None
for t in targets.values():
    rps = t["median"]["requests_per_sec"]
    t["licensegate_over_target"] = (lg_rps / rps) if lg_rps and rps else None
    t["enforcing_over_target"] = (en_rps / rps) if en_rps and rps else None

ints = ("workers", "rounds", "duration_s", "connections", "wrk_threads", "nproc", "pin",
        "lg_rss_idle_kb", "lg_rss_peak_kb")
config = {k: (int(v) if k in ints and v.isdigit() else v) for k, v in meta.items()
          if not k.startswith(("skipped_", "lg_rss_", "probe_status_", "peak_rss_kb_", "not_allowed_"))}
skipped = {k[len("skipped_"):]: v for k, v in meta.items() if k.startswith("skipped_")}
probe = {k[len("probe_status_"):]: v for k, v in meta.items() if k.startswith("probe_status_")}

def kb(key):
    v = meta.get(key, "")
    return int(v) if v.isdigit() else None

rss = {"idle_kb": kb("lg_rss_idle_kb"), "peak_kb": kb("lg_rss_peak_kb"),
       "enforcing_peak_kb": kb("lg_rss_enforcing_peak_kb")}

def parse_h2load(path):
    with open(path) as f:
        text = f.read()
    rps = re.search(r"finished in [^,]+, ([0-9.]+) req/s", text)
    done = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed", text)
    status = re.search(r"status codes: (\d+) 2xx", text)
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+(\S+)", text)
    ticks = re.search(r"^CPU_TICKS (\d+)", text, re.M)
    if not rps or not done:
        raise SystemExit(f"cannot parse h2load output {path}:\n{text}")
    total = int(done.group(2))
    return {
        "requests_per_sec": float(rps.group(1)),
        "mean_ms": to_ms(mean.group(1)) if mean else None,
        "requests": total,
        "failed": int(done.group(4)),
        # h2load can count a response finished in warm-up among the 2xx.
        "non_2xx": max(total - int(status.group(1)), 0) if status else None,
        "cpu_s_per_100k": (int(ticks.group(1)) / int(meta.get("clk_tck", "100"))) * 100000 / total
                          if ticks and total else None,
    }

h2 = read_manifest(h2_manifest_path, parse_h2load)
for t in h2.values():
    rs = t["rounds"]
    t["median"] = {}
    for k in ("requests_per_sec", "mean_ms", "cpu_s_per_100k"):
        vals = [r[k] for r in rs if r[k] is not None]
        t["median"][k] = statistics.median(vals) if vals else None
h2_lg = h2.get("licensegate", {}).get("median", {}).get("requests_per_sec")
h2_en = h2.get("enforcing", {}).get("median", {}).get("requests_per_sec")
for t in h2.values():
    rps = t["median"]["requests_per_sec"]
    t["licensegate_over_target"] = (h2_lg / rps) if h2_lg and rps else None
    t["enforcing_over_target"] = (h2_en / rps) if h2_en and rps else None

result = {
    "http2": h2,
    "config": config,
    "targets": targets,
    "licensegate_rss": rss,
    "probe_status": probe,
    "skipped": skipped,
}
with open(out_json, "w") as f:
    json.dump(result, f, indent=2)
    f.write("\n")

# ---- Markdown on stdout
def mib(v):
    return f"{v / 1024:.1f} MiB" if v is not None else "n/a"

print("### licensegate load benchmark\n")
print(f"WORKERS={config.get('workers')}, wrk -t1 -c{config.get('connections')} "
      f"-d{config.get('duration_s')}s, {config.get('rounds')} round(s), medians over rounds; "
      f"pinning: {config.get('pin_desc')}; {config.get('nproc')} CPUs; "
      f"load average at start: {config.get('loadavg_start')}\n")
def fmt_ratio(r):
    return f"{r:.2f}" if r is not None else "n/a"

def opt(v, f):
    return f.format(v) if v is not None else "n/a"

print("| Target | req/s | p50 ms | p99 ms | p99.9 ms | CPU s / 100k req | peak RSS MiB | licensegate / X | enforcing / X |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for name, t in targets.items():
    m = t["median"]
    peak = t["peak_rss_kb"]
    print(f"| {name} | {m['requests_per_sec']:,.0f} | {m['p50_ms']:.3f} | {m['p99_ms']:.3f} | "
          f"{opt(m['p999_ms'], '{:.3f}')} | {opt(m['cpu_s_per_100k'], '{:.2f}')} | "
          f"{opt(peak / 1024 if peak else None, '{:.1f}')} | "
          f"{fmt_ratio(t['licensegate_over_target'])} | {fmt_ratio(t['enforcing_over_target'])} |")
for name, why in skipped.items():
    print(f"| {name} | skipped: {why} | | | | | | | |")
print()
print(f"licensegate RSS: idle {mib(rss['idle_kb'])}, peak {mib(rss['peak_kb'])} "
      f"(VmRSS after readiness / VmHWM after all runs); enforcing peak {mib(rss['enforcing_peak_kb'])}")
for name, t in targets.items():
    e = t["errors"]
    if e["non_2xx_3xx"] or e["socket_errors"]:
        print(f"\n**Warning:** {name}: {e['non_2xx_3xx']} non-2xx/3xx responses, "
              f"{e['socket_errors']} socket errors over all rounds; its figures are not comparable.")
refusals = {n: t["licensegate_not_allowed"] for n, t in targets.items()
            if t.get("licensegate_not_allowed") is not None}
if refusals:
    print("licensegate's own count of requests not forwarded (denied or upstream errors), "
          "whole run: " + ", ".join(f"{n} {v}" for n, v in refusals.items()))
for name, code in probe.items():
    if code != "200":
        print(f"\n**Warning:** {name} answered HTTP {code} to the pre-flight GET.")
if h2:
    print(f"\n#### HTTP/2 (h2c, h2load -t1 -c{config.get('connections')} -m{meta.get('h2_streams')}, "
          f"same rounds and pinning; upstreams HTTP/1.1)\n")
    print("| Target | req/s | mean ms per request | CPU s / 100k req | licensegate / X | enforcing / X |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, t in h2.items():
        m = t["median"]
        print(f"| {name} | {m['requests_per_sec']:,.0f} | {opt(m['mean_ms'], '{:.3f}')} | "
              f"{opt(m['cpu_s_per_100k'], '{:.2f}')} | {fmt_ratio(t['licensegate_over_target'])} | "
              f"{fmt_ratio(t['enforcing_over_target'])} |")
    for name, t in h2.items():
        bad = sum((r["failed"] or 0) + (r["non_2xx"] or 0) for r in t["rounds"])
        if bad:
            print(f"\n**Warning:** {name} (HTTP/2): {bad} failed or non-2xx requests; not comparable.")

mt_rps = targets.get("metered", {}).get("median", {}).get("requests_per_sec")
if mt_rps and en_rps:
    print(f"\nmetered / enforcing: {mt_rps / en_rps:.3f} req/s (metering costs {100 * (1 - mt_rps / en_rps):.1f} %)")
secs, writes, served = (meta.get(k) for k in ("metered_seconds", "metered_journal_writes", "metered_requests"))
if secs and writes and served:
    secs, writes, served = float(secs), float(writes), float(served)
    print(f"metered journal: {writes:,.0f} disk writes for {served:,.0f} requests in {secs:,.0f} s "
          f"({writes / secs:.2f} writes/s against {served / secs:,.0f} requests/s)")
for name in ("redis", "leased"):
    rt, dec = meta.get(f"{name}_round_trips"), meta.get(f"{name}_decisions")
    if rt and dec:
        print(f"\n{name}: {float(rt):,.0f} store round trips for {float(dec):,.0f} decisions "
              f"({float(rt) / max(float(dec), 1):.3f} per decision)")
print(f"\nJSON: {out_json}")
PY
