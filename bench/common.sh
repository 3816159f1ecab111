# shellcheck shell=bash disable=SC2034  # sourced: its variables are used by the scripts
# Shared by bench/run.sh, bench/plugins.sh and bench/swap.sh (sourced, not run): settings,
# tools, the Tollgate binary and the wasm plugins, processes and their clean-up, the
# idle-machine wait, the nginx upstream.
#
# The sourcing script sets BENCH_NAME (used in temp-folder names and messages) first.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 1

DURATION=${BENCH_DURATION:-10}
DURATION=${DURATION%s}
RUNS=${BENCH_RUNS:-3}
CONNS=${BENCH_CONNECTIONS:-64}
HALF=${BENCH_HALF_LOAD:-0.5}
PROFILE=${BENCH_PROFILE:-release}
PROXY_CPU=${BENCH_PROXY_CPU:-0}
LOAD_CPU=${BENCH_LOAD_CPU:-1}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
export PYTHONDONTWRITEBYTECODE=1

log() { printf '\n==> %s\n' "$*" >&2; }
die() { printf '%s: error: %s\n' "$BENCH_NAME" "$*" >&2; exit 1; }

[[ $DURATION =~ ^[0-9]+$ && $DURATION -ge 1 ]] || die "BENCH_DURATION must be whole seconds (got '$DURATION')"
[[ $RUNS =~ ^[0-9]+$ && $RUNS -ge 1 ]] || die "BENCH_RUNS must be a positive integer"
case $PROFILE in release | pgo | debug) ;; *) die "BENCH_PROFILE must be release, pgo or debug" ;; esac

# --- tools -------------------------------------------------------------------------------
export PATH="$PATH:/usr/sbin:/sbin"
missing=()
command -v nginx >/dev/null || missing+=(nginx)
command -v wrk >/dev/null || missing+=(wrk)
command -v curl >/dev/null || missing+=(curl)
command -v python3 >/dev/null || missing+=(python3)
command -v taskset >/dev/null || missing+=(util-linux)
if ((${#missing[@]})); then
    log "installing ${missing[*]} (Debian packages)"
    sudo=()
    [[ $(id -u) -eq 0 ]] || sudo=(sudo)
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
PYTHON=$(command -v python3)

# need_tools COMMAND:PACKAGE...: install the Debian packages of the commands that are missing
# (for the tools one script alone needs: h2load, openssl)
need_tools() {
    local pair want=()
    for pair in "$@"; do
        command -v "${pair%%:*}" >/dev/null || want+=("${pair#*:}")
    done
    ((${#want[@]})) || return 0
    log "installing ${want[*]} (Debian packages)"
    local sudo=()
    [[ $(id -u) -eq 0 ]] || sudo=(sudo)
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${want[@]}"
}

cpus=$(nproc)
if ((cpus < 2)); then
    echo "$BENCH_NAME: warning: only $cpus CPU; the proxy and the load share it, figures are not meaningful" >&2
    PROXY_CPU=0
    LOAD_CPU=0
fi

# --- the Tollgate binary -----------------------------------------------------------------
# build_tollgate: sets BIN (TOLLGATE_BIN, or a cargo build of BENCH_PROFILE; a no-op when
# bench/run.sh built it just before). `pgo` is the production build of bench/pgo.sh.
build_tollgate() {
    if [[ -n ${TOLLGATE_BIN:-} ]]; then
        BIN=$TOLLGATE_BIN
    elif [[ $PROFILE == pgo ]]; then
        log "bash bench/pgo.sh (the production build)"
        BIN=$(bash "$ROOT/bench/pgo.sh")
    elif [[ $PROFILE == release ]]; then
        log "cargo build --release -p tollgate"
        cargo build --release -p tollgate
        BIN=$TARGET_DIR/release/tollgate
    else
        log "cargo build -p tollgate"
        cargo build -p tollgate
        BIN=$TARGET_DIR/debug/tollgate
    fi
    [[ -x $BIN ]] || die "no Tollgate binary at $BIN"
}

# build_loadgen: sets LOADGEN, the fixed-rate load generator (bench/loadgen), built with the
# release profile whatever BENCH_PROFILE says: it shares the load CPU with the servers it
# measures, so it must cost them as little as it can.
build_loadgen() {
    log "cargo build --release -p tollgate-loadgen"
    cargo build --release -q -p tollgate-loadgen
    LOADGEN=$TARGET_DIR/release/tollgate-loadgen
    [[ -x $LOADGEN ]] || die "no load generator at $LOADGEN"
}

# --- the wasm plugins --------------------------------------------------------------------
# Test plugins (tests/plugins) land in target/wasm-plugins/..., the bundled ones (plugins/)
# in target/plugins/...: the same commands and folders as tests/build.rs, so the builds
# share their incremental state with `cargo build -p tollgate-tests`.
TP_DIR=$TARGET_DIR/wasm-plugins/wasm32-wasip1/release
BUNDLED_DIR=$TARGET_DIR/plugins/wasm32-wasip1/release

# build_wasm WORKSPACE-DIR TARGET-SUBDIR: build one plugin workspace (release, wasm32-wasip1);
# returns non-zero on failure (the caller decides whether the old files will do).
build_wasm() {
    local manifest=$ROOT/$1/Cargo.toml
    [[ -f $manifest ]] || return 1
    if ! rustup target list --installed 2>/dev/null | grep -qx wasm32-wasip1; then
        echo "$BENCH_NAME: the wasm32-wasip1 target is not installed (just setup); using the plugins already built" >&2
        return 1
    fi
    log "cargo build --release --target wasm32-wasip1 ($1)"
    env -u CARGO_ENCODED_RUSTFLAGS -u RUSTFLAGS -u CARGO_TARGET_DIR -u CARGO_BUILD_TARGET \
        -u CARGO_BUILD_RUSTFLAGS -u RUSTC_WORKSPACE_WRAPPER -u CARGO_PROFILE_RELEASE_DEBUG \
        -u CARGO_PROFILE_RELEASE_STRIP \
        cargo build --release --target wasm32-wasip1 --manifest-path "$manifest" \
        --target-dir "$TARGET_DIR/$2"
}

# need_files FILE...: die unless every file exists
need_files() {
    local f
    for f in "$@"; do
        [[ -f $f ]] || die "missing $f (build the test plugins: cargo build -p tollgate-tests)"
    done
}

# --- processes and clean-up --------------------------------------------------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/tollgate-$BENCH_NAME.XXXXXX")
PIDS=()
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if ((${#PIDS[@]})); then
        kill "${PIDS[@]}" 2>/dev/null || true
        wait "${PIDS[@]}" 2>/dev/null || true
    fi
    if ((status != 0)); then
        for f in "$WORK"/*.log; do
            [[ -s $f ]] || continue
            echo "--- last lines of $(basename "$f")" >&2
            tail -n 20 "$f" >&2
        done
    fi
    rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start NAME CPU CMD...: run CMD pinned to CPU in the background, output to $WORK/NAME.log;
# its pid is in LAST_PID (and in PIDS, killed on exit).
LAST_PID=
start() {
    local name=$1 cpu=$2
    shift 2
    taskset -c "$cpu" "$@" >"$WORK/$name.log" 2>&1 &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}

# stop PID: stop one process we started (SIGTERM, then SIGKILL after 10 s) and forget it
stop() {
    local pid=$1
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    forget "$pid"
}

# forget PID: a process we started has ended and been waited for: do not kill it on exit
forget() {
    local p keep=()
    for p in "${PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}

# wait_http URL: until it answers 200 (BENCH_START_WAIT seconds, default 60: the first start
# of a plugin configuration compiles its modules)
wait_http() {
    local url=$1 limit=$((${BENCH_START_WAIT:-60} * 10)) pid
    for _ in $(seq "$limit"); do
        if [[ $(curl -s -o /dev/null -w '%{http_code}' "$url" 2>/dev/null || true) == 200 ]]; then
            return 0
        fi
        for pid in "${PIDS[@]}"; do
            kill -0 "$pid" 2>/dev/null || die "a server exited early (waiting for $url)"
        done
        sleep 0.1
    done
    die "$url did not answer 200 within $((limit / 10)) s"
}

# cpu_times: the machine's CPU time so far (/proc/stat, all CPUs, in clock ticks): total,
# idle (with I/O wait), and stolen by the hypervisor
cpu_times() { awk '/^cpu / { total = 0; for (i = 2; i <= NF; i++) total += $i; print total, $5 + $6, $9 }' /proc/stat; }
# cpu_busy_pct: share of all CPUs busy over 0.5 s (any process, ours included)
cpu_busy_pct() {
    local t0 i0 t1 i1
    read -r t0 i0 _ < <(cpu_times)
    sleep 0.5
    read -r t1 i1 _ < <(cpu_times)
    echo $(((100 * ((t1 - t0) - (i1 - i0))) / ((t1 - t0) > 0 ? (t1 - t0) : 1)))
}
# Hypervisor steal: the share of the machine's CPU time its host gave to other machines
# (/proc/stat), over each measured run, from the run's start (the end of its wait_quiet) to
# the next wait_quiet or write_meta. A virtual machine can lose a quarter of its CPU time this
# way while the benches run and show nothing of it when idle, so the reports say how much.
STEAL_PER_MILLE=()
STEAL_FROM=""
steal_open() { STEAL_FROM=$(cpu_times); }
steal_close() {
    [[ -n $STEAL_FROM ]] || return 0
    local t0 s0 t1 s1
    read -r t0 _ s0 <<<"$STEAL_FROM"
    read -r t1 _ s1 < <(cpu_times)
    ((t1 <= t0)) || STEAL_PER_MILLE+=($((1000 * (s1 - s0) / (t1 - t0))))
    STEAL_FROM=""
}
# steal_json: {"runs": N, "median": %, "max": %} of the runs measured so far, or null (JSON)
steal_json() {
    steal_close
    if ((${#STEAL_PER_MILLE[@]} == 0)); then
        echo null
        return
    fi
    printf '%s\n' "${STEAL_PER_MILLE[@]}" | sort -n | awk '{ v[NR] = $1 } END {
        median = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
        printf "{\"runs\": %d, \"median\": %.1f, \"max\": %.1f}\n", NR, median / 10, v[NR] / 10
    }'
}

# wait_quiet: before a measured run, wait for the machine to be idle (our servers idle too)
BUSY_RUNS=0
TOTAL_RUNS=0
wait_quiet() {
    local waited=0 limit=${BENCH_QUIET_WAIT:-60} busy
    steal_close
    TOTAL_RUNS=$((TOTAL_RUNS + 1))
    while :; do
        busy=$(cpu_busy_pct)
        if ((busy < 10)); then
            steal_open
            return 0
        fi
        if ((waited >= limit)); then
            echo "$BENCH_NAME: warning: the machine is still ${busy}% busy after ${limit}s; measuring anyway" >&2
            BUSY_RUNS=$((BUSY_RUNS + 1))
            steal_open
            return 0
        fi
        ((waited == 0)) && echo "$BENCH_NAME: the machine is ${busy}% busy (other processes); waiting for it to be idle" >&2
        sleep 2
        waited=$((waited + 2))
    done
}

# proc_ticks PID: CPU time of a process and its children so far, in clock ticks, as two
# numbers: user space, then kernel (nginx serves from a worker, the child of the process
# started)
CLK_TCK=$(getconf CLK_TCK)
proc_ticks() {
    local user=0 system=0 p stat fields
    for p in "$1" $(cat /proc/"$1"/task/*/children 2>/dev/null); do
        stat=$(cat "/proc/$p/stat" 2>/dev/null) || continue
        # fields after "(comm) ": state is the first, utime the 12th, stime the 13th
        read -r -a fields <<<"${stat##*) }"
        user=$((user + fields[11]))
        system=$((system + fields[12]))
    done
    echo "$user $system"
}

# proc_rss_kb PID: resident memory (kB) of a process and its children (nginx: master + worker)
proc_rss_kb() {
    local total=0 p kb
    for p in "$1" $(cat /proc/"$1"/task/*/children 2>/dev/null); do
        kb=$(awk '/^VmRSS:/ { print $2 }' "/proc/$p/status" 2>/dev/null) || continue
        total=$((total + ${kb:-0}))
    done
    echo "$total"
}

# measured OUT PID CMD...: run CMD (its output to OUT) and write OUT.cpu, a JSON object with
# the wall time and the CPU time process PID (and its children) used meanwhile, in all and
# split into user space and kernel: the proxy's own cost of the load, which neither a busy
# load generator nor a busy machine distorts
measured() {
    local out=$1 pid=$2 t0 t1 u0 s0 u1 s1
    shift 2
    read -r u0 s0 < <(proc_ticks "$pid")
    t0=$(date +%s.%N)
    "$@" >"$out"
    t1=$(date +%s.%N)
    read -r u1 s1 < <(proc_ticks "$pid")
    awk -v t0="$t0" -v t1="$t1" -v u="$((u1 - u0))" -v s="$((s1 - s0))" -v hz="$CLK_TCK" 'BEGIN {
        printf "{\"wall_s\": %.3f, \"proxy_cpu_s\": %.3f, \"proxy_user_s\": %.3f, \"proxy_system_s\": %.3f}\n",
            t1 - t0, (u + s) / hz, u / hz, s / hz }' >"$out.cpu"
}

# perf_start NAME PID: with BENCH_PERF=1, record a CPU profile of PID with call graphs
# (`perf record -g`) for the next DURATION seconds, in the background; perf_finish NAME waits
# for it and writes the top entries (`perf report --no-children`) to
# bench/results/profile-NAME.txt. A no-op without BENCH_PERF=1.
PERF_PID=
perf_start() {
    [[ ${BENCH_PERF:-0} == 1 ]] || return 0
    command -v perf >/dev/null || die "BENCH_PERF=1 needs perf (Debian package linux-perf)"
    perf record -g -o "$WORK/perf-$1.data" -p "$2" -- sleep "$DURATION" >"$WORK/perf-$1.log" 2>&1 &
    PERF_PID=$!
}
perf_finish() {
    [[ ${BENCH_PERF:-0} == 1 && -n $PERF_PID ]] || return 0
    wait "$PERF_PID" || true
    PERF_PID=
    mkdir -p bench/results
    # The sample count and the entries, without perf's column padding and empty IPC columns.
    perf report -i "$WORK/perf-$1.data" --no-children --stdio --sort dso,symbol -g none --percent-limit 0.7 \
        2>/dev/null | sed -E 's/[[:space:]]+-[[:space:]]+-[[:space:]]*$//; s/[[:space:]]+$//' |
        grep -E '^# (Samples|Event count)|^ +[0-9.]+%' | head -n 60 >"bench/results/profile-$1.txt" || true
    # Where the time goes by object: the kernel, the binary, libc, and code compiled from wasm.
    {
        echo "# By object:"
        perf report -i "$WORK/perf-$1.data" --no-children --stdio --sort dso -g none --percent-limit 0.5 2>/dev/null |
            sed -E 's/[[:space:]]+-[[:space:]]+-[[:space:]]*$//; s/[[:space:]]+$//' | grep -E '^ +[0-9.]+%'
    } >>"bench/results/profile-$1.txt" || true
    rm -f "$WORK/perf-$1.data"
    log "profile: bench/results/profile-$1.txt"
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# nginx_conf PREFIX SERVER-BLOCK: a self-contained nginx config (no /etc, no /var);
# NGINX_CONNECTIONS (default 4096) is its worker_connections
nginx_conf() {
    local prefix=$1 conns=${NGINX_CONNECTIONS:-4096}
    mkdir -p "$prefix"
    cat >"$prefix/nginx.conf" <<EOF
worker_processes 1;
worker_rlimit_nofile $((conns * 2));
daemon off;
pid $prefix/nginx.pid;
error_log $prefix/error.log warn;
events {
    worker_connections $conns;
}
http {
    access_log off;
    default_type text/plain;
    keepalive_timeout 65;
    keepalive_requests 1000000;
    client_body_temp_path $prefix/client_body;
    proxy_temp_path $prefix/proxy;
    fastcgi_temp_path $prefix/fastcgi;
    uwsgi_temp_path $prefix/uwsgi;
    scgi_temp_path $prefix/scgi;
$2
}
EOF
}

# start_upstream PORT: the upstream of every run (as in run.sh): nginx answering `ok` from
# memory, one worker, on the load CPU
start_upstream() {
    nginx_conf "$WORK/upstream" "    server {
        listen 127.0.0.1:$1 backlog=4096;
        location / {
            return 200 \"ok\";
        }
    }"
    start upstream "$LOAD_CPU" nginx -p "$WORK/upstream" -c "$WORK/upstream/nginx.conf" -e "$WORK/upstream/error.log"
    wait_http "http://127.0.0.1:$1/"
}

# write_meta FILE KEY=VALUE...: meta.json for the report (machine, versions, settings)
write_meta() {
    local file=$1
    shift
    local smoke="" rev
    [[ $DURATION -ge 10 ]] || smoke="BENCH_DURATION=$DURATION"
    [[ $PROFILE != debug || -n ${TOLLGATE_BIN:-} ]] || smoke="${smoke:+$smoke, }debug build"
    [[ $RUNS -ge 3 ]] || smoke="${smoke:+$smoke, }BENCH_RUNS=$RUNS"
    local profile_label="$PROFILE build"
    [[ -z ${TOLLGATE_BIN:-} ]] || profile_label="binary $TOLLGATE_BIN"
    rev=$(git rev-parse --short HEAD 2>/dev/null || echo "uncommitted")
    if [[ -n $(git status --porcelain -- host Cargo.toml Cargo.lock 2>/dev/null) ]]; then rev="$rev+changes"; fi
    "$PYTHON" - "$file" "$@" <<EOF
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
    "nginx": "$(nginx -v 2>&1 | sed 's/^nginx version: //')",
    "wrk": "$(wrk -v 2>&1 | head -n1 | awk '{print $1, $2}')",
    "python": platform.python_version(),
    "proxy_cpu": "$PROXY_CPU", "load_cpu": "$LOAD_CPU",
    "runs": $RUNS, "duration": $DURATION, "connections": $CONNS,
    "half_load": "$(awk -v h="$HALF" 'BEGIN { printf "%g%%", h * 100 }')",
    "smoke": "$smoke", "busy_runs": $BUSY_RUNS, "total_runs": $TOTAL_RUNS,
    "steal": json.loads("""$(steal_json)"""),
}
for kv in sys.argv[2:]:
    k, v = kv.split("=", 1)
    try:
        meta[k] = json.loads(v)
    except ValueError:
        meta[k] = v
json.dump(meta, open(sys.argv[1], "w"), indent=1)
EOF
}

# The API key the 3-plugin chain's consumer has; requests to the chain carry it.
API_KEY=bench-key-0123456789

# chain_plugins_yaml: the `plugins:` section of the 3-plugin chain the benches compare with 0
# plugins (key-auth → rate-limit with a plan no bench reaches → transformer), on every route.
chain_plugins_yaml() {
    cat <<YAML
plugins:
  - name: keys
    module: key_auth.wasm
    priority: 100
    config:
      key_names: [x-api-key]
      key_in_query: false
      consumers:
        - { name: bench, keys: [$API_KEY], groups: [gold] }
  - name: limit
    module: rate_limit.wasm
    priority: 50
    config:
      plans: { unlimited: { requests_per_second: 1000000000, burst: 1000000000 } }
      key: consumer
      default_plan: unlimited
  - name: transform
    module: transformer.wasm
    priority: 0
    config:
      request:
        headers: { set: { x-gateway: tollgate }, remove: [x-debug] }
      response:
        headers: { add: { x-served-by: tollgate } }
YAML
}

# one_header_plugin_yaml: the `plugins:` section of the least a plugin does: the bundled
# transformer, configured to add one response header and nothing else, as a user would write
# it (configuration `one` of plugins.sh and glue.sh)
one_header_plugin_yaml() {
    cat <<YAML
plugins:
  - name: served-by
    module: transformer.wasm
    config:
      response:
        headers: { add: { x-served-by: tollgate } }
YAML
}

# limit_plugins_yaml [MORE-CONFIG]: the `plugins:` section of the limit the `limit` and
# `global` configurations compare: the bundled rate-limit alone, one counter for every
# request (key: route), a plan never reached; MORE-CONFIG goes at the end of its config.
limit_plugins_yaml() {
    cat <<YAML
plugins:
  - name: limit
    module: rate_limit.wasm
    config:
      plans: { unlimited: { requests_per_second: 1000000000, burst: 1000000000 } }
      key: route
      default_plan: unlimited$1
YAML
}
# What turns the limit global: counted by `tollgate ratelimit` behind the cluster below.
GLOBAL_LIMIT_YAML="
      global: { cluster: ratelimit, domain: bench, timeout: 200ms, failure_mode: deny }"

# ratelimit_cluster_yaml PORT: the cluster of `tollgate ratelimit` on 127.0.0.1:PORT (h2c)
ratelimit_cluster_yaml() {
    cat <<YAML
clusters:
  - name: ratelimit
    endpoints: [ { address: 127.0.0.1:$1 } ]
    http2: true
YAML
}

# forward_all_yaml: the `clusters:` and `virtual_hosts:` sections every bench proxies with —
# one route for every host and path to the upstream on 127.0.0.1:$UP_PORT.
forward_all_yaml() {
    cat <<YAML
clusters:
  - name: upstream
    endpoints:
      - address: 127.0.0.1:$UP_PORT
    limits:
      max_requests: 100000
      max_idle_per_endpoint: 64
virtual_hosts:
  - name: bench
    domains: ["*"]
    routes:
      - name: bench
        match: { path: { prefix: / } }
        forward: { cluster: upstream }
YAML
}
