#!/usr/bin/env bash
# Tollgate (0 plugins) vs nginx as a reverse proxy vs direct-to-upstream, on loopback.
# Method and how to read the figures: bench/README.md. Run it with `just bench`.
#
# Environment (all optional):
#   BENCH_DURATION=10     seconds per run (wrk and fixed-rate); 3 is a quick smoke run
#   BENCH_RUNS=3          runs per figure; the report shows the median, and each ratio the
#                         median of the per-pair ratios with their spread (bench/goals.py)
#   BENCH_CONNECTIONS=64  keep-alive connections (wrk -c, and the fixed-rate generator)
#   BENCH_HALF_LOAD=0.5   fixed rate as a share of nginx's measured maximum
#   BENCH_PROFILE=release how to build Tollgate: release | pgo (the production build of
#                         bench/pgo.sh, `just release`) | debug
#   TOLLGATE_BIN=path     use this binary and build nothing
#   TOLLGATE_BASELINE_BIN=path  also bench this Tollgate binary (an earlier build) as the
#                         target "baseline", alternating with the others, and report this
#                         build / baseline: the cost or gain of a change, measured in one session
#   BENCH_PROXY_CPU=0 BENCH_LOAD_CPU=1   the CPUs to pin to
#   BENCH_PORT_BASE=18080 ports BASE+1 (upstream), +2 (nginx), +3 (Tollgate), +4 (admin),
#                         +5 (baseline Tollgate), +6 (its admin)
#   BENCH_OUT=bench/results/latest.md
#   BENCH_STRICT=1        exit 3 when a goal is missed or its figure is unstable (spread of
#                         the per-pair ratios over 10 %); default: report only
#   BENCH_TARGETS="direct nginx tollgate"  a subset, e.g. to check the baseline alone
#   BENCH_QUIET_WAIT=60   before each run, wait up to this many seconds for the machine to
#                         be idle (other processes below 10% CPU); runs that start on a busy
#                         machine are counted and flagged in the report
set -euo pipefail

BENCH_NAME=bench
# shellcheck source=bench/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

BASE=${BENCH_PORT_BASE:-18080}
UP_PORT=$((BASE + 1))
NGINX_PORT=$((BASE + 2))
TG_PORT=$((BASE + 3))
TG_ADMIN=$((BASE + 4))
BASELINE_PORT=$((BASE + 5))
BASELINE_ADMIN=$((BASE + 6))
OUT=${BENCH_OUT:-bench/results/latest.md}
default_targets="direct nginx tollgate"
[[ -z ${TOLLGATE_BASELINE_BIN:-} ]] || default_targets="$default_targets baseline"
read -r -a TARGETS <<<"${BENCH_TARGETS:-$default_targets}"
want() { [[ " ${TARGETS[*]} " == *" $1 "* ]]; }

for t in "${TARGETS[@]}"; do
    case $t in direct | nginx | tollgate | baseline) ;; *) die "unknown target '$t' in BENCH_TARGETS" ;; esac
done
if want baseline; then
    [[ -x ${TOLLGATE_BASELINE_BIN:-} ]] || die "target baseline needs TOLLGATE_BASELINE_BIN (an executable Tollgate binary)"
fi
want nginx || die "BENCH_TARGETS must include nginx (the fixed rate is half of its maximum)"

# --- Tollgate binary ---------------------------------------------------------------------
BIN=""
if want tollgate; then
    build_tollgate
fi
build_loadgen

for port in "$UP_PORT" "$NGINX_PORT" "$TG_PORT" "$TG_ADMIN" "$BASELINE_PORT" "$BASELINE_ADMIN"; do
    port_free "$port" || die "127.0.0.1:$port is in use; set BENCH_PORT_BASE"
done

# The upstream for every run: nginx answering a small static body, on the load CPU.
nginx_conf "$WORK/upstream" "    server {
        listen 127.0.0.1:$UP_PORT backlog=4096;
        location / {
            return 200 \"ok\";
        }
    }"

# nginx as a reverse proxy: keep-alive to the upstream; it sets the same forwarding
# headers Tollgate sets, so both do the same work per request.
nginx_conf "$WORK/proxy" "    upstream bench_upstream {
        server 127.0.0.1:$UP_PORT;
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT backlog=4096;
        location / {
            proxy_pass http://bench_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header X-Forwarded-Host \$host;
            proxy_set_header X-Request-Id \$request_id;
        }
    }"

# Tollgate: one listener, one cluster, one route, no plugins.
mkdir -p "$WORK/policies"
cat >"$WORK/policies/bench.yaml" <<EOF
listeners:
  - name: bench
    address: 127.0.0.1:$TG_PORT
    protocol: http
$(forward_all_yaml)
EOF

if want tollgate; then
log "validating the bench policies"
"$BIN" check --policies "$WORK/policies" >"$WORK/check.log" 2>&1 || {
    cat "$WORK/check.log" >&2
    die "tollgate check rejected the bench policies"
}
fi

log "starting the upstream (CPU $LOAD_CPU) and the proxies (CPU $PROXY_CPU)"
start upstream "$LOAD_CPU" nginx -p "$WORK/upstream" -c "$WORK/upstream/nginx.conf" -e "$WORK/upstream/error.log"
# The proxies' pids: their CPU time is read around each closed-loop run.
declare -A PROXY_PID=()
start nginx "$PROXY_CPU" nginx -p "$WORK/proxy" -c "$WORK/proxy/nginx.conf" -e "$WORK/proxy/error.log"
PROXY_PID[nginx]=$LAST_PID
if want tollgate; then
    start tollgate "$PROXY_CPU" env TOLLGATE_LOG=warn "$BIN" run --policies "$WORK/policies" \
        --admin "127.0.0.1:$TG_ADMIN" --workers 1 --log-format text
    PROXY_PID[tollgate]=$LAST_PID
fi
if want baseline; then
    # The same policies on the baseline's own port: only the binary differs.
    mkdir -p "$WORK/baseline-policies"
    sed "s/127.0.0.1:$TG_PORT\$/127.0.0.1:$BASELINE_PORT/" "$WORK/policies/bench.yaml" >"$WORK/baseline-policies/bench.yaml"
    start baseline "$PROXY_CPU" env TOLLGATE_LOG=warn "$TOLLGATE_BASELINE_BIN" run \
        --policies "$WORK/baseline-policies" --admin "127.0.0.1:$BASELINE_ADMIN" --workers 1 --log-format text
    PROXY_PID[baseline]=$LAST_PID
fi
wait_http "http://127.0.0.1:$UP_PORT/"
wait_http "http://127.0.0.1:$NGINX_PORT/"
if want tollgate; then wait_http "http://127.0.0.1:$TG_ADMIN/readyz"; fi
if want baseline; then wait_http "http://127.0.0.1:$BASELINE_ADMIN/readyz"; fi

declare -A PORT=([direct]=$UP_PORT [nginx]=$NGINX_PORT [tollgate]=$TG_PORT [baseline]=$BASELINE_PORT)
for t in "${TARGETS[@]}"; do
    body=$(curl -s "http://127.0.0.1:${PORT[$t]}/")
    [[ $body == ok ]] || die "$t: GET / answered '$body', expected 'ok'"
done

# --- closed loop: maximum throughput -----------------------------------------------------
log "warm-up (1 s each)"
for t in "${TARGETS[@]}"; do
    taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d1s "http://127.0.0.1:${PORT[$t]}/" >/dev/null
done

# Runs alternate between the targets so that drift in the machine hits them all alike.
for r in $(seq "$RUNS"); do
    for t in "${TARGETS[@]}"; do
        wait_quiet
        log "wrk run $r/$RUNS: $t"
        load=(taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "http://127.0.0.1:${PORT[$t]}/")
        if [[ -n ${PROXY_PID[$t]:-} ]]; then
            # The proxy's CPU time during the run, user space and kernel apart (`.cpu`).
            measured "$WORK/wrk-$t-$r.txt" "${PROXY_PID[$t]}" "${load[@]}"
        else
            "${load[@]}" >"$WORK/wrk-$t-$r.txt"
        fi
        grep -E 'Requests/sec|^ +99%' "$WORK/wrk-$t-$r.txt" >&2 || true
    done
done

# --- open loop: latency at half of nginx's maximum ---------------------------------------
nginx_rps=$("$PYTHON" bench/report.py rps "$WORK" nginx)
RATE=$("$PYTHON" -c "import sys; print(max(1, round(float(sys.argv[1]) * float(sys.argv[2]))))" "$nginx_rps" "$HALF")
for r in $(seq "$RUNS"); do
    for t in "${TARGETS[@]}"; do
        wait_quiet
        log "fixed rate run $r/$RUNS: $t at $RATE req/s"
        taskset -c "$LOAD_CPU" "$LOADGEN" --port "${PORT[$t]}" --rate "$RATE" \
            --duration "$DURATION" --warmup 1 --connections "$CONNS" >"$WORK/fixed-$t-$r.json"
        "$PYTHON" -c 'import json,sys; d=json.load(open(sys.argv[1])); l=d["latency_us"]; print("  achieved %s req/s  p50 %s us  p99 %s us  errors %s" % (d["achieved_rate"], l["p50"], l["p99"], d["errors"]))' \
            "$WORK/fixed-$t-$r.json" >&2
    done
done

# Every server must have survived the load.
for pid in "${PIDS[@]}"; do
    kill -0 "$pid" 2>/dev/null || die "a server died during the bench"
done

# --- report ------------------------------------------------------------------------------
smoke=""
[[ $DURATION -ge 10 ]] || smoke="BENCH_DURATION=$DURATION"
! want tollgate || [[ $PROFILE != debug || -n ${TOLLGATE_BIN:-} ]] || smoke="${smoke:+$smoke, }debug build"
# Fewer than 3 pairs give no meaningful spread.
[[ $RUNS -ge 3 ]] || smoke="${smoke:+$smoke, }BENCH_RUNS=$RUNS"
profile_label="$PROFILE build"
[[ -z ${TOLLGATE_BIN:-} ]] || profile_label="binary $TOLLGATE_BIN"
rev=$(git rev-parse --short HEAD 2>/dev/null || echo "uncommitted")
if [[ -n $(git status --porcelain -- host Cargo.toml Cargo.lock 2>/dev/null) ]]; then rev="$rev+changes"; fi
"$PYTHON" - "$WORK/meta.json" <<EOF
import json, platform, sys
cpu = "unknown CPU"
try:
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
except OSError:
    pass
meta = {
    "date": "$(date -u '+%Y-%m-%d %H:%M UTC')",
    "cpu": cpu, "cpus": $cpus, "kernel": platform.release(),
    "tollgate_rev": "$rev", "profile": "$profile_label",
    "baseline": "${TOLLGATE_BASELINE_BIN:-}",
    "nginx": "$(nginx -v 2>&1 | sed 's/^nginx version: //')",
    "wrk": "$(wrk -v 2>&1 | head -n1 | awk '{print $1, $2}')",
    "python": platform.python_version(),
    "proxy_cpu": "$PROXY_CPU", "load_cpu": "$LOAD_CPU",
    "runs": $RUNS, "duration": $DURATION, "connections": $CONNS,
    "rate": $RATE, "half_load": "$(awk -v h="$HALF" 'BEGIN { printf "%g%%", h * 100 }')",
    "smoke": "$smoke", "busy_runs": $BUSY_RUNS, "total_runs": $((RUNS * ${#TARGETS[@]} * 2)),
    "steal": json.loads("""$(steal_json)"""),
}
json.dump(meta, open(sys.argv[1], "w"), indent=1)
EOF

mkdir -p "$(dirname "$OUT")"
status=0
"$PYTHON" bench/report.py table "$WORK" >"$WORK/report.md" || status=$?
((status == 0 || status == 3)) || die "report failed"
cp "$WORK/report.md" "$OUT"
echo
cat "$OUT"
echo
echo "(written to $OUT)"
if ((status == 3)) && [[ ${BENCH_STRICT:-0} == 1 ]]; then
    exit 3
fi
