#!/usr/bin/env python3
"""Reads the raw results of bench/plugins.sh and prints them as a Markdown report.

    plugins_report.py WORKDIR

WORKDIR holds wrk-CONFIG-N.txt (wrk --latency output), fixed-CONFIG-N.json (tollgate-loadgen
output) and meta.json (written by plugins.sh). Each figure is the median over the runs,
taken per figure; added latencies are differences of those medians. Exit status 3 when a
goal was measured and missed.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from goals import Goals, fmt_spread, fmt_x, goals_dir, pair_ratios, stable, steal_lines, yes_no  # noqa: E402
from report import cpu_per_request, fixed_per_run, fixed_runs, fmt_ratio, fmt_rps, fmt_us, median, per_run, wrk_runs  # noqa: E402

LABELS = {
    "base": "0 plugins",
    "one": "transformer adding one response header",
    "header": "1 header plugin (tp-headers)",
    "chain": "3-plugin chain",
    "heavy": "header-heavy (tp-header-heavy)",
    "noepoch": "3-plugin chain, epoch interruption off",
    "jwt": "jwt-auth (HS256 token)",
    "limit": "rate-limit, local (shared data)",
    "global": "rate-limit, global (tollgate ratelimit + Redis on loopback)",
}


def sub(a, b):
    return None if a is None or b is None else a - b


def fmt_added(v):
    if v is None:
        return "–"
    return ("+" if v >= 0 else "−") + fmt_us(abs(v))


def fmt_cpu(v):
    return "–" if v is None else "%.1f µs" % v


def signed_us(v):
    return ("+" if v >= 0 else "−") + "%.1f µs" % abs(v)


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    work = sys.argv[1]
    import json

    with open(os.path.join(work, "meta.json")) as f:
        meta = json.load(f)
    configs = meta["configs"]
    out = []
    add = out.append
    add("# Tollgate plugin bench — %s" % meta["date"])
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
    add("- Pinning: Tollgate (1 worker, `TOLLGATE_LOG=warn`) on CPU %s; upstream (nginx `return 200`), "
        "wrk and the fixed-rate generator on CPU %s" % (meta["proxy_cpu"], meta["load_cpu"]))
    add("- %s runs of %ss per figure (median), %s keep-alive connections, `GET /` with an "
        "`x-api-key` header (same request for every configuration), answered `ok`"
        % (meta["runs"], meta["duration"], meta["connections"]))
    add("- 3-plugin chain: %s" % meta["chain_label"])
    add("")

    wrk, fixed = {}, {}
    add("## Maximum throughput (closed loop: `wrk -t1 -c%s -d%ss --latency`) and latency at half load"
        % (meta["connections"], meta["duration"]))
    add("")
    add("Fixed rate: %s requests/s = %s of the 0-plugin maximum (`bench/loadgen`, latency from "
        "each request's scheduled time). wrk's latencies are those of a saturated server, for "
        "reference only." % (fmt_rps(meta["rate"]), meta["half_load"]))
    add("")
    add("| configuration | requests/s | vs 0 plugins | wrk p50 | wrk p90 | wrk p99 | fixed-rate achieved | fixed p50 | fixed p99 | fixed p99.9 | errors |")
    add("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for c in configs:
        runs = wrk_runs(work, c)
        w = {k: median([r.get(k) for r in runs]) for k in ("rps", "p50", "p90", "p99")} if runs else {}
        w["errors"] = sum(r["errors"] for r in runs)
        wrk[c] = w
        fr = fixed_runs(work, c)
        f = {}
        if fr:
            f = {k: median([r["latency_us"][k] for r in fr]) for k in ("p50", "p90", "p99", "p99.9", "max")}
            f["rate"] = median([r["achieved_rate"] for r in fr])
            f["lag99"] = median([r["send_lag_us"]["p99"] for r in fr])
            f["errors"] = sum(sum(r["errors"].values()) - r["errors"].get("reconnect", 0) for r in fr)
            f["non200"] = sum(n for r in fr for s, n in r["statuses"].items() if s != "200")
        fixed[c] = f
        base_rps = wrk.get("base", {}).get("rps")
        rel = "%.2f×" % (w["rps"] / base_rps) if w.get("rps") and base_rps else "–"
        add("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %d |" % (
            LABELS[c], fmt_rps(w.get("rps")), rel, fmt_us(w.get("p50")), fmt_us(w.get("p90")),
            fmt_us(w.get("p99")), fmt_rps(f.get("rate")), fmt_us(f.get("p50")), fmt_us(f.get("p99")),
            fmt_us(f.get("p99.9")), w["errors"] + f.get("errors", 0) + f.get("non200", 0)))
    add("")

    cpu = {c: cpu_per_request(work, c) for c in configs}
    if any(cpu.values()):
        add("## Where a request's CPU goes (the gateway, closed loop)")
        add("")
        add("The gateway's CPU time over each closed-loop run (`/proc/PID/stat`, user space and "
            "kernel apart) divided by the requests wrk completed; median of the runs. The kernel's "
            "part is the sockets' work, and also waking the upstream and wrk on the other CPU "
            "whenever they sleep: the slower the gateway, the more often they do, so a plugin's "
            "added time is partly kernel time (bench/README.md, \"Where a request's CPU goes: user space and kernel apart\").")
        add("")
        add("| configuration | CPU per request | user space | kernel | kernel share | busy | added: user space | added: kernel |")
        add("|---|---:|---:|---:|---:|---:|---:|---:|")
        base_cpu = cpu.get("base") or []
        b_user = median([r["user_us"] for r in base_cpu])
        b_kernel = median([r["kernel_us"] for r in base_cpu])
        for c in configs:
            runs = cpu[c]
            if not runs:
                continue
            m = {k: median([r[k] for r in runs]) for k in ("cpu_us", "user_us", "kernel_us", "busy")}
            share = m["kernel_us"] / m["cpu_us"] if m["cpu_us"] else None
            added = c != "base" and b_user is not None
            add("| %s | %.1f µs | %.1f µs | %.1f µs | %s | %s | %s | %s |" % (
                LABELS[c], m["cpu_us"], m["user_us"], m["kernel_us"],
                "–" if share is None else "%.0f %%" % (100 * share),
                "–" if m["busy"] is None else "%.0f %%" % (100 * m["busy"]),
                signed_us(m["user_us"] - b_user) if added else "–",
                signed_us(m["kernel_us"] - b_kernel) if added else "–"))
        add("")

    baselines = meta.get("baselines") or []
    if baselines:
        add("## This build / baseline (`TOLLGATE_BASELINE_BIN=%s`)" % meta.get("baseline", "?"))
        add("")
        add("Each configuration again with the baseline binary (an earlier build), the same "
            "policies on its own port, run right after the same configuration with this build in "
            "every closed-loop run: a ratio is the median of the per-pair ratios, what the changes "
            "since the baseline gained (above 1.00× for throughput, below for CPU per request) or cost.")
        add("")
        add("| configuration | requests/s, this build | baseline | ratio | spread of the pairs | stable "
            "| CPU per request, this build | baseline | ratio | spread of the pairs |")
        add("|---|---:|---:|---:|---:|:-:|---:|---:|---:|---:|")
        for c in baselines:
            was = c + ".baseline"
            this_rps, was_rps = per_run(wrk_runs(work, c), "rps"), per_run(wrk_runs(work, was), "rps")
            rps_ratios = pair_ratios(this_rps, was_rps)
            this_cpu = [r["cpu_us"] for r in cpu_per_request(work, c)]
            was_cpu = [r["cpu_us"] for r in cpu_per_request(work, was)]
            cpu_ratios = pair_ratios(this_cpu, was_cpu)
            add("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
                LABELS[c], fmt_rps(median(this_rps)), fmt_rps(median(was_rps)),
                fmt_ratio(median(rps_ratios)), fmt_spread(rps_ratios, fmt_x), yes_no(stable(rps_ratios)),
                fmt_cpu(median(this_cpu)), fmt_cpu(median(was_cpu)), fmt_ratio(median(cpu_ratios)),
                fmt_spread(cpu_ratios, fmt_x)))
        add("")

    add("## Goals (bench/README.md, \"The goals\")")
    add("")
    goals = Goals("plugins.sh", meta)
    b = wrk.get("base", {})
    fb, fch = fixed.get("base", {}), fixed.get("chain", {})
    raw = {c: (wrk_runs(work, c), fixed_runs(work, c)) for c in configs}

    def rps(c):
        return per_run(raw[c][0], "rps")

    def fixed_pct(c, pct):
        return fixed_per_run(raw[c][1], pct)

    if "chain" in configs:
        goals.ratio("chain / 0 plugins, throughput ≥ 0.85×", pair_ratios(rps("chain"), rps("base")), at_least=0.85)
        goals.difference("chain, added p50 at half load ≤ 30 µs", fixed_pct("chain", "p50"), fixed_pct("base", "p50"),
                         30, fmt_added)
        goals.difference("chain, added p99 at half load ≤ 100 µs", fixed_pct("chain", "p99"), fixed_pct("base", "p99"),
                         100, fmt_added)
    if "header" in configs:
        goals.ratio("one header plugin (tp-headers) / 0 plugins, throughput ≥ 0.92×",
                    pair_ratios(rps("header"), rps("base")), at_least=0.92)
    if "heavy" in configs:
        goals.difference("header-heavy, added p50 at half load ≤ 0.1 ms", fixed_pct("heavy", "p50"),
                         fixed_pct("base", "p50"), 100, fmt_added)
        goals.difference("header-heavy, added p99 at half load ≤ 0.1 ms", fixed_pct("heavy", "p99"),
                         fixed_pct("base", "p99"), 100, fmt_added)
    if "chain" in configs and "noepoch" in configs:
        # cost = 1 - (chain with epochs) / (chain without), per pair: at most 3 %
        ratios = pair_ratios(rps("chain"), rps("noepoch"))
        goals.ratio("epoch interruption on / off (chain), throughput ≥ 0.97× (cost ≤ 3 %)", ratios, at_least=0.97,
                    fmt=lambda v: "%.3f×" % v)
    if "limit" in configs and "global" in configs:
        goals.difference("global limit vs local, added p50 at half load ≤ 0.3 ms", fixed_pct("global", "p50"),
                         fixed_pct("limit", "p50"), 300, fmt_added)
    out.extend(goals.markdown())
    add("")
    add("Runs alternate between the configurations: run *i* of a configuration and run *i* of "
        "another form a pair. A ratio is the median of the per-pair ratios; an added latency is "
        "the median of the per-pair differences of the percentile at the same fixed rate (its "
        "stability is judged on the per-pair ratios of that percentile). The epoch cost is "
        "1 − (chain with epochs) / (chain without).")
    add("")

    notes = []
    if "jwt" in configs:
        fj = fixed.get("jwt", {})
        a50, a99 = sub(fj.get("p50"), fb.get("p50")), sub(fj.get("p99"), fb.get("p99"))
        notes.append("jwt-auth (HS256): added p50 %s, p99 %s at half load; throughput %s of 0 plugins"
                     % (fmt_added(a50), fmt_added(a99),
                        "–" if not (wrk.get("jwt", {}).get("rps") and b.get("rps"))
                        else "%.2f×" % (wrk["jwt"]["rps"] / b["rps"])))
    if "one" in configs:
        a50, a99 = sub(fixed["one"].get("p50"), fb.get("p50")), sub(fixed["one"].get("p99"), fb.get("p99"))
        paired = pair_ratios(rps("one"), rps("base"))
        notes.append("%s: throughput %s of 0 plugins (median of the paired runs' ratios), added p50 %s, "
                     "p99 %s at half load (for information)"
                     % (LABELS["one"], "–" if not paired else "%.2f×" % median(paired),
                        fmt_added(a50), fmt_added(a99)))
    if "header" in configs:
        a50, a99 = sub(fixed["header"].get("p50"), fb.get("p50")), sub(fixed["header"].get("p99"), fb.get("p99"))
        notes.append("one header plugin: added p50 %s, p99 %s at half load (for information)"
                     % (fmt_added(a50), fmt_added(a99)))
    if "limit" in configs and "global" in configs:
        fl, fg = fixed.get("limit", {}), fixed.get("global", {})
        paired = pair_ratios(rps("global"), rps("limit"))
        notes.append("global limit vs local, both at %s requests/s (half of the global one's maximum): "
                     "added p50 %s, p99 %s; throughput %s of local (median of the paired runs' ratios); "
                     "the service and Redis on CPU %s with %s priority"
                     % (fmt_rps(meta.get("limit_rate")), fmt_added(sub(fg.get("p50"), fl.get("p50"))), fmt_added(sub(fg.get("p99"), fl.get("p99"))),
                        "–" if not paired else "%.2f×" % median(paired),
                        meta.get("ratelimit_cpu", "?"), meta.get("ratelimit_priority", "fair")))
    if "noepoch" in configs:
        fne = fixed.get("noepoch", {})
        notes.append("chain at half load, epochs on vs off: p50 %s vs %s, p99 %s vs %s"
                     % (fmt_us(fch.get("p50")), fmt_us(fne.get("p50")), fmt_us(fch.get("p99")), fmt_us(fne.get("p99"))))
    rate = meta["rate"]
    for c, f in fixed.items():
        target = meta.get("limit_rate", rate) if c in ("limit", "global") else rate
        if f.get("rate") is not None and f["rate"] < 0.97 * target:
            notes.append("%s could not sustain the fixed rate (%s of %s req/s): its latencies include "
                         "the queue that built up" % (LABELS[c], fmt_rps(f["rate"]), fmt_rps(target)))
        elif f.get("lag99") is not None and f["lag99"] > 200:
            notes.append("%s: requests left up to %s (p99) after their scheduled time (generator or "
                         "every connection busy); that wait is part of the latencies" % (LABELS[c], fmt_us(f["lag99"])))
        if f.get("errors") or f.get("non200"):
            notes.append("%s: %d transport errors/timeouts and %d non-200 answers at the fixed rate"
                         % (LABELS[c], f.get("errors", 0), f.get("non200", 0)))
    for c, w in wrk.items():
        if w.get("errors"):
            notes.append("%s: %d errors under wrk (non-2xx/3xx or socket errors)" % (LABELS[c], w["errors"]))
    if notes:
        add("Notes:")
        add("")
        for n in notes:
            add("- " + n)
        add("")
    print("\n".join(out))
    goals.write(os.path.join(goals_dir(), "plugins.json"))
    sys.exit(3 if goals.failed() else 0)


if __name__ == "__main__":
    main()
