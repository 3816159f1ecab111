#!/usr/bin/env bash
# Hot swap of a plugin module (bench/README.md, "The goals"): how soon a new module serves after its
# file is closed, cold (never compiled) and from the compile cache, and what 100 swaps do to
# requests under load. Tollgate (1 worker, pinned) serves one route whose plugin is the
# module file marker.wasm; bench/swap.py rewrites that file. Method and how to read the
# figures: bench/README.md ("Hot swap"). Part of `just bench`.
#
# Environment (all optional): as bench/run.sh (BENCH_DURATION, BENCH_RUNS, BENCH_CONNECTIONS,
# BENCH_HALF_LOAD, BENCH_PROFILE, TOLLGATE_BIN, BENCH_PROXY_CPU, BENCH_LOAD_CPU,
# BENCH_QUIET_WAIT, BENCH_STRICT), and
#   BENCH_PORT_BASE=28280     ports BASE+1 (upstream), +3 (Tollgate), +4 (admin)
#   BENCH_SWAP_OUT=bench/results/swap.md
#   BENCH_SWAP_TIMED=10       (a): timed swaps of each kind (cold, then cached)
#   BENCH_SWAPS=100           (b): swaps under load
#   BENCH_SWAP_INTERVAL=0.1   (b): seconds between two writes of the module file
#   BENCH_SWAP_WAIT_LIVE=1    (b): before the next write, wait until the previous swap is live
#                             (admin /plugins generation); 0: write blindly every interval
#   BENCH_BUILD_PLUGINS=1     0: use the .wasm files already built, build nothing
set -euo pipefail
BENCH_NAME=swap # used by common.sh
# shellcheck source=bench/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

BASE=${BENCH_PORT_BASE:-28280}
UP_PORT=$((BASE + 1))
TG_PORT=$((BASE + 3))
TG_ADMIN=$((BASE + 4))
OUT=${BENCH_SWAP_OUT:-bench/results/swap.md}
TIMED=${BENCH_SWAP_TIMED:-10}
SWAPS=${BENCH_SWAPS:-100}
INTERVAL=${BENCH_SWAP_INTERVAL:-0.1}
WAIT_LIVE=${BENCH_SWAP_WAIT_LIVE:-1}
[[ $TIMED =~ ^[0-9]+$ && $TIMED -ge 1 ]] || die "BENCH_SWAP_TIMED must be a positive integer"
[[ $SWAPS =~ ^[0-9]+$ && $SWAPS -ge 1 ]] || die "BENCH_SWAPS must be a positive integer"
for port in "$UP_PORT" "$TG_PORT" "$TG_ADMIN"; do
    port_free "$port" || die "127.0.0.1:$port is in use; set BENCH_PORT_BASE"
done

build_tollgate
build_loadgen
if [[ ${BENCH_BUILD_PLUGINS:-1} == 1 ]]; then
    build_wasm tests/plugins wasm-plugins || echo "swap: building the test plugins failed; using the files already built" >&2
fi
need_files "$TP_DIR/tp_headers.wasm" "$TP_DIR/tp_metrics.wasm"

# Family A (tp-headers: x-tp-response) and B (tp-metrics: x-tp-requests), kept outside the
# watched plugins folder; the route's module file starts as A.
mkdir -p "$WORK/plugins" "$WORK/policies" "$WORK/cache"
cp "$TP_DIR/tp_headers.wasm" "$WORK/a.wasm"
cp "$TP_DIR/tp_metrics.wasm" "$WORK/b.wasm"
MARKER=$WORK/plugins/marker.wasm
cp "$WORK/a.wasm" "$MARKER"
cat >"$WORK/policies/bench.yaml" <<EOF
listeners:
  - name: bench
    address: 127.0.0.1:$TG_PORT
    protocol: http
$(forward_all_yaml)
plugins:
  - name: marker
    module: marker.wasm
    config: { tag: swap }
EOF

# start_gateway LOG-NAME: Tollgate with a fresh copy of A as marker.wasm. The compile cache
# is a folder of this run (empty at the first start): cold means cold. Reload lines
# ("new configuration is live ... elapsed_ms") are logged, access lines are not.
TG_PID=
start_gateway() {
    cp "$WORK/a.wasm" "$MARKER"
    start "$1" "$PROXY_CPU" env TOLLGATE_LOG="warn,tollgate::reload=info" TOLLGATE_CACHE_DIR="$WORK/cache" \
        "$BIN" run --policies "$WORK/policies" --plugins "$WORK/plugins" \
        --admin "127.0.0.1:$TG_ADMIN" --workers 1 --log-format text
    TG_PID=$LAST_PID
    wait_http "http://127.0.0.1:$TG_ADMIN/readyz"
    curl -s -D - -o /dev/null "http://127.0.0.1:$TG_PORT/" | grep -qi '^x-tp-response: swap' ||
        die "the route does not answer with tp-headers' x-tp-response header"
}

log "starting the upstream (CPU $LOAD_CPU)"
start_upstream "$UP_PORT"
TOLLGATE_CACHE_DIR="$WORK/cache" "$BIN" check --policies "$WORK/policies" --plugins "$WORK/plugins" >"$WORK/check.log" 2>&1 || {
    cat "$WORK/check.log" >&2
    die "tollgate check rejected the swap policies"
}

# --- (a) time to the first answer of the new version -------------------------------------
log "(a) $TIMED cold and $TIMED cached swaps, no load, polling GET / every 1 ms"
start_gateway tollgate-a
wait_quiet
taskset -c "$LOAD_CPU" "$PYTHON" bench/swap.py latency --port "$TG_PORT" --admin "127.0.0.1:$TG_ADMIN" \
    --file "$MARKER" --a "$WORK/a.wasm" --b "$WORK/b.wasm" --cold "$TIMED" --cached "$TIMED" >"$WORK/latency.json"
kill -0 "$TG_PID" 2>/dev/null || die "Tollgate died during the timed swaps"
stop "$TG_PID"
cp "$WORK/tollgate-a.log" "$WORK/reload-a.txt"

# --- (b) swaps under load ----------------------------------------------------------------
log "(b) steady state: maximum throughput with the swap route (A = tp-headers)"
start_gateway tollgate-b
taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d1s "http://127.0.0.1:$TG_PORT/" >/dev/null
for r in $(seq "$RUNS"); do
    wait_quiet
    log "wrk run $r/$RUNS: steady state"
    taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency \
        "http://127.0.0.1:$TG_PORT/" | tee "$WORK/wrk-steady-$r.txt" | grep -E 'Requests/sec|^ +99%' >&2 || true
done
steady_rps=$("$PYTHON" bench/report.py rps "$WORK" steady)
RATE=$("$PYTHON" -c "import sys; print(max(1, round(float(sys.argv[1]) * float(sys.argv[2]))))" "$steady_rps" "$HALF")

# How long the swaps take: with BENCH_SWAP_WAIT_LIVE=1 a swap lasts as long as it takes to go
# live under load, which has been up to three times a cached swap of (a) without load (150–160
# ms against 51 ms: the driver shares the load CPU, the reload thread the proxy's); the load
# generators run that long with a margin, and the swap driver stops at their end whatever it
# has done (the report says how many went live).
SWAP_SECONDS=$("$PYTHON" - "$WORK/latency.json" "$SWAPS" "$INTERVAL" "$WAIT_LIVE" <<'EOF'
import json, math, sys
lat = json.load(open(sys.argv[1]))
swaps, interval, wait_live = int(sys.argv[2]), float(sys.argv[3]), sys.argv[4] == "1"
cycle = interval
if wait_live:
    cached = (lat["cached"]["median"] or 200) / 1e3
    cycle = max(interval, cached * 3)
print(math.ceil(swaps * cycle * 1.15 + 2))
EOF
)
churn_args=(--admin "127.0.0.1:$TG_ADMIN" --file "$MARKER" --a "$WORK/a.wasm" --b "$WORK/b.wasm"
    --swaps "$SWAPS" --interval "$INTERVAL" --delay 1.5 --deadline "$((SWAP_SECONDS + 1))")
[[ $WAIT_LIVE == 1 ]] && churn_args+=(--wait-live)

# Steady state at the fixed rate, as long as the run with swaps, the same process.
wait_quiet
log "fixed rate, no swaps: $RATE req/s for ${SWAP_SECONDS}s"
taskset -c "$LOAD_CPU" "$LOADGEN" --port "$TG_PORT" --rate "$RATE" \
    --duration "$SWAP_SECONDS" --warmup 1 --connections "$CONNS" >"$WORK/fixed-steady.json"

# The marker is A again before each run with swaps (a swap back to A, cached).
reset_to_a() {
    if ! cmp -s "$MARKER" "$WORK/a.wasm"; then
        cp "$WORK/a.wasm" "$MARKER"
        for _ in $(seq 100); do
            curl -s -D - -o /dev/null "http://127.0.0.1:$TG_PORT/" | grep -qi '^x-tp-response:' && break
            sleep 0.1
        done
        sleep 0.5
    fi
}

reset_to_a
wait_quiet
log "fixed rate with $SWAPS swaps: $RATE req/s for ${SWAP_SECONDS}s"
taskset -c "$LOAD_CPU" "$PYTHON" bench/swap.py churn "${churn_args[@]}" >"$WORK/churn-fixed.json" &
churn_pid=$!
PIDS+=("$churn_pid")
taskset -c "$LOAD_CPU" "$LOADGEN" --port "$TG_PORT" --rate "$RATE" \
    --duration "$SWAP_SECONDS" --warmup 1 --connections "$CONNS" >"$WORK/fixed-swaps.json"
wait "$churn_pid" || die "the swap driver failed"
forget "$churn_pid"
"$PYTHON" -c 'import json,sys; d=json.load(open(sys.argv[1])); c=json.load(open(sys.argv[2])); print("  achieved %s req/s  p99 %s us  errors %s  statuses %s; %s writes, %s live" % (d["achieved_rate"], d["latency_us"]["p99"], d["errors"], d["statuses"], c["writes"], c["generations"]))' \
    "$WORK/fixed-swaps.json" "$WORK/churn-fixed.json" >&2

reset_to_a
wait_quiet
log "closed loop with $SWAPS swaps: wrk for ${SWAP_SECONDS}s"
taskset -c "$LOAD_CPU" "$PYTHON" bench/swap.py churn "${churn_args[@]}" >"$WORK/churn-wrk.json" &
churn_pid=$!
PIDS+=("$churn_pid")
taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${SWAP_SECONDS}s" --latency \
    "http://127.0.0.1:$TG_PORT/" >"$WORK/wrk-swaps.txt"
wait "$churn_pid" || die "the swap driver failed"
forget "$churn_pid"
grep -E 'Requests/sec|Non-2xx|Socket errors' "$WORK/wrk-swaps.txt" >&2 || true

kill -0 "$TG_PID" 2>/dev/null || die "Tollgate died during the swaps under load"
stop "$TG_PID"
cp "$WORK/tollgate-b.log" "$WORK/reload-b.txt"

# --- report ------------------------------------------------------------------------------
write_meta "$WORK/meta.json" "rate=$RATE" "swap_seconds=$SWAP_SECONDS" "swaps=$SWAPS" \
    "interval=$INTERVAL" "wait_live=$WAIT_LIVE" "timed=$TIMED"
mkdir -p "$(dirname "$OUT")"
status=0
"$PYTHON" bench/swap_report.py "$WORK" >"$WORK/report.md" || status=$?
((status == 0 || status == 3)) || die "report failed"
cp "$WORK/report.md" "$OUT"
echo
cat "$OUT"
echo
echo "(written to $OUT)"
if ((status == 3)) && [[ ${BENCH_STRICT:-0} == 1 ]]; then
    exit 3
fi
