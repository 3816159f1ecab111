#!/usr/bin/env bash
# TLS and HTTP/2: Tollgate (0 plugins) vs nginx as a reverse proxy, both with the same
# certificate, in front of the same upstream. Part of `just bench`; method and how to read
# the figures: bench/README.md ("TLS and HTTP/2").
#
# Figures, each from runs alternating between nginx and Tollgate (nginx, Tollgate, nginx, ...):
#   handshake  new TLS connections (full handshake, one HTTP/1.0 request, closed): parallel
#              `openssl s_time -new`, which never resumes a session
#   tls        keep-alive HTTP/1.1 over TLS: wrk on https://
#   h2         HTTP/2 over TLS (ALPN h2): h2load
#   h2c        HTTP/2 over plain TCP (prior knowledge): h2load
# For each run the proxy's own CPU time is recorded too (/proc), so the report gives the cost
# per handshake or request on the proxy's core even when the load generator is the limit.
#
# Environment (all optional): as bench/run.sh (BENCH_DURATION, BENCH_RUNS, BENCH_CONNECTIONS,
# BENCH_PROFILE, TOLLGATE_BIN, BENCH_PROXY_CPU, BENCH_LOAD_CPU, BENCH_QUIET_WAIT,
# BENCH_STRICT), and
#   BENCH_PORT_BASE=28380   ports BASE+1 (upstream), +2 (nginx TLS), +3 (nginx h2c),
#                           +4 (Tollgate TLS), +5 (Tollgate plain: HTTP/1.1 and h2c), +6 (admin)
#   BENCH_TLS_CLIENTS=8     parallel `openssl s_time` processes for the handshake figure
#   BENCH_H2_CLIENTS=16 BENCH_H2_STREAMS=10   h2load connections and streams per connection
#   BENCH_TLS_FIGURES="handshake tls h2 h2c"  a subset
#   BENCH_TLS_OUT=bench/results/tls.md
set -euo pipefail
BENCH_NAME=tls # used by common.sh
# shellcheck source=bench/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
need_tools h2load:nghttp2-client openssl:openssl

BASE=${BENCH_PORT_BASE:-28380}
UP_PORT=$((BASE + 1))
OUT=${BENCH_TLS_OUT:-bench/results/tls.md}
TLS_CLIENTS=${BENCH_TLS_CLIENTS:-8}
H2_CLIENTS=${BENCH_H2_CLIENTS:-16}
H2_STREAMS=${BENCH_H2_STREAMS:-10}
read -r -a FIGURES <<<"${BENCH_TLS_FIGURES:-handshake tls h2 h2c}"
for f in "${FIGURES[@]}"; do
    case $f in handshake | tls | h2 | h2c) ;; *) die "unknown figure '$f' in BENCH_TLS_FIGURES" ;; esac
done
TARGETS=(nginx tollgate)
declare -A TLS_PORT=([nginx]=$((BASE + 2)) [tollgate]=$((BASE + 4)))
declare -A H2C_PORT=([nginx]=$((BASE + 3)) [tollgate]=$((BASE + 5)))
TG_ADMIN=$((BASE + 6))
for port in "$UP_PORT" "${TLS_PORT[@]}" "${H2C_PORT[@]}" "$TG_ADMIN"; do
    port_free "$port" || die "127.0.0.1:$port is in use; set BENCH_PORT_BASE"
done

# --- binaries and the certificate ----------------------------------------------------------
build_tollgate
# The certificate comes from the demo backend's `certs` subcommand (ECDSA P-256, like
# `just certs`), for localhost and 127.0.0.1; both proxies serve the same files.
DEMO=$(dirname "$BIN")/demo-backend
if [[ ! -x $DEMO ]]; then
    DEMO=$TARGET_DIR/debug/demo-backend
    if [[ ! -x $DEMO ]]; then
        log "cargo build -p tollgate-tests --bin demo-backend"
        cargo build -p tollgate-tests --bin demo-backend
    fi
fi
"$DEMO" certs --out "$WORK/certs" --names localhost,127.0.0.1 >/dev/null

# --- servers -----------------------------------------------------------------------------
start_upstream "$UP_PORT"

# nginx: TLS 1.2 and 1.3 (nginx 1.22 leaves 1.3 out by default; Tollgate offers both) with
# ALPN h2 and http/1.1 on one port, h2c on another (nginx speaks either HTTP/1.1 or h2c on a
# plain port, not both); the same upstream block and forwarding headers as run.sh.
nginx_conf "$WORK/proxy" "    upstream bench_upstream {
        server 127.0.0.1:$UP_PORT;
        keepalive 64;
        keepalive_requests 1000000;
    }
    ssl_certificate $WORK/certs/demo.crt;
    ssl_certificate_key $WORK/certs/demo.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    http2_max_concurrent_streams 128;
    server {
        listen 127.0.0.1:${TLS_PORT[nginx]} ssl http2 backlog=4096;
        listen 127.0.0.1:${H2C_PORT[nginx]} http2 backlog=4096;
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

mkdir -p "$WORK/policies"
cp "$WORK/certs/demo.crt" "$WORK/certs/demo.key" "$WORK/policies/"
cat >"$WORK/policies/bench.yaml" <<EOF
listeners:
  - name: bench-tls
    address: 127.0.0.1:${TLS_PORT[tollgate]}
    protocol: https
    tls:
      certificates:
        - { cert: demo.crt, key: demo.key }
  - name: bench
    address: 127.0.0.1:${H2C_PORT[tollgate]}
    protocol: http
$(forward_all_yaml)
EOF
"$BIN" check --policies "$WORK/policies" >"$WORK/check.log" 2>&1 || {
    cat "$WORK/check.log" >&2
    die "tollgate check rejected the bench policies"
}

log "starting the proxies (CPU $PROXY_CPU)"
start nginx "$PROXY_CPU" nginx -p "$WORK/proxy" -c "$WORK/proxy/nginx.conf" -e "$WORK/proxy/error.log"
declare -A PID=([nginx]=$LAST_PID)
start tollgate "$PROXY_CPU" env TOLLGATE_LOG=warn "$BIN" run --policies "$WORK/policies" \
    --admin "127.0.0.1:$TG_ADMIN" --workers 1 --log-format text
PID[tollgate]=$LAST_PID
wait_http "http://127.0.0.1:$TG_ADMIN/readyz"
CA=$WORK/certs/ca.crt
for t in "${TARGETS[@]}"; do
    for _ in $(seq 50); do
        [[ $(curl -s --cacert "$CA" "https://127.0.0.1:${TLS_PORT[$t]}/" || true) == ok ]] && break
        sleep 0.1
    done
    for proto in --http1.1 --http2; do
        body=$(curl -s "$proto" --cacert "$CA" "https://127.0.0.1:${TLS_PORT[$t]}/" || true)
        [[ $body == ok ]] || die "$t: GET / over TLS ($proto) answered '$body', expected 'ok'"
    done
    version=$(curl -s --cacert "$CA" -o /dev/null -w '%{http_version}' "https://127.0.0.1:${TLS_PORT[$t]}/" || true)
    [[ $version == 2 ]] || die "$t: ALPN did not choose h2 (HTTP version '$version')"
    body=$(curl -s --http2-prior-knowledge "http://127.0.0.1:${H2C_PORT[$t]}/" || true)
    [[ $body == ok ]] || die "$t: GET / over h2c answered '$body', expected 'ok'"
    # What both negotiate with the load generators' OpenSSL (the report records it).
    openssl s_client -brief -connect "127.0.0.1:${TLS_PORT[$t]}" -servername localhost </dev/null 2>&1 |
        awk -F': *' '/^(Protocol version|Ciphersuite|Server Temp Key):/ { printf "%s%s", sep, $2; sep = ", " }' \
            >"$WORK/negotiated-$t.txt" || true
done

# --- runs --------------------------------------------------------------------------------
# One figure's runs: RUNS pairs, nginx then Tollgate, each measured with the proxy's CPU.
run_figure() {
    local figure=$1 r t out
    for r in $(seq "$RUNS"); do
        for t in "${TARGETS[@]}"; do
            wait_quiet
            log "$figure run $r/$RUNS: $t"
            out=$WORK/$figure-$t-$r.txt
            case $figure in
            handshake) measured "$out" "${PID[$t]}" s_time_parallel "${TLS_PORT[$t]}" ;;
            tls)
                measured "$out" "${PID[$t]}" taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency \
                    "https://127.0.0.1:${TLS_PORT[$t]}/"
                ;;
            h2)
                measured "$out" "${PID[$t]}" taskset -c "$LOAD_CPU" h2load -t1 -c"$H2_CLIENTS" -m"$H2_STREAMS" \
                    -D"$DURATION" "https://127.0.0.1:${TLS_PORT[$t]}/"
                ;;
            h2c)
                measured "$out" "${PID[$t]}" taskset -c "$LOAD_CPU" h2load -t1 -c"$H2_CLIENTS" -m"$H2_STREAMS" \
                    -D"$DURATION" "http://127.0.0.1:${H2C_PORT[$t]}/"
                ;;
            esac
            grep -E '^Requests/sec|^finished in|connections in [0-9.]+s;|^requests:' "$out" | head -n 3 >&2 || true
            kill -0 "${PID[$t]}" 2>/dev/null || die "$t died during the $figure run"
        done
    done
}

# s_time_parallel PORT: TLS_CLIENTS `openssl s_time -new` for DURATION seconds, all on the
# load CPU; each connection is a full handshake, `GET / HTTP/1.0`, and the close. Output:
# the processes' reports, one after the other.
s_time_parallel() {
    local port=$1 i pids=()
    for i in $(seq "$TLS_CLIENTS"); do
        taskset -c "$LOAD_CPU" openssl s_time -connect "127.0.0.1:$port" -new -time "$DURATION" -www / \
            >"$WORK/s_time-$i.txt" 2>&1 &
        pids+=($!)
    done
    for i in "${pids[@]}"; do wait "$i" || true; done
    cat "$WORK"/s_time-*.txt
    rm -f "$WORK"/s_time-*.txt
}

log "warm-up (1 s each)"
for t in "${TARGETS[@]}"; do
    taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d1s "https://127.0.0.1:${TLS_PORT[$t]}/" >/dev/null
done
for figure in "${FIGURES[@]}"; do
    run_figure "$figure"
done

# --- report ------------------------------------------------------------------------------
write_meta "$WORK/meta.json" "figures=${FIGURES[*]}" "tls_clients=$TLS_CLIENTS" \
    "h2_clients=$H2_CLIENTS" "h2_streams=$H2_STREAMS" \
    "h2load=$(h2load --version 2>&1 | head -n1)" "openssl=$(openssl version | awk '{print $1, $2}')" \
    "negotiated_nginx=$(cat "$WORK/negotiated-nginx.txt")" "negotiated_tollgate=$(cat "$WORK/negotiated-tollgate.txt")"
mkdir -p "$(dirname "$OUT")"
status=0
"$PYTHON" bench/tls_report.py "$WORK" >"$WORK/report.md" || status=$?
((status == 0 || status == 3)) || die "report failed"
cp "$WORK/report.md" "$OUT"
echo
cat "$OUT"
echo
echo "(written to $OUT)"
if ((status == 3)) && [[ ${BENCH_STRICT:-0} == 1 ]]; then
    exit 3
fi
