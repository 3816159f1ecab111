#!/usr/bin/env python3
"""Reads the raw results of bench/swap.sh and prints them as a Markdown report.

    swap_report.py WORKDIR

WORKDIR holds latency.json and churn-*.json (bench/swap.py output), fixed-steady.json and
fixed-swaps.json (tollgate-loadgen output), wrk-steady-N.txt and wrk-swaps.txt (wrk --latency
output), reload-a.txt and reload-b.txt (the gateway's logs: one "new configuration is
live ... elapsed_ms=N" line per swap) and meta.json. Exit status 3 when a goal was measured
and missed.
"""

import json
import os
import re
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from goals import Goals, goals_dir, steal_lines  # noqa: E402
from report import fmt_rps, fmt_us, median, parse_wrk, wrk_runs  # noqa: E402

LIVE = re.compile(r"new configuration is live.*?generation=(\d+).*?elapsed_ms=(\d+)")


def load(work, name):
    with open(os.path.join(work, name)) as f:
        return json.load(f)


def reload_times(path):
    """generation -> milliseconds the reload thread took to build the snapshot."""
    out = {}
    try:
        with open(path, errors="replace") as f:
            for line in f:
                m = LIVE.search(re.sub(r"\x1b\[[0-9;]*m", "", line))
                if m:
                    out[int(m.group(1))] = int(m.group(2))
    except OSError:
        pass
    return out


def mark(ok):
    return "–" if ok is None else ("met" if ok else "**not met**")


def fmt_ms(v):
    return "–" if v is None else ("%.0f ms" % v if v >= 10 else "%.1f ms" % v)


def failed(fixed):
    e = fixed["errors"]
    non200 = sum(n for s, n in fixed["statuses"].items() if s != "200")
    return non200, e.get("io", 0) + e.get("timeout", 0), e.get("reconnect", 0)


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    work = sys.argv[1]
    meta = load(work, "meta.json")
    lat = load(work, "latency.json")
    out = []
    add = out.append
    verdicts = []
    # Swap times and failure counts are not comparisons of paired runs: no stability verdict.
    goals = Goals("swap.sh", meta)
    add("# Tollgate hot-swap bench — %s" % meta["date"])
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
    add("- Pinning: Tollgate (1 worker) on CPU %s — its reload thread too; upstream (nginx `return 200`), "
        "load generators and the swap driver on CPU %s" % (meta["proxy_cpu"], meta["load_cpu"]))
    sizes = {}
    for r in lat["swaps"]:
        if r["kind"] == "cached":
            sizes[r["family"]] = r["bytes"]
    size = lambda fam: ("%.0f KB" % (sizes[fam] / 1024)) if fam in sizes else "?"
    add("- One route whose only plugin is the module file `marker.wasm`: tp-headers (%s; answers carry "
        "`x-tp-response`) or tp-metrics (%s; `x-tp-requests`); the file is rewritten in place "
        "(open, truncate, write, close). Compile cache: an empty folder at the start of the run."
        % (size("A"), size("B")))
    add("")

    # --- (a)
    add("## (a) From the close of the file to the first answer of the new version")
    add("")
    add("No load; a client sends `GET /` every %.0f ms on a keep-alive connection and stops at the "
        "first answer with the new module's header. **Cold**: a module never loaded (the first "
        "load of tp-metrics, then copies with a random custom section appended, so a new hash): "
        "compiled by Cranelift. **Cached**: swapping back to the exact bytes of a version loaded "
        "before, which comes from the compile cache. Each swap waits for the previous one to be "
        "live, plus 0.3 s. *Build* is the reload thread's own time (parse, compile or load, canary "
        "VM, swap), from the gateway's log; the rest is the watcher's debounce (50 ms of quiet) "
        "and the polling." % lat["poll_ms"])
    add("")
    times = reload_times(os.path.join(work, "reload-a.txt"))
    add("| swaps | n | median | max | min | build median | build max | goal | |")
    add("|---|---:|---:|---:|---:|---:|---:|---:|:-:|")
    for kind, goal_ms in (("cold", 1000), ("cached", 100)):
        s = lat[kind]
        recs = [r for r in lat["swaps"] if r["kind"] == kind]
        builds = [times.get(r.get("generation")) for r in recs]
        builds = [b for b in builds if b is not None]
        missing = sum(1 for r in recs if r["ms"] is None)
        ok = None if s["max"] is None else (s["max"] <= goal_ms and missing == 0)
        verdicts.append(ok)
        goals.add("a %s swap serves within %s of the close (every swap)" % (kind, "1 s" if goal_ms == 1000 else "100 ms"),
                  "max %s" % fmt_ms(s["max"]), ok,
                  "–" if s["max"] is None else "%s–%s over %d swaps" % (fmt_ms(s["min"]), fmt_ms(s["max"]), s["n"]))
        add("| %s | %d%s | %s | %s | %s | %s | %s | every swap ≤ %s | %s |" % (
            kind, s["n"], " (+%d timed out)" % missing if missing else "", fmt_ms(s["median"]),
            fmt_ms(s["max"]), fmt_ms(s["min"]),
            fmt_ms(statistics.median(builds)) if builds else "–", fmt_ms(max(builds)) if builds else "–",
            "1 s" if goal_ms == 1000 else "100 ms", mark(ok)))
    add("")
    for kind in ("cold", "cached"):
        add("- %s, each swap (ms): %s" % (kind, ", ".join(
            "–" if r["ms"] is None else "%.0f" % r["ms"] for r in lat["swaps"] if r["kind"] == kind)))
    odd = [r for r in lat["swaps"] if r["generations"] != 1 or r["reload_failures"]]
    if odd:
        add("- **%d swap(s) did not make exactly one new generation or had a failed reload**: %s"
            % (len(odd), "; ".join("%s→%s: %d generation(s), %d failure(s) %s" % (
                r["kind"], r["family"], r["generations"], r["reload_failures"], r["reload_error"] or "")
                for r in odd)))
    if lat["poll_errors"] or any(s != "200" for s in lat["poll_statuses"]):
        add("- **the polling client saw %d transport errors and these statuses: %s**"
            % (lat["poll_errors"], lat["poll_statuses"]))
    add("")

    # --- (b)
    add("## (b) %d swaps under load" % meta["swaps"])
    add("")
    steady_runs = wrk_runs(work, "steady")
    steady_rps = median([r["rps"] for r in steady_runs])
    wrk_sw = parse_wrk(os.path.join(work, "wrk-swaps.txt"))
    fs, fw = load(work, "fixed-steady.json"), load(work, "fixed-swaps.json")
    cf, cw = load(work, "churn-fixed.json"), load(work, "churn-wrk.json")
    if meta["wait_live"] in (1, "1"):
        pacing = ("one write every %s s at the soonest, and never before the previous swap is live "
                  "(the admin API's generation went up; polled every 5 ms)" % meta["interval"])
    else:
        pacing = "one write every %s s, without waiting for the previous swap" % meta["interval"]
    add("The module file alternates between the exact tp-headers and tp-metrics bytes (both in "
        "the compile cache): %s. The steady-state maximum with this route is %s requests/s "
        "(wrk, median of %d); the fixed rate is %s of it, %s requests/s, for %s s (+1 s warm-up), "
        "the same length with and without swaps; then wrk runs as long with swaps."
        % (pacing, fmt_rps(steady_rps), len(steady_runs), meta["half_load"], fmt_rps(meta["rate"]),
           meta["swap_seconds"]))
    add("")
    add("| run | swaps written | live | reload failures | swapping for | requests | achieved req/s | p50 | p99 | max | non-200 | transport errors | reconnects |")
    add("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, f, c in (("fixed rate, no swaps", fs, None), ("fixed rate, with swaps", fw, cf)):
        non200, transport, reconnects = failed(f)
        l = f["latency_us"]
        add("| %s | %s | %s | %s | %s | %d | %s | %s | %s | %s | %d | %d | %d |" % (
            label, c["writes"] if c else "–", c["generations"] if c else "–",
            c["reload_failures"] if c else "–", ("%.1f s" % c["seconds"]) if c else "–", f["requests"],
            fmt_rps(f["achieved_rate"]), fmt_us(l["p50"]), fmt_us(l["p99"]), fmt_us(l["max"]),
            non200, transport, reconnects))
    add("| wrk, no swaps (median) | – | – | – | – | – | %s | %s | %s | – | %d (non-2xx + socket errors) | | |" % (
        fmt_rps(steady_rps), fmt_us(median([r.get("p50") for r in steady_runs])),
        fmt_us(median([r.get("p99") for r in steady_runs])), sum(r["errors"] for r in steady_runs)))
    add("| wrk, with swaps | %d | %d | %d | %.1f s | – | %s | %s | %s | – | %d (non-2xx + socket errors) | | |" % (
        cw["writes"], cw["generations"], cw["reload_failures"], cw["seconds"], fmt_rps(wrk_sw["rps"]),
        fmt_us(wrk_sw.get("p50")), fmt_us(wrk_sw.get("p99")), wrk_sw["errors"]))
    add("")
    add("| figure | measured | goal | |")
    add("|---|---:|---:|:-:|")
    non200, transport, _ = failed(fw)
    fails = non200 + transport
    ok = fails == 0 and cf["generations"] >= meta["swaps"]
    verdicts.append(ok)
    goals.add("%d swaps at half load: 0 failed requests, every swap live" % meta["swaps"],
              "%d failed, %d live" % (fails, cf["generations"]), ok)
    add("| failed requests during %d swaps at half load | %d (%d swaps live) | 0, with %d swaps live | %s |"
        % (meta["swaps"], fails, cf["generations"], meta["swaps"], mark(ok)))
    ok = wrk_sw["errors"] == 0
    add("| failed requests during swaps at full load (wrk) | %d (%d swaps live) | 0 | %s |"
        % (wrk_sw["errors"], cw["generations"], mark(ok)))
    verdicts.append(ok)
    goals.add("swaps at full load (wrk): 0 failed requests", "%d failed, %d live" % (wrk_sw["errors"], cw["generations"]), ok)
    r = fw["achieved_rate"] / fs["achieved_rate"] if fs["achieved_rate"] else None
    add("| throughput at half load, with / without swaps | %s | – | |" % ("–" if r is None else "%.3f×" % r))
    r = wrk_sw["rps"] / steady_rps if steady_rps else None
    add("| maximum throughput, with / without swaps (wrk) | %s | – | |" % ("–" if r is None else "%.2f×" % r))
    add("")
    notes = []
    for label, c in (("fixed rate", cf), ("wrk", cw)):
        if c["writes"] < meta["swaps"]:
            notes.append("%s: only %d of %d swaps were written before the load generator's end" % (
                label, c["writes"], meta["swaps"]))
        if c["generations"] < c["writes"]:
            notes.append("%s: %d writes made %d new generations: writes closer together than the "
                         "watcher's debounce (150 ms of quiet) are applied together, as one swap"
                         % (label, c["writes"], c["generations"]))
        if c["reload_failures"]:
            notes.append("**%s: %d reloads failed; last error: %s**" % (label, c["reload_failures"], c["reload_error"]))
        if c["live"]["n"]:
            notes.append("%s: time from write to live (admin API) median %s, max %s; mean %s between writes"
                         % (label, fmt_ms(c["live"]["median"]), fmt_ms(c["live"]["max"]), fmt_ms(c["mean_interval_ms"])))
    b_times = list(reload_times(os.path.join(work, "reload-b.txt")).values())
    if b_times:
        notes.append("reload thread's build time under load: median %s, max %s (%d reloads)"
                     % (fmt_ms(statistics.median(b_times)), fmt_ms(max(b_times)), len(b_times)))
    if fw["achieved_rate"] < 0.97 * meta["rate"]:
        notes.append("the fixed rate was not sustained during the swaps (%s of %s req/s)"
                     % (fmt_rps(fw["achieved_rate"]), fmt_rps(meta["rate"])))
    if notes:
        add("Notes:")
        add("")
        for n in notes:
            add("- " + n)
        add("")
    print("\n".join(out))
    goals.write(os.path.join(goals_dir(), "swap.json"))
    sys.exit(3 if any(v is False for v in verdicts) else 0)


if __name__ == "__main__":
    main()
