#!/usr/bin/env bash
# Memory per plugin VM: the gateway's resident memory with 0 plugins and with the 3-plugin
# chain (key-auth → rate-limit → transformer), at 2, 4 and 16 workers, after load. Every worker
# has its own VM of each plugin, so the chain costs 3 × workers VMs; the report divides the
# difference by that (bench/README.md, "Memory"). Part of `just bench`.
#
# With BENCH_MEMORY_ALL=1 it also measures one gateway with 16 workers that runs every bundled
# plugin (14), each on a route of its own (/p/NAME), against the same routes with no plugin:
# 14 × 16 = 224 VMs, which it checks were all started (the /metrics gauge of each plugin's VM
# memory against a 1-worker gateway's), after load that runs every route on every worker.
#
# Memory is read from /proc/PID/smaps_rollup (Rss, Pss, Private_Dirty) after a short closed
# loop (wrk) that sends a valid API key, so every VM has run every callback; the report also
# says where it is, per kind of mapping of /proc/PID/smaps (bench/smaps.py), for the first
# worker count. It does not
# depend on how busy the machine is, so the script does not wait for it to be idle. The goals
# are judged on the first worker count, as every ratio of the benches: alternating pairs of
# runs (0 plugins, 3 plugins, 0 plugins, ...), the median of the per-pair ratios and their
# spread; the other worker counts are one pair each.
#
# Environment (all optional): as bench/run.sh (BENCH_PROFILE, TOLLGATE_BIN, BENCH_PROXY_CPU,
# BENCH_LOAD_CPU), and
#   BENCH_PORT_BASE=28280          ports BASE+1 (upstream), BASE+10+i (Tollgate), BASE+30+i (admin)
#   BENCH_MEMORY_OUT=bench/results/memory.md
#   BENCH_MEMORY_WORKERS="2 4 16"  worker counts
#   BENCH_MEMORY_LOAD=3            seconds of load before memory is read
#   BENCH_MEMORY_PAIRS=3           pairs of runs at the first worker count (1 to 6)
#   BENCH_BUILD_PLUGINS=1          0: use the .wasm files already built, build nothing
#   BENCH_MEMORY_ALL=1             0: leave out the gateway with every bundled plugin
set -euo pipefail
BENCH_NAME=memory # used by common.sh
# shellcheck source=bench/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

BASE=${BENCH_PORT_BASE:-28280}
UP_PORT=$((BASE + 1))
OUT=${BENCH_MEMORY_OUT:-bench/results/memory.md}
read -r -a WORKER_COUNTS <<<"${BENCH_MEMORY_WORKERS:-2 4 16}"
LOAD_SECONDS=${BENCH_MEMORY_LOAD:-3}
ALL=${BENCH_MEMORY_ALL:-1}
[[ $ALL == 0 || $ALL == 1 ]] || die "BENCH_MEMORY_ALL must be 0 or 1"
PAIRS=${BENCH_MEMORY_PAIRS:-3}
[[ $PAIRS =~ ^[1-6]$ ]] || die "BENCH_MEMORY_PAIRS must be 1 to 6"
# Each start gets its own ports: a port just closed may not be free again at once. Indices
# 0-15: the worker counts (2 starts a pair); 16-18: the gateway of every bundled plugin.
((2 * PAIRS + 2 * (${#WORKER_COUNTS[@]} - 1) <= 16)) ||
    die "too many starts: 2 × BENCH_MEMORY_PAIRS + 2 for each further worker count must be at most 16"
for i in $(seq 0 19); do
    port_free $((BASE + 10 + i)) && port_free $((BASE + 30 + i)) || die "127.0.0.1:$((BASE + 10 + i)) or :$((BASE + 30 + i)) is in use; set BENCH_PORT_BASE"
done
port_free "$UP_PORT" || die "127.0.0.1:$UP_PORT is in use; set BENCH_PORT_BASE"

KEY_HEADER="x-api-key: $API_KEY"
# policy_folder, ALL_PLUGINS and every bundled plugin on a route of its own
# shellcheck source=bench/all_plugins.sh
source "$(dirname "${BASH_SOURCE[0]}")/all_plugins.sh"

build_tollgate
if [[ ${BENCH_BUILD_PLUGINS:-1} == 1 ]]; then
    build_wasm plugins plugins || echo "memory: building the bundled plugins failed; using the files already built, if any" >&2
fi
need_files "$BUNDLED_DIR/key_auth.wasm" "$BUNDLED_DIR/rate_limit.wasm" "$BUNDLED_DIR/transformer.wasm"
mkdir -p "$WORK/plugins" "$WORK/cache"
cp "$BUNDLED_DIR"/key_auth.wasm "$BUNDLED_DIR"/rate_limit.wasm "$BUNDLED_DIR"/transformer.wasm "$WORK/plugins/"

# Every bundled plugin (ALL_PLUGINS, from all_plugins.sh), for BENCH_MEMORY_ALL.
ALL_WORKERS=16
ALL_VMS=$((${#ALL_PLUGINS[@]} * ALL_WORKERS))
ALL_CONNS=256
if ((ALL)); then
    mkdir -p "$WORK/plugins-all"
    for p in "${ALL_PLUGINS[@]}"; do
        need_files "$BUNDLED_DIR/${p//-/_}.wasm"
        cp "$BUNDLED_DIR/${p//-/_}.wasm" "$WORK/plugins-all/"
    done
fi

declare -A PLUGINS
PLUGINS[base]=""
PLUGINS[chain]=$(chain_plugins_yaml)

log "starting the upstream (CPU $LOAD_CPU)"
start_upstream "$UP_PORT"

# smaps FIELD PID: one field of /proc/PID/smaps_rollup, in KiB
smaps() { awk -v field="$1:" '$1 == field { print $2 }' "/proc/$2/smaps_rollup"; }

# measure CONFIG WORKERS N PAIR: start the gateway (on ports BASE+10+N, BASE+30+N), load it,
# print "rss pss private_dirty" (KiB); its smaps are kept as $WORK/smaps-CONFIG-WORKERS-PAIR
measure() {
    local c=$1 workers=$2 pair=$4 status
    local port=$((BASE + 10 + $3)) admin=$((BASE + 30 + $3))
    policy_folder "$WORK/cfg-$c-$workers" "$port" "${PLUGINS[$c]}"
    uncache_binary
    start "tollgate-$c-$workers" "$PROXY_CPU" env TOLLGATE_LOG=warn TOLLGATE_CACHE_DIR="$WORK/cache" \
        "$BIN" run --policies "$WORK/cfg-$c-$workers" --plugins "$WORK/plugins" \
        --admin "127.0.0.1:$admin" --workers "$workers" --log-format text
    local pid=$LAST_PID
    wait_http "http://127.0.0.1:$admin/readyz"
    status=$(curl -s -o /dev/null -w '%{http_code}' -H "$KEY_HEADER" "http://127.0.0.1:$port/" || true)
    [[ $status == 200 ]] || die "$c with $workers workers: GET / answered $status, expected 200"
    # As many connections as workers (at least 16) so that every worker serves requests.
    local conns=$((workers > 16 ? workers : 16))
    taskset -c "$LOAD_CPU" wrk -t1 -c"$conns" -d"${LOAD_SECONDS}s" -H "$KEY_HEADER" "http://127.0.0.1:$port/" >"$WORK/wrk-$c-$workers-$pair.txt"
    sleep 0.5
    cp "/proc/$pid/smaps" "$WORK/smaps-$c-$workers-$pair"
    echo "$(smaps Rss "$pid") $(smaps Pss "$pid") $(smaps Private_Dirty "$pid")"
    stop "$pid"
}

# --- every bundled plugin (BENCH_MEMORY_ALL) ---------------------------------------------

# all_policies DIR PORT PLUGINS: the policy folder of the gateway of every bundled plugin: a
# route /p/NAME for each plugin and the route /, all to the upstream, and a route the
# token-introspection plugin asks (on this gateway itself, as the cluster `self`) whether a
# token is active; PLUGINS 1: each plugin on its own route, 0: no plugin.
# vm_memory ADMIN: "NAME BYTES" for every plugin: tollgate_plugin_memory_bytes of /metrics,
# the linear memory of the plugin's VMs summed over the workers (0 before any VM started)
vm_memory() {
    curl -s "http://127.0.0.1:$1/metrics" | awk -F'[" ]' '/^tollgate_plugin_memory_bytes\{/ { print $2, $NF }'
}

# one_vm N: start the gateway of every bundled plugin with 1 worker (ports of index N) and
# set ONE_VM[NAME], the memory of the one VM of each plugin once it has started. A VM's
# memory after start-up is what its module's initial memory and its configuration make it,
# the same on every worker: with 16 workers, each plugin's gauge must be 16 times this.
declare -A ONE_VM
one_vm() {
    local port=$((BASE + 10 + $1)) admin=$((BASE + 30 + $1)) name bytes started
    all_policies "$WORK/cfg-all-1" "$port" 1
    start "tollgate-all-1" "$PROXY_CPU" env TOLLGATE_LOG=warn TOLLGATE_CACHE_DIR="$WORK/cache" \
        "$BIN" run --policies "$WORK/cfg-all-1" --plugins "$WORK/plugins-all" \
        --admin "127.0.0.1:$admin" --workers 1 --log-format text
    local pid=$LAST_PID
    wait_http "http://127.0.0.1:$admin/readyz"
    # Ready comes before the worker has started its VMs.
    for _ in $(seq 100); do
        started=0
        ONE_VM=()
        while read -r name bytes; do
            ONE_VM[$name]=$bytes
            ((bytes == 0)) || started=$((started + 1))
        done < <(vm_memory "$admin")
        ((started < ${#ALL_PLUGINS[@]})) || break
        sleep 0.1
    done
    ((started == ${#ALL_PLUGINS[@]})) || die "1 worker: $started of ${#ALL_PLUGINS[@]} plugins have a VM after 10 s"
    stop "$pid"
}

# measure_all KIND N: start the gateway of every bundled plugin with 16 workers (KIND all) or
# the same routes without plugins (KIND none) on the ports of index N, check that every
# route answers 200 (and, for all, that every worker started every plugin's VM), run every
# route on every worker (ALL_CONNS connections: the kernel spreads connections over the
# workers' sockets by a hash, and 256 connections leave none of 16 workers without one but
# about once in a million; the requests take the routes in turn, so each worker's dozen or so
# connections carry requests to every route), then read the memory into RSS, PSS and
# DIRTY[KIND-all], and the requests of the load and those not answered 2xx into REQUESTS and
# NOT_2XX[KIND].
declare -A REQUESTS NOT_2XX
measure_all() {
    local kind=$1 port=$((BASE + 10 + $2)) admin=$((BASE + 30 + $2)) path line status name bytes vms
    all_policies "$WORK/cfg-all-$kind" "$port" "$([[ $kind == all ]] && echo 1 || echo 0)"
    uncache_binary
    start "tollgate-all-$kind" "$PROXY_CPU" env TOLLGATE_LOG=warn TOLLGATE_CACHE_DIR="$WORK/cache" \
        "$BIN" run --policies "$WORK/cfg-all-$kind" --plugins "$WORK/plugins-all" \
        --admin "127.0.0.1:$admin" --workers "$ALL_WORKERS" --log-format text
    local pid=$LAST_PID
    wait_http "http://127.0.0.1:$admin/readyz"
    if [[ $kind == all ]]; then
        # Every plugin's gauge at 16 times one VM's: 16 VMs of each, one per worker.
        local -A counts
        for _ in $(seq 100); do
            vms=0
            counts=()
            while read -r name bytes; do
                [[ -n ${ONE_VM[$name]:-} ]] || die "/metrics names a plugin $name the 1-worker gateway did not have"
                counts[$name]=$(awk -v b="$bytes" -v one="${ONE_VM[$name]}" 'BEGIN { printf "%g", b / one }')
                [[ ${counts[$name]} != "$ALL_WORKERS" ]] || vms=$((vms + ALL_WORKERS))
            done < <(vm_memory "$admin")
            ((vms < ALL_VMS)) || break
            sleep 0.1
        done
        if ((vms != ALL_VMS || ${#counts[@]} != ${#ALL_PLUGINS[@]})); then
            local found=""
            for name in "${!counts[@]}"; do found+="${found:+, }$name ${counts[$name]}"; done
            die "every bundled plugin: not every worker started every plugin's VM after 10 s (VMs per plugin, from its memory gauge: $found)"
        fi
        log "$vms VMs started: ${#ALL_PLUGINS[@]} plugins × $ALL_WORKERS workers (tollgate_plugin_memory_bytes = $ALL_WORKERS × a 1-worker gateway's, for every plugin)"
    fi
    all_headers
    while read -r path; do
        local headers=()
        while IFS= read -r line; do
            [[ -z $line ]] || headers+=(-H "$line")
        done <<<"${HEADERS[${path#/p/}]:-}"
        status=$(curl -s -o /dev/null -w '%{http_code}' "${headers[@]}" "http://127.0.0.1:$port$path" || true)
        [[ $status == 200 ]] || die "every bundled plugin ($kind): GET $path answered $status, expected 200"
    done < <(all_paths)
    all_lua "$WORK/all.lua"
    taskset -c "$LOAD_CPU" wrk -t1 -c"$ALL_CONNS" -d"${LOAD_SECONDS}s" -s "$WORK/all.lua" "http://127.0.0.1:$port/" >"$WORK/wrk-all-$kind.txt"
    # How many requests the load sent, and how many were not answered 2xx (on a busy
    # machine a callout may time out): the report says.
    REQUESTS[$kind]=$(awk '/ requests in / { print $1 }' "$WORK/wrk-all-$kind.txt")
    NOT_2XX[$kind]=$(awk '/Non-2xx or 3xx responses:/ { n = $NF } END { print n + 0 }' "$WORK/wrk-all-$kind.txt")
    [[ -n ${REQUESTS[$kind]} ]] || die "every bundled plugin ($kind): wrk did not run: $(cat "$WORK/wrk-all-$kind.txt")"
    if [[ $kind == all ]]; then
        # Each plugin on its own route only, and no VM replaced during the load.
        curl -s "http://127.0.0.1:$admin/plugins" | "$PYTHON" -c '
import json, sys
names = sys.argv[1:]
plugins = {p["name"]: p for p in json.load(sys.stdin)["plugins"]}
if sorted(plugins) != sorted(names):
    sys.exit(f"the plugins are {sorted(plugins)}, expected {sorted(names)}")
for name, p in plugins.items():
    routes, traps, restarts = p["routes"], p["traps"], p["vm_restarts"]
    if routes != ["p-" + name]:
        sys.exit(f"plugin {name} runs on the routes {routes}, expected p-{name} alone")
    if traps or restarts:
        sys.exit(f"plugin {name}: {traps} traps, {restarts} VMs restarted during the load")
' "${ALL_PLUGINS[@]}" || die "every bundled plugin: GET /plugins does not show what was configured (above)"
    fi
    sleep 0.5
    RSS[$kind-all]=$(smaps Rss "$pid")
    PSS[$kind-all]=$(smaps Pss "$pid")
    DIRTY[$kind-all]=$(smaps Private_Dirty "$pid")
    stop "$pid"
}

# Compile the modules into the cache first, as every start but a machine's first finds them:
# the compiler's working memory is not a VM's (without this, the first configuration to
# start also holds what compiling left behind).
policy_folder "$WORK/cfg-check" $((BASE + 29)) "${PLUGINS[chain]}"
TOLLGATE_CACHE_DIR="$WORK/cache" "$BIN" check --policies "$WORK/cfg-check" --plugins "$WORK/plugins" >"$WORK/check.log" 2>&1 ||
    die "tollgate check failed on the chain: $(cat "$WORK/check.log")"
if ((ALL)); then
    all_policies "$WORK/cfg-all-check" $((BASE + 29)) 1
    TOLLGATE_CACHE_DIR="$WORK/cache" "$BIN" check --policies "$WORK/cfg-all-check" --plugins "$WORK/plugins-all" >"$WORK/check-all.log" 2>&1 ||
        die "tollgate check failed on every bundled plugin: $(cat "$WORK/check-all.log")"
fi
# Pages of a file not yet written back count as Private_Dirty where the file is mapped: a
# binary just built and the compiled modules just cached would show as written memory.
sync "$(readlink -f "$BIN")" "$WORK"/cache/*
# How much of the binary's code a gateway maps depends on how its pages sit in the page cache
# (the kernel maps whole cached blocks around each page that runs: a binary just built or
# copied shows about 1 MiB more code than one read back from disk; a gateway started after
# another finds the pages that one read and maps those near its own), so every gateway
# measured starts with none of its binary cached: the two sides of a ratio alike.
uncache_binary() {
    "$PYTHON" -c 'import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)' "$(readlink -f "$BIN")"
}

# RSS, PSS, DIRTY[CONFIG-WORKERS]: the runs' figures (KiB), one per pair, space-separated
declare -A RSS PSS DIRTY
n=0
for workers in "${WORKER_COUNTS[@]}"; do
    pairs=1
    [[ $workers != "${WORKER_COUNTS[0]}" ]] || pairs=$PAIRS
    for ((pair = 1; pair <= pairs; pair++)); do
        for c in base chain; do
            log "$c with $workers workers (pair $pair of $pairs)"
            read -r rss pss dirty < <(measure "$c" "$workers" "$n" "$pair")
            n=$((n + 1))
            echo "  Rss $rss KiB  Pss $pss KiB  Private_Dirty $dirty KiB" >&2
            RSS[$c-$workers]+="${RSS[$c-$workers]:+ }$rss"
            PSS[$c-$workers]+="${PSS[$c-$workers]:+ }$pss"
            DIRTY[$c-$workers]+="${DIRTY[$c-$workers]:+ }$dirty"
        done
    done
done
if ((ALL)); then
    log "every bundled plugin with $ALL_WORKERS workers, and the same routes without plugins"
    one_vm 16
    measure_all none 17
    measure_all all 18
    for kind in none all; do
        echo "  $kind: Rss ${RSS[$kind-all]} KiB  Pss ${PSS[$kind-all]} KiB  Private_Dirty ${DIRTY[$kind-all]} KiB" >&2
    done
fi

# The report names the build, not where the binary lies.
BUILD_LABEL="$PROFILE build"
[[ -z ${TOLLGATE_BIN:-} ]] || BUILD_LABEL="the binary given as TOLLGATE_BIN"
mkdir -p "$(dirname "$OUT")"
{
    echo "# Memory per plugin VM"
    echo
    echo "$(date -u '+%Y-%m-%d %H:%M UTC'), Tollgate $(git rev-parse --short HEAD 2>/dev/null || echo '?'), $BUILD_LABEL; chain: key-auth → rate-limit → transformer; ${LOAD_SECONDS} s of load before reading /proc/PID/smaps_rollup."
    echo
    echo "| workers | RSS, 0 plugins | RSS, 3 plugins | 3 plugins / 0 | RSS per VM | Private_Dirty per VM | Pss, 3 plugins |"
    echo "|---:|---:|---:|---:|---:|---:|---:|"
    specs=()
    for workers in "${WORKER_COUNTS[@]}"; do
        specs+=("$workers:${RSS[base-$workers]}:${RSS[chain-$workers]}:${DIRTY[base-$workers]}:${DIRTY[chain-$workers]}:${PSS[chain-$workers]}")
    done
    "$PYTHON" bench/memory_report.py rows "${specs[@]}"
    workers=${WORKER_COUNTS[0]}
    echo
    echo "Each figure is the median of its runs; every gateway started with none of its binary in the page cache. With $workers workers: $("$PYTHON" bench/memory_report.py pairs "${RSS[base-$workers]}" "${RSS[chain-$workers]}")"
    echo
    echo "Goals: 3 plugins ≤ 1.3 × the 0-plugin RSS; ≤ 2 MiB per VM."
    pair=$("$PYTHON" bench/memory_report.py median-pair "${RSS[base-$workers]}" "${RSS[chain-$workers]}")
    echo
    echo "Where it is with $workers workers, in the pair of runs whose ratio is the median (Rss per kind of mapping, /proc/PID/smaps):"
    echo
    "$PYTHON" bench/smaps.py --binary="$(readlink -f "$BIN")" \
        "0 plugins=$WORK/smaps-base-$workers-$pair" "3 plugins=$WORK/smaps-chain-$workers-$pair"
    if ((ALL)); then
        echo
        echo "## Every bundled plugin, $ALL_WORKERS workers"
        echo
        echo "One gateway with the ${#ALL_PLUGINS[@]} bundled plugins ($(printf '%s, ' "${ALL_PLUGINS[@]}" | sed 's/, $//')), each on a route of its own, and $ALL_WORKERS workers: $ALL_VMS VMs, every one checked started; against the same routes without plugins. ${LOAD_SECONDS} s of load on $ALL_CONNS connections, each request to the next of the $(all_paths | wc -l) routes in turn: ${REQUESTS[all]} requests with the plugins (${NOT_2XX[all]} not answered 2xx), ${REQUESTS[none]} without (${NOT_2XX[none]})."
        echo
        echo "| workers | RSS, 0 plugins | RSS, ${#ALL_PLUGINS[@]} plugins | ${#ALL_PLUGINS[@]} plugins / 0 | RSS per VM | Pss per VM | Private_Dirty per VM |"
        echo "|---:|---:|---:|---:|---:|---:|---:|"
        awk -v w="$ALL_WORKERS" -v vms="$ALL_VMS" -v r0="${RSS[none-all]}" -v r1="${RSS[all-all]}" \
            -v p0="${PSS[none-all]}" -v p1="${PSS[all-all]}" -v d0="${DIRTY[none-all]}" -v d1="${DIRTY[all-all]}" 'BEGIN {
            printf "| %d | %.1f MiB | %.1f MiB | %.2f | %.2f MiB | %.2f MiB | %.2f MiB |\n",
                w, r0 / 1024, r1 / 1024, r1 / r0, (r1 - r0) / vms / 1024, (p1 - p0) / vms / 1024, (d1 - d0) / vms / 1024
        }'
    fi
} >"$WORK/report.md"
cp "$WORK/report.md" "$OUT"
echo
cat "$OUT"
echo
echo "(written to $OUT)"

# The goal figures for the goals table at the end of latest.md (bench/goals.py), from the
# first worker count, as the report's first row.
workers=${WORKER_COUNTS[0]}
status=0
"$PYTHON" bench/memory_report.py goals "$workers" "${RSS[base-$workers]}" "${RSS[chain-$workers]}" || status=$?
((status == 0 || status == 3)) || die "recording the goal figures failed"
if ((status == 3)) && [[ ${BENCH_STRICT:-0} == 1 ]]; then
    exit 3
fi
