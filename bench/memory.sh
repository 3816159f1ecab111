#!/usr/bin/env bash
# Memory per plugin VM: the gateway's resident memory with 0 plugins and with the 3-plugin
# chain (key-auth → rate-limit → transformer), at 2, 4 and 16 workers, after load. Every worker
# has its own VM of each plugin, so the chain costs 3 × workers VMs; the report divides the
# difference by that (bench/README.md, "Memory"). Part of `just bench`.
#
# Memory is read from /proc/PID/smaps_rollup (Rss, Pss, Private_Dirty) after a short closed
# loop (wrk) that sends a valid API key, so every VM has run every callback; the report also
# says where it is, per kind of mapping of /proc/PID/smaps (bench/smaps.py), for the first
# worker count. It does not
# depend on how busy the machine is, so the script does not wait for it to be idle.
#
# Environment (all optional): as bench/run.sh (BENCH_PROFILE, TOLLGATE_BIN, BENCH_PROXY_CPU,
# BENCH_LOAD_CPU), and
#   BENCH_PORT_BASE=28280          ports BASE+1 (upstream), BASE+10+i (Tollgate), BASE+30+i (admin)
#   BENCH_MEMORY_OUT=bench/results/memory.md
#   BENCH_MEMORY_WORKERS="2 4 16"  worker counts
#   BENCH_MEMORY_LOAD=3            seconds of load before memory is read
#   BENCH_BUILD_PLUGINS=1          0: use the .wasm files already built, build nothing
set -euo pipefail
BENCH_NAME=memory # used by common.sh
# shellcheck source=bench/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

BASE=${BENCH_PORT_BASE:-28280}
UP_PORT=$((BASE + 1))
OUT=${BENCH_MEMORY_OUT:-bench/results/memory.md}
read -r -a WORKER_COUNTS <<<"${BENCH_MEMORY_WORKERS:-2 4 16}"
LOAD_SECONDS=${BENCH_MEMORY_LOAD:-3}
# Each start gets its own ports: a port just closed may not be free again at once.
((${#WORKER_COUNTS[@]} <= 10)) || die "at most 10 worker counts"
for i in $(seq 0 19); do
    port_free $((BASE + 10 + i)) && port_free $((BASE + 30 + i)) || die "127.0.0.1:$((BASE + 10 + i)) or :$((BASE + 30 + i)) is in use; set BENCH_PORT_BASE"
done
port_free "$UP_PORT" || die "127.0.0.1:$UP_PORT is in use; set BENCH_PORT_BASE"

KEY_HEADER="x-api-key: $API_KEY"

build_tollgate
if [[ ${BENCH_BUILD_PLUGINS:-1} == 1 ]]; then
    build_wasm plugins plugins || echo "memory: building the bundled plugins failed; using the files already built, if any" >&2
fi
need_files "$BUNDLED_DIR/key_auth.wasm" "$BUNDLED_DIR/rate_limit.wasm" "$BUNDLED_DIR/transformer.wasm"
mkdir -p "$WORK/plugins" "$WORK/cache"
cp "$BUNDLED_DIR"/key_auth.wasm "$BUNDLED_DIR"/rate_limit.wasm "$BUNDLED_DIR"/transformer.wasm "$WORK/plugins/"

# policies DIR PORT PLUGINS-YAML: a policy folder
policies() {
    local dir=$1 port=$2
    mkdir -p "$dir"
    cat >"$dir/bench.yaml" <<YAML
listeners:
  - name: bench
    address: 127.0.0.1:$port
    protocol: http
clusters:
  - name: upstream
    endpoints:
      - address: 127.0.0.1:$UP_PORT
virtual_hosts:
  - name: bench
    domains: ["*"]
    routes:
      - name: bench
        match: { path: { prefix: / } }
        forward: { cluster: upstream }
$3
YAML
}
declare -A PLUGINS
PLUGINS[base]=""
PLUGINS[chain]=$(chain_plugins_yaml)

log "starting the upstream (CPU $LOAD_CPU)"
start_upstream "$UP_PORT"

# smaps FIELD PID: one field of /proc/PID/smaps_rollup, in KiB
smaps() { awk -v field="$1:" '$1 == field { print $2 }' "/proc/$2/smaps_rollup"; }

# measure CONFIG WORKERS N: start the gateway (on ports BASE+10+N, BASE+30+N), load it,
# print "rss pss private_dirty" (KiB)
measure() {
    local c=$1 workers=$2 status
    local port=$((BASE + 10 + $3)) admin=$((BASE + 30 + $3))
    policies "$WORK/cfg-$c-$workers" "$port" "${PLUGINS[$c]}"
    start "tollgate-$c-$workers" "$PROXY_CPU" env TOLLGATE_LOG=warn TOLLGATE_CACHE_DIR="$WORK/cache" \
        "$BIN" run --policies "$WORK/cfg-$c-$workers" --plugins "$WORK/plugins" \
        --admin "127.0.0.1:$admin" --workers "$workers" --log-format text
    local pid=$LAST_PID
    wait_http "http://127.0.0.1:$admin/readyz"
    status=$(curl -s -o /dev/null -w '%{http_code}' -H "$KEY_HEADER" "http://127.0.0.1:$port/" || true)
    [[ $status == 200 ]] || die "$c with $workers workers: GET / answered $status, expected 200"
    # As many connections as workers (at least 16) so that every worker serves requests.
    local conns=$((workers > 16 ? workers : 16))
    taskset -c "$LOAD_CPU" wrk -t1 -c"$conns" -d"${LOAD_SECONDS}s" -H "$KEY_HEADER" "http://127.0.0.1:$port/" >"$WORK/wrk-$c-$workers.txt"
    sleep 0.5
    cp "/proc/$pid/smaps" "$WORK/smaps-$c-$workers"
    echo "$(smaps Rss "$pid") $(smaps Pss "$pid") $(smaps Private_Dirty "$pid")"
    stop "$pid"
}

# Compile the modules into the cache first, as every start but a machine's first finds them:
# the compiler's working memory is not a VM's (without this, the first configuration to
# start also holds what compiling left behind).
policies "$WORK/cfg-check" $((BASE + 29)) "${PLUGINS[chain]}"
TOLLGATE_CACHE_DIR="$WORK/cache" "$BIN" check --policies "$WORK/cfg-check" --plugins "$WORK/plugins" >"$WORK/check.log" 2>&1 ||
    die "tollgate check failed on the chain: $(cat "$WORK/check.log")"
# Pages of a file not yet written back count as Private_Dirty where the file is mapped: a
# binary just built and the compiled modules just cached would show as written memory.
sync "$(readlink -f "$BIN")" "$WORK"/cache/*
# How much of the binary's code a gateway maps depends on how its pages sit in the page cache
# (the kernel maps whole cached blocks around each page that runs: a binary just built or
# copied shows about 1 MiB more code than one read back from disk), so every build measured
# starts with none of its binary cached.
"$PYTHON" -c 'import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)' "$(readlink -f "$BIN")"

declare -A RSS PSS DIRTY
n=0
for workers in "${WORKER_COUNTS[@]}"; do
    for c in base chain; do
        log "$c with $workers workers"
        read -r RSS[$c-$workers] PSS[$c-$workers] DIRTY[$c-$workers] < <(measure "$c" "$workers" "$n")
        n=$((n + 1))
        echo "  Rss ${RSS[$c-$workers]} KiB  Pss ${PSS[$c-$workers]} KiB  Private_Dirty ${DIRTY[$c-$workers]} KiB" >&2
    done
done

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
    for workers in "${WORKER_COUNTS[@]}"; do
        awk -v w="$workers" -v r0="${RSS[base-$workers]}" -v r3="${RSS[chain-$workers]}" \
            -v d0="${DIRTY[base-$workers]}" -v d3="${DIRTY[chain-$workers]}" -v p3="${PSS[chain-$workers]}" 'BEGIN {
            vms = 3 * w
            printf "| %d | %.1f MiB | %.1f MiB | %.2f | %.2f MiB | %.2f MiB | %.1f MiB |\n",
                w, r0 / 1024, r3 / 1024, r3 / r0, (r3 - r0) / vms / 1024, (d3 - d0) / vms / 1024, p3 / 1024
        }'
    done
    echo
    echo "Goals: 3 plugins ≤ 1.3 × the 0-plugin RSS; ≤ 2 MiB per VM."
    workers=${WORKER_COUNTS[0]}
    echo
    echo "Where it is with $workers workers (Rss per kind of mapping, /proc/PID/smaps):"
    echo
    "$PYTHON" bench/smaps.py --binary="$(readlink -f "$BIN")" \
        "0 plugins=$WORK/smaps-base-$workers" "3 plugins=$WORK/smaps-chain-$workers"
} >"$WORK/report.md"
cp "$WORK/report.md" "$OUT"
echo
cat "$OUT"
echo
echo "(written to $OUT)"
