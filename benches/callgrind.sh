#!/usr/bin/env bash
# benches/callgrind.sh — deterministic user-space cost per proxied request:
# instructions (callgrind Ir) per request for licensegate (plain, and enforcing
# benches/enforcing-policy.yaml with a header license) and nginx proxy_pass.
#
# Usage (from anywhere; paths are resolved relative to the repository root):
#
#   benches/callgrind.sh
#   BIN=/path/to/licensegate benches/callgrind.sh
#   SKIP_NGINX=1 REQUESTS=10000 benches/callgrind.sh
#
# What it measures
#   A trivial upstream (benches/nginx-upstream.conf.tmpl, run natively) is put
#   behind each proxy in turn, the proxy running under valgrind --tool=callgrind
#   with one worker. h2load --h1 warms the proxy up (WARMUP requests), the
#   counters are zeroed, exactly REQUESTS plain HTTP/1.1 keep-alive GETs are
#   driven over CONNECTIONS connections, and the counters are dumped. Ir per
#   request is the program total divided by REQUESTS: user-space instructions
#   of the proxy process only (system-call work in the kernel is not counted).
#   Unlike wall-clock load tests this is insensitive to other load on the
#   machine, so it serves as a regression guard for the hot path.
#
#   A Markdown table goes to stdout; progress goes to stderr.
#
# Environment
#   BIN          licensegate binary (default <repo>/target/release/licensegate)
#   SKIP_BUILD   1 = do not run `cargo build --release` first (default 0; the
#                build is skipped anyway when BIN is set)
#   REQUESTS     measured requests per proxy (default 20000)
#   WARMUP       warm-up requests before the counters are zeroed (default 2000)
#   CONNECTIONS  h2load connections (default 64)
#   SKIP_NGINX   1 = measure licensegate only
#   TOP          also print licensegate's top N functions by self Ir per
#                request, with their inclusive Ir (default 0 = none)
#   KEEP_TMP     1 = keep the temp dir (configs, logs, callgrind dumps for
#                callgrind_annotate)
#
# Requirements: valgrind, h2load (nghttp2-client), nginx, curl, python3;
# missing ones are installed with apt-get.
#
# Everything listens on 127.0.0.1 only, on ports the kernel reports free;
# nginx runs with configs, pid files and logs in a private temp dir, and every
# background process is killed on exit, including on Ctrl-C.
set -euo pipefail

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd -- "$SCRIPT_DIR/.." && pwd)
PATH=$PATH:/usr/local/sbin:/usr/sbin:/sbin
export PATH

REQUESTS=${REQUESTS:-20000}
WARMUP=${WARMUP:-2000}
CONNECTIONS=${CONNECTIONS:-64}
SKIP_NGINX=${SKIP_NGINX:-0}
TOP=${TOP:-0}
KEEP_TMP=${KEEP_TMP:-0}
SKIP_BUILD=${SKIP_BUILD:-0}
if [[ -n ${BIN:-} ]]; then SKIP_BUILD=1; fi
BIN=${BIN:-$ROOT/target/release/licensegate}
READY_TRIES=600 # x 0.1 s: valgrind starts slowly

BENCH_NAME=callgrind.sh
READY_SLEEP=0.1
READY_CURL_TIMEOUT=2
# shellcheck source=benches/lib.sh
source "$SCRIPT_DIR/lib.sh"

for var in REQUESTS WARMUP CONNECTIONS; do
    [[ ${!var} =~ ^[1-9][0-9]*$ ]] || die "$var must be a positive integer (got '${!var}')"
done
[[ $TOP =~ ^[0-9]+$ ]] || die "TOP must be a number (got '$TOP')"

# ---- dependencies

for tool in valgrind callgrind_control callgrind_annotate h2load nginx curl python3; do
    command -v "$tool" >/dev/null 2>&1 && continue
    case $tool in
        valgrind | callgrind_control | callgrind_annotate) apt_install valgrind || true ;;
        h2load) apt_install nghttp2-client || true ;;
        nginx) apt_install nginx-light || apt_install nginx || true ;;
        *) apt_install "$tool" || true ;;
    esac
    command -v "$tool" >/dev/null 2>&1 || die "$tool is required and could not be installed"
done

if [[ $SKIP_BUILD != 1 ]]; then
    log "cargo build --release (set SKIP_BUILD=1 or BIN=... to skip)"
    (cd "$ROOT" && cargo build --release --bin licensegate) >&2
fi
[[ -x $BIN ]] || die "licensegate binary not found or not executable: $BIN"

# ---- setup
TMP=$(mktemp -d "${TMPDIR:-/tmp}/licensegate-callgrind.XXXXXX")
chmod 755 "$TMP" # nginx started as root runs its workers as "nobody"
ulimit -n 65536 2>/dev/null || true

read -r UP_PORT LG_PORT LG_ADMIN_PORT NGX_PORT NGX_H2_PORT EN_PORT EN_ADMIN_PORT <<<"$(python3 - <<'PY'
import socket
socks = []
for _ in range(7):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
)"
[[ -n ${EN_ADMIN_PORT:-} ]] || die "could not pick free loopback ports"

# The enforcing run's key, license and policy (benches/enforcing-policy.yaml);
# every proxy gets the same request headers, so the requests are identical.
mkdir "$TMP/enforcing"
bench_license "$BIN" "$TMP/enforcing"
DRIVE_HEADERS=(-H "Authorization: Bearer $TOKEN" -H "x-user: alice")
cat >"$TMP/enforcing/config.yaml" <<YAML
listen: 127.0.0.1:$EN_PORT
admin: 127.0.0.1:$EN_ADMIN_PORT
workers: 1
upstream: {url: "http://127.0.0.1:$UP_PORT"}
license: {keys: "$TMP/enforcing/bench.pem", source: header}
policy: {paths: ["$SCRIPT_DIR/enforcing-policy.yaml"]}
YAML

# h2load URL N: drive N requests; fail unless every one answered 2xx.
drive() {
    local out
    out=$(h2load --h1 -n "$2" -c "$CONNECTIONS" "${DRIVE_HEADERS[@]}" "$1" 2>&1) || {
        printf '%s\n' "$out" >&2
        die "h2load against $1 failed"
    }
    if ! grep -Eq "^status codes: $2 2xx" <<<"$out"; then
        printf '%s\n' "$out" >&2
        die "not every request to $1 answered 2xx"
    fi
}

# measure NAME URL READY_URL -- CMD...: run CMD under callgrind, drive the
# load, and set MEASURED to the program's total Ir over the measured requests.
MEASURED=
measure() {
    local name=$1 url=$2 ready=$3 logf=$TMP/$1.log out=$TMP/callgrind.$1.out
    shift 4
    valgrind --tool=callgrind --callgrind-out-file="$out" "$@" >"$logf" 2>&1 </dev/null &
    local pid=$!
    PIDS+=("$pid")
    if ! wait_http "$ready" "$pid"; then
        dump_log "$logf"
        die "$name did not come up under valgrind"
    fi
    log "$name: warm-up ($WARMUP requests)"
    drive "$url" "$WARMUP"
    callgrind_control -z "$pid" >/dev/null 2>&1
    log "$name: measuring $REQUESTS requests"
    drive "$url" "$REQUESTS"
    callgrind_control -d "$pid" >/dev/null 2>&1
    local i
    for ((i = 0; i < 100; i++)); do
        [[ -s $out.1 ]] && break
        sleep 0.1
    done
    [[ -s $out.1 ]] || die "no callgrind dump from $name"
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    forget_pid "$pid"
    local total
    total=$(callgrind_annotate "$out.1" 2>/dev/null |
        awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1; exit }')
    [[ $total =~ ^[0-9]+$ ]] || die "cannot read the program total of $out.1"
    MEASURED=$total
}

# ---- upstream (native)
mkdir "$TMP/upstream"
render "$SCRIPT_DIR/nginx-upstream.conf.tmpl" "$TMP/upstream/nginx.conf" \
    DIR="$TMP/upstream" PORT="$UP_PORT"
nginx -p "$TMP/upstream/" -e "$TMP/upstream/error.log" -c "$TMP/upstream/nginx.conf" \
    >"$TMP/upstream/stdout.log" 2>&1 </dev/null &
UP_PID=$!
PIDS+=("$UP_PID")
wait_http "http://127.0.0.1:$UP_PORT/" "$UP_PID" || {
    dump_log "$TMP/upstream/error.log"
    die "upstream nginx did not come up"
}
log "upstream nginx on 127.0.0.1:$UP_PORT"

# ---- licensegate
measure licensegate "http://127.0.0.1:$LG_PORT/" "http://127.0.0.1:$LG_ADMIN_PORT/readyz" -- \
    "$BIN" run --listen "127.0.0.1:$LG_PORT" --admin "127.0.0.1:$LG_ADMIN_PORT" \
    --upstream "http://127.0.0.1:$UP_PORT" --workers 1 --log warn
LG_TOTAL=$MEASURED

# ---- licensegate enforcing the benchmark policy
measure enforcing "http://127.0.0.1:$EN_PORT/" "http://127.0.0.1:$EN_ADMIN_PORT/readyz" -- \
    "$BIN" run --config "$TMP/enforcing/config.yaml" --log warn
EN_TOTAL=$MEASURED

# ---- nginx proxy_pass (one process: callgrind follows no children)
NGX_TOTAL=""
if [[ $SKIP_NGINX != 1 ]]; then
    mkdir "$TMP/nginx"
    render "$SCRIPT_DIR/nginx-proxy.conf.tmpl" "$TMP/nginx/nginx.conf" \
        DIR="$TMP/nginx" PORT="$NGX_PORT" H2_PORT="$NGX_H2_PORT" UPSTREAM_PORT="$UP_PORT" WORKERS=1
    sed -i 's/^master_process on;/master_process off;/' "$TMP/nginx/nginx.conf"
    measure nginx "http://127.0.0.1:$NGX_PORT/" "http://127.0.0.1:$NGX_PORT/" -- \
        nginx -p "$TMP/nginx/" -e "$TMP/nginx/error.log" -c "$TMP/nginx/nginx.conf"
    NGX_TOTAL=$MEASURED
fi

# ---- report
python3 - "$REQUESTS" "$CONNECTIONS" "$LG_TOTAL" "$NGX_TOTAL" "$EN_TOTAL" <<'PY'
import sys
requests, connections, lg, ngx, en = sys.argv[1:6]
requests = int(requests)
lg = int(lg)
print("### Instructions per proxied request (callgrind)\n")
print(f"{requests} HTTP/1.1 keep-alive GETs over {connections} connections (h2load --h1), "
      "one worker, trivial nginx upstream; user-space instructions of the proxy process.\n")
print("| Proxy | Ir total | Ir / request | licensegate / X |")
print("|---|---:|---:|---:|")
print(f"| licensegate | {lg:,} | {lg / requests:,.0f} | 1.00 |")
en = int(en)
print(f"| licensegate enforcing (benches/enforcing-policy.yaml) | {en:,} | {en / requests:,.0f} | {lg / en:.2f} |")
if ngx:
    ngx = int(ngx)
    print(f"| nginx proxy_pass | {ngx:,} | {ngx / requests:,.0f} | {lg / ngx:.2f} |")
PY

if ((TOP > 0)); then
    # Self and inclusive Ir per request by function, merging the code that
    # inlining spread over many source files (callgrind_annotate lists those
    # separately).
    printf '\nlicensegate: top %s functions by self Ir per request\n\n```\n' "$TOP"
    python3 - "$TMP/callgrind.licensegate.out.1" "$REQUESTS" "$TOP" <<'PY'
import collections, re, sys
path, requests, top = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
names, own, calls = {}, collections.Counter(), collections.defaultdict(collections.Counter)
fn = cfn = None
pending = False
def name(rest):
    m = re.match(r"\((\d+)\)(?: (.*))?", rest)
    if not m:
        return rest
    if m.group(2) is not None:
        names[m.group(1)] = m.group(2)
    return names[m.group(1)]
for line in open(path):
    if line.startswith("fn="):
        fn = name(line[3:].rstrip("\n"))
    elif line.startswith("cfn="):
        cfn = name(line[4:].rstrip("\n"))
    elif line.startswith("calls="):
        pending = True
    elif line[:1].isdigit() or line[:1] in "+-*":
        parts = line.split()
        if len(parts) < 2:
            continue
        if pending:
            calls[fn][cfn] += int(parts[1])
            pending = False
        else:
            own[fn] += int(parts[1])
inclusive = {f: own[f] + sum(v for g, v in calls[f].items() if g != f) for f in own}
print(f"{'self':>8} {'incl':>8}  function")
for f, v in own.most_common(top):
    print(f"{v / requests:8.0f} {inclusive[f] / requests:8.0f}  {f[:150]}")
PY
    printf '```\n'
fi
