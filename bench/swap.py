#!/usr/bin/env python3
"""Hot-swap driver for bench/swap.sh: rewrites a plugin module file in the gateway's plugins
folder and measures when the new version serves. Standard library only.

Two module *families* tell versions apart by their response headers: family A (tp-headers)
adds `x-tp-response`, family B (tp-metrics) adds `x-tp-requests`; both accept the same
configuration (`{"tag": ...}`; tp-metrics ignores it). Swaps always go from one family to
the other, so the first answer with the other family's header is the first answer of the
new version. A version that was never loaded (a *cold* swap) is a family's module with a
custom section appended -- byte 0x00, LEB128 section size, LEB128 name length, the name, a
random payload -- which gives new content (a new hash, so neither the gateway's modules in
memory nor its compile cache have it) with identical behaviour.

    swap.py latency --port P --admin A --file DIR/marker.wasm --a A.wasm --b B.wasm \
        --cold N --cached N
        Times N cold then N cached swaps, one at a time: the file is rewritten in place
        (open, truncate, write, close) and a client sends GET / every --poll seconds (1 ms)
        on a keep-alive connection until an answer carries the new family's header. The
        swap time runs from the close of the file to the end of that answer. The file
        starts as A (exact bytes). Cold swaps: B (exact, first load), then A+nonce,
        B+nonce, ...; cached swaps alternate the exact A and B, both loaded before.

    swap.py churn --admin A --file DIR/marker.wasm --a A.wasm --b B.wasm --swaps 100 \
        --interval 0.1 [--wait-live] [--deadline S] [--delay S]
        Under load (the load generator runs beside it): after --delay seconds, rewrites the
        file --swaps times, alternating the exact A and B (both cached), one write every
        --interval seconds; with --wait-live, also waits until the admin API shows the
        previous swap live (its generation went up) before the next write. Stops at the
        deadline (seconds after start) if given.

Output: one JSON object on stdout (times in milliseconds).
"""

import argparse
import http.client
import json
import os
import statistics
import sys
import time

FAMILY_HEADER = {"A": "x-tp-response", "B": "x-tp-requests"}


def leb128(n):
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def with_custom_section(module, name, payload):
    """The module with a custom section appended: new content, same behaviour."""
    name_b = name.encode()
    body = leb128(len(name_b)) + name_b + payload
    return module + b"\x00" + leb128(len(body)) + body


def write_file(path, data):
    """Rewrites the file in place (open, truncate, write, close); returns the time of the close."""
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CREAT, 0o644)
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
    finally:
        os.close(fd)
    return time.perf_counter()


def admin_status(admin):
    host, port = admin.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.request("GET", "/plugins")
        resp = conn.getresponse()
        data = json.loads(resp.read())
    finally:
        conn.close()
    last = data.get("last_reload", {})
    return {
        "generation": data.get("generation"),
        "successes": last.get("successes"),
        "failures": last.get("failures"),
        "error": last.get("error"),
        "sha256": [p.get("sha256") for p in data.get("plugins", [])],
    }


class Poller:
    """GET / on one keep-alive connection; reconnects after an error (counted)."""

    def __init__(self, port):
        self.port = port
        self.conn = None
        self.errors = 0
        self.statuses = {}

    def get(self):
        """(status, headers dict lower-cased) or None after a transport error."""
        for _ in range(2):
            try:
                if self.conn is None:
                    self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                self.conn.request("GET", "/", headers={"User-Agent": "tollgate-swap-bench"})
                resp = self.conn.getresponse()
                resp.read()
                headers = {k.lower(): v for k, v in resp.getheaders()}
                self.statuses[resp.status] = self.statuses.get(resp.status, 0) + 1
                if resp.will_close:
                    self.conn.close()
                    self.conn = None
                return resp.status, headers
            except (OSError, http.client.HTTPException):
                self.errors += 1
                if self.conn is not None:
                    self.conn.close()
                self.conn = None
        return None

    def family(self):
        r = self.get()
        if r is None:
            return None
        status, headers = r
        for fam, h in FAMILY_HEADER.items():
            if h in headers:
                return fam
        return "?"


def wait_family(poller, want, t_close, period, timeout):
    """Polls every `period` s until an answer of family `want`; returns seconds since t_close."""
    next_at = time.perf_counter()
    polls = 0
    while True:
        fam = poller.family()
        now = time.perf_counter()
        polls += 1
        if fam == want:
            return now - t_close, polls
        if now - t_close > timeout:
            return None, polls
        next_at += period
        delay = next_at - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        else:
            next_at = time.perf_counter()


def summary(values):
    values = [v for v in values if v is not None]
    if not values:
        return {"n": 0, "median": None, "max": None, "min": None}
    return {"n": len(values), "median": round(statistics.median(values), 2),
            "max": round(max(values), 2), "min": round(min(values), 2)}


def latency(args):
    a = open(args.a, "rb").read()
    b = open(args.b, "rb").read()
    exact = {"A": a, "B": b}
    poller = Poller(args.port)
    if poller.family() != "A":
        sys.exit("swap.py: the route does not answer with family A (x-tp-response) before the first swap")
    current = "A"
    records = []
    plan = []
    for i in range(args.cold):
        fam = "B" if current == "A" else "A"
        data = exact[fam] if i == 0 and fam == "B" else with_custom_section(
            exact[fam], "tollgate-bench", os.urandom(16) + ("cold-%d-%f" % (i, time.time())).encode())
        plan.append(("cold", fam, data))
        current = fam
    for i in range(args.cached):
        fam = "B" if current == "A" else "A"
        plan.append(("cached", fam, exact[fam]))
        current = fam
    for kind, fam, data in plan:
        before = admin_status(args.admin)
        t_close = write_file(args.file, data)
        elapsed, polls = wait_family(poller, fam, t_close, args.poll, args.timeout)
        # Let the reload finish and the debounce window pass before the next swap.
        time.sleep(args.settle)
        after = admin_status(args.admin)
        rec = {
            "kind": kind, "family": fam, "bytes": len(data),
            "ms": None if elapsed is None else round(elapsed * 1e3, 2),
            "polls": polls,
            "generations": (after["generation"] or 0) - (before["generation"] or 0),
            "generation": after["generation"],
            "reload_failures": (after["failures"] or 0) - (before["failures"] or 0),
            "reload_error": after["error"],
        }
        records.append(rec)
        print("  %-6s -> %s: %s ms (%d polls, %d generation(s))" % (
            kind, fam, rec["ms"], polls, rec["generations"]), file=sys.stderr)
    out = {
        "mode": "latency", "poll_ms": args.poll * 1e3, "swaps": records,
        "cold": summary([r["ms"] for r in records if r["kind"] == "cold"]),
        "cached": summary([r["ms"] for r in records if r["kind"] == "cached"]),
        "timeouts": sum(1 for r in records if r["ms"] is None),
        "poll_errors": poller.errors,
        "poll_statuses": {str(k): v for k, v in sorted(poller.statuses.items())},
    }
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


def churn(args):
    a = open(args.a, "rb").read()
    b = open(args.b, "rb").read()
    start = time.perf_counter()
    if args.delay:
        time.sleep(args.delay)
    first = admin_status(args.admin)
    cur_fam = "A" if first["sha256"] and first["sha256"][0] == _sha(a) else "B"
    live_ms = []
    not_live = 0
    writes = 0
    t_first = time.perf_counter()
    for i in range(args.swaps):
        if args.deadline and time.perf_counter() - start > args.deadline:
            break
        fam = "B" if cur_fam == "A" else "A"
        data = a if fam == "A" else b
        gen0 = admin_status(args.admin)["generation"] if args.wait_live else None
        t_close = write_file(args.file, data)
        writes += 1
        cur_fam = fam
        if args.wait_live:
            live = None
            while time.perf_counter() - t_close < args.live_timeout:
                time.sleep(0.005)
                if admin_status(args.admin)["generation"] > gen0:
                    live = time.perf_counter() - t_close
                    break
            if live is None:
                not_live += 1
            else:
                live_ms.append(live * 1e3)
        rest = args.interval - (time.perf_counter() - t_close)
        if rest > 0:
            time.sleep(rest)
    t_last = time.perf_counter()
    # Let the last swap go live (or be rejected) before reading the counters.
    time.sleep(args.settle)
    last = admin_status(args.admin)
    out = {
        "mode": "churn", "wait_live": args.wait_live, "interval_ms": args.interval * 1e3,
        "writes": writes,
        "generations": (last["generation"] or 0) - (first["generation"] or 0),
        "reload_failures": (last["failures"] or 0) - (first["failures"] or 0),
        "reload_error": last["error"],
        "seconds": round(t_last - t_first, 2),
        "mean_interval_ms": round((t_last - t_first) / writes * 1e3, 1) if writes else None,
        "live": summary(live_ms), "not_live_within_timeout": not_live,
        "final_family": cur_fam,
    }
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


def _sha(data):
    import hashlib
    return hashlib.sha256(data).hexdigest()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="mode", required=True)
    for name in ("latency", "churn"):
        s = sub.add_parser(name)
        s.add_argument("--admin", required=True, help="host:port of the admin listener")
        s.add_argument("--file", required=True, help="the module file the route uses")
        s.add_argument("--a", required=True, help="family A module (tp-headers)")
        s.add_argument("--b", required=True, help="family B module (tp-metrics)")
        s.add_argument("--settle", type=float, default=0.3, help="seconds to wait after a swap")
        if name == "latency":
            s.add_argument("--port", type=int, required=True)
            s.add_argument("--cold", type=int, default=5)
            s.add_argument("--cached", type=int, default=5)
            s.add_argument("--poll", type=float, default=0.001)
            s.add_argument("--timeout", type=float, default=10.0)
        else:
            s.add_argument("--swaps", type=int, default=100)
            s.add_argument("--interval", type=float, default=0.1)
            s.add_argument("--wait-live", action="store_true")
            s.add_argument("--live-timeout", type=float, default=5.0)
            s.add_argument("--deadline", type=float, default=0.0)
            s.add_argument("--delay", type=float, default=0.0)
    args = p.parse_args()
    (latency if args.mode == "latency" else churn)(args)


if __name__ == "__main__":
    main()
