#!/usr/bin/env bash
# What the host's plugin glue costs per request, measured so that a busy machine does not
# distort it: the gateway runs under callgrind (one worker), which counts the user-space
# instructions it executes (host code and the plugins' compiled code alike) and the calls
# to the allocator, while a fixed number of requests goes through it. Configurations as in
# bench/plugins.sh: base (0 plugins), header (tp-headers), chain (the bundled key-auth →
# rate-limit → transformer). Method and figures: bench/README.md, "Plugin glue: before and
# after".
#
# one (the bundled transformer adding one response header and nothing else, as a user
# configures it: the least a plugin built with the SDK does), minimal (one plugin that adds
# one request header and does nothing else: tests/plugins/wat/headers-only.wat, what any
# plugin costs) and auth (the bundled key-auth alone, a request-headers-only plugin as most
# authentication is).
#
# noepoch (the chain with epoch interruption off, TOLLGATE_EPOCH_INTERRUPTION=off): with chain,
# the instructions per request that the guard against runaway plugins costs.
#
# limit (the bundled rate-limit alone, counting locally) and global (the same limit counted
# by `tollgate ratelimit` on a redis-server, both started here): the global one also runs the
# service under callgrind, and reports its instructions and allocations per call.
#
# Environment (all optional):
#   TOLLGATE_BIN                 the gateway to measure (default: the release build)
#   TOLLGATE_BASELINE_BIN        a second gateway, measured the same way for comparison
#   GLUE_REQUESTS=2000           requests counted per configuration (after 200 unmeasured)
#   GLUE_CONFIGS="base header chain"   (any of base one minimal auth header heavy chain noepoch
#                                limit global)
#   BENCH_PORT_BASE=28380        ports BASE+1 (upstream), BASE+2 (redis-server), BASE+3
#                                (tollgate ratelimit), BASE+10 (Tollgate), BASE+20 (admin)
#   GLUE_KEEP                    a folder to keep the callgrind files in (callgrind_annotate)
#   GLUE_PERFMAP=0               1: the measured gateway names its compiled guest functions
#                                (TOLLGATE_WASM_PROFILER=perfmap); with GLUE_KEEP, the map is
#                                kept beside each callgrind file as perf-BUILD-CONFIG.map, for
#                                bench/jit_names.py
#   GLUE_LAYERS=1                0: no table of what each configuration adds to 0 plugins, by
#                                layer of the gateway (bench/layers.py; needs base measured)
set -euo pipefail
BENCH_NAME=glue # used by common.sh
# shellcheck source=bench/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

BASE=${BENCH_PORT_BASE:-28380}
UP_PORT=$((BASE + 1))
TG_PORT=$((BASE + 10))
ADMIN_PORT=$((BASE + 20))
REDIS_PORT=$((BASE + 2))
RATELIMIT_PORT=$((BASE + 3))
REQUESTS=${GLUE_REQUESTS:-2000}
read -r -a CONFIGS <<<"${GLUE_CONFIGS:-base header chain}"
for c in "${CONFIGS[@]}"; do
    case $c in base | one | minimal | auth | header | heavy | chain | noepoch | limit | global) ;; *) die "unknown configuration '$c'" ;; esac
done
command -v valgrind >/dev/null && command -v callgrind_control >/dev/null ||
    die "needs valgrind (callgrind and callgrind_control)"

build_tollgate
PROFILER_ENV=()
[[ ${GLUE_PERFMAP:-0} == 1 ]] && PROFILER_ENV=(TOLLGATE_WASM_PROFILER=perfmap)
declare -A BINS=([new]=$BIN)
[[ -n ${TOLLGATE_BASELINE_BIN:-} ]] && BINS[old]=$TOLLGATE_BASELINE_BIN
need_files "$TP_DIR/tp_headers.wasm" "$TP_DIR/tp_header_heavy.wasm" "$BUNDLED_DIR/key_auth.wasm" "$BUNDLED_DIR/rate_limit.wasm" "$BUNDLED_DIR/transformer.wasm"
mkdir -p "$WORK/plugins"
cp "$TP_DIR/tp_headers.wasm" "$TP_DIR/tp_header_heavy.wasm" "$BUNDLED_DIR/key_auth.wasm" "$BUNDLED_DIR/rate_limit.wasm" "$BUNDLED_DIR/transformer.wasm" "$WORK/plugins/"
cp tests/plugins/wat/headers-only.wat "$WORK/plugins/"

# Policy folders as the other benches write them (policy_folder, bench/all_plugins.sh).
KEY_HEADER="x-api-key: $API_KEY"
# shellcheck source=bench/all_plugins.sh
source "$(dirname "${BASH_SOURCE[0]}")/all_plugins.sh"
# policies NAME PLUGINS-YAML [MORE-YAML]: the folder of configuration NAME; MORE-YAML goes
# into a second file, merged with the first
policies() {
    policy_folder "$WORK/cfg-$1" "$TG_PORT" "$2"
    [[ -z ${3:-} ]] || printf '%s\n' "$3" >"$WORK/cfg-$1/more.yaml"
}
policies base ""
policies one "$(one_header_plugin_yaml)"
policies minimal 'plugins:
  - name: minimal
    module: headers-only.wat'
policies auth "$(chain_plugins_yaml | sed -n '1,/^  - name: limit/p' | sed '$d')"
policies header 'plugins:
  - name: headers
    module: tp_headers.wasm
    config: { tag: bench }'
policies heavy 'plugins:
  - name: heavy
    module: tp_header_heavy.wasm'
policies chain "$(chain_plugins_yaml)"
policies noepoch "$(chain_plugins_yaml)"
policies limit "$(limit_plugins_yaml "")"
# Under callgrind the first calls (a new HTTP/2 connection, the script loaded into Redis) take
# longer than the limit's usual 200 ms: longer timeouts, so that none fails.
policies global "$(limit_plugins_yaml "${GLOBAL_LIMIT_YAML/200ms/10s}")" "$(ratelimit_cluster_yaml "$RATELIMIT_PORT")"

# requests N: N keep-alive GETs, each checked for 200
requests() {
    "$PYTHON" - "$TG_PORT" "$1" "$API_KEY" <<'PY'
import http.client, sys
port, count, key = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
for _ in range(count):
    conn.request("GET", "/", headers={"x-api-key": key, "user-agent": "glue-bench"})
    response = conn.getresponse()
    response.read()
    if response.status != 200:
        sys.exit(f"answered {response.status}")
PY
}

# counts FILE...: instructions and calls into the allocator (from outside it) in callgrind
# dumps, summed (each dump holds what was counted since the one before)
counts() {
    "$PYTHON" - "$@" <<'PY'
import re, sys
total, allocs = 0, 0
alloc = re.compile(r"^mi_(malloc|zalloc|calloc|realloc)(_aligned)?$")
for path in sys.argv[1:]:
    names, current_fn, callee, summary = {}, "", None, 0
    def name(kind_value):
        m = re.match(r"\((\d+)\)(?: (.*))?", kind_value)
        if not m:
            return kind_value
        if m.group(2):
            names[m.group(1)] = m.group(2)
        return names.get(m.group(1), "")
    for line in open(path, errors="replace"):
        if line.startswith("fn="):
            current_fn = name(line[3:].strip())
        elif line.startswith("cfn="):
            callee = name(line[4:].strip())
        elif line.startswith("calls=") and callee is not None:
            if alloc.match(callee) and not current_fn.startswith("mi_"):
                allocs += int(line[6:].split()[0])
            callee = None
        elif line.startswith("summary:") or line.startswith("totals:"):
            summary = int(line.split()[1])
    total += summary
print(total, allocs)
PY
}

# row BUILD CONFIGURATION CALLGRIND-OUT: one line of the table, per request
row() {
    local instructions allocations
    read -r instructions allocations < <(counts "$3"*)
    [[ -n ${GLUE_KEEP:-} ]] && mkdir -p "$GLUE_KEEP" && cp "$3"* "$GLUE_KEEP/"
    printf '| %s | %s | %d | %.1f |\n' "$1" "$2" $((instructions / REQUESTS)) \
        "$(echo "$allocations / $REQUESTS" | bc -l)" | tee -a "$WORK/table.md"
}

log "starting the upstream (CPU $LOAD_CPU)"
start_upstream "$UP_PORT"
if [[ " ${CONFIGS[*]} " == *" global "* ]]; then
    need_tools redis-server:redis-server
    start redis "$LOAD_CPU" redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no
fi
printf '| build | configuration | instructions per request (user) | allocations per request |\n|---|---|---|---|\n' >"$WORK/table.md"
for c in "${CONFIGS[@]}"; do
    for b in "${!BINS[@]}"; do
        # A plain start compiles the modules into the cache; the measured start reuses them.
        start "warm-$b-$c" "$PROXY_CPU" env TOLLGATE_LOG=warn TOLLGATE_CACHE_DIR="$WORK/cache-$b" \
            "${BINS[$b]}" run --policies "$WORK/cfg-$c" --plugins "$WORK/plugins" \
            --admin "127.0.0.1:$ADMIN_PORT" --workers 1
        wait_http "http://127.0.0.1:$ADMIN_PORT/readyz"
        stop "$LAST_PID"
        out=$WORK/callgrind-$b-$c.out
        service_pid=
        if [[ $c == global ]]; then
            # The service of the same build, counted over the same requests (one call each).
            service_out=$WORK/callgrind-$b-service.out
            start "ratelimit-$b" "$LOAD_CPU" env TOLLGATE_LOG=warn \
                MIMALLOC_ARENA_EAGER_COMMIT=0 MIMALLOC_PURGE_DELAY=100 \
                valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$service_out" \
                "${BINS[$b]}" ratelimit --listen "127.0.0.1:$RATELIMIT_PORT" \
                --redis "redis://127.0.0.1:$REDIS_PORT" --redis-timeout 10s --workers 1
            service_pid=$LAST_PID
            BENCH_START_WAIT=300 wait_http "http://127.0.0.1:$RATELIMIT_PORT/healthz"
        fi
        epochs=on
        [[ $c != noepoch ]] || epochs=off
        # The allocator settings the gateway would otherwise set by executing itself again,
        # which would leave callgrind behind.
        start "tollgate-$b-$c" "$PROXY_CPU" env TOLLGATE_LOG=warn TOLLGATE_CACHE_DIR="$WORK/cache-$b" \
            TOLLGATE_EPOCH_INTERRUPTION=$epochs \
            MIMALLOC_ARENA_EAGER_COMMIT=0 MIMALLOC_PURGE_DELAY=100 "${PROFILER_ENV[@]}" \
            valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out" \
            "${BINS[$b]}" run --policies "$WORK/cfg-$c" --plugins "$WORK/plugins" \
            --admin "127.0.0.1:$ADMIN_PORT" --workers 1
        pid=$LAST_PID
        BENCH_START_WAIT=300 wait_http "http://127.0.0.1:$ADMIN_PORT/readyz"
        requests 200
        callgrind_control -i on "$pid" >/dev/null
        [[ -z $service_pid ]] || callgrind_control -i on "$service_pid" >/dev/null
        requests "$REQUESTS"
        callgrind_control -i off "$pid" >/dev/null
        # A dump now (the file gets a .1 suffix), in case the exit is not clean.
        callgrind_control -d "$pid" >/dev/null
        stop "$pid"
        row "$b" "$c" "$out"
        # valgrind runs the gateway in its own process, so the map bears the same id; a
        # gateway without plugins compiles no guest code and writes none
        if [[ -n ${GLUE_KEEP:-} && ${GLUE_PERFMAP:-0} == 1 && -f /tmp/perf-$pid.map ]]; then
            cp "/tmp/perf-$pid.map" "$GLUE_KEEP/perf-$b-$c.map"
        fi
        if [[ -n $service_pid ]]; then
            callgrind_control -i off "$service_pid" >/dev/null
            callgrind_control -d "$service_pid" >/dev/null
            stop "$service_pid"
            row "$b" "tollgate ratelimit, per call" "$service_out"
        fi
    done
done
log "per request, over $REQUESTS requests on one connection"
cat "$WORK/table.md"

# What epoch interruption costs the chain: its instructions with and without it.
if [[ " ${CONFIGS[*]} " == *" chain "* && " ${CONFIGS[*]} " == *" noepoch "* ]]; then
    for b in "${!BINS[@]}"; do
        awk -F' [|] ' -v b="$b" '$1 == "| " b && $2 == "chain" { on = $3 } $1 == "| " b && $2 == "noepoch" { off = $3 }
            END { printf "epoch interruption (%s build): %d of the chain'"'"'s %d instructions per request (%.1f %%)\n", b, on - off, on, 100 * (on - off) / on }' "$WORK/table.md"
    done
fi

# Where what each configuration adds to 0 plugins goes, layer by layer (bench/layers.py), for
# the build measured (`new`).
if [[ ${GLUE_LAYERS:-1} == 1 && " ${CONFIGS[*]} " == *" base "* ]]; then
    for c in "${CONFIGS[@]}"; do
        [[ $c != base ]] || continue
        log "what $c adds to 0 plugins, by layer (instructions per request)"
        "$PYTHON" bench/layers.py "$WORK/callgrind-new-base.out.1" "$WORK/callgrind-new-$c.out.1" \
            --requests "$REQUESTS" --name "$c"
    done
fi

# Throughput new/old: alternating closed-loop runs of the two builds on the chain, so that
# both see the same load from the rest of the machine; the ratio of the medians.
if [[ -n ${TOLLGATE_BASELINE_BIN:-} && ${GLUE_THROUGHPUT:-1} == 1 ]]; then
    declare -A RATES=([old]="" [new]="")
    for run in $(seq "$RUNS"); do
        for b in old new; do
            start "rate-$b-$run" "$PROXY_CPU" env TOLLGATE_LOG=warn TOLLGATE_CACHE_DIR="$WORK/cache-$b" \
                "${BINS[$b]}" run --policies "$WORK/cfg-chain" --plugins "$WORK/plugins" \
                --admin "127.0.0.1:$ADMIN_PORT" --workers 1
            pid=$LAST_PID
            wait_http "http://127.0.0.1:$ADMIN_PORT/readyz"
            rate=$(taskset -c "$LOAD_CPU" wrk -t1 -c16 -d"${DURATION}s" -H "x-api-key: $API_KEY" \
                "http://127.0.0.1:$TG_PORT/" | awk '/^Requests\/sec:/ { print $2 }')
            stop "$pid"
            RATES[$b]="${RATES[$b]} $rate"
            log "chain, $b build, run $run: $rate requests/s"
        done
    done
    median() { tr ' ' '\n' | grep . | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
    old=$(median <<<"${RATES[old]}")
    new=$(median <<<"${RATES[new]}")
    log "chain throughput, median of $RUNS alternating runs: old $old, new $new requests/s, new/old $(echo "scale=2; $new / $old" | bc -l)"
fi
