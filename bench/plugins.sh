#!/usr/bin/env bash
# Tollgate with plugins vs Tollgate without: what a plugin chain, a header-heavy plugin and
# epoch interruption cost (bench/README.md, "The goals"). Same method as bench/run.sh: the gateway
# pinned to one CPU with one worker, the upstream and the load generators on the other,
# closed loop (wrk) for throughput, fixed rate (bench/loadgen) at half of the 0-plugin
# maximum for latency, median of BENCH_RUNS runs. Method and how to read the figures:
# bench/README.md ("Plugins"). Part of `just bench`.
#
# Configurations, one Tollgate process each (started for each run, stopped after it):
#   base     0 plugins
#   one      the bundled transformer adding one response header (`x-served-by`) and nothing
#            else: the least a plugin does (for information; no goal)
#   header   one header plugin (tp-headers, config {"tag": "bench"}): every header-map host
#            call, 12 adds, 6 single reads, 2 whole-map reads, 1 whole-map write, 1 removal
#   chain    3 plugins: the bundled key-auth, rate-limit and transformer when they are built
#            and load (wrk sends a valid API key; the limit never triggers), else the test
#            plugins tp-headers, tp-metrics and tp-properties (BENCH_CHAIN=auto|bundled|test)
#   heavy    tp-header-heavy (20 adds, 20 gets, 20 removes per request)
#   noepoch  the chain again, with TOLLGATE_EPOCH_INTERRUPTION=off
#   jwt      the bundled jwt-auth with an HS256 token
#   limit    the bundled rate-limit alone, counting locally in shared data (never reached)
#   global   the same plan counted by `tollgate ratelimit` on a redis-server (both on the
#            load CPU): what a limit shared by replicas adds to a request
#
# Environment (all optional): as bench/run.sh (BENCH_DURATION, BENCH_RUNS, BENCH_CONNECTIONS,
# BENCH_HALF_LOAD, BENCH_PROFILE, TOLLGATE_BIN, BENCH_PROXY_CPU, BENCH_LOAD_CPU,
# BENCH_QUIET_WAIT, BENCH_STRICT), and
#   BENCH_PORT_BASE=28180   ports BASE+1 (upstream), BASE+2 (redis-server), BASE+3 (tollgate
#                           ratelimit), BASE+10+i (Tollgate), BASE+40+i (admin)
#   BENCH_PLUGINS_OUT=bench/results/plugins.md
#   BENCH_CHAIN=auto        which 3-plugin chain: auto | bundled | test
#   BENCH_CONFIGS="base one header chain heavy noepoch jwt limit global"   a subset (base is required)
#   BENCH_BUILD_PLUGINS=1   0: use the .wasm files already built, build nothing
#   BENCH_RATELIMIT_CPU     the CPU of `global`'s service and Redis (default: the load CPU)
#   BENCH_RATELIMIT_PRIORITY=realtime   or `fair`: how they share that CPU (see below)
#   BENCH_PERF=1            profile Tollgate during each configuration's first wrk run
#                           (perf record -g); top entries in bench/results/profile-CONFIG.txt
#   TOLLGATE_BASELINE_BIN=path   also run the configurations of BENCH_BASELINE_CONFIGS with this
#                           binary (an earlier build), each right after the same configuration
#                           with this build in every closed-loop run; the report's "This build /
#                           baseline" gives the ratios of throughput and CPU per request: what a
#                           change of the plugin path gained or cost, measured in one session
#   BENCH_BASELINE_CONFIGS="base one chain"   those of BENCH_CONFIGS the baseline runs
set -euo pipefail
BENCH_NAME=plugins # used by common.sh
# shellcheck source=bench/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

BASE=${BENCH_PORT_BASE:-28180}
UP_PORT=$((BASE + 1))
OUT=${BENCH_PLUGINS_OUT:-bench/results/plugins.md}
CHAIN_MODE=${BENCH_CHAIN:-auto}
read -r -a CONFIGS <<<"${BENCH_CONFIGS:-base one header chain heavy noepoch jwt limit global}"
case $CHAIN_MODE in auto | bundled | test) ;; *) die "BENCH_CHAIN must be auto, bundled or test" ;; esac
[[ " ${CONFIGS[*]} " == *" base "* ]] || die "BENCH_CONFIGS must include base (the fixed rate is half of its maximum)"
# A configuration run by the baseline binary is named CONFIG.baseline; RUN_CONFIGS is the
# order of the closed-loop runs (each baseline right after its configuration).
BASELINES=()
if [[ -n ${TOLLGATE_BASELINE_BIN:-} ]]; then
    [[ -x $TOLLGATE_BASELINE_BIN ]] || die "TOLLGATE_BASELINE_BIN is not an executable Tollgate binary"
    for c in ${BENCH_BASELINE_CONFIGS:-base one chain}; do
        [[ " ${CONFIGS[*]} " == *" $c "* ]] && BASELINES+=("$c")
    done
fi
RUN_CONFIGS=()
for c in "${CONFIGS[@]}"; do
    RUN_CONFIGS+=("$c")
    [[ " ${BASELINES[*]} " != *" $c "* ]] || RUN_CONFIGS+=("$c.baseline")
done
declare -A PORT ADMIN
i=0
for c in "${RUN_CONFIGS[@]}"; do
    case ${c%.baseline} in base | one | header | chain | heavy | noepoch | jwt | limit | global) ;; *) die "unknown configuration '$c'" ;; esac
    PORT[$c]=$((BASE + 10 + i))
    ADMIN[$c]=$((BASE + 40 + i))
    i=$((i + 1))
done
REDIS_PORT=$((BASE + 2))
RATELIMIT_PORT=$((BASE + 3))
for port in "$UP_PORT" "$REDIS_PORT" "$RATELIMIT_PORT" "${PORT[@]}" "${ADMIN[@]}"; do
    port_free "$port" || die "127.0.0.1:$port is in use; set BENCH_PORT_BASE"
done

# Every configuration gets the same request, API key included, so that the plugins are the
# only difference between them.
# An HS256 token for the jwt-auth configuration, valid for a day; every configuration
# receives it too (only jwt-auth reads it).
JWT_SECRET=bench-secret-0123456789abcdefghijklmnop
JWT_TOKEN=$(python3 - "$JWT_SECRET" <<'PY'
import base64, hashlib, hmac, json, sys, time
b64 = lambda raw: base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "bench"}).encode())
body = b64(json.dumps({"sub": "bench", "exp": int(time.time()) + 86400}).encode())
signature = hmac.new(sys.argv[1].encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
print(f"{head}.{body}.{b64(signature)}")
PY
)
JWT_K=$(python3 -c 'import base64, sys; print(base64.urlsafe_b64encode(sys.argv[1].encode()).rstrip(b"=").decode())' "$JWT_SECRET")
KEY_HEADER="x-api-key: $API_KEY"
AUTH_HEADER="authorization: Bearer $JWT_TOKEN"

# --- binaries and plugins ----------------------------------------------------------------
build_tollgate
build_loadgen
if [[ ${BENCH_BUILD_PLUGINS:-1} == 1 ]]; then
    build_wasm tests/plugins wasm-plugins || echo "plugins: building the test plugins failed; using the files already built" >&2
    if [[ $CHAIN_MODE != test ]]; then
        build_wasm plugins plugins || echo "plugins: building the bundled plugins failed; using the files already built, if any" >&2
    fi
fi
need_files "$TP_DIR/tp_headers.wasm" "$TP_DIR/tp_metrics.wasm" "$TP_DIR/tp_properties.wasm" "$TP_DIR/tp_header_heavy.wasm"

# The gateway watches its plugins folder: it gets copies, so a build during the bench does
# not hot-swap anything. Compiled modules are cached in the work folder (the first start of
# each configuration compiles, off the measured runs).
mkdir -p "$WORK/plugins" "$WORK/cache"
cp "$TP_DIR"/tp_headers.wasm "$TP_DIR"/tp_metrics.wasm "$TP_DIR"/tp_properties.wasm "$TP_DIR"/tp_header_heavy.wasm "$WORK/plugins/"
have_bundled=0
if [[ $CHAIN_MODE != test ]] && [[ -f $BUNDLED_DIR/key_auth.wasm && -f $BUNDLED_DIR/rate_limit.wasm && -f $BUNDLED_DIR/transformer.wasm ]]; then
    cp "$BUNDLED_DIR"/key_auth.wasm "$BUNDLED_DIR"/rate_limit.wasm "$BUNDLED_DIR"/transformer.wasm "$WORK/plugins/"
    have_bundled=1
elif [[ $CHAIN_MODE == bundled ]]; then
    die "BENCH_CHAIN=bundled but $BUNDLED_DIR has no key_auth.wasm, rate_limit.wasm and transformer.wasm"
fi

# --- policies ----------------------------------------------------------------------------
# policies NAME PLUGINS-YAML [MORE-YAML]: the policy folder of one configuration (MORE-YAML
# goes into a second file, merged with the first)
policies() {
    local dir=$WORK/cfg-$1
    mkdir -p "$dir"
    cat >"$dir/bench.yaml" <<EOF
listeners:
  - name: bench
    address: 127.0.0.1:${PORT[$1]}
    protocol: http
$(forward_all_yaml)
$2
EOF
    [[ -z ${3:-} ]] || printf '%s\n' "$3" >"$dir/more.yaml"
}

CHAIN_BUNDLED=$(chain_plugins_yaml)
CHAIN_TEST='plugins:
  - name: headers
    module: tp_headers.wasm
    config: { tag: bench }
  - name: metrics
    module: tp_metrics.wasm
  - name: properties
    module: tp_properties.wasm
    config:
      properties:
        - { path: [request, path], type: string }
        - { path: [request, method], type: string }'
ONE=$(one_header_plugin_yaml)
HEADER='plugins:
  - name: headers
    module: tp_headers.wasm
    config: { tag: bench }'
JWT='plugins:
  - name: tokens
    module: jwt_auth.wasm
    config:
      keys: [{ kid: bench, kty: oct, alg: HS256, k: "'"$JWT_K"'" }]'
HEAVY='plugins:
  - name: heavy
    module: tp_header_heavy.wasm'
LIMIT=$(limit_plugins_yaml "")
GLOBAL=$(limit_plugins_yaml "$GLOBAL_LIMIT_YAML")
RATELIMIT_CLUSTER=$(ratelimit_cluster_yaml "$RATELIMIT_PORT")

declare -A ENVS=([base]="" [one]="" [header]="" [chain]="" [heavy]="" [noepoch]="TOLLGATE_EPOCH_INTERRUPTION=off" [jwt]="" [limit]="" [global]="")

# start_config NAME: start its Tollgate on the proxy CPU and wait until it serves
TG_PID=
start_config() {
    local c=$1 bin=$BIN
    [[ $c != *.baseline ]] || bin=$TOLLGATE_BASELINE_BIN
    # shellcheck disable=SC2086 # ENVS holds zero or one VAR=value word
    start "tollgate-$c" "$PROXY_CPU" env TOLLGATE_LOG=warn TOLLGATE_CACHE_DIR="$WORK/cache" ${ENVS[${c%.baseline}]} \
        "$bin" run --policies "$WORK/cfg-$c" --plugins "$WORK/plugins" \
        --admin "127.0.0.1:${ADMIN[$c]}" --workers 1 --log-format text
    TG_PID=$LAST_PID
    wait_http "http://127.0.0.1:${ADMIN[$c]}/readyz"
}

# check_config NAME: tollgate check, then one start that answers as expected (compiles the
# modules into the cache); returns non-zero when the configuration does not work
check_config() {
    local c=$1 headers status body bin=$BIN
    [[ $c != *.baseline ]] || bin=$TOLLGATE_BASELINE_BIN
    TOLLGATE_CACHE_DIR="$WORK/cache" "$bin" check --policies "$WORK/cfg-$c" --plugins "$WORK/plugins" >"$WORK/check-$c.log" 2>&1 || {
        cat "$WORK/check-$c.log" >&2
        return 1
    }
    start_config "$c"
    headers=$(curl -s -D - -o "$WORK/body" -H "$KEY_HEADER" -H "$AUTH_HEADER" "http://127.0.0.1:${PORT[$c]}/" | tr -d '\r' || true)
    body=$(cat "$WORK/body" 2>/dev/null || true)
    status=$(awk 'NR == 1 { print $2 }' <<<"$headers")
    local ok=1
    [[ $status == 200 && $body == ok ]] || { echo "plugins: $c: GET / answered $status '$body', expected 200 'ok'" >&2; ok=0; }
    case ${c%.baseline} in
    one) grep -qi '^x-served-by: tollgate' <<<"$headers" || { echo "plugins: $c: no x-served-by header (transformer)" >&2; ok=0; } ;;
    header) grep -qi '^x-tp-response: bench' <<<"$headers" || { echo "plugins: $c: no x-tp-response header" >&2; ok=0; } ;;
    heavy) ;; # it changes request headers only; the upstream does not echo them
    limit | global) grep -qi '^ratelimit-limit: 1000000000' <<<"$headers" || { echo "plugins: $c: no ratelimit-limit header (rate-limit)" >&2; ok=0; } ;;
    chain | noepoch)
        if [[ $CHAIN == bundled ]]; then
            grep -qi '^x-served-by: tollgate' <<<"$headers" || { echo "plugins: $c: no x-served-by header (transformer)" >&2; ok=0; }
            grep -qi '^ratelimit-limit:' <<<"$headers" || { echo "plugins: $c: no ratelimit-limit header (rate-limit)" >&2; ok=0; }
            status=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:${PORT[$c]}/" || true)
            [[ $status == 401 ]] || { echo "plugins: $c: GET / without a key answered $status, expected 401 (key-auth)" >&2; ok=0; }
        else
            grep -qi '^x-tp-response: bench' <<<"$headers" || { echo "plugins: $c: no x-tp-response header (tp-headers)" >&2; ok=0; }
            grep -qi '^x-tp-requests:' <<<"$headers" || { echo "plugins: $c: no x-tp-requests header (tp-metrics)" >&2; ok=0; }
            grep -qi '^x-prop-request-path: /' <<<"$headers" || { echo "plugins: $c: no x-prop-request-path header (tp-properties)" >&2; ok=0; }
        fi
        ;;
    esac
    stop "$TG_PID"
    ((ok))
}

log "starting the upstream (CPU $LOAD_CPU)"
start_upstream "$UP_PORT"

for c in "${CONFIGS[@]}"; do
    case $c in
    base) policies base "" ;;
    one)
        [[ -f $BUNDLED_DIR/transformer.wasm ]] || die "the one configuration needs the bundled transformer.wasm (just plugins)"
        cp "$BUNDLED_DIR"/transformer.wasm "$WORK/plugins/"
        policies one "$ONE"
        ;;
    header) policies header "$HEADER" ;;
    jwt)
        [[ -f $BUNDLED_DIR/jwt_auth.wasm ]] || die "the jwt configuration needs the bundled jwt_auth.wasm (just plugins)"
        cp "$BUNDLED_DIR"/jwt_auth.wasm "$WORK/plugins/"
        policies jwt "$JWT"
        ;;
    heavy) policies heavy "$HEAVY" ;;
    limit | global)
        [[ -f $BUNDLED_DIR/rate_limit.wasm ]] || die "the $c configuration needs the bundled rate_limit.wasm (just plugins)"
        cp "$BUNDLED_DIR"/rate_limit.wasm "$WORK/plugins/"
        if [[ $c == limit ]]; then policies limit "$LIMIT"; else policies global "$GLOBAL" "$RATELIMIT_CLUSTER"; fi
        ;;
    esac
done

# The global limit's service and its Redis, on the load CPU (they stand for machines of
# their own): started once, for every run of the configuration. On a machine of its own a
# service never waits for the load generator, which here shares its CPU (and polls, to send
# on time): with BENCH_RATELIMIT_PRIORITY=realtime (the default) both run under the
# real-time FIFO policy, so that a call wakes them at once and only their own work, not the
# generator's time slice, is in the latency; `fair` shares the CPU as any process does.
RATELIMIT_CPU=${BENCH_RATELIMIT_CPU:-$LOAD_CPU}
RATELIMIT_PRIORITY=${BENCH_RATELIMIT_PRIORITY:-realtime}
RATELIMIT_RUN=()
if [[ $RATELIMIT_PRIORITY == realtime ]]; then
    if chrt -f 10 true 2>/dev/null; then
        RATELIMIT_RUN=(chrt -f 10)
    else
        log "chrt -f refused (needs CAP_SYS_NICE): the rate limit service and Redis share the CPU fairly"
        RATELIMIT_PRIORITY=fair
    fi
fi
if [[ " ${CONFIGS[*]} " == *" global "* ]]; then
    need_tools redis-server:redis-server
    log "starting redis-server and tollgate ratelimit (CPU $RATELIMIT_CPU, $RATELIMIT_PRIORITY priority)"
    start redis "$RATELIMIT_CPU" "${RATELIMIT_RUN[@]}" redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no
    start ratelimit "$RATELIMIT_CPU" "${RATELIMIT_RUN[@]}" env TOLLGATE_LOG=warn "$BIN" ratelimit --listen "127.0.0.1:$RATELIMIT_PORT" \
        --redis "redis://127.0.0.1:$REDIS_PORT" --workers 1
    wait_http "http://127.0.0.1:$RATELIMIT_PORT/healthz"
fi

# The chain: the bundled plugins when they are there and work, else the test plugins.
CHAIN='test'
if [[ " ${CONFIGS[*]} " == *" chain "* || " ${CONFIGS[*]} " == *" noepoch "* ]]; then
    chain_configs=()
    for c in chain noepoch; do [[ " ${CONFIGS[*]} " == *" $c "* ]] && chain_configs+=("$c"); done
    if ((have_bundled)); then
        CHAIN=bundled
        for c in "${chain_configs[@]}"; do policies "$c" "$CHAIN_BUNDLED"; done
        log "checking the bundled chain (key-auth, rate-limit, transformer)"
        if ! check_config "${chain_configs[0]}"; then
            [[ $CHAIN_MODE == bundled ]] && die "the bundled chain does not work (BENCH_CHAIN=bundled)"
            echo "plugins: the bundled chain does not work; using the test-plugin chain" >&2
            CHAIN='test'
        fi
    fi
    if [[ $CHAIN == test ]]; then
        for c in "${chain_configs[@]}"; do policies "$c" "$CHAIN_TEST"; done
    fi
fi
if [[ $CHAIN == bundled ]]; then
    CHAIN_LABEL="key-auth → rate-limit → transformer (bundled plugins; valid API key, limit never reached)"
else
    CHAIN_LABEL="tp-headers → tp-metrics → tp-properties (test plugins)"
    ((have_bundled)) || [[ $CHAIN_MODE == test ]] || CHAIN_LABEL="$CHAIN_LABEL; the bundled key-auth, rate-limit and transformer were not built"
fi
log "3-plugin chain: $CHAIN_LABEL"

# The baseline's configurations: the same policies on their own ports.
for c in "${BASELINES[@]}"; do
    mkdir -p "$WORK/cfg-$c.baseline"
    for file in "$WORK/cfg-$c"/*.yaml; do
        sed "s/127.0.0.1:${PORT[$c]}\$/127.0.0.1:${PORT[$c.baseline]}/" "$file" >"$WORK/cfg-$c.baseline/$(basename "$file")"
    done
done

for c in "${RUN_CONFIGS[@]}"; do
    log "checking configuration $c"
    check_config "$c" || die "configuration $c does not work (see above)"
done

# --- closed loop: maximum throughput -----------------------------------------------------
# A fresh process per run and configuration, warmed up for 1 s; runs alternate between the
# configurations so that drift in the machine hits them all alike.
for r in $(seq "$RUNS"); do
    for c in "${RUN_CONFIGS[@]}"; do
        start_config "$c"
        taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d1s -H "$KEY_HEADER" -H "$AUTH_HEADER" "http://127.0.0.1:${PORT[$c]}/" >/dev/null
        wait_quiet
        log "wrk run $r/$RUNS: $c"
        ((r > 1)) || perf_start "$c" "$TG_PID" # BENCH_PERF=1: profile the first run
        # The gateway's CPU time during the run, user space and kernel apart (`.cpu`): what a
        # request costs where, in the report's "Where a request's CPU goes".
        measured "$WORK/wrk-$c-$r.txt" "$TG_PID" taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${DURATION}s" \
            --latency -H "$KEY_HEADER" -H "$AUTH_HEADER" "http://127.0.0.1:${PORT[$c]}/"
        grep -E 'Requests/sec|^ +99%|Non-2xx|Socket errors' "$WORK/wrk-$c-$r.txt" >&2 || true
        perf_finish "$c"
        kill -0 "$TG_PID" 2>/dev/null || die "Tollgate ($c) died during the run"
        stop "$TG_PID"
    done
done

# --- open loop: latency at half of the 0-plugin maximum ----------------------------------
base_rps=$("$PYTHON" bench/report.py rps "$WORK" base)
RATE=$("$PYTHON" -c "import sys; print(max(1, round(float(sys.argv[1]) * float(sys.argv[2]))))" "$base_rps" "$HALF")
# The local and global limit are compared with each other at one rate: half of what the
# global one carries at most (its half load; the question is what the service adds to a
# limited request, not to a bare one). Without `global`, half of the local one's maximum.
LIMIT_RATE=$RATE
for limited in global limit; do
    [[ " ${CONFIGS[*]} " == *" $limited "* ]] || continue
    limited_rps=$("$PYTHON" bench/report.py rps "$WORK" "$limited")
    LIMIT_RATE=$("$PYTHON" -c "import sys; print(max(1, round(float(sys.argv[1]) * float(sys.argv[2]))))" "$limited_rps" "$HALF")
    break
done
for r in $(seq "$RUNS"); do
    for c in "${CONFIGS[@]}"; do
        rate=$RATE
        [[ $c != limit && $c != global ]] || rate=$LIMIT_RATE
        start_config "$c"
        taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d1s -H "$KEY_HEADER" -H "$AUTH_HEADER" "http://127.0.0.1:${PORT[$c]}/" >/dev/null
        wait_quiet
        log "fixed rate run $r/$RUNS: $c at $rate req/s"
        taskset -c "$LOAD_CPU" "$LOADGEN" --port "${PORT[$c]}" --rate "$rate" \
            --header "$KEY_HEADER" --header "$AUTH_HEADER" \
            --duration "$DURATION" --warmup 1 --connections "$CONNS" >"$WORK/fixed-$c-$r.json"
        "$PYTHON" -c 'import json,sys; d=json.load(open(sys.argv[1])); l=d["latency_us"]; print("  achieved %s req/s  p50 %s us  p99 %s us  errors %s  statuses %s" % (d["achieved_rate"], l["p50"], l["p99"], d["errors"], d["statuses"]))' \
            "$WORK/fixed-$c-$r.json" >&2
        kill -0 "$TG_PID" 2>/dev/null || die "Tollgate ($c) died during the run"
        stop "$TG_PID"
    done
done

# --- report ------------------------------------------------------------------------------
configs_json=$(printf '"%s",' "${CONFIGS[@]}")
baselines_json=""
((${#BASELINES[@]} == 0)) || baselines_json=$(printf '"%s",' "${BASELINES[@]}")
write_meta "$WORK/meta.json" "baseline=${TOLLGATE_BASELINE_BIN:-}" "baselines=[${baselines_json%,}]" "rate=$RATE" "limit_rate=$LIMIT_RATE" "ratelimit_cpu=$RATELIMIT_CPU" "ratelimit_priority=$RATELIMIT_PRIORITY" "chain=$CHAIN" "chain_label=$CHAIN_LABEL" "configs=[${configs_json%,}]"
mkdir -p "$(dirname "$OUT")"
status=0
"$PYTHON" bench/plugins_report.py "$WORK" >"$WORK/report.md" || status=$?
((status == 0 || status == 3)) || die "report failed"
cp "$WORK/report.md" "$OUT"
echo
cat "$OUT"
echo
echo "(written to $OUT)"
if ((status == 3)) && [[ ${BENCH_STRICT:-0} == 1 ]]; then
    exit 3
fi
