#!/usr/bin/env python3
"""Reads the raw results of bench/run.sh and prints them as a Markdown report.

    report.py rps WORKDIR TARGET   median requests/s of TARGET's wrk runs
    report.py table WORKDIR        the report (Markdown) on stdout

WORKDIR holds wrk-TARGET-N.txt (wrk --latency output), fixed-TARGET-N.json (tollgate-loadgen
output) and meta.json (written by run.sh). Each figure is the median over the runs,
taken per figure; each ratio is the median of the per-pair ratios (run i of one target over
run i of the other: the runs alternate), with their spread (bench/goals.py). The goal figures
also go to bench/results/goals/run.json for the goals table of the whole `just bench`.
"""

import glob
import json
import os
import re
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from goals import Goals, fmt_spread, fmt_x, goals_dir, pair_ratios, stable, steal_lines, yes_no  # noqa: E402

TARGETS = [
    ("direct", "direct to the upstream (no proxy)"),
    ("nginx", "nginx reverse proxy"),
    ("tollgate", "Tollgate, 0 plugins"),
    ("baseline", "baseline Tollgate (earlier build), 0 plugins"),
]

UNITS = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6, "h": 3600e6}


def to_us(text):
    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m|h)", text.strip())
    if not m:
        raise ValueError("unknown duration %r" % text)
    return float(m.group(1)) * UNITS[m.group(2)]


def parse_wrk(path):
    out = {"errors": 0}
    with open(path) as f:
        text = f.read()
    m = re.search(r"^Requests/sec:\s+([0-9.]+)", text, re.M)
    if not m:
        raise ValueError("%s: no Requests/sec line (did wrk fail?)\n%s" % (path, text))
    out["rps"] = float(m.group(1))
    m = re.search(r"^\s+(\d+) requests in", text, re.M)
    out["requests"] = int(m.group(1)) if m else None
    for pct in ("50", "75", "90", "99"):
        m = re.search(r"^\s+%s(?:\.000)?%%\s+([0-9.]+\w+)" % pct, text, re.M)
        if m:
            out["p" + pct] = to_us(m.group(1))
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    if m:
        out["errors"] += int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        out["errors"] += sum(int(x) for x in m.groups())
    return out


def run_files(work, kind, target, ext):
    """WORK/KIND-TARGET-N.EXT in run order (N numerically: run 10 comes after run 9)."""
    paths = glob.glob(os.path.join(work, "%s-%s-*.%s" % (kind, glob.escape(target), ext)))
    runs = []
    for p in paths:
        n = os.path.basename(p)[len(kind) + len(target) + 2:-len(ext) - 1]
        if n.isdigit():
            runs.append((int(n), p))
    return [p for _, p in sorted(runs)]


def wrk_runs(work, target):
    return [parse_wrk(p) for p in run_files(work, "wrk", target, "txt")]


def cpu_per_request(work, target):
    """Per run of WORK/wrk-TARGET-N.txt with its .cpu file (bench/common.sh `measured`): the
    proxy's CPU time per request in µs, in all, in user space and in the kernel, and its
    share of one CPU over the run."""
    runs = []
    for p in run_files(work, "wrk", target, "txt"):
        if not os.path.exists(p + ".cpu"):
            continue
        with open(p + ".cpu") as f:
            cpu = json.load(f)
        requests = parse_wrk(p).get("requests")
        if not requests or "proxy_user_s" not in cpu:
            continue
        runs.append({
            "cpu_us": 1e6 * cpu["proxy_cpu_s"] / requests,
            "user_us": 1e6 * cpu["proxy_user_s"] / requests,
            "kernel_us": 1e6 * cpu["proxy_system_s"] / requests,
            "busy": cpu["proxy_cpu_s"] / cpu["wall_s"] if cpu["wall_s"] else None,
        })
    return runs


def fixed_runs(work, target):
    runs = []
    for p in run_files(work, "fixed", target, "json"):
        with open(p) as f:
            runs.append(json.load(f))
    return runs


def per_run(runs, key):
    """One figure of each run, in run order (runs of two targets pair up by position)."""
    return [r.get(key) for r in runs]


def fixed_per_run(runs, key):
    return [r["latency_us"].get(key) for r in runs]


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt_us(v):
    if v is None:
        return "–"
    if v >= 1000:
        return "%.2f ms" % (v / 1000)
    return "%.0f µs" % v


def fmt_rps(v):
    return "–" if v is None else "{:,.0f}".format(v)


def fmt_ratio(v):
    return "–" if v is None else "%.2f×" % v


def ratio(a, b):
    if a is None or b in (None, 0):
        return None
    return a / b


def table(work):
    with open(os.path.join(work, "meta.json")) as f:
        meta = json.load(f)
    lines = []
    add = lines.append
    add("# Tollgate bench — %s" % meta["date"])
    add("")
    if meta.get("smoke"):
        add("**Smoke run (%s) — not representative; use `just bench` with the defaults for figures.**"
            % meta["smoke"])
        add("")
    if meta.get("busy_runs"):
        add("**%d of %d runs started while other processes kept the machine busy: "
            "these figures are not reliable.**" % (meta["busy_runs"], meta["total_runs"]))
        add("")
    add("- Machine: %s, %s CPUs, Linux %s" % (meta["cpu"], meta["cpus"], meta["kernel"]))
    for line in steal_lines(meta):
        add(line)
    add("- Versions: Tollgate %s (%s), %s, %s, Python %s"
        % (meta["tollgate_rev"], meta["profile"], meta["nginx"], meta["wrk"], meta["python"]))
    add("- Pinning: proxy (nginx or Tollgate, 1 worker) on CPU %s; upstream (nginx `return 200`), "
        "wrk and the fixed-rate generator on CPU %s" % (meta["proxy_cpu"], meta["load_cpu"]))
    add("- %s runs of %ss per figure (median), %s keep-alive connections, `GET /` answered `ok`"
        % (meta["runs"], meta["duration"], meta["connections"]))
    add("")

    add("## Maximum throughput (closed loop: `wrk -t1 -c%s -d%ss --latency`)" % (meta["connections"], meta["duration"]))
    add("")
    add("| target | requests/s | p50 | p90 | p99 | errors |")
    add("|---|---:|---:|---:|---:|---:|")
    wrk = {}
    for key, label in TARGETS:
        runs = wrk_runs(work, key)
        if not runs:
            continue
        w = {k: median([r.get(k) for r in runs]) for k in ("rps", "p50", "p90", "p99")}
        w["errors"] = sum(r["errors"] for r in runs)
        wrk[key] = w
        add("| %s | %s | %s | %s | %s | %d |" % (label, fmt_rps(w["rps"]), fmt_us(w["p50"]),
                                                fmt_us(w["p90"]), fmt_us(w["p99"]), w["errors"]))
    add("")

    cpu = {key: cpu_per_request(work, key) for key, _ in TARGETS}
    if any(cpu.values()):
        add("## CPU per request (the proxy, closed loop)")
        add("")
        add("The proxy's CPU time over each closed-loop run (`/proc/PID/stat`, nginx's master and "
            "worker together), user space and kernel apart, divided by the requests wrk "
            "completed; median of the runs.")
        add("")
        add("| target | CPU per request | user space | kernel | kernel share | busy |")
        add("|---|---:|---:|---:|---:|---:|")
        for key, label in TARGETS:
            if not cpu[key]:
                continue
            m = {k: median([r[k] for r in cpu[key]]) for k in ("cpu_us", "user_us", "kernel_us", "busy")}
            add("| %s | %.1f µs | %.1f µs | %.1f µs | %.0f %% | %s |" % (
                label, m["cpu_us"], m["user_us"], m["kernel_us"], 100 * m["kernel_us"] / m["cpu_us"],
                "–" if m["busy"] is None else "%.0f %%" % (100 * m["busy"])))
        add("")

    fixed = {}
    rate = meta.get("rate")
    if rate:
        add("## Latency at half load (open loop at %s requests/s = %s of nginx's maximum, `bench/loadgen`)"
            % (fmt_rps(rate), meta["half_load"]))
        add("")
        add("Latency is measured from each request's scheduled time (no coordinated omission).")
        add("")
        add("| target | achieved req/s | p50 | p90 | p99 | p99.9 | max | errors | send lag p99 |")
        add("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for key, label in TARGETS:
            runs = fixed_runs(work, key)
            if not runs:
                continue
            f = {k: median([r["latency_us"][k] for r in runs]) for k in ("p50", "p90", "p99", "p99.9", "max")}
            f["rate"] = median([r["achieved_rate"] for r in runs])
            f["lag99"] = median([r["send_lag_us"]["p99"] for r in runs])
            f["errors"] = sum(sum(r["errors"].values()) - r["errors"].get("reconnect", 0) for r in runs)
            fixed[key] = f
            add("| %s | %s | %s | %s | %s | %s | %s | %d | %s |" % (
                label, fmt_rps(f["rate"]), fmt_us(f["p50"]), fmt_us(f["p90"]), fmt_us(f["p99"]),
                fmt_us(f["p99.9"]), fmt_us(f["max"]), f["errors"], fmt_us(f["lag99"])))
        add("")

    # Ratios: median of the per-pair ratios (run i of Tollgate / run i of nginx).
    goals = Goals("run.sh", meta)
    raw = {key: (wrk_runs(work, key), fixed_runs(work, key)) for key, _ in TARGETS}

    def pairs(a, b, figure):
        (wa, fa), (wb, fb) = raw[a], raw[b]
        if figure == "rps" or figure == "wrk p99":
            key = "rps" if figure == "rps" else "p99"
            return pair_ratios(per_run(wa, key), per_run(wb, key))
        return pair_ratios(fixed_per_run(fa, figure), fixed_per_run(fb, figure))

    add("## Tollgate / nginx")
    add("")
    add("Ratios are the median of the per-pair ratios (run *i* of Tollgate over run *i* of nginx; "
        "the runs alternate), with their min–max and (max − min) / median; a figure whose spread "
        "exceeds 10 % is marked unstable.")
    add("")
    add("| figure | Tollgate | nginx | ratio | spread of the pairs | stable | goal | met |")
    add("|---|---:|---:|---:|---:|:-:|---:|:-:|")
    t, n = wrk.get("tollgate", {}), wrk.get("nginx", {})
    rows = [("throughput (req/s)", "rps", fmt_rps(t.get("rps")), fmt_rps(n.get("rps")), ("≥ 1.00×", 1.0, None),
             "0 plugins: throughput ≥ 1.0 × nginx")]
    if fixed:
        ft, fn = fixed.get("tollgate", {}), fixed.get("nginx", {})
        rows.append(("p99 at half load", "p99", fmt_us(ft.get("p99")), fmt_us(fn.get("p99")), ("≤ 1.20×", None, 1.2),
                     "0 plugins: p99 at half load ≤ 1.2 × nginx"))
        rows.append(("p50 at half load", "p50", fmt_us(ft.get("p50")), fmt_us(fn.get("p50")), None, None))
    rows.append(("p99 at full load (wrk)", "wrk p99", fmt_us(t.get("p99")), fmt_us(n.get("p99")), None, None))
    for label, figure, tv, nv, goal, goal_name in rows:
        ratios = pairs("tollgate", "nginx", figure)
        mid = median(ratios)
        met = None
        if goal and goal_name:
            met = goals.ratio(goal_name, ratios, at_least=goal[1], at_most=goal[2])
        add("| %s | %s | %s | %s | %s | %s | %s | %s |" % (
            label, tv, nv, fmt_ratio(mid), fmt_spread(ratios, fmt_x), yes_no(stable(ratios)),
            goal[0] if goal else "–", mark(met)))
    add("")

    if "baseline" in wrk:
        add("## This build / baseline (`TOLLGATE_BASELINE_BIN=%s`)" % meta.get("baseline", "?"))
        add("")
        add("The same policies, the same pinning, runs alternating with the others: the ratio "
            "is what the changes since the baseline cost (below 1.00× for throughput, above "
            "for latency) or gained.")
        add("")
        add("| figure | this build | baseline | ratio | spread of the pairs | stable |")
        add("|---|---:|---:|---:|---:|:-:|")
        t, b = wrk.get("tollgate", {}), wrk["baseline"]
        figures = [("throughput (req/s)", "rps", fmt_rps(t.get("rps")), fmt_rps(b.get("rps")))]
        if fixed:
            ft, fb = fixed.get("tollgate", {}), fixed.get("baseline", {})
            for figure in ("p50", "p99"):
                figures.append(("%s at half load" % figure, figure, fmt_us(ft.get(figure)), fmt_us(fb.get(figure))))
        for label, figure, tv, bv in figures:
            ratios = pairs("tollgate", "baseline", figure)
            add("| %s | %s | %s | %s | %s | %s |" % (label, tv, bv, fmt_ratio(median(ratios)),
                                                    fmt_spread(ratios, fmt_x), yes_no(stable(ratios))))
        add("")

    notes = []
    d = wrk.get("direct", {}).get("rps")
    best = max([wrk.get(k, {}).get("rps") or 0 for k in ("nginx", "tollgate", "baseline")])
    if d and best and best > 0.8 * d:
        notes.append("a proxy reached %.0f%% of the direct figure: the upstream and load generator "
                     "on CPU %s may be the bottleneck, so the throughput ratio understates the "
                     "difference" % (100 * best / d, meta["load_cpu"]))
    for key, f in fixed.items():
        if rate and f["rate"] is not None and f["rate"] < 0.97 * rate:
            notes.append("%s could not sustain the fixed rate (%s of %s req/s): its latencies include "
                         "the queue that built up" % (key, fmt_rps(f["rate"]), fmt_rps(rate)))
        elif f["lag99"] is not None and f["lag99"] > 200:
            notes.append("%s: requests left up to %s (p99) after their scheduled time, because the "
                         "generator or every connection was busy; that wait is part of the latencies"
                         % (key, fmt_us(f["lag99"])))
    for key, w in wrk.items():
        if w["errors"]:
            notes.append("%s: %d errors under wrk" % (key, w["errors"]))
    if notes:
        add("Notes:")
        add("")
        for n_ in notes:
            add("- " + n_)
        add("")
    return "\n".join(lines), goals


def mark(ok):
    return "–" if ok is None else ("yes" if ok else "**no**")


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "rps":
        runs = wrk_runs(sys.argv[2], sys.argv[3])
        if not runs:
            sys.exit("no wrk results for %s" % sys.argv[3])
        print("%.0f" % median([r["rps"] for r in runs]))
    elif len(sys.argv) == 3 and sys.argv[1] == "table":
        text, goals = table(sys.argv[2])
        print(text)
        goals.write(os.path.join(goals_dir(), "run.json"))
        # exit status 3 when a goal was measured and missed, or (BENCH_STRICT=1) is unstable;
        # run.sh decides what to do with it
        sys.exit(3 if goals.failed() else 0)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
