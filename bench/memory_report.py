#!/usr/bin/env python3
"""The figures of bench/memory.sh from its runs: medians, per-pair ratios, the goal figures.

Each argument RUNS is one measured quantity of a configuration, its runs' values in KiB
separated by spaces, one per pair of runs (run i of 0 plugins and run i of 3 plugins form
pair i, as in every bench: goals.py).

    memory_report.py rows W:RSS0:RSS3:DIRTY0:DIRTY3:PSS3 ...
        the report's table rows, one per worker count W (3 × W plugin VMs), each figure the
        median of its runs and "3 plugins / 0" the median of the per-pair ratios
    memory_report.py pairs RSS0 RSS3
        a sentence on the per-pair ratios of the goals' worker count
    memory_report.py median-pair RSS0 RSS3
        the number (from 1) of the pair whose ratio is the median (the lower middle one of an
        even count): the pair whose mappings the report breaks down
    memory_report.py goals W RSS0 RSS3
        writes the goal figures (GOALS-DIR/memory.json); exit 3 when a goal is missed
"""

import os
import statistics
import sys
import time

from goals import Goals, fmt_spread, goals_dir, pair_ratios, stable


def runs(text):
    return [int(v) for v in text.split()]


def per_vm(base, chain, workers):
    """MiB per plugin VM of each pair: what the 3 plugins add, over their 3 × workers VMs."""
    return [(c - b) / (3 * workers) / 1024 for b, c in zip(base, chain)]


def rows(specs):
    for spec in specs:
        w, r0, r3, d0, d3, p3 = spec.split(":")
        w = int(w)
        r0, r3, d0, d3, p3 = runs(r0), runs(r3), runs(d0), runs(d3), runs(p3)
        print("| %d | %.1f MiB | %.1f MiB | %.2f | %.2f MiB | %.2f MiB | %.1f MiB |" % (
            w, statistics.median(r0) / 1024, statistics.median(r3) / 1024,
            statistics.median(pair_ratios(r3, r0)),
            statistics.median(per_vm(r0, r3, w)),
            statistics.median(per_vm(d0, d3, w)),
            statistics.median(p3) / 1024))


def pairs(r0, r3):
    ratios = pair_ratios(runs(r3), runs(r0))
    if len(ratios) < 2:
        return "One pair of runs."
    return ("%d pairs of runs, alternating; their ratios (3 plugins / 0) %s, %s." % (
        len(ratios), fmt_spread(ratios, lambda v: "%.2f" % v),
        "stable" if stable(ratios) else "**unstable** (spread above 10 %)"))


def median_pair(r0, r3):
    ratios = pair_ratios(runs(r3), runs(r0))
    order = sorted(range(len(ratios)), key=lambda i: ratios[i])
    return order[(len(order) - 1) // 2] + 1


def goals(workers, r0, r3):
    workers, r0, r3 = int(workers), runs(r0), runs(r3)
    g = Goals("memory.sh", {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())})
    g.ratio("a gateway with 3 plugins is resident in ≤ 1.3 × the 0-plugin one (%d workers)" % workers,
            pair_ratios(r3, r0), at_most=1.3, fmt=lambda v: "%.2f" % v)
    vm = per_vm(r0, r3, workers)
    mid = statistics.median(vm)
    # MiB per VM is a difference, near zero when plugins cost little: its spread is told as
    # the range, and its stability judged with the ratios above.
    g.add("≤ 2 MiB per plugin VM (%d workers)" % workers, "%.2f MiB" % mid, mid <= 2.0,
          "%.2f–%.2f MiB" % (min(vm), max(vm)) if len(vm) > 1 else "–")
    g.write(os.path.join(goals_dir(), "memory.json"))
    return 3 if g.failed() else 0


def main(argv):
    command, args = argv[1], argv[2:]
    if command == "rows":
        rows(args)
    elif command == "pairs":
        print(pairs(*args))
    elif command == "median-pair":
        print(median_pair(*args))
    elif command == "goals":
        return goals(*args)
    else:
        sys.exit("memory_report.py: unknown command %r" % command)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
