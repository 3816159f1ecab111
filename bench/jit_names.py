#!/usr/bin/env python3
"""Names the guest's code in a callgrind profile of the gateway.

Callgrind cannot name code compiled from wasm: it shows it as `???:0x…` functions. A gateway
started with `TOLLGATE_WASM_PROFILER=perfmap` writes `/tmp/perf-PID.map`, one line per
compiled guest function (start address and size in hex, then the name). This script puts the
two together and prints the guest functions by instructions per request, inclusive (the
function and what it calls, host calls included) and self (its own code only), with the
plugin module each belongs to.

    python3 bench/jit_names.py CALLGRIND-FILE PERF-MAP [--requests N] [--top N] [--layout]

`--layout` adds, per module, how much of its compiled code the profiled requests ran and over
how much of the code that code is spread: the 4 KiB pages it lies in and the 64 KiB windows
around them, the unit in which the kernel maps a file's cached pages into the gateway on a
fault (what the module's code adds to the gateway's RSS, see bench/README.md, "Memory").

`bench/glue.sh` with `GLUE_PERFMAP=1 GLUE_KEEP=DIR` keeps both files (`DIR/callgrind-new-chain.out.1`
and `DIR/perf-new-chain.map`); `--requests` is its `GLUE_REQUESTS`. See bench/README.md,
"Where the time goes".
"""

import argparse
import bisect
import re
import signal
import sys
from collections import defaultdict

# Crates whose names tell which plugin a compiled module is (the SDK's are in every module).
PLUGIN_CRATES = re.compile(r"\b(?!tollgate_sdk)([a-z][a-z0-9_]*)::(?:plugin|logic|config)::")
# What the engine adds after a module's own functions: trampolines in and out, builtins.
ENGINE_GLUE = re.compile(r"^(wasm\[\d+\]::|signatures\[\d+\]::|wasmtime_)")


def read_perf_map(path):
    """[(start, end, name, module)], sorted by start. A module's functions are contiguous and
    followed by what the engine adds (trampolines, builtins), so a function after those
    starts the next module; each module is named after the plugin crate most of its
    functions belong to."""
    entries = []
    for line in open(path, errors="replace"):
        parts = line.rstrip("\n").split(" ", 2)
        if len(parts) == 3:
            start, size = int(parts[0], 16), int(parts[1], 16)
            entries.append([start, start + size, parts[2], 0])
    entries.sort()
    module, after_glue, crates = 0, False, defaultdict(lambda: defaultdict(int))
    for entry in entries:
        name = entry[2]
        is_glue = bool(ENGINE_GLUE.match(name))
        if after_glue and not is_glue:
            module += 1
        after_glue = is_glue
        entry[3] = module
        for crate in PLUGIN_CRATES.findall(name):
            crates[module][crate] += 1
    labels = {m: max(counts, key=counts.get) for m, counts in crates.items()}
    return [(s, e, n, labels.get(m, f"module{m}")) for s, e, n, m in entries]


# Callgrind's name of code it cannot name: its address, with `'N` after it for a recursion
# level.
ADDRESS = re.compile(r"^(0x[0-9a-f]+)(?:'\d+)?$")


def function_at(functions, starts, callgrind_name):
    """The index in `functions` (read_perf_map's, `starts` their start addresses) of the
    function holding callgrind's `0x…` address, or None."""
    found = ADDRESS.match(callgrind_name)
    if not found:
        return None
    address = int(found.group(1), 16)
    i = bisect.bisect_right(starts, address) - 1
    return i if i >= 0 and address < functions[i][1] else None


def read_callgrind(path):
    """(self cost per function, {(caller, callee): inclusive cost of the calls}); functions
    are callgrind's names (`0x…` for code it cannot name)."""
    names = {}

    def name(text):
        m = re.match(r"\((\d+)\)(?: (.*))?$", text)
        if not m:
            return text
        if m.group(2) is not None:
            names[m.group(1)] = m.group(2)
        return names.get(m.group(1), "")

    self_cost = defaultdict(int)
    calls = defaultdict(int)
    current, callee, call_line = "", None, False
    for line in open(path, errors="replace"):
        line = line.rstrip("\n")
        if not line or line[0] == "#":
            continue
        if line.startswith("fn="):
            current = name(line[3:])
        elif line.startswith("cfn="):
            callee = name(line[4:])
        elif line.startswith("calls="):
            call_line = True
        elif line[0].isdigit() or line[0] in "+-*":
            fields = line.split()
            cost = int(fields[1]) if len(fields) > 1 else 0
            if call_line:
                calls[(current, callee)] += cost
                call_line = False
            else:
                self_cost[current] += cost
    return self_cost, calls


def main():
    # Piped into `head`: stop quietly.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("callgrind")
    parser.add_argument("perf_map")
    parser.add_argument("--requests", type=int, default=500, help="requests the profile counted")
    parser.add_argument("--top", type=int, default=30, help="functions listed per table")
    parser.add_argument("--layout", action="store_true",
                        help="also say how the code the requests ran lies in each module")
    parser.add_argument("--callees", metavar="TEXT",
                        help="also list what the guest functions whose name contains TEXT call")
    args = parser.parse_args()

    functions = read_perf_map(args.perf_map)
    starts = [f[0] for f in functions]

    def guest(callgrind_name):
        """(module, name) of the perf-map function holding callgrind's `0x…` address, or
        None."""
        if not ADDRESS.match(callgrind_name):
            return None
        i = function_at(functions, starts, callgrind_name)
        if i is None:
            return ("?", callgrind_name)
        return functions[i][3], functions[i][2]

    self_cost, calls = read_callgrind(args.callgrind)
    total = sum(self_cost.values())
    own = defaultdict(int)
    for fn, cost in self_cost.items():
        named = guest(fn)
        if named:
            own[named] += cost
    inclusive = defaultdict(int, own)
    for (caller, callee), cost in calls.items():
        named = guest(caller)
        # Pieces of one function calling each other are not calls out of it.
        if named and guest(callee) != named:
            inclusive[named] += cost
    per = args.requests
    guest_total = sum(own.values())
    print(f"{args.callgrind}: {total / per:,.0f} instructions per request, "
          f"{guest_total / per:,.0f} of them in code compiled from wasm "
          f"({100 * guest_total / max(total, 1):.1f} %)")
    by_module = defaultdict(int)
    for (module, _), cost in own.items():
        by_module[module] += cost
    for module, cost in sorted(by_module.items(), key=lambda kv: -kv[1]):
        print(f"  {module}: {cost / per:,.0f} per request (self)")

    def table(title, costs):
        print(f"\n{title}\n| per request | self | module | function |\n|---:|---:|---|---|")
        for (module, fn), cost in sorted(costs.items(), key=lambda kv: -kv[1])[: args.top]:
            print(f"| {cost / per:,.0f} | {own[(module, fn)] / per:,.0f} | {module} | `{fn[:110]}` |")

    table("By inclusive instructions (with what they call, host calls included)", inclusive)
    table("By self instructions", own)
    if args.callees:
        callees = defaultdict(int)
        for (caller, callee), cost in calls.items():
            named = guest(caller)
            if named and args.callees in named[1] and guest(callee) != named:
                callees[(named[0], guest(callee) or ("host", callee))] += cost
        print(f"\nWhat `{args.callees}` calls\n| per request | module | callee |\n|---:|---|---|")
        for (module, (_, callee)), cost in sorted(callees.items(), key=lambda kv: -kv[1]):
            print(f"| {cost / per:,.0f} | {module} | `{callee[:110]}` |")
    if args.layout:
        print_layout(functions, {named for named in own if named[0] != "?"})
    return 0


PAGE = 4096
WINDOW = 64 * 1024


def print_layout(functions, ran):
    """Per module: its compiled code, the part of it the profiled requests ran, and the 4 KiB
    pages and 64 KiB windows (aligned in the address space, as the kernel maps them) each
    part spans."""
    code = defaultdict(int)
    used = defaultdict(int)
    count = defaultdict(int)
    spans = {unit: (defaultdict(set), defaultdict(set)) for unit in (PAGE, WINDOW)}
    for start, end, name, module in functions:
        if module.startswith("module") and end - start < PAGE:
            continue  # a stub the engine adds after the last module
        code[module] += end - start
        hit = (module, name) in ran
        used[module] += (end - start) * hit
        count[module] += hit
        for unit, (all_units, ran_units) in spans.items():
            units = range(start // unit, (end - 1) // unit + 1)
            all_units[module].update(units)
            if hit:
                ran_units[module].update(units)
    print("\nWhere the code the requests ran lies, per module\n"
          "| module | compiled code | run by the requests | functions run | 4 KiB pages | 64 KiB windows |\n"
          "|---|---:|---:|---:|---:|---:|")
    for module in sorted(code):
        pages, windows = (spans[unit] for unit in (PAGE, WINDOW))
        print(f"| {module} | {code[module] / 1024:,.0f} KiB | {used[module] / 1024:,.0f} KiB "
              f"({100 * used[module] / code[module]:.1f} %) | {count[module]} "
              f"| {len(pages[1][module])} of {len(pages[0][module])} "
              f"| {len(windows[1][module])} of {len(windows[0][module])} |")


if __name__ == "__main__":
    sys.exit(main())
