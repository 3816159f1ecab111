#!/usr/bin/env python3
"""Reads the raw results of bench/run.sh and prints them as a Markdown report.

    report.py rps WORKDIR TARGET   median requests/s of TARGET's wrk runs
    report.py table WORKDIR        the report (Markdown) on stdout

WORKDIR holds wrk-TARGET-N.txt (wrk --latency output), fixed-TARGET-N.json (loadgen.py
output) and meta.json (written by run.sh). Each figure is the median over the runs,
taken per figure.
"""

import glob
import json
import os
import re
import statistics
import sys

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


def wrk_runs(work, target):
    return [parse_wrk(p) for p in sorted(glob.glob(os.path.join(work, "wrk-%s-*.txt" % target)))]


def fixed_runs(work, target):
    runs = []
    for p in sorted(glob.glob(os.path.join(work, "fixed-%s-*.json" % target))):
        with open(p) as f:
            runs.append(json.load(f))
    return runs


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

    fixed = {}
    rate = meta.get("rate")
    if rate:
        add("## Latency at half load (open loop at %s requests/s = %s of nginx's maximum, `bench/loadgen.py`)"
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

    add("## Tollgate / nginx")
    add("")
    add("| figure | Tollgate | nginx | ratio | goal | met |")
    add("|---|---:|---:|---:|---:|:-:|")
    verdicts = []
    t, n = wrk.get("tollgate", {}), wrk.get("nginx", {})
    r = ratio(t.get("rps"), n.get("rps"))
    ok = None if r is None else r >= 1.0
    verdicts.append(ok)
    add("| throughput (req/s) | %s | %s | %s | ≥ 1.00× | %s |" % (
        fmt_rps(t.get("rps")), fmt_rps(n.get("rps")), fmt_ratio(r), mark(ok)))
    if fixed:
        t, n = fixed.get("tollgate", {}), fixed.get("nginx", {})
        r = ratio(t.get("p99"), n.get("p99"))
        ok = None if r is None else r <= 1.2
        verdicts.append(ok)
        add("| p99 at half load | %s | %s | %s | ≤ 1.20× | %s |" % (
            fmt_us(t.get("p99")), fmt_us(n.get("p99")), fmt_ratio(r), mark(ok)))
        r = ratio(t.get("p50"), n.get("p50"))
        add("| p50 at half load | %s | %s | %s | – | |" % (fmt_us(t.get("p50")), fmt_us(n.get("p50")), fmt_ratio(r)))
    t, n = wrk.get("tollgate", {}), wrk.get("nginx", {})
    add("| p99 at full load (wrk) | %s | %s | %s | – | |" % (
        fmt_us(t.get("p99")), fmt_us(n.get("p99")), fmt_ratio(ratio(t.get("p99"), n.get("p99")))))
    add("")

    if "baseline" in wrk:
        add("## This build / baseline (`TOLLGATE_BASELINE_BIN=%s`)" % meta.get("baseline", "?"))
        add("")
        add("The same policies, the same pinning, runs alternating with the others: the ratio "
            "is what the changes since the baseline cost (below 1.00× for throughput, above "
            "for latency) or gained.")
        add("")
        add("| figure | this build | baseline | ratio |")
        add("|---|---:|---:|---:|")
        t, b = wrk.get("tollgate", {}), wrk["baseline"]
        add("| throughput (req/s) | %s | %s | %s |" % (
            fmt_rps(t.get("rps")), fmt_rps(b.get("rps")), fmt_ratio(ratio(t.get("rps"), b.get("rps")))))
        if fixed:
            t, b = fixed.get("tollgate", {}), fixed.get("baseline", {})
            for figure in ("p50", "p99"):
                add("| %s at half load | %s | %s | %s |" % (
                    figure, fmt_us(t.get(figure)), fmt_us(b.get(figure)),
                    fmt_ratio(ratio(t.get(figure), b.get(figure)))))
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
    return "\n".join(lines), verdicts


def mark(ok):
    return "–" if ok is None else ("yes" if ok else "**no**")


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "rps":
        runs = wrk_runs(sys.argv[2], sys.argv[3])
        if not runs:
            sys.exit("no wrk results for %s" % sys.argv[3])
        print("%.0f" % median([r["rps"] for r in runs]))
    elif len(sys.argv) == 3 and sys.argv[1] == "table":
        text, verdicts = table(sys.argv[2])
        print(text)
        # exit status 3 when a goal was measured and missed (run.sh decides what to do with it)
        sys.exit(3 if any(v is False for v in verdicts) else 0)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
