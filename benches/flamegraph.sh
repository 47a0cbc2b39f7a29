#!/usr/bin/env bash
# benches/flamegraph.sh — where licensegate's CPU goes under load, user space
# and kernel: perf samples of the proxy process while wrk drives keep-alive
# load through it, folded into an SVG flame graph (inferno) plus a text
# summary of the hottest functions.
#
# Usage (from anywhere; paths are resolved relative to the repository root):
#
#   benches/flamegraph.sh
#   TARGET=plain DURATION=5 benches/flamegraph.sh
#   SKIP_BUILD=1 WORKERS=2 benches/flamegraph.sh
#
# What it measures
#   A trivial nginx upstream (benches/nginx-upstream.conf.tmpl) behind
#   licensegate, either enforcing benches/enforcing-policy.yaml with the
#   benchmark's header license (TARGET=enforcing, default: feature check, seat
#   by `x-user`, a rate limit that never triggers) or forwarding without
#   policy or license (TARGET=plain). After a 1 s warm-up, wrk (one thread,
#   CONNECTIONS connections) runs for DURATION s while `perf record` samples
#   the proxy at FREQ Hz on the cpu-clock software event (hardware counters
#   are not available on every VM) with DWARF call stacks.
#
# Output
#   target/bench/flamegraph-<TARGET>.svg   interactive flame graph
#   target/bench/perf-<TARGET>.txt         top TOP functions by self time,
#                                          and the share of kernel samples
#   A short summary (wrk req/s, sample count, kernel share, top functions)
#   goes to stdout; progress goes to stderr.
#
# Environment
#   TARGET       enforcing | plain (default enforcing)
#   DURATION     seconds of sampled load (default 5)
#   FREQ         samples per second (default 499)
#   WORKERS      licensegate worker threads (default 1)
#   CONNECTIONS  wrk connections (default 64)
#   TOP          functions listed in the summary (default 25)
#   SKIP_BUILD   1 = do not run `cargo build --release` first
#   BIN          licensegate binary (default <repo>/target/release/licensegate)
#   KEEP_TMP     1 = keep the temp dir (perf.data, configs, logs)
#
# Requirements: perf (linux-perf), wrk, nginx, curl, python3 (installed with
# apt-get when missing) and inferno (`cargo install inferno` into
# target/bench-tools when missing). Run as root, or with
# kernel.perf_event_paranoid <= 1, to see kernel stacks.
#
# Everything listens on 127.0.0.1 only; every background process is stopped
# on exit, including on Ctrl-C.
set -euo pipefail

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd -- "$SCRIPT_DIR/.." && pwd)
PATH=$PATH:/usr/local/sbin:/usr/sbin:/sbin:$ROOT/target/bench-tools/bin
export PATH

TARGET=${TARGET:-enforcing}
DURATION=${DURATION:-5}
FREQ=${FREQ:-499}
WORKERS=${WORKERS:-1}
CONNECTIONS=${CONNECTIONS:-64}
TOP=${TOP:-25}
KEEP_TMP=${KEEP_TMP:-0}
SKIP_BUILD=${SKIP_BUILD:-0}
if [[ -n ${BIN:-} ]]; then SKIP_BUILD=1; fi
BIN=${BIN:-$ROOT/target/release/licensegate}

BENCH_NAME=flamegraph.sh
# shellcheck source=benches/lib.sh
source "$SCRIPT_DIR/lib.sh"

[[ $TARGET == enforcing || $TARGET == plain ]] || die "TARGET must be enforcing or plain (got '$TARGET')"
for var in DURATION FREQ WORKERS CONNECTIONS TOP; do
    [[ ${!var} =~ ^[1-9][0-9]*$ ]] || die "$var must be a positive integer (got '${!var}')"
done

# ---- dependencies
for tool in perf wrk nginx curl python3; do
    command -v "$tool" >/dev/null 2>&1 && continue
    case $tool in
        perf) apt_install linux-perf || true ;;
        nginx) apt_install nginx-light || apt_install nginx || true ;;
        *) apt_install "$tool" || true ;;
    esac
    command -v "$tool" >/dev/null 2>&1 || die "$tool is required and could not be installed"
done
if ! command -v inferno-flamegraph >/dev/null 2>&1; then
    log "cargo install inferno (into target/bench-tools)"
    cargo install --quiet --locked inferno --root "$ROOT/target/bench-tools" >&2 ||
        die "inferno could not be installed"
fi

if [[ $SKIP_BUILD != 1 ]]; then
    log "cargo build --release (set SKIP_BUILD=1 or BIN=... to skip)"
    (cd "$ROOT" && cargo build --release --bin licensegate) >&2
fi
[[ -x $BIN ]] || die "licensegate binary not found or not executable: $BIN"

# ---- setup
TMP=$(mktemp -d "${TMPDIR:-/tmp}/licensegate-flamegraph.XXXXXX")
chmod 755 "$TMP" # nginx started as root runs its workers as "nobody"
ulimit -n 65536 2>/dev/null || true
read -r UP_PORT LG_PORT LG_ADMIN_PORT <<<"$(free_ports 3)"
[[ -n ${LG_ADMIN_PORT:-} ]] || die "could not pick free loopback ports"

mkdir "$TMP/upstream"
render "$SCRIPT_DIR/nginx-upstream.conf.tmpl" "$TMP/upstream/nginx.conf" \
    DIR="$TMP/upstream" PORT="$UP_PORT"
start_bg "$TMP/upstream/stdout.log" nginx -p "$TMP/upstream/" -e "$TMP/upstream/error.log" \
    -c "$TMP/upstream/nginx.conf"
wait_http "http://127.0.0.1:$UP_PORT/" "$LAST_PID" || {
    dump_log "$TMP/upstream/error.log"
    die "upstream nginx did not come up"
}

WRK_HEADERS=()
cat >"$TMP/config.yaml" <<YAML
listen: 127.0.0.1:$LG_PORT
admin: 127.0.0.1:$LG_ADMIN_PORT
workers: $WORKERS
upstream: {url: "http://127.0.0.1:$UP_PORT"}
YAML
if [[ $TARGET == enforcing ]]; then
    bench_license "$BIN" "$TMP"
    WRK_HEADERS=(-H "Authorization: Bearer $TOKEN" -H "x-user: alice")
    cat >>"$TMP/config.yaml" <<YAML
license: {keys: "$TMP/bench.pem", source: header}
policy: {paths: ["$SCRIPT_DIR/enforcing-policy.yaml"]}
YAML
fi
start_bg "$TMP/licensegate.log" env LICENSEGATE_LOG=warn "$BIN" run --config "$TMP/config.yaml"
LG_PID=$LAST_PID
wait_http "http://127.0.0.1:$LG_ADMIN_PORT/readyz" "$LG_PID" || {
    dump_log "$TMP/licensegate.log"
    die "licensegate did not become ready"
}
URL="http://127.0.0.1:$LG_PORT/"
status=$(curl -s -o /dev/null -w '%{http_code}' "${WRK_HEADERS[@]}" "$URL")
[[ $status == 200 ]] || die "the benchmark request answered $status, not 200"

log "warm-up 1 s"
wrk -t1 -c"$CONNECTIONS" -d1s "${WRK_HEADERS[@]}" "$URL" >/dev/null

log "sampling licensegate ($TARGET, pid $LG_PID) for ${DURATION}s at ${FREQ} Hz under wrk load"
wrk -t1 -c"$CONNECTIONS" -d"$((DURATION + 1))s" "${WRK_HEADERS[@]}" "$URL" >"$TMP/wrk.txt" &
WRK_PID=$!
PIDS+=("$WRK_PID")
perf record -q -e cpu-clock -F "$FREQ" --call-graph dwarf,32768 -p "$LG_PID" \
    -o "$TMP/perf.data" -- sleep "$DURATION" 2>"$TMP/perf-record.log" || {
    dump_log "$TMP/perf-record.log"
    die "perf record failed (kernel.perf_event_paranoid is $(cat /proc/sys/kernel/perf_event_paranoid))"
}
wait "$WRK_PID" || die "wrk failed"
forget_pid "$WRK_PID"

OUT="$ROOT/target/bench"
mkdir -p "$OUT"
log "folding stacks (perf script | inferno-collapse-perf)"
perf script -i "$TMP/perf.data" 2>/dev/null | inferno-collapse-perf --kernel >"$TMP/folded.txt"
inferno-flamegraph --title "licensegate $TARGET, wrk -c$CONNECTIONS, $WORKERS worker(s)" \
    <"$TMP/folded.txt" >"$OUT/flamegraph-$TARGET.svg"

# Self time per function (the leaf frame of each folded stack; kernel frames
# are marked `_[k]`), and inclusive shares of the proxy's main parts. Weights
# are cpu-clock periods, i.e. nanoseconds of CPU.
python3 - "$TMP/folded.txt" "$TOP" "$TARGET" "$TMP/wrk.txt" "$DURATION" >"$OUT/perf-$TARGET.txt" <<'PY'
import collections, re, sys
folded, top, target, wrk, duration = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], float(sys.argv[5])
parts = [
    ("kernel (system calls, TCP, scheduling)", lambda leaf, stack: leaf.endswith("_[k]")),
    # `decide` itself is inlined into the request handler; its callees are not.
    ("decision (match, license, limits)", lambda leaf, stack: any(
        part in stack for part in ("decision::engine::", "LicenseGate::check", "policy::matcher::", "limits::"))),
    ("request rewrite and response finish", lambda leaf, stack: "proxy::forward::" in stack),
    ("hyper HTTP/1 server (inbound)", lambda leaf, stack: "hyper::proto::h1::dispatch::Server" in stack),
    ("hyper HTTP/1 client (upstream)", lambda leaf, stack: "hyper::proto::h1::dispatch::Client" in stack),
    ("allocator", lambda leaf, stack: leaf.startswith("mi_") or leaf.startswith("_mi_")),
    ("metrics", lambda leaf, stack: "prometheus::" in stack),
]
self_time, total = collections.Counter(), 0
shares = collections.Counter()
for line in open(folded):
    stack, _, count = line.rstrip("\n").rpartition(" ")
    count = int(count)
    leaf = stack.rsplit(";", 1)[-1]
    self_time[leaf] += count
    total += count
    for name, test in parts:
        if test(leaf, stack):
            shares[name] += count
total = max(total, 1)
rps = re.search(r"Requests/sec:\s+([\d.]+)", open(wrk).read())
print(f"licensegate {target}: {rps.group(1) if rps else '?'} req/s under perf; "
      f"{total / 1e9:.2f} CPU s sampled in {duration:.0f} s\n")
print(f"{'share %':>8}  part (inclusive; parts overlap)")
for name, _ in parts:
    print(f"{100 * shares[name] / total:8.1f}  {name}")
print(f"\n{'self %':>8}  function (_[k] = kernel)")
for name, count in self_time.most_common(top):
    print(f"{100 * count / total:8.2f}  {name[:160]}")
PY
cat "$OUT/perf-$TARGET.txt"
log "wrote $OUT/flamegraph-$TARGET.svg and $OUT/perf-$TARGET.txt"
