#!/usr/bin/env python3
"""Goal figures of the benches: per-pair ratios, their spread, stability, and the goals table.

Every comparison in the benches comes from alternating runs in one session (A, B, A, B, ...):
run i of A and run i of B form a pair, and a ratio is the median of the per-pair ratios, shown
with their spread (min–max). A figure is *stable* when (max − min) / median of its per-pair
ratios is at most 10 %; a wider spread means the machine, not the software, moved the figure.

Each report script records its goal figures with `Goals` and writes them to
bench/results/goals/NAME.json; `goals.py` (the last step of `just bench`) gathers every such
file into the table at the end of bench/results/latest.md. Another bench joins the table by
writing a file of the same shape there (`Goals.write`).

    goals.py [REPORT] [GOALS-DIR]   append the goals table to REPORT (default
                                    bench/results/latest.md), replacing an earlier one; exit 3
                                    when BENCH_STRICT=1 and a goal is missed or unstable
"""

import glob
import json
import os
import statistics
import sys

# (max - min) / median of the per-pair ratios above this: the figure is unstable.
STABLE_SPREAD = 0.10
# Hypervisor steal (% of the CPU time) in any measured run above this: the report says so.
STEAL_WARN = 5.0
TABLE_HEADING = "## Goals (every bench of this session)"
# bench/memory.sh (memory of plugin VMs) writes this report; when present, it becomes a section
# of latest.md, before the goals table.
MEMORY_REPORT = "bench/results/memory.md"
MEMORY_HEADING = "## Plugin VM memory (`bench/memory.sh`)"


def pair_ratios(a_runs, b_runs):
    """Per-pair ratios a[i] / b[i] of two lists of per-run values (None where a run is missing)."""
    return [a / b for a, b in zip(a_runs, b_runs) if a is not None and b not in (None, 0)]


def spread(values):
    """(max - min) / median of positive values, or None with fewer than two."""
    if len(values) < 2:
        return None
    mid = statistics.median(values)
    return (max(values) - min(values)) / mid if mid else None


def stable(values):
    """True/False when there are at least two pairs, None when stability cannot be judged."""
    s = spread(values)
    return None if s is None else s <= STABLE_SPREAD


def fmt_spread(values, fmt):
    if not values:
        return "–"
    if len(values) == 1:
        return "%s (1 pair)" % fmt(values[0])
    text = "%s–%s" % (fmt(min(values)), fmt(max(values)))
    s = spread(values)
    return text if s is None else "%s (%.0f %%)" % (text, 100 * s)


def steal_lines(meta):
    """The report's line on the hypervisor's steal over the measured runs (bench/common.sh),
    none when the bench recorded none."""
    st = meta.get("steal")
    if not st:
        return []
    line = ("- Hypervisor steal over the %d measured runs: median %.1f %%, max %.1f %% of the "
            "machine's CPU time (`/proc/stat`)" % (st["runs"], st["median"], st["max"]))
    if st["max"] > STEAL_WARN:
        line += ("; **the host gave this machine's CPU time to others while it measured, which "
                 "moves throughput and latency: compare ratios within this report only**")
    return [line]


def fmt_x(v):
    return "%.2f×" % v


def yes_no(v):
    return "–" if v is None else ("yes" if v else "**no**")


class Goals:
    """The goal figures of one bench script, in the order they are added."""

    def __init__(self, source, meta):
        self.source = source
        self.date = meta.get("date", "?")
        self.smoke = meta.get("smoke", "")
        self.busy = "%s of %s runs" % (meta["busy_runs"], meta["total_runs"]) if meta.get("busy_runs") else ""
        steal = meta.get("steal") or {}
        self.steal = "up to %.1f %%" % steal["max"] if steal.get("max", 0) > STEAL_WARN else ""
        self.rows = []

    def add(self, goal, measured, met, spread_text="–", is_stable=None):
        """A goal figure; is_stable None means not a comparison of paired runs (or one pair)."""
        self.rows.append({"goal": goal, "measured": measured, "spread": spread_text,
                          "stable": is_stable, "met": met})
        return met

    def ratio(self, goal, ratios, at_least=None, at_most=None, fmt=fmt_x):
        """A goal judged on the median of per-pair ratios (limit: at_least or at_most)."""
        if not ratios:
            return self.add(goal, "–", None)
        mid = statistics.median(ratios)
        met = mid >= at_least if at_least is not None else mid <= at_most
        return self.add(goal, fmt(mid), met, fmt_spread(ratios, fmt), stable(ratios))

    def difference(self, goal, a_runs, b_runs, at_most, fmt):
        """A goal judged on the median of per-pair differences a[i] - b[i] (an added latency).
        A difference near zero has no meaningful relative spread, so stability is judged on
        the per-pair ratios a[i] / b[i] of the same runs."""
        diffs = [a - b for a, b in zip(a_runs, b_runs) if a is not None and b is not None]
        if not diffs:
            return self.add(goal, "–", None)
        mid = statistics.median(diffs)
        text = fmt(diffs[0]) + " (1 pair)" if len(diffs) == 1 else "%s to %s" % (fmt(min(diffs)), fmt(max(diffs)))
        ratios = pair_ratios(a_runs, b_runs)
        if len(ratios) > 1:
            text += " (ratios %.0f %%)" % (100 * spread(ratios))
        return self.add(goal, fmt(mid), mid <= at_most, text, stable(ratios))

    def failed(self):
        """Missed goals, and (BENCH_STRICT=1) goals whose figure is unstable."""
        strict = os.environ.get("BENCH_STRICT", "0") == "1"
        return any(r["met"] is False or (strict and r["stable"] is False) for r in self.rows)

    def markdown(self):
        """The bench's own goals table (one line per goal)."""
        lines = ["| goal | measured | spread of the pairs | stable | met |", "|---|---:|---:|:-:|:-:|"]
        for r in self.rows:
            lines.append("| %s | %s | %s | %s | %s |" % (r["goal"], r["measured"], r["spread"],
                                                         yes_no(r["stable"]), yes_no(r["met"])))
        return lines

    def write(self, path):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "w") as f:
            json.dump({"source": self.source, "date": self.date, "smoke": self.smoke,
                       "busy": self.busy, "steal": self.steal, "goals": self.rows}, f, indent=1,
                      ensure_ascii=False)
            f.write("\n")


def goals_dir():
    return os.environ.get("BENCH_GOALS_DIR", "bench/results/goals")


# Sources in the order of `just bench`; any other file comes after them, by name.
ORDER = ["run.sh", "tls.sh", "idle.sh", "plugins.sh", "swap.sh", "memory.sh"]


def summary(report, directory):
    sources = []
    for path in glob.glob(os.path.join(directory, "*.json")):
        with open(path) as f:
            sources.append(json.load(f))
    sources.sort(key=lambda s: (ORDER.index(s["source"]) if s["source"] in ORDER else len(ORDER), s["source"]))
    lines = [TABLE_HEADING, ""]
    lines.append("Every goal of bench/README.md (\"The goals\"), from the last run of each bench. A ratio "
                 "is the median of the per-pair ratios of alternating runs; the spread is their "
                 "min–max and (max − min) / median; *stable* means that is at most %.0f %%. "
                 "`BENCH_STRICT=1` fails an unstable goal figure like a missed goal."
                 % (100 * STABLE_SPREAD))
    lines.append("")
    lines.append("| goal | measured | spread of the pairs | stable | met | bench |")
    lines.append("|---|---:|---:|:-:|:-:|---|")
    failed, origins = [], []
    for s in sources:
        origin = "`%s` %s" % (s["source"], s["date"])
        if s.get("smoke"):
            origin += ", **smoke run** (%s)" % s["smoke"]
        if s.get("busy"):
            origin += ", **busy machine** (%s)" % s["busy"]
        if s.get("steal"):
            origin += ", **hypervisor steal** %s" % s["steal"]
        origins.append(origin)
        for r in s["goals"]:
            lines.append("| %s | %s | %s | %s | %s | `%s` |" % (r["goal"], r["measured"], r["spread"],
                                                              yes_no(r["stable"]), yes_no(r["met"]), s["source"]))
            if r["met"] is False:
                failed.append("missed: %s (%s)" % (r["goal"], s["source"]))
            elif r["stable"] is False:
                failed.append("unstable: %s (%s)" % (r["goal"], s["source"]))
    if not sources:
        lines.append("| no bench has written its goals to %s yet | | | | | |" % directory)
    lines.append("")
    if origins:
        lines.append("Runs: %s." % "; ".join(origins))
        lines.append("")
    if failed:
        lines.append("Missed or unstable: %s." % "; ".join(failed))
        lines.append("")

    memory = []
    memory_report = os.environ.get("BENCH_MEMORY_REPORT", MEMORY_REPORT)
    if os.path.exists(memory_report):
        with open(memory_report) as f:
            # Its headings go one level down, under this section's.
            body = ["#" + line if line.startswith("#") else line for line in f.read().strip().splitlines()]
        memory = [MEMORY_HEADING, "", "From `%s`:" % memory_report, ""] + body + [""]

    text = ""
    if os.path.exists(report):
        with open(report) as f:
            text = f.read()
        cuts = [i for i in (text.find(MEMORY_HEADING), text.find(TABLE_HEADING)) if i >= 0]
        if cuts:
            text = text[:min(cuts)]
        text = text.rstrip("\n") + "\n\n"
    with open(report, "w") as f:
        f.write(text + "\n".join(memory + lines) + "\n")
    print("\n".join(lines))
    strict = os.environ.get("BENCH_STRICT", "0") == "1"
    missed = any(r["met"] is False or (strict and r["stable"] is False) for s in sources for r in s["goals"])
    return 3 if missed else 0


def main():
    args = sys.argv[1:]
    if len(args) > 2 or (args and args[0].startswith("-")):
        sys.exit(__doc__)
    report = args[0] if args else os.environ.get("BENCH_OUT", "bench/results/latest.md")
    directory = args[1] if len(args) > 1 else goals_dir()
    status = summary(report, directory)
    if status and os.environ.get("BENCH_STRICT", "0") == "1":
        sys.exit(status)


if __name__ == "__main__":
    main()
