#!/usr/bin/env bash
# The production build of the gateway: the release profile, optimised with a profile of the
# gateway's own load (profile-guided optimisation, PGO). `just release` runs it; `just bench`
# measures its binary. Method and figures: bench/README.md ("The production build").
#
#   1. an instrumented release build (`-Cprofile-generate`) in TARGET/pgo-generate
#   2. a short training load on it, through the benches' own harness: HTTP/1.1 forwarding
#      with 0 plugins, one header plugin, the bundled chain (key-auth → rate-limit →
#      transformer), jwt-auth, a local and a global rate limit (`tollgate ratelimit` and
#      redis-server, the same binary), keep-alive TLS, HTTP/2 over TLS and h2c
#   3. the counts merged with `llvm-profdata` (rustup's `llvm-tools` component, installed
#      when missing)
#   4. the optimised release build (`-Cprofile-use`) in TARGET/pgo-use, its binary copied to
#      TARGET/release-pgo/tollgate
#
# Its standard output is that binary's path and nothing else (the builds and the training
# write to standard error), so that a caller names it in one place: BIN=$(bash bench/pgo.sh).
#
# The builds keep their own target folders, so each is incremental and neither undoes the
# plain release build. The profile is of this source: a later change builds and runs
# without a new one, only less optimised where it changed, so run this again before a bench
# or an image.
#
# Environment (all optional): CARGO_TARGET_DIR; PGO_TRAIN_SECONDS=3 (seconds per training
# run); BENCH_PROXY_CPU, BENCH_LOAD_CPU, BENCH_QUIET_WAIT as for the benches.
set -euo pipefail
# Standard output is kept for the binary's path (fd 3); everything else goes to stderr.
exec 3>&1 1>&2

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
SECONDS_PER_RUN=${PGO_TRAIN_SECONDS:-3}
DATA=$TARGET_DIR/pgo-data
PROFDATA=$TARGET_DIR/pgo.profdata
OUT=$TARGET_DIR/release-pgo/tollgate

log() { printf '\n==> %s\n' "$*" >&2; }
die() { printf 'pgo: error: %s\n' "$*" >&2; exit 1; }

[[ $SECONDS_PER_RUN =~ ^[0-9]+$ && $SECONDS_PER_RUN -ge 1 ]] || die "PGO_TRAIN_SECONDS must be whole seconds"

# llvm-profdata of the toolchain that builds (its profile format must match rustc's LLVM).
host=$(rustc -vV | sed -n 's/^host: //p')
llvm_profdata=$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata
if [[ ! -x $llvm_profdata ]]; then
    log "rustup component add llvm-tools"
    rustup component add llvm-tools
fi
[[ -x $llvm_profdata ]] || die "no llvm-profdata at $llvm_profdata"

# Flags the caller set stay; the profile flags are added to them.
flags=${RUSTFLAGS:-}

log "instrumented build (cargo build --release, -Cprofile-generate) in $TARGET_DIR/pgo-generate"
RUSTFLAGS="$flags -Cprofile-generate=$DATA" \
    cargo build --release -p tollgate --target-dir "$TARGET_DIR/pgo-generate"
# Build scripts and proc macros of that build are instrumented too and wrote their own
# counts while it ran: only the gateway's, from the training below, are kept.
rm -rf "$DATA"
mkdir -p "$DATA"

train=$(mktemp -d "${TMPDIR:-/tmp}/tollgate-pgo.XXXXXX")
trap 'rm -rf "$train"' EXIT
# The caller's comparison and profiling settings are not the training's.
training=(
    env -u TOLLGATE_BASELINE_BIN -u BENCH_BASELINE_CONFIGS -u BENCH_PERF TOLLGATE_BIN="$TARGET_DIR/pgo-generate/release/tollgate" BENCH_RUNS=1
    BENCH_DURATION="$SECONDS_PER_RUN" BENCH_GOALS_DIR="$train/goals" BENCH_STRICT=0
)
log "training: plugins.sh (0 plugins, header plugin, chain, jwt-auth, local and global limit)"
"${training[@]}" BENCH_CONFIGS="base header chain jwt limit global" \
    BENCH_PLUGINS_OUT="$train/plugins.md" bash bench/plugins.sh >"$train/plugins.log" 2>&1 ||
    { tail -n 30 "$train/plugins.log" >&2; die "the training load (plugins.sh) failed"; }
log "training: tls.sh (keep-alive TLS, h2 over TLS, h2c)"
"${training[@]}" BENCH_TLS_FIGURES="tls h2 h2c" \
    BENCH_TLS_OUT="$train/tls.md" bash bench/tls.sh >"$train/tls.log" 2>&1 ||
    { tail -n 30 "$train/tls.log" >&2; die "the training load (tls.sh) failed"; }

shopt -s nullglob
counts=("$DATA"/*.profraw)
((${#counts[@]})) || die "the training wrote no profile to $DATA (did the gateway exit on SIGTERM?)"
log "merging ${#counts[@]} profile file(s) into $PROFDATA"
"$llvm_profdata" merge -o "$PROFDATA" "${counts[@]}"

# The release profile as it is (thin LTO, 4 codegen units): with whole-program LTO in one
# unit the same profile gave a slower binary (bench/README.md).
log "optimised build (cargo build --release, -Cprofile-use) in $TARGET_DIR/pgo-use"
RUSTFLAGS="$flags -Cprofile-use=$PROFDATA" \
    cargo build --release -p tollgate --target-dir "$TARGET_DIR/pgo-use"
mkdir -p "$(dirname "$OUT")"
cp "$TARGET_DIR/pgo-use/release/tollgate" "$OUT.tmp"
mv -f "$OUT.tmp" "$OUT"
log "the production binary: $OUT"
echo "$OUT" >&3
