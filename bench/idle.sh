#!/usr/bin/env bash
# Memory at 10 000 idle keep-alive connections: Tollgate (0 plugins) vs nginx as a reverse
# proxy, in front of the same upstream. Part of `just bench`; method and how to read the
# figures: bench/README.md ("Memory at idle connections").
#
# Each run starts the proxy afresh (pinned to the proxy CPU), then bench/idle_client.py (on
# the load CPU) opens BENCH_IDLE_CONNECTIONS connections, sends one `GET /` on each, holds
# them idle and reads the proxy's resident memory (VmRSS; nginx: master + worker); then the
# proxy is stopped. Runs alternate: nginx, Tollgate, nginx, ...
#
# Environment (all optional): as bench/run.sh (BENCH_RUNS, BENCH_PROFILE, TOLLGATE_BIN,
# BENCH_PROXY_CPU, BENCH_LOAD_CPU, BENCH_QUIET_WAIT, BENCH_STRICT), and
#   BENCH_IDLE_CONNECTIONS=10000   connections held open
#   BENCH_IDLE_SETTLE=2            seconds idle before the memory is read
#   BENCH_PORT_BASE=28480          ports BASE+1 (upstream), +2 (nginx), +3 (Tollgate), +4 (admin)
#   BENCH_IDLE_OUT=bench/results/idle.md
set -euo pipefail
BENCH_NAME=idle # used by common.sh
# shellcheck source=bench/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

BASE=${BENCH_PORT_BASE:-28480}
UP_PORT=$((BASE + 1))
TG_ADMIN=$((BASE + 4))
IDLE=${BENCH_IDLE_CONNECTIONS:-10000}
SETTLE=${BENCH_IDLE_SETTLE:-2}
OUT=${BENCH_IDLE_OUT:-bench/results/idle.md}
[[ $IDLE =~ ^[0-9]+$ && $IDLE -ge 1 ]] || die "BENCH_IDLE_CONNECTIONS must be a positive integer"
TARGETS=(nginx tollgate)
declare -A PORT=([nginx]=$((BASE + 2)) [tollgate]=$((BASE + 3)))
for port in "$UP_PORT" "${PORT[@]}" "$TG_ADMIN"; do
    port_free "$port" || die "127.0.0.1:$port is in use; set BENCH_PORT_BASE"
done

# Every idle connection is a file descriptor in the client and in the proxy (nginx: plus its
# upstream connections): raise the soft limit to what is needed, within the hard limit.
need=$((IDLE + 1024))
if (($(ulimit -n) < need)); then
    hard=$(ulimit -Hn)
    [[ $hard == unlimited ]] || ((hard >= need)) || die "$IDLE connections need 'ulimit -n' ≥ $need; the hard limit is $hard (raise it, or set BENCH_IDLE_CONNECTIONS)"
    ulimit -n "$need"
fi

build_tollgate
start_upstream "$UP_PORT"

NGINX_CONNECTIONS=$((IDLE + 1024)) nginx_conf "$WORK/proxy" "    upstream bench_upstream {
        server 127.0.0.1:$UP_PORT;
        keepalive 64;
    }
    server {
        listen 127.0.0.1:${PORT[nginx]} backlog=4096;
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

# Tollgate's listener cap (max_connections, 10 000 by default) is raised above the count, as
# nginx's worker_connections is: both hold every connection.
mkdir -p "$WORK/policies"
cat >"$WORK/policies/bench.yaml" <<EOF
server:
  max_connections: $((IDLE + 1024))
listeners:
  - name: bench
    address: 127.0.0.1:${PORT[tollgate]}
    protocol: http
$(forward_all_yaml)
EOF
"$BIN" check --policies "$WORK/policies" >"$WORK/check.log" 2>&1 || {
    cat "$WORK/check.log" >&2
    die "tollgate check rejected the bench policies"
}

# start_proxy TARGET: start it on the proxy CPU, wait until it answers `ok`; pid in PROXY_PID
PROXY_PID=
start_proxy() {
    case $1 in
    nginx) start nginx "$PROXY_CPU" nginx -p "$WORK/proxy" -c "$WORK/proxy/nginx.conf" -e "$WORK/proxy/error.log" ;;
    tollgate)
        start tollgate "$PROXY_CPU" env TOLLGATE_LOG=warn "$BIN" run --policies "$WORK/policies" \
            --admin "127.0.0.1:$TG_ADMIN" --workers 1 --log-format text
        ;;
    esac
    PROXY_PID=$LAST_PID
    wait_http "http://127.0.0.1:${PORT[$1]}/"
    local body
    body=$(curl -s "http://127.0.0.1:${PORT[$1]}/")
    [[ $body == ok ]] || die "$1: GET / answered '$body', expected 'ok'"
}

for r in $(seq "$RUNS"); do
    for t in "${TARGETS[@]}"; do
        start_proxy "$t"
        wait_quiet
        log "idle run $r/$RUNS: $t, $IDLE connections"
        taskset -c "$LOAD_CPU" "$PYTHON" bench/idle_client.py --port "${PORT[$t]}" --pid "$PROXY_PID" \
            --connections "$IDLE" --settle "$SETTLE" >"$WORK/idle-$t-$r.json"
        "$PYTHON" -c 'import json,sys; d=json.load(open(sys.argv[1])); print("  RSS %.1f MiB before, %.1f MiB at %d connections (%d answered, %d closed by the proxy)" % (d["rss_before_kb"] / 1024, d["rss_kb"] / 1024, d["connections"], d["answered"], d["closed_by_server"]))' \
            "$WORK/idle-$t-$r.json" >&2
        kill -0 "$PROXY_PID" 2>/dev/null || die "$t died during the run"
        stop "$PROXY_PID"
    done
done

write_meta "$WORK/meta.json" "idle_connections=$IDLE" "settle=$SETTLE"
mkdir -p "$(dirname "$OUT")"
status=0
"$PYTHON" bench/idle_report.py "$WORK" >"$WORK/report.md" || status=$?
((status == 0 || status == 3)) || die "report failed"
cp "$WORK/report.md" "$OUT"
echo
cat "$OUT"
echo
echo "(written to $OUT)"
if ((status == 3)) && [[ ${BENCH_STRICT:-0} == 1 ]]; then
    exit 3
fi
