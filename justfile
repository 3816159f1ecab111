# Tollgate's task runner. `just --list` shows the recipes.
#
# A fresh machine needs only the Rust toolchain and `just`
# (`command -v just >/dev/null || cargo install --locked just`); every recipe installs
# the rest of what it needs (the wasm target; bench: nginx, wrk, python3).

set shell := ["bash", "-euo", "pipefail", "-c"]

# Where cargo puts binaries (honours CARGO_TARGET_DIR).
target_dir := env("CARGO_TARGET_DIR", justfile_directory() / "target")
debug_bin := target_dir / "debug"

# Show the recipes.
default:
    @{{ just_executable() }} --list

# Install what the build needs that rustup does not give by default (idempotent, fast when done).
setup:
    #!/usr/bin/env bash
    set -euo pipefail
    # The plugins build for wasm32-wasip1; rust-toolchain.toml cannot install targets here.
    installed=$(rustup target list --installed)
    if ! grep -qx wasm32-wasip1 <<<"$installed"; then
        rustup target add wasm32-wasip1
    fi

# Build every binary of the workspace (dev profile): tollgate and demo-backend.
build:
    cargo build --workspace --bins

# The production binary: the release profile optimised with a profile of the gateway's own load (PGO, bench/pgo.sh; about 20 minutes; installs what its training load needs) into target/release-pgo/tollgate.
release: setup
    bash bench/pgo.sh

# Build the bundled plugins (release, wasm32-wasip1) into plugins/dist/NAME.wasm, the folder the gateway watches.
plugins: setup
    #!/usr/bin/env bash
    set -euo pipefail
    out="{{ target_dir }}/plugins"
    cargo build --release --target wasm32-wasip1 --manifest-path plugins/Cargo.toml --target-dir "$out"
    mkdir -p plugins/dist
    copied=0
    for wasm in "$out"/wasm32-wasip1/release/*.wasm; do
        name=$(basename "$wasm" .wasm)
        name=${name//_/-}
        # Only crates still in plugins/ (a deleted crate's old .wasm stays in the target dir).
        [[ -f "plugins/$name/Cargo.toml" ]] || continue
        dest="plugins/dist/$name.wasm"
        if ! cmp -s "$wasm" "$dest"; then
            # Write beside, then rename: the gateway never sees a half-written module.
            cp "$wasm" "plugins/dist/.$name.wasm.tmp"
            mv -f "plugins/dist/.$name.wasm.tmp" "$dest"
            echo "plugins/dist/$name.wasm updated"
        fi
        copied=$((copied + 1))
    done
    echo "$copied plugins in plugins/dist"

# Scaffold a plugin crate plugins/NAME from plugins/templates/plugin and add it to the workspace.
new-plugin NAME:
    bash plugins/new-plugin.sh "{{ NAME }}"

# Write the demo TLS files (CA, certificate for demo.local and localhost) into policies/certs.
certs: build
    "{{ debug_bin }}/demo-backend" certs --out policies/certs --names demo.local,localhost

# Run the demo: three echo backends, the billing collector and the gateway on policies/ with plugins/dist (Ctrl-C stops everything).
demo: setup build certs plugins
    #!/usr/bin/env bash
    set -euo pipefail
    bin="{{ debug_bin }}"
    pids=()
    cleanup() {
        trap - EXIT INT TERM
        if ((${#pids[@]})); then
            kill "${pids[@]}" 2>/dev/null || true
            wait "${pids[@]}" 2>/dev/null || true
        fi
    }
    trap cleanup EXIT
    trap 'echo "demo stopped" >&2; exit 0' INT   # Ctrl-C is how the demo ends
    trap 'exit 143' TERM

    port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
    for port in 8080 8443 9001 9002 9003 9004 9901; do
        if port_open "$port"; then
            echo "error: 127.0.0.1:$port is already in use; stop whatever listens there (an earlier demo?)" >&2
            exit 1
        fi
    done

    "$bin/demo-backend" serve --listen 127.0.0.1:9001 --name v1 & pids+=($!)
    "$bin/demo-backend" serve --listen 127.0.0.1:9002 --name v2 & pids+=($!)
    "$bin/demo-backend" serve --listen 127.0.0.1:9003 --name legacy & pids+=($!)
    # The usage collector of the metering plugin: one JSON line per usage record.
    "$bin/demo-backend" billing --listen 127.0.0.1:9004 --out usage.jsonl & pids+=($!)
    for port in 9001 9002 9003 9004; do
        for _ in $(seq 100); do port_open "$port" && break; sleep 0.1; done
        port_open "$port" || { echo "error: the demo backend on 127.0.0.1:$port did not start" >&2; exit 1; }
    done

    cat <<'TRY'

    Tollgate demo: gateway on http://127.0.0.1:8080 and https://127.0.0.1:8443, admin on 127.0.0.1:9901.
    Backends: v1 127.0.0.1:9001, v2 127.0.0.1:9002, legacy 127.0.0.1:9003 (they echo the request as JSON);
    billing collector 127.0.0.1:9004 (appends usage records to usage.jsonl).
    Try, in another terminal (policies/routes.yaml has the routes, policies/plugins.yaml the plugins):

      # host routing + a 90/10 canary split between v1 and v2 (see which backend answered)
      curl -s http://127.0.0.1:8080/ -H 'host: shop.demo.local'
      for i in $(seq 20); do curl -s -D - -o /dev/null http://127.0.0.1:8080/ -H 'host: shop.demo.local' | grep -i '^x-backend'; done | sort | uniq -c
      # header routing: testers pin v2
      curl -s http://127.0.0.1:8080/ -H 'host: shop.demo.local' -H 'x-version: v2'
      # wildcard host: any other *.demo.local is the v2 preview
      curl -s http://127.0.0.1:8080/ -H 'host: preview.demo.local'
      # path routing on the catch-all host
      curl -s http://127.0.0.1:8080/v1/hello
      curl -s http://127.0.0.1:8080/v2/hello
      # redirect (301 to /docs/...)
      curl -si http://127.0.0.1:8080/old-docs/intro -H 'host: shop.demo.local'
      # rewrite: the legacy backend receives /v1/orders with host legacy.internal
      curl -s http://127.0.0.1:8080/api/v1/orders -H 'host: shop.demo.local'
      # direct response from the gateway, over HTTP/1.1, h2c and TLS (h2 by ALPN)
      curl -s http://127.0.0.1:8080/ping
      curl -s --http2-prior-knowledge http://127.0.0.1:8080/ping
      curl -sk --resolve demo.local:8443:127.0.0.1 https://demo.local:8443/ping
      curl -s --cacert policies/certs/ca.crt --resolve demo.local:8443:127.0.0.1 -o /dev/null -w '%{http_version}\n' https://demo.local:8443/ping
      # fault injection: half of /flaky is aborted with 503; /slow is delayed by 1s
      for i in $(seq 20); do curl -s -o /dev/null -w '%{http_code}\n' http://127.0.0.1:8080/flaky -H 'host: shop.demo.local'; done | sort | uniq -c
      curl -s -o /dev/null -w '%{http_code} after %{time_total}s\n' http://127.0.0.1:8080/slow -H 'host: shop.demo.local'
      # the API behind plugins (key-auth → rate-limit → transformer → metering) on host api.demo.local
      curl -s -i http://127.0.0.1:8080/orders -H 'host: api.demo.local'                          # no key: 401
      curl -s http://127.0.0.1:8080/orders -H 'host: api.demo.local' -H 'x-api-key: alice-key'    # 200, consumer alice, user-agent redacted
      curl -s -D - -o /dev/null http://127.0.0.1:8080/orders -H 'host: api.demo.local' -H 'x-api-key: alice-key' | grep -i '^ratelimit'
      # bob's plan allows 2 requests/s: the rest of a quick burst gets 429
      for i in $(seq 6); do curl -s -o /dev/null -w '%{http_code}\n' http://127.0.0.1:8080/orders -H 'host: api.demo.local' -H 'x-api-key: bob-key'; done | sort | uniq -c
      # usage records, one per request, delivered each second by the metering plugin
      tail usage.jsonl
      # admin
      curl -s http://127.0.0.1:9901/readyz
      curl -s http://127.0.0.1:9901/config
      curl -s http://127.0.0.1:9901/metrics

    TRY

    "$bin/tollgate" run --policies policies --plugins plugins/dist --admin 127.0.0.1:9901

# The export tests validate with Envoy's and Istio's schemas in a Python virtualenv; the
# AssemblyScript SDK test builds its plugin with npm.
# Install the Debian packages the tests use (python3, python3-venv, nodejs, npm) when missing.
test-tools:
    #!/usr/bin/env bash
    set -euo pipefail
    missing=()
    command -v curl >/dev/null || missing+=(curl)
    command -v python3 >/dev/null || missing+=(python3)
    python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
    command -v node >/dev/null || missing+=(nodejs)
    command -v npm >/dev/null || missing+=(npm)
    command -v redis-server >/dev/null || missing+=(redis-server)
    if ((${#missing[@]})); then
        command -v apt-get >/dev/null || { echo "the tests need: ${missing[*]}" >&2; exit 1; }
        sudo=()
        if [[ $(id -u) -ne 0 ]]; then sudo=(sudo); fi
        export DEBIAN_FRONTEND=noninteractive
        "${sudo[@]}" apt-get update -qq
        "${sudo[@]}" apt-get install -y -qq "${missing[@]}"
    fi

# Formatting and lints of both workspaces (the host's and the plugins'), as CI runs them; fails on any warning.
lint: setup
    #!/usr/bin/env bash
    set -euo pipefail
    # rustup's minimal profile has neither rustfmt nor clippy.
    if command -v rustup >/dev/null; then
        installed=$(rustup component list --installed)
        for component in rustfmt clippy; do
            grep -q "^$component" <<<"$installed" || rustup component add "$component"
        done
    fi
    cargo fmt --all --check
    cargo fmt --manifest-path plugins/Cargo.toml --all --check
    cargo fmt --manifest-path tests/plugins/Cargo.toml --all --check
    cargo clippy --workspace --all-targets -- -D warnings
    # plugins/clippy.toml's rules hold for every member, the SDK (whose folder is not
    # under plugins/) included.
    export CLIPPY_CONF_DIR="$PWD/plugins"
    cargo clippy --manifest-path plugins/Cargo.toml --target-dir "{{ target_dir }}/plugins-native" --workspace --all-targets -- -D warnings
    # Once more as the plugins are built, for wasm32: the proxy-wasm glue (each plugin's
    # src/plugin.rs) is compiled only there, and plugins/clippy.toml's rules are about it.
    cargo clippy --manifest-path plugins/Cargo.toml --target-dir "{{ target_dir }}/plugins-native" --target wasm32-wasip1 --workspace --exclude plugin-bench -- -D warnings

# The dependency policy of deny.toml (bans, licences, sources) for both workspaces, installing cargo-deny when missing. The advisories check needs GitHub: `cargo deny check advisories`.
deny:
    #!/usr/bin/env bash
    set -euo pipefail
    command -v cargo-deny >/dev/null || cargo install --locked cargo-deny
    cargo deny check bans licenses sources
    cargo deny --manifest-path plugins/Cargo.toml --config deny.toml check bans licenses sources

# Lint, build, then run every test (the integration tests spawn target/debug/tollgate).
test: setup test-tools lint build
    cargo test --workspace
    # The SDK's and the bundled plugins' own unit tests, run natively.
    cargo test --manifest-path plugins/Cargo.toml --target-dir "{{ target_dir }}/plugins-native"

# Validate a policies folder without serving (default: the demo set).
check-policies dir="policies": build certs plugins
    "{{ debug_bin }}/tollgate" check --policies "{{ dir }}"

# Benchmarks (bench/README.md) of the production binary (`just release`; TOLLGATE_BIN=path for another): vs nginx (HTTP/1.1, TLS, h2, idle memory), plugin chains, hot swap, memory per plugin VM, host calls, plugins inside the guest; the goals table ends bench/results/latest.md. BENCH_DURATION=3 for a smoke run.
bench: setup
    #!/usr/bin/env bash
    set -euo pipefail
    # Every bench measures the production binary (`just release`), built once here, unless
    # TOLLGATE_BIN names a binary or BENCH_PROFILE another build (release, debug).
    if [[ -z ${TOLLGATE_BIN:-} && ${BENCH_PROFILE:-pgo} == pgo ]]; then
        TOLLGATE_BIN=$(bash bench/pgo.sh)
        export TOLLGATE_BIN
    fi
    # Every bench runs even when one misses a goal (exit status 3 with BENCH_STRICT=1), so
    # that the goals table covers them all; memory.sh (plugin VM memory) runs when present.
    missed=0
    for script in run tls idle plugins swap memory; do
        [[ -f bench/$script.sh ]] || continue
        status=0
        bash "bench/$script.sh" || status=$?
        if ((status == 3)); then missed=1; elif ((status != 0)); then exit "$status"; fi
    done
    cargo bench -p tollgate --bench host_calls
    python3 bench/criterion_report.py
    # The bundled plugins' callbacks, natively inside the guest code (plugins/bench).
    CRITERION_HOME="{{ target_dir }}/plugins-native/criterion" cargo bench --manifest-path plugins/Cargo.toml --target-dir "{{ target_dir }}/plugins-native" -p plugin-bench --bench callbacks
    CRITERION_HOME="{{ target_dir }}/plugins-native/criterion" python3 bench/criterion_report.py plugins
    status=0
    python3 bench/goals.py || status=$?
    if ((status == 0 && missed)); then status=3; fi
    exit "$status"

# Fuzz every target in fuzz/ for FUZZ_SECONDS each (default 60), installing nightly and cargo-fuzz when missing (fuzz/README.md).
fuzz:
    bash fuzz/run.sh "${FUZZ_SECONDS:-60}"

# Build every fuzz target (quick build: 16 codegen units) and fuzz each for 10 s from a fixed seed: the CI smoke run.
fuzz-smoke:
    FUZZ_CODEGEN_UNITS=16 FUZZ_SEED=1 bash fuzz/run.sh 10

# What CI checks: the tests, which start with the lints.
ci: test
