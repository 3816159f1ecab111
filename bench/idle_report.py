#!/usr/bin/env python3
"""Reads the raw results of bench/idle.sh and prints them as a Markdown report.

    idle_report.py WORKDIR

WORKDIR holds idle-TARGET-N.json (bench/idle_client.py output) and meta.json. Ratios are
medians of per-pair ratios (bench/goals.py); the goal figure also goes to
bench/results/goals/idle.json. Exit status 3 when the goal was measured and missed (or,
BENCH_STRICT=1, is unstable).
"""

import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from goals import Goals, fmt_spread, fmt_x, goals_dir, pair_ratios, stable, steal_lines, yes_no  # noqa: E402
from report import run_files  # noqa: E402

TARGETS = ("nginx", "tollgate")
# Tollgate's resident memory at the idle connections, at most this many times nginx's.
GOAL = 2.0


def mib(kb):
    return "–" if kb is None else "%.1f MiB" % (kb / 1024)


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    work = sys.argv[1]
    with open(os.path.join(work, "meta.json")) as f:
        meta = json.load(f)
    n = meta["idle_connections"]
    runs = {}
    for t in TARGETS:
        runs[t] = []
        for p in run_files(work, "idle", t, "json"):
            with open(p) as f:
                runs[t].append(json.load(f))
    out = []
    add = out.append
    add("# Tollgate memory at idle connections — %s" % meta["date"])
    add("")
    if meta.get("smoke"):
        add("**Smoke run (%s) — not representative; use `just bench` with the defaults for figures.**" % meta["smoke"])
        add("")
    add("- Machine: %s, %s CPUs, Linux %s" % (meta["cpu"], meta["cpus"], meta["kernel"]))
    for line in steal_lines(meta):
        add(line)
    add("- Versions: Tollgate %s (%s), %s, Python %s" % (meta["tollgate_rev"], meta["profile"], meta["nginx"], meta["python"]))
    add("- Each run: the proxy (1 worker, pinned to CPU %s) started afresh; `bench/idle_client.py` (CPU %s) opens "
        "%s connections, sends one `GET /` on each and reads the answer, holds them idle for %s s, then reads "
        "the proxy's VmRSS (nginx: master + worker). %s runs each, alternating."
        % (meta["proxy_cpu"], meta["load_cpu"], "{:,}".format(n), meta["settle"], meta["runs"]))
    add("")
    add("| target | RSS before | RSS at %s connections | per connection | answered | closed by the proxy |" % "{:,}".format(n))
    add("|---|---:|---:|---:|---:|---:|")
    per_conn = {}
    for t in TARGETS:
        rs = runs[t]
        if not rs:
            continue
        before = statistics.median(r["rss_before_kb"] for r in rs)
        at = statistics.median(r["rss_kb"] for r in rs)
        per_conn[t] = [(r["rss_kb"] - r["rss_before_kb"]) / r["connections"] for r in rs]
        add("| %s | %s | %s | %.1f KiB | %d | %d |" % (
            t, mib(before), mib(at), statistics.median(per_conn[t]),
            min(r["answered"] for r in rs), max(r["closed_by_server"] for r in rs)))
    add("")

    goals = Goals("idle.sh", meta)
    at = pair_ratios([r["rss_kb"] for r in runs["tollgate"]], [r["rss_kb"] for r in runs["nginx"]])
    growth = pair_ratios(per_conn.get("tollgate", []), per_conn.get("nginx", []))
    add("| figure (Tollgate / nginx) | ratio | spread of the pairs | stable |")
    add("|---|---:|---:|:-:|")
    add("| RSS at %s idle connections | %s | %s | %s |" % ("{:,}".format(n), fmt_x(statistics.median(at)) if at else "–",
                                                        fmt_spread(at, fmt_x), yes_no(stable(at))))
    add("| RSS added per idle connection | %s | %s | %s |" % (fmt_x(statistics.median(growth)) if growth else "–",
                                                           fmt_spread(growth, fmt_x), yes_no(stable(growth))))
    add("")
    goals.ratio("memory: RSS at %s idle keep-alive connections ≤ %.1f × nginx" % ("{:,}".format(n), GOAL), at, at_most=GOAL)
    out.extend(goals.markdown())
    add("")
    notes = []
    for t in TARGETS:
        for i, r in enumerate(runs[t], 1):
            if r["answered"] < r["connections"] or r["closed_by_server"] or r["errors"]:
                notes.append("%s run %d: %d of %d connections answered, %d closed by the proxy, %d errors: its "
                             "memory is not that of %s idle connections" % (
                                 t, i, r["answered"], r["connections"], r["closed_by_server"], r["errors"], "{:,}".format(n)))
    if notes:
        add("Notes:")
        add("")
        for line in notes:
            add("- **%s**" % line)
        add("")
    print("\n".join(out))
    goals.write(os.path.join(goals_dir(), "idle.json"))
    sys.exit(3 if goals.failed() else 0)


if __name__ == "__main__":
    main()
