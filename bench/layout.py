#!/usr/bin/env python3
"""Writes each bundled plugin's function layout from a profile of the gateway.

The gateway places a module's functions that its `tollgate.layout` section names first
(host/src/wasm/layout.rs), so that the code its VMs run lies together and the rest is never
mapped. This script takes a callgrind profile of a gateway that ran the plugins from its
start (`--instr-atstart=yes`: the start's code counts as much as the requests') and the
perf map it wrote (`TOLLGATE_WASM_PROFILER=perfmap`), finds the guest functions that ran,
and writes, for every plugin module found, `plugins/NAME/layout.txt`: one function name per
line (demangled, without hashes), in the module's own order. bench/layout.sh runs it.

    python3 bench/layout.py CALLGRIND-FILE PERF-MAP PLUGINS-DIR
"""

import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from jit_names import ENGINE_GLUE, function_at, read_callgrind, read_perf_map  # noqa: E402

# What the engine's demangling keeps and the lists leave out: a legacy symbol's hash, a v0
# symbol's crate disambiguators (as `{:#}` of rustc-demangle prints them).
HASH = re.compile(r"::h[0-9a-f]{16}$")
DISAMBIGUATOR = re.compile(r"\[[0-9a-f]+\]")


def plain(name):
    return DISAMBIGUATOR.sub("", HASH.sub("", name))


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__.strip().splitlines()[-1].strip())
    callgrind, perf_map, plugins = sys.argv[1:]
    functions = read_perf_map(perf_map)
    starts = [f[0] for f in functions]
    self_cost, calls = read_callgrind(callgrind)
    ran = {function_at(functions, starts, name)
           for name in list(self_cost) + [callee for (_, callee) in calls]} - {None}
    by_module = {}
    for i, (_, _, name, module) in enumerate(functions):
        if ENGINE_GLUE.match(name):
            continue  # the engine's trampolines: not the module's functions
        listed = by_module.setdefault(module, [])
        if i in ran and plain(name) not in listed:
            listed.append(plain(name))
    written = 0
    for module, names in sorted(by_module.items()):
        folder = os.path.join(plugins, module.replace("_", "-"))
        if not names or not os.path.isfile(os.path.join(folder, "Cargo.toml")):
            print(f"layout: {module}: no plugin folder {folder} (or nothing ran), skipped",
                  file=sys.stderr)
            continue
        with open(os.path.join(folder, "layout.txt"), "w") as out:
            out.write("# The functions this plugin's VMs ran from their start, in the module's\n"
                      "# order: placed first when the gateway compiles it (bench/layout.sh).\n")
            out.write("".join(f"{name}\n" for name in names))
        print(f"layout: {folder}/layout.txt: {len(names)} functions", file=sys.stderr)
        written += 1
    return 0 if written else 1


if __name__ == "__main__":
    sys.exit(main())
