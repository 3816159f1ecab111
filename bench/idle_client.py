#!/usr/bin/env python3
"""Opens many keep-alive HTTP/1.1 connections to a proxy, holds them idle, and reads the
proxy's resident memory: what idle clients cost a front door. Standard library only.

Each connection sends one `GET /` and reads the whole answer, so it is a used keep-alive
connection (not a half-open one), then stays idle. After the last answer and `--settle`
seconds, the resident memory (VmRSS) of `--pid` and its children (nginx's worker) is read,
and every connection is checked to be still open. Then they are all closed.

Output: one JSON object on stdout (memory in kB).
"""

import argparse
import json
import os
import re
import resource
import selectors
import socket
import sys
import time

CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*([0-9]+)", re.I)


def rss_kb(pid):
    """VmRSS of pid and its direct children, in kB."""
    pids = [pid]
    for task in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/children" % (pid, task)) as f:
                pids += [int(p) for p in f.read().split()]
        except OSError:
            pass
    total = 0
    for p in pids:
        try:
            with open("/proc/%d/status" % p) as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def complete(buf):
    """True when buf holds a whole answer with a content-length body."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return False
    m = CONTENT_LENGTH.search(buf[: end + 2])
    return len(buf) >= end + 4 + (int(m.group(1)) if m else 0)


def run(args):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = args.connections + 64
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            sys.exit("idle_client: %d connections need %d file descriptors; the hard limit is %d" % (args.connections, need, hard))
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    request = ("GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUser-Agent: tollgate-bench\r\n\r\n" % (args.path, args.port)).encode()
    before = rss_kb(args.pid)
    sel = selectors.DefaultSelector()
    bufs = {}
    answered, statuses, errors = 0, {}, 0

    def drain(timeout):
        nonlocal answered, errors
        for key, _ in sel.select(timeout):
            s = key.fileobj
            try:
                data = s.recv(65536)
            except OSError:
                data = b""
            if not data:
                errors += 1
                sel.unregister(s)
                continue
            bufs[s] += data
            if complete(bufs[s]):
                status = bufs[s][9:12].decode(errors="replace")
                statuses[status] = statuses.get(status, 0) + 1
                answered += 1
                sel.unregister(s)

    t0 = time.monotonic()
    socks = []
    for i in range(args.connections):
        try:
            s = socket.create_connection((args.host, args.port), timeout=10)
            s.sendall(request)
        except OSError as e:
            sys.exit("idle_client: connection %d of %d failed: %s" % (i + 1, args.connections, e))
        s.setblocking(False)
        socks.append(s)
        bufs[s] = b""
        sel.register(s, selectors.EVENT_READ)
        if i % 128 == 127:
            drain(0)
    deadline = time.monotonic() + 30
    while answered + errors < args.connections and time.monotonic() < deadline:
        drain(0.1)
    opened_s = time.monotonic() - t0

    time.sleep(args.settle)
    at_n = rss_kb(args.pid)
    # Still open: nothing to read (a closed connection reads as EOF).
    closed = 0
    for s in socks:
        try:
            if s.recv(1, socket.MSG_PEEK) == b"":
                closed += 1
        except BlockingIOError:
            pass
        except OSError:
            closed += 1
    for s in socks:
        s.close()
    return {
        "connections": args.connections,
        "answered": answered,
        "statuses": statuses,
        "errors": errors,
        "closed_by_server": closed,
        "open_s": round(opened_s, 2),
        "settle_s": args.settle,
        "rss_before_kb": before,
        "rss_kb": at_n,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default="/")
    p.add_argument("--connections", type=int, default=10000)
    p.add_argument("--pid", type=int, required=True, help="the proxy's process id")
    p.add_argument("--settle", type=float, default=2.0, help="seconds idle before the memory is read")
    args = p.parse_args()
    json.dump(run(args), sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
