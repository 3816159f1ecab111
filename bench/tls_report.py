#!/usr/bin/env python3
"""Reads the raw results of bench/tls.sh and prints them as a Markdown report.

    tls_report.py WORKDIR

WORKDIR holds FIGURE-TARGET-N.txt (the load generator's output: `openssl s_time` for
handshake, wrk for tls, h2load for h2 and h2c), FIGURE-TARGET-N.txt.cpu (wall time and the
proxy's CPU time during the run) and meta.json. Ratios are medians of per-pair ratios
(bench/goals.py); the goal figures also go to bench/results/goals/tls.json. Exit status 3
when a goal was measured and missed (or, BENCH_STRICT=1, is unstable).
"""

import json
import os
import re
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from goals import Goals, fmt_spread, fmt_x, goals_dir, pair_ratios, stable, steal_lines, yes_no  # noqa: E402
from report import fmt_rps, fmt_us, parse_wrk, run_files  # noqa: E402

TARGETS = ("nginx", "tollgate")
LABELS = {
    "handshake": "new TLS connections (full handshake + 1 request)",
    "tls": "HTTP/1.1 over TLS, keep-alive",
    "h2": "HTTP/2 over TLS (ALPN h2)",
    "h2c": "HTTP/2 over plain TCP (h2c)",
}
GOALS = {
    "handshake": "TLS: new handshakes per second of proxy CPU ≥ 1.0 × nginx",
    "tls": "TLS: keep-alive throughput ≥ 1.0 × nginx",
    "h2": "h2 (TLS, ALPN): throughput ≥ 1.0 × nginx",
    "h2c": "h2c: throughput ≥ 1.0 × nginx",
}


def parse_s_time(text):
    """Connections made by every `openssl s_time` process in the output, and failures."""
    done = sum(int(n) for n in re.findall(r"^(\d+) connections in \d+ real seconds", text, re.M))
    failed = len(re.findall(r"(?i)^.*(error|unable to connect).*$", text, re.M))
    return {"ops": done, "errors": failed}


def parse_h2load(text, path):
    m = re.search(r"^finished in [0-9.]+\w*, ([0-9.]+) req/s", text, re.M)
    if not m:
        raise ValueError("%s: no 'finished in' line (did h2load fail?)\n%s" % (path, text))
    out = {"rps": float(m.group(1))}
    m = re.search(r"^requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout",
                  text, re.M)
    out["ops"] = int(m.group(2)) if m else None
    out["errors"] = sum(int(x) for x in m.groups()[2:]) if m else 0
    m = re.search(r"^status codes: (\d+) 2xx", text, re.M)
    if m and out["ops"] is not None:
        out["errors"] += out["ops"] - int(m.group(1))
    return out


def parse(figure, path):
    with open(path) as f:
        text = f.read()
    with open(path + ".cpu") as f:
        cpu = json.load(f)
    if figure == "handshake":
        out = parse_s_time(text)
        out["rps"] = out["ops"] / cpu["wall_s"] if cpu["wall_s"] else None
    elif figure == "tls":
        out = parse_wrk(path)
        m = re.search(r"^\s+(\d+) requests in", text, re.M)
        out["ops"] = int(m.group(1)) if m else None
    else:
        out = parse_h2load(text, path)
    out["cpu_s"] = cpu["proxy_cpu_s"]
    out["cpu_share"] = cpu["proxy_cpu_s"] / cpu["wall_s"] if cpu["wall_s"] else None
    out["cpu_us_per_op"] = 1e6 * cpu["proxy_cpu_s"] / out["ops"] if out.get("ops") else None
    return out


def med(runs, key):
    values = [r.get(key) for r in runs if r.get(key) is not None]
    return statistics.median(values) if values else None


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    work = sys.argv[1]
    with open(os.path.join(work, "meta.json")) as f:
        meta = json.load(f)
    figures = meta["figures"].split()
    out = []
    add = out.append
    add("# Tollgate TLS and HTTP/2 bench — %s" % meta["date"])
    add("")
    if meta.get("smoke"):
        add("**Smoke run (%s) — not representative; use `just bench` with the defaults for figures.**" % meta["smoke"])
        add("")
    if meta.get("busy_runs"):
        add("**%d of %d runs started while other processes kept the machine busy: the throughput "
            "figures are not reliable (the CPU per request is less affected).**" % (meta["busy_runs"], meta["total_runs"]))
        add("")
    add("- Machine: %s, %s CPUs, Linux %s" % (meta["cpu"], meta["cpus"], meta["kernel"]))
    for line in steal_lines(meta):
        add(line)
    add("- Versions: Tollgate %s (%s), %s, %s, %s, %s, Python %s" % (
        meta["tollgate_rev"], meta["profile"], meta["nginx"], meta["wrk"], meta["h2load"], meta["openssl"], meta["python"]))
    add("- Pinning: proxy (nginx or Tollgate, 1 worker, both running) on CPU %s; upstream (nginx `return 200`) "
        "and the load generators on CPU %s" % (meta["proxy_cpu"], meta["load_cpu"]))
    add("- The same certificate for both (ECDSA P-256, from `demo-backend certs`); negotiated with the "
        "load generators' OpenSSL: nginx %s; Tollgate %s" % (meta["negotiated_nginx"] or "?", meta["negotiated_tollgate"] or "?"))
    add("- %s runs of %ss per figure, alternating nginx and Tollgate. New connections: %s parallel `openssl "
        "s_time -new` (never resumes a session; each connection is a full handshake, `GET / HTTP/1.0`, "
        "close). Keep-alive TLS: `wrk -t1 -c%s`. HTTP/2: `h2load -t1 -c%s -m%s` (the same for h2 and h2c)."
        % (meta["runs"], meta["duration"], meta["tls_clients"], meta["connections"], meta["h2_clients"], meta["h2_streams"]))
    add("")
    add("*CPU per op* is the proxy's own CPU time (user + system, from /proc) divided by the handshakes "
        "or requests it served: the cost on its core, which a saturated load generator or a busy "
        "machine distorts far less than the rate. *Proxy CPU* is the share of its core the proxy "
        "used: below ~95 % the load generator, not the proxy, set the rate, and the rate ratio "
        "understates the difference; the new-connection goal is therefore judged on handshakes per "
        "second of proxy CPU (1 / CPU per handshake).")
    add("")
    add("| figure | target | rate (/s) | CPU per op | proxy CPU | p50 | p99 | errors |")
    add("|---|---|---:|---:|---:|---:|---:|---:|")
    runs = {}
    for figure in figures:
        for t in TARGETS:
            rs = [parse(figure, p) for p in run_files(work, figure, t, "txt")]
            runs[(figure, t)] = rs
            if not rs:
                continue
            share = med(rs, "cpu_share")
            add("| %s | %s | %s | %s | %s | %s | %s | %d |" % (
                LABELS[figure], t, fmt_rps(med(rs, "rps")), fmt_us(med(rs, "cpu_us_per_op")),
                "–" if share is None else "%.0f %%" % (100 * share), fmt_us(med(rs, "p50")),
                fmt_us(med(rs, "p99")), sum(r.get("errors", 0) for r in rs)))
    add("")

    goals = Goals("tls.sh", meta)
    add("## Tollgate / nginx")
    add("")
    add("| figure | rate ratio | spread | stable | CPU per op ratio (nginx / Tollgate) | spread | stable |")
    add("|---|---:|---:|:-:|---:|---:|:-:|")
    for figure in figures:
        t, n = runs[(figure, "tollgate")], runs[(figure, "nginx")]
        rate = pair_ratios([r.get("rps") for r in t], [r.get("rps") for r in n])
        # nginx's CPU per op over Tollgate's: above 1.00× Tollgate does the same work for less
        cpu = pair_ratios([r.get("cpu_us_per_op") for r in n], [r.get("cpu_us_per_op") for r in t])
        add("| %s | %s | %s | %s | %s | %s | %s |" % (
            LABELS[figure], fmt_x(statistics.median(rate)) if rate else "–", fmt_spread(rate, fmt_x),
            yes_no(stable(rate)), fmt_x(statistics.median(cpu)) if cpu else "–", fmt_spread(cpu, fmt_x),
            yes_no(stable(cpu))))
        goals.ratio(GOALS[figure], cpu if figure == "handshake" else rate, at_least=1.0)
    add("")
    add("## Goals")
    add("")
    out.extend(goals.markdown())
    add("")

    notes = []
    for (figure, t), rs in runs.items():
        errors = sum(r.get("errors", 0) for r in rs)
        if errors:
            notes.append("%s, %s: %d errors (failed connections, non-2xx answers or socket errors)" % (LABELS[figure], t, errors))
        share = med(rs, "cpu_share")
        if figure != "handshake" and share is not None and share < 0.9:
            notes.append("%s, %s: the proxy used %.0f %% of its core: the load side was the limit"
                         % (LABELS[figure], t, 100 * share))
    if notes:
        add("Notes:")
        add("")
        for n in notes:
            add("- " + n)
        add("")
    print("\n".join(out))
    goals.write(os.path.join(goals_dir(), "tls.json"))
    sys.exit(3 if goals.failed() else 0)


if __name__ == "__main__":
    main()
