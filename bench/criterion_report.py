#!/usr/bin/env python3
"""Summarises criterion results as Markdown: the host-call micro-benchmarks, or the plugins.

    criterion_report.py [CRITERION-DIR [OUT]]
    criterion_report.py plugins [CRITERION-DIR [OUT]]

The first form reports `cargo bench -p tollgate --bench host_calls`.

CRITERION-DIR defaults to $CARGO_TARGET_DIR/criterion (else target/criterion), OUT to
bench/results/host_calls.md; the report is also printed. Figures come from each
benchmark's new/estimates.json (nanoseconds per iteration; the iteration is one
`proxy_on_request_headers` callback) and new/benchmark.json (its name and throughput).
Benchmarks with a throughput of N elements make N host calls per callback (the guest loops
N times), so the per-call figure is the callback's time divided by N, and net of the empty
callback's own time when the `callback` benchmark is there.

`plugins` reports the bundled plugins' callbacks measured natively inside the guest code
(`cargo bench --manifest-path plugins/Cargo.toml -p plugin-bench --bench callbacks`, group
`plugins`): CRITERION-DIR defaults to $CRITERION_HOME (else
$CARGO_TARGET_DIR/plugins-native/criterion), OUT to bench/results/plugin_callbacks.md. Beside
the times it shows the allocations per call (plugins/allocations.json, written by the
bench) and, when the bench was once run with `--save-baseline before`, that run's time and
allocations for comparison.
"""

import datetime
import json
import os
import sys

GROUP = "host_calls"
NOTES = {
    "callback": "host → guest: one empty `proxy_on_request_headers` (no host call)",
    "get_time": "`proxy_get_current_time_nanoseconds`",
    "add_and_remove_header": "`proxy_add_header_map_value` + `proxy_remove_header_map_value` (2 calls per loop)",
    "get_header": "`proxy_get_header_map_value`",
}


def fmt_ns(v):
    if v is None:
        return "–"
    if v >= 1e6:
        return "%.2f ms" % (v / 1e6)
    if v >= 1e3:
        return "%.2f µs" % (v / 1e3)
    return "%.1f ns" % v


def read_estimates(directory):
    """Criterion's median time (ns) in DIRECTORY/estimates.json, or None."""
    try:
        with open(os.path.join(directory, "estimates.json")) as f:
            return json.load(f)["median"]["point_estimate"]
    except (OSError, ValueError, KeyError):
        return None


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def fmt_allocations(v):
    if v is None:
        return "–"
    return ("%.1f" % v).rstrip("0").rstrip(".")


def plugins_report(args):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(root, "target")
    crit = args[0] if args else (os.environ.get("CRITERION_HOME") or os.path.join(target, "plugins-native", "criterion"))
    out_path = args[1] if len(args) > 1 else os.path.join(root, "bench", "results", "plugin_callbacks.md")
    group_dir = os.path.join(crit, "plugins")
    if not os.path.isdir(group_dir):
        sys.exit("criterion_report: no %s (run `cargo bench --manifest-path plugins/Cargo.toml -p plugin-bench --bench callbacks` first)" % group_dir)
    allocations = read_json(os.path.join(group_dir, "allocations.json"))
    allocations_before = read_json(os.path.join(group_dir, "allocations-before.json"))
    rows = []
    newest = 0.0
    for name in sorted(os.listdir(group_dir)):
        bench = read_json(os.path.join(group_dir, name, "new", "benchmark.json"))
        median = read_estimates(os.path.join(group_dir, name, "new"))
        if not bench or median is None:
            continue
        newest = max(newest, os.path.getmtime(os.path.join(group_dir, name, "new", "estimates.json")))
        case = bench.get("function_id") or name
        plugin, _, callback = case.partition("/")
        rows.append((plugin, callback, median, read_estimates(os.path.join(group_dir, name, "before")),
                     allocations.get(case), allocations_before.get(case)))
    if not rows:
        sys.exit("criterion_report: no results under %s" % group_dir)
    when = datetime.datetime.fromtimestamp(newest, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Plugins inside the guest (`plugin-bench`, natively) — %s" % when,
        "",
        "Criterion, each bundled plugin's callbacks run natively against the in-memory host of "
        "plugins/bench on a representative allowed request (the demo policies' or the plugin "
        "README's configuration). Median ns per call; allocations per call counted by a "
        "counting global allocator over 1000 calls. \"before\" is the run saved with "
        "`--save-baseline before`. Not pinned: run on an idle machine.",
        "",
        "| plugin | callback | ns/call before | ns/call | allocations/call before | allocations/call |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for plugin, callback, median, before, allocs, allocs_before in rows:
        lines.append("| %s | `%s` | %s | %s | %s | %s |" % (
            plugin, callback, fmt_ns(before), fmt_ns(median), fmt_allocations(allocs_before), fmt_allocations(allocs)))
    lines.append("")
    write_report(root, out_path, "\n".join(lines))


def write_report(root, out_path, text):
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    with open(out_path, "w") as f:
        f.write(text + "\n")
    print(text)
    shown = os.path.relpath(out_path, root) if os.path.abspath(out_path).startswith(root + os.sep) else out_path
    print("(written to %s)" % shown)


def main():
    if sys.argv[1:2] == ["plugins"]:
        plugins_report(sys.argv[2:])
        return
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(root, "target")
    crit = sys.argv[1] if len(sys.argv) > 1 else os.path.join(target, "criterion")
    out_path = sys.argv[2] if len(sys.argv) > 2 else os.path.join(root, "bench", "results", "host_calls.md")
    group_dir = os.path.join(crit, GROUP)
    if not os.path.isdir(group_dir):
        sys.exit("criterion_report: no %s (run `cargo bench -p tollgate --bench host_calls` first)" % group_dir)
    rows = {}
    newest = 0.0
    for name in sorted(os.listdir(group_dir)):
        new = os.path.join(group_dir, name, "new")
        try:
            with open(os.path.join(new, "estimates.json")) as f:
                est = json.load(f)
            with open(os.path.join(new, "benchmark.json")) as f:
                bench = json.load(f)
        except (OSError, ValueError):
            continue
        newest = max(newest, os.path.getmtime(os.path.join(new, "estimates.json")))
        throughput = bench.get("throughput") or {}
        rows[bench.get("function_id") or name] = {
            "median": est["median"]["point_estimate"],
            "lo": est["median"]["confidence_interval"]["lower_bound"],
            "hi": est["median"]["confidence_interval"]["upper_bound"],
            "mean": est["mean"]["point_estimate"],
            "elements": throughput.get("Elements"),
        }
    if not rows:
        sys.exit("criterion_report: no results under %s" % group_dir)
    when = datetime.datetime.fromtimestamp(newest, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    base = rows.get("callback", {}).get("median")
    lines = [
        "# Host-call micro-benchmarks (`cargo bench -p tollgate --bench host_calls`) — %s" % when,
        "",
        "Criterion, on a hand-written module (host/benches/host_calls.rs). One iteration is one "
        "`proxy_on_request_headers` callback; the guest makes N host calls in it. Median of "
        "criterion's samples, with its 95 % confidence interval. Per call = (callback − empty "
        "callback) / N. Not pinned: run on an idle machine.",
        "",
        "| benchmark | what | per callback (median) | 95 % CI | calls per callback | per call, net of the empty callback |",
        "|---|---|---:|---:|---:|---:|",
    ]
    order = ["callback", "get_time", "get_header", "add_and_remove_header"]
    for name in order + sorted(set(rows) - set(order)):
        if name not in rows:
            continue
        r = rows[name]
        per_call = "–"
        calls = "–"
        if r["elements"]:
            n = r["elements"] * (2 if name == "add_and_remove_header" else 1)
            calls = str(n)
            per_call = fmt_ns((r["median"] - (base or 0)) / n)
        lines.append("| %s | %s | %s | %s – %s | %s | %s |" % (
            name, NOTES.get(name, ""), fmt_ns(r["median"]), fmt_ns(r["lo"]), fmt_ns(r["hi"]), calls, per_call))
    lines.append("")
    write_report(root, out_path, "\n".join(lines))


if __name__ == "__main__":
    main()
