#!/usr/bin/env python3
"""Where a gateway's resident memory is: /proc/PID/smaps files grouped by what each mapping
holds, in KiB of Rss, as a Markdown table (bench/README.md, "Memory").

    python3 bench/smaps.py --binary=PATH-OF-THE-GATEWAY LABEL=SMAPS-FILE...

Each argument is one column (`0 plugins=/tmp/base.smaps`); a last column gives the
difference of the last two. What a mapping holds is told by its file and permissions:
the gateway binary (code and data), other files (shared libraries), compiled modules
mapped from the module cache (`*.cwasm`; code and metadata read-only, VM memory images
copy-on-write), and anonymous memory. Anonymous memory inside the wasm instance pool (one
slot of address space per VM, split into pieces as the VM maps its memory image and grows)
is told from the rest (the allocator's arenas, thread stacks) by address.
"""

import re
import sys

HEADER = re.compile(r"^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ \S+\s*(.*)$")
SLOT_MIN_BYTES = 2 << 30

CATEGORIES = [
    "gateway binary: code",
    "gateway binary: data",
    "shared libraries",
    "compiled modules: code",
    "compiled modules: metadata",
    "VM memory images (pages written)",
    "VM linear memories (instance pool)",
    "heap and thread stacks (anonymous)",
    "other (kernel, stack of the main thread)",
]


def mappings(path):
    found = []
    with open(path) as smaps:
        for line in smaps:
            header = HEADER.match(line)
            if header:
                found.append(
                    {
                        "start": int(header.group(1), 16),
                        "end": int(header.group(2), 16),
                        "perm": header.group(3),
                        "name": header.group(4).strip().removesuffix(" (deleted)"),
                        "rss": 0,
                    }
                )
            elif line.startswith("Rss:"):
                found[-1]["rss"] = int(line.split()[1])
    return found


def pool_pieces(maps):
    """Indexes of the mappings inside the pool of linear memories: one reservation of a slot
    per VM (4 GiB of address space each, inaccessible beyond what the VM uses), after a
    guard region. Each slot in use is split into its accessible pieces (anonymous, or its
    memory image) and its inaccessible rest; the pool runs from the guard before the first
    slot to the rest of the last."""
    order = sorted(range(len(maps)), key=lambda i: maps[i]["start"])
    slot_rests = [
        position
        for position, i in enumerate(order)
        if maps[i]["name"] == "" and maps[i]["perm"] == "---p" and maps[i]["end"] - maps[i]["start"] >= SLOT_MIN_BYTES
    ]
    if not slot_rests:
        return set()
    first, last = slot_rests[0], slot_rests[-1]
    # Down from the first slot's rest through its accessible pieces to the guard region.
    while first > 0:
        below, above = maps[order[first - 1]], maps[order[first]]
        if below["end"] != above["start"]:
            break
        first -= 1
        if below["perm"] == "---p":
            break
    return set(order[first : last + 1])


def categorize(path, binary):
    maps = mappings(path)
    pool = pool_pieces(maps)
    totals = dict.fromkeys(CATEGORIES, 0)
    for i, m in enumerate(maps):
        name, perm = m["name"], m["perm"]
        # Compiled code is the only executable anonymous memory, followed by its
        # read-only metadata, when modules are copied into memory instead of mapped.
        compiled = name.endswith(".cwasm") or (name == "" and perm in ("r-xp", "r--p"))
        if compiled and "w" not in perm:
            category = "compiled modules: code" if "x" in perm else "compiled modules: metadata"
        elif name.endswith(".cwasm") or "memfd:wasm-memory-image" in name:
            category = "VM memory images (pages written)"
        elif i in pool:
            category = "VM linear memories (instance pool)"
        elif name == binary:
            category = "gateway binary: code" if "x" in perm else "gateway binary: data"
        elif name.startswith("/"):
            category = "shared libraries"
        elif name == "" or name == "[heap]":
            category = "heap and thread stacks (anonymous)"
        else:
            category = "other (kernel, stack of the main thread)"
        totals[category] += m["rss"]
    return totals


def main():
    columns = []
    binary = None
    for argument in sys.argv[1:]:
        if argument.startswith("--binary="):
            binary = argument.split("=", 1)[1]
            continue
        label, _, path = argument.partition("=")
        columns.append((label, path))
    if not columns:
        sys.exit(__doc__)
    tables = [(label, categorize(path, binary)) for label, path in columns]
    labels = [label for label, _ in tables]
    with_difference = len(tables) >= 2
    head = ["resident memory (Rss)"] + labels + (["difference"] if with_difference else [])
    print("| " + " | ".join(head) + " |")
    print("|---" + "|---:" * (len(head) - 1) + "|")
    rows = CATEGORIES + ["total"]
    for row in rows:
        values = [
            sum(totals.values()) if row == "total" else totals[row] for _, totals in tables
        ]
        if row != "total" and not any(values):
            continue
        cells = [f"{value / 1024:.1f} MiB" for value in values]
        if with_difference:
            cells.append(f"{(values[-1] - values[-2]) / 1024:+.1f} MiB")
        name = f"**{row}**" if row == "total" else row
        print("| " + " | ".join([name] + cells) + " |")


if __name__ == "__main__":
    main()
