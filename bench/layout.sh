#!/usr/bin/env bash
# Each bundled plugin's function layout, from a profile of the gateway running it: writes
# plugins/NAME/layout.txt, the functions a plugin's VMs ran from their start, which the
# plugin's build puts in its module (`tollgate_sdk::layout!`) and the gateway places first
# when it compiles the module (host/src/wasm/layout.rs). Run it again after changing a
# plugin or the SDK; a stale list only places fewer functions first. Method and figures:
# bench/README.md, "The code the plugins run, placed first".
#
# The gateway runs under callgrind from its start (one worker; the start's code counts as the
# requests' does), with every bundled plugin on a route of its own (bench/all_plugins.sh) and
# the benches' 3-plugin chain on the route /, and names its compiled guest functions
# (TOLLGATE_WASM_PROFILER=perfmap); LAYOUT_REQUESTS requests go to every route, then
# bench/layout.py reads which guest functions ran.
#
# Environment (all optional):
#   TOLLGATE_BIN            the gateway to run (default: the release build)
#   LAYOUT_REQUESTS=20      requests per route
#   BENCH_PORT_BASE=28480   ports BASE+1 (upstream), BASE+10 (Tollgate), BASE+20 (admin)
set -euo pipefail
BENCH_NAME=layout # used by common.sh
# shellcheck source=bench/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

BASE=${BENCH_PORT_BASE:-28480}
UP_PORT=$((BASE + 1))
TG_PORT=$((BASE + 10))
ADMIN_PORT=$((BASE + 20))
REQUESTS=${LAYOUT_REQUESTS:-20}
[[ $REQUESTS =~ ^[1-9][0-9]*$ ]] || die "LAYOUT_REQUESTS must be a positive number"
for port in "$UP_PORT" "$TG_PORT" "$ADMIN_PORT"; do
    port_free "$port" || die "127.0.0.1:$port is in use; set BENCH_PORT_BASE"
done
KEY_HEADER="x-api-key: $API_KEY"
# shellcheck source=bench/all_plugins.sh
source "$(dirname "${BASH_SOURCE[0]}")/all_plugins.sh"
command -v valgrind >/dev/null && command -v callgrind_control >/dev/null ||
    die "needs valgrind (callgrind and callgrind_control)"

build_tollgate
build_wasm plugins plugins || die "cannot build the bundled plugins"
mkdir -p "$WORK/plugins" "$WORK/cache"
for p in "${ALL_PLUGINS[@]}"; do
    need_files "$BUNDLED_DIR/${p//-/_}.wasm"
    cp "$BUNDLED_DIR/${p//-/_}.wasm" "$WORK/plugins/"
done
all_policies "$WORK/cfg" "$TG_PORT" 1
# The benches' chain (key-auth → rate-limit → transformer, configured as plugins.sh and
# memory.sh run it) on the route / besides, so that its configuration's code paths count too.
chain_plugins_yaml | sed '1d; s/^\(    module: .*\)$/\1\n    apply_to: { routes: [bench] }/' >>"$WORK/cfg/bench.yaml"
all_headers

log "starting the upstream (CPU $LOAD_CPU)"
start_upstream "$UP_PORT"
# A plain start compiles the modules into the cache; the profiled start maps them from it,
# as a gateway usually does.
start warm "$PROXY_CPU" env TOLLGATE_LOG=warn TOLLGATE_CACHE_DIR="$WORK/cache" \
    "$BIN" run --policies "$WORK/cfg" --plugins "$WORK/plugins" --admin "127.0.0.1:$ADMIN_PORT" --workers 1
wait_http "http://127.0.0.1:$ADMIN_PORT/readyz"
stop "$LAST_PID"

log "the gateway under callgrind, every bundled plugin, $REQUESTS requests a route"
out=$WORK/callgrind.out
start tollgate "$PROXY_CPU" env TOLLGATE_LOG=warn TOLLGATE_CACHE_DIR="$WORK/cache" \
    TOLLGATE_WASM_PROFILER=perfmap MIMALLOC_ARENA_EAGER_COMMIT=0 MIMALLOC_PURGE_DELAY=100 \
    valgrind --tool=callgrind --instr-atstart=yes --callgrind-out-file="$out" \
    "$BIN" run --policies "$WORK/cfg" --plugins "$WORK/plugins" --admin "127.0.0.1:$ADMIN_PORT" --workers 1
pid=$LAST_PID
BENCH_START_WAIT=300 wait_http "http://127.0.0.1:$ADMIN_PORT/readyz"
for p in "${ALL_PLUGINS[@]}"; do
    headers=()
    while IFS= read -r line; do
        [[ -z $line ]] || headers+=(-H "$line")
    done <<<"${HEADERS[$p]:-}"
    for _ in $(seq "$REQUESTS"); do
        status=$(curl -s -o /dev/null -w '%{http_code}' "${headers[@]}" "http://127.0.0.1:$TG_PORT/p/$p")
        [[ $status == 2* ]] || die "/p/$p answered $status"
    done
done
for _ in $(seq "$REQUESTS"); do
    status=$(curl -s -o /dev/null -w '%{http_code}' -H "$KEY_HEADER" "http://127.0.0.1:$TG_PORT/")
    [[ $status == 2* ]] || die "/ (the chain) answered $status"
done
callgrind_control -d "$pid" >/dev/null
stop "$pid"
[[ -f /tmp/perf-$pid.map ]] || die "the gateway wrote no perf map (/tmp/perf-$pid.map)"
cp "/tmp/perf-$pid.map" "$WORK/perf.map"
rm -f "/tmp/perf-$pid.map"
"$PYTHON" "$ROOT/bench/layout.py" "$out".1 "$WORK/perf.map" "$ROOT/plugins"
