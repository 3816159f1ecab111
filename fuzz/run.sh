#!/usr/bin/env bash
# Runs every fuzz target for a bounded time: `bash fuzz/run.sh SECONDS` (what `just fuzz`
# and `just fuzz-smoke` call; fuzz/README.md).
#
# Installs what is missing first (the nightly toolchain, cargo-fuzz), builds every target
# of both projects (fuzz/ for the host, fuzz/plugins/ for the bundled plugins) once,
# replays the committed reproducers in PROJECT/regressions/TARGET, then fuzzes each target
# for SECONDS from its seeds (PROJECT/corpus/TARGET) and what earlier runs found
# (fuzz/work/corpus/TARGET, git-ignored), with PROJECT/TARGET.dict when there is one. A
# crash is saved under PROJECT/artifacts/TARGET; the script goes on with the other targets
# and fails at the end.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

seconds=${1:-60}
if ! [[ $seconds =~ ^[0-9]+$ ]] || ((seconds == 0)); then
    echo "usage: $0 SECONDS (a positive whole number of seconds per target)" >&2
    exit 2
fi

# cargo-fuzz needs nightly (sanitizers, coverage instrumentation); the workspace itself
# stays on stable.
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install --locked cargo-fuzz
fi

# The same flags for the build and the runs, so that a run never rebuilds.
build_flags=(--release --debug-assertions)
# FUZZ_CODEGEN_UNITS=16 builds several times faster (wasmtime and cranelift dominate the
# build) for somewhat slower runs: right for a short smoke run, not for a long session.
if [[ -n ${FUZZ_CODEGEN_UNITS:-} ]]; then
    build_flags+=(--codegen-units "$FUZZ_CODEGEN_UNITS")
fi
# cargo-fuzz finds the binaries in fuzz/target; a CARGO_TARGET_DIR from the environment
# would send them elsewhere.
unset CARGO_TARGET_DIR

# FUZZ_SEED=N makes a run repeatable: libFuzzer's random choices start from N and the run
# starts from the committed seeds alone (a fresh working corpus), so a CI smoke run does
# here exactly what it does on a fresh clone and cannot fail by chance.
seed_flags=()
corpus_root=work/corpus
if [[ -n ${FUZZ_SEED:-} ]]; then
    seed_flags=(-seed="$FUZZ_SEED")
    corpus_root=$(mktemp -d)
    trap 'rm -rf "$corpus_root"' EXIT
fi

# Two fuzz projects, each its own Cargo workspace: this folder (the host) and plugins/ (the
# bundled plugins' logic, built natively). A target's seeds, reproducers and dictionary are
# in its project's folder; target names are unique across both. Absolute paths: cargo-fuzz
# runs a target from its project's folder.
here=$PWD
projects=("$here" "$here/plugins")
[[ $corpus_root = /* ]] || corpus_root=$here/$corpus_root

mkdir -p work
started=$SECONDS
for project in "${projects[@]}"; do
    cargo +nightly fuzz build --fuzz-dir "$project" "${build_flags[@]}"
done
echo "fuzz targets built in $((SECONDS - started)) s"

failed=()
for project in "${projects[@]}"; do
    shown=fuzz${project#"$here"}
    mapfile -t targets < <(cargo +nightly fuzz list --fuzz-dir "$project")
    for target in "${targets[@]}"; do
        # A dictionary of the formats the target parses, when it has one.
        dict_flags=()
        if [[ -f $project/$target.dict ]]; then
            dict_flags=(-dict="$project/$target.dict")
        fi
        regressions=("$project"/regressions/"$target"/*)
        if [[ -e ${regressions[0]} ]]; then
            echo "--- $target: replaying ${#regressions[@]} reproducers"
            if ! cargo +nightly fuzz run --fuzz-dir "$project" "${build_flags[@]}" "$target" \
                "${regressions[@]}" -- -runs=1 >"work/$target.regressions.log" 2>&1; then
                tail -n 40 "work/$target.regressions.log" >&2
                failed+=("$target (a reproducer in $shown/regressions/$target)")
                continue
            fi
        fi
        echo "--- $target: fuzzing for $seconds s"
        mkdir -p "$corpus_root/$target" "$project/corpus/$target"
        # -timeout: one input taking this long is a finding (a hang), not patience.
        # -rss_limit_mb: the default; an input that needs more is a finding too.
        if ! cargo +nightly fuzz run --fuzz-dir "$project" "${build_flags[@]}" "$target" \
            "$corpus_root/$target" "$project/corpus/$target" \
            -- -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
            "${seed_flags[@]}" "${dict_flags[@]}" \
            >"work/$target.log" 2>&1; then
            tail -n 60 "work/$target.log" >&2
            failed+=("$target (see fuzz/work/$target.log and $shown/artifacts/$target)")
            continue
        fi
        grep -E '^stat::number_of_executed_units|^Done [0-9]+ runs' "work/$target.log" | tail -n 2
    done
done

echo "fuzzing took $((SECONDS - started)) s in all"
if ((${#failed[@]})); then
    printf 'failed: %s\n' "${failed[@]}" >&2
    exit 1
fi
