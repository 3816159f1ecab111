#!/usr/bin/env python3
"""What a configuration adds to a 0-plugin request, by layer of the gateway.

Two callgrind profiles of the same build over the same number of requests (`glue.sh` keeps
them with `GLUE_KEEP`): one with no plugins, one with a configuration. Every function's own
instructions (self cost) go to the layer it belongs to, and the table shows each layer's
instructions per request in both profiles and what the configuration added:

    python3 bench/layers.py BASE-CALLGRIND-FILE CONFIG-CALLGRIND-FILE [--requests N] [--top N]

A function is placed by its name (the crate its symbol path starts with); code another
function inlined counts where it was inlined. What a name does not place (a generic impl
such as `<Pin<P> as Future>::poll`) goes by its source file. Code compiled from wasm has no
name in callgrind (`???`): it is the guest's. `--top N` lists, under each layer, the N
functions that added the most. See bench/README.md, "Where the time goes".
"""

import argparse
import re
import signal
import subprocess
import sys
from collections import Counter

# (layer, what it is), in the table's order after sorting by what was added.
LAYERS = {
    "guest": "the plugins' own code, compiled from wasm",
    "engine": "wasmtime: entering and leaving the VMs, host-call trampolines, builtins",
    "host ABI": "the host functions and VMs (host/src/wasm)",
    "plugin run": "running the chain for a request (host/src/pipeline/plugins)",
    "header maps": "the `http` crate's header maps, names and values",
    "gateway": "the rest of the gateway (routing, forwarding, logs, metrics)",
    "hyper": "HTTP/1.1 parsing and writing, both sides (hyper, httparse)",
    "tokio": "the runtime: tasks, timers, sockets",
    "allocator": "mimalloc",
    "memory copies": "libc's memcpy, memmove, memset, memcmp",
    "bytes": "the `bytes` crate's shared buffers",
    "Rust library": "core, alloc and std code that no caller's name claims",
    "other": "every other crate",
}

# By the start of a function's name, after `<` and `drop_in_place<` are taken off.
BY_NAME = [
    ("tollgate::wasm::", "host ABI"),
    ("tollgate::pipeline::plugins::", "plugin run"),
    ("tollgate::", "gateway"),
    ("wasmtime", "engine"),
    ("hyper", "hyper"),
    ("httparse::", "hyper"),
    ("http::", "header maps"),
    ("tokio::", "tokio"),
    ("mio::", "tokio"),
    ("bytes::", "bytes"),
    ("mi_", "allocator"),
    ("_mi_", "allocator"),
    ("__rustc::__rust_alloc", "allocator"),
    ("__rustc::__rust_dealloc", "allocator"),
    ("__rustc::__rust_realloc", "allocator"),
    ("__mem", "memory copies"),
]

# By the source file, for names that place nothing.
BY_FILE = [
    ("memmove", "memory copies"),
    ("memcpy", "memory copies"),
    ("memset", "memory copies"),
    ("memcmp", "memory copies"),
    ("/host/src/wasm/", "host ABI"),
    ("host/src/wasm/", "host ABI"),
    ("/host/src/pipeline/plugins/", "plugin run"),
    ("host/src/pipeline/plugins/", "plugin run"),
    ("/host/src/", "gateway"),
    ("host/src/", "gateway"),
    ("/wasmtime", "engine"),
    ("/hyper-", "hyper"),
    ("/httparse-", "hyper"),
    ("/http-1", "header maps"),
    ("/tokio-", "tokio"),
    ("/mio-", "tokio"),
    ("/bytes-", "bytes"),
    ("mimalloc", "allocator"),
    ("/rustc/", "Rust library"),
]

LINE = re.compile(r"^\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+(.*?)(?: \[[^\]]*\])?$")
DROP = re.compile(r"^(?:core::ptr::drop_in_place<)+")


def layer(file, function):
    if file.startswith("???"):
        return "guest"
    name = DROP.sub("", function.lstrip("<"))
    for prefix, found in BY_NAME:
        if name.startswith(prefix):
            return found
    for part, found in BY_FILE:
        if part in file:
            return found
    return "other"


def self_costs(path):
    """{(file, function): self instructions} from callgrind_annotate."""
    try:
        out = subprocess.run(
            ["callgrind_annotate", "--inclusive=no", "--threshold=100", "--auto=no", path],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as error:
        sys.exit(f"layers: cannot read {path} with callgrind_annotate: {error}")
    costs = Counter()
    for line in out.splitlines():
        m = LINE.match(line)
        if not m or "PROGRAM TOTALS" in line:
            continue
        file, _, function = m.group(2).partition(":")
        if not function:
            file, function = "???", m.group(2)
        costs[(file, function)] += int(m.group(1).replace(",", ""))
    return costs


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("base", help="callgrind file of the 0-plugin gateway")
    parser.add_argument("config", help="callgrind file of the configuration")
    parser.add_argument("--requests", type=int, default=1, help="requests each file counted")
    parser.add_argument("--top", type=int, default=0, help="functions listed per layer")
    parser.add_argument("--name", default="the configuration", help="the configuration's name")
    args = parser.parse_args()

    base, config = self_costs(args.base), self_costs(args.config)
    per = float(args.requests)
    by_layer = {which: Counter() for which in ("base", "config")}
    for which, costs in (("base", base), ("config", config)):
        for (file, function), n in costs.items():
            by_layer[which][layer(file, function)] += n / per
    added = {l: by_layer["config"][l] - by_layer["base"][l] for l in LAYERS}
    total_added = sum(added.values())

    print(f"| layer | 0 plugins | {args.name} | added | share of what was added |")
    print("|---|---:|---:|---:|---:|")
    for l in sorted(LAYERS, key=lambda l: -added[l]):
        if not by_layer["base"][l] and not by_layer["config"][l]:
            continue
        share = f"{added[l] / total_added * 100:.1f} %" if total_added > 0 else "–"
        print(
            f"| {l}: {LAYERS[l]} | {by_layer['base'][l]:,.0f} | {by_layer['config'][l]:,.0f} "
            f"| {added[l]:+,.0f} | {share} |"
        )
    base_total = sum(by_layer["base"].values())
    config_total = sum(by_layer["config"].values())
    print(f"| **total** | {base_total:,.0f} | {config_total:,.0f} | {total_added:+,.0f} | 100 % |")

    if args.top:
        functions = Counter()
        for key, n in config.items():
            functions[key] += n / per
        for key, n in base.items():
            functions[key] -= n / per
        for l in sorted(LAYERS, key=lambda l: -added[l]):
            top = sorted(
                ((n, f) for (file, f), n in functions.items() if layer(file, f) == l and n > 0),
                reverse=True,
            )[: args.top]
            if not top:
                continue
            print(f"\n{l}, added by function:")
            for n, function in top:
                print(f"  {n:+8,.0f}  {function[:150]}")


if __name__ == "__main__":
    # A reader that stops early (`| head`) is no error.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    main()
