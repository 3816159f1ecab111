#!/usr/bin/env python3
"""Fixed-rate (open loop) HTTP/1.1 load generator for latency at a given load.

`wrk` only runs a closed loop (every connection sends its next request as soon as the
previous answer arrives), which measures maximum throughput but not latency at a chosen
load, and wrk2 (which does) is not packaged by Debian. This is the small part of wrk2 we
need, standard library only:

* N keep-alive connections (TCP_NODELAY), opened and checked before the run;
* request i is *scheduled* at start + i / rate; at that moment it goes out on an idle
  connection, or waits in a FIFO until one is free;
* latency is measured from the scheduled time to the last byte of the answer, so a stall
  of the server is charged to every request it delayed (no coordinated omission);
* a warm-up period is run at the same rate and not recorded;
* the run is bounded: it stops scheduling after the duration and waits at most
  `--drain` seconds for the last answers (those still missing count as timeouts).

Why not asyncio: asyncio sleeps through epoll, whose timeout is rounded up to whole
milliseconds, so a request due in 200 us could leave up to 1 ms late -- more than the
latencies being measured. This loop polls without blocking when the next request is due
within 2 ms (and blocks in epoll otherwise), so requests leave within a few microseconds
of their scheduled time. It reports how late they left (`send_lag_*`), so a saturated
generator is visible instead of silently inflating the figures.

Output: one JSON object on stdout (rates in requests/s, latencies in microseconds).
"""

import argparse
import collections
import json
import re
import math
import os
import select
import socket
import sys
import time

READ_SIZE = 65536
# Sleeps end late (here ~25 us in a VM even with 1 ns timer slack): sleep until this much
# before the next request is due, then poll without sleeping.
WAKE_EARLY = 40e-6

CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*([0-9]+)", re.I)
CHUNKED = re.compile(rb"\r\ntransfer-encoding:[^\r]*chunked", re.I)
CLOSE = re.compile(rb"\r\nconnection:[ \t]*close", re.I)


def tighten_timer_slack():
    """Ask Linux for 1 ns timer slack (default 50 us) so that sleeps end on time."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(29, 1, 0, 0, 0)  # PR_SET_TIMERSLACK
    except (OSError, AttributeError):
        pass


class Conn:
    __slots__ = ("sock", "fd", "buf", "busy", "sched", "sent_at", "need", "chunked", "head_done", "status", "keep_alive")

    def __init__(self, sock):
        self.sock = sock
        self.fd = sock.fileno()
        self.buf = b""
        self.busy = False
        self.sched = 0.0
        self.sent_at = 0.0
        self.reset_response()

    def reset_response(self):
        self.need = -1          # body bytes still expected (content-length), -1: headers not parsed
        self.chunked = False
        self.head_done = False
        self.status = 0
        self.keep_alive = True


def connect(host, port):
    s = socket.create_connection((host, port), timeout=5)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.setblocking(False)
    return Conn(s)


def parse_response(c):
    """Consume one complete response from c.buf; return (done, keep_alive)."""
    if not c.head_done:
        end = c.buf.find(b"\r\n\r\n")
        if end < 0:
            return False, True
        head = c.buf[:end + 2]
        c.buf = c.buf[end + 4:]
        if not head.startswith(b"HTTP/1."):
            raise ValueError("bad status line: %r" % head[:40])
        try:
            c.status = int(head[9:12])
        except ValueError:
            raise ValueError("bad status line: %r" % head[:40])
        m = CONTENT_LENGTH.search(head)
        c.need = int(m.group(1)) if m else 0
        c.chunked = m is None and CHUNKED.search(head) is not None
        c.keep_alive = CLOSE.search(head) is None
        c.head_done = True
    if c.chunked:
        # Walk the chunks present in the buffer; complete when the last chunk and the
        # (empty or not) trailer section have arrived.
        pos = 0
        buf = c.buf
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                return False, True
            size = int(buf[pos:eol].split(b";", 1)[0], 16)
            if size == 0:
                end = buf.find(b"\r\n\r\n", eol)
                if end < 0:
                    return False, True
                c.buf = buf[end + 4:]
                return True, c.keep_alive
            nxt = eol + 2 + size + 2
            if len(buf) < nxt:
                return False, True
            pos = nxt
    if len(c.buf) < c.need:
        return False, True
    c.buf = c.buf[c.need:]
    return True, c.keep_alive


def percentile(sorted_values, p):
    if not sorted_values:
        return None
    # nearest rank
    k = min(len(sorted_values) - 1, max(0, math.ceil(p / 100.0 * len(sorted_values)) - 1))
    return sorted_values[k]


def run(args):
    tighten_timer_slack()
    request = (
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: tollgate-bench\r\n\r\n".format(
            path=args.path, host=args.host_header or "%s:%d" % (args.host, args.port)
        )
    ).encode()

    conns = [connect(args.host, args.port) for _ in range(args.connections)]
    ep = select.epoll()
    ep_fds = [ep.fileno()]
    by_fd = {}
    for c in conns:
        ep.register(c.fd, select.EPOLLIN)
        by_fd[c.fd] = c

    interval = 1.0 / args.rate
    warm_n = int(args.warmup * args.rate)
    total_n = warm_n + int(args.duration * args.rate)
    clock = time.perf_counter

    idle = list(reversed(conns))
    waiting = collections.deque()  # scheduled times of requests waiting for a free connection
    latencies = []          # microseconds, recorded requests only
    lags = []               # microseconds between schedule and send, recorded requests only
    errors = {"status": 0, "io": 0, "timeout": 0, "reconnect": 0}
    statuses = {}
    outstanding = 0
    last_done = 0.0

    t0 = clock() + 0.05
    record_from = t0 + warm_n * interval
    next_i = 0

    def send(c, sched, now):
        nonlocal outstanding
        outstanding += 1
        c.busy = True
        c.sched = sched
        c.sent_at = now
        c.reset_response()
        try:
            c.sock.send(request)
        except OSError:
            errors["io"] += 1
            c.busy = False
            outstanding -= 1
            return False
        if sched >= record_from:
            lags.append((now - sched) * 1e6)
        return True

    def replace(c):
        try:
            ep.unregister(c.fd)
        except OSError:
            pass
        c.sock.close()
        del by_fd[c.fd]
        n = connect(args.host, args.port)
        ep.register(n.fd, select.EPOLLIN)
        by_fd[n.fd] = n
        conns[conns.index(c)] = n
        errors["reconnect"] += 1
        return n

    def release(c, now):
        """c is free: give it the oldest waiting request, or put it back in the idle list."""
        while waiting:
            sched = waiting.popleft()
            if send(c, sched, now):
                return
            c = replace(c)
        idle.append(c)

    deadline = t0 + (total_n * interval) + args.drain
    while True:
        now = clock()
        # Issue every request that is due.
        while next_i < total_n:
            sched = t0 + next_i * interval
            if sched > now:
                break
            next_i += 1
            waiting.append(sched)
            if idle:
                release(idle.pop(), now)
        if next_i >= total_n and outstanding == 0 and not waiting:
            break
        if now > deadline:
            errors["timeout"] += outstanding + len(waiting)
            break
        if next_i < total_n:
            gap = t0 + next_i * interval - now
        else:
            gap = min(0.01, max(0.0, deadline - now))
        # Sleep until the next request is due or an answer arrives. select() on the epoll
        # descriptor has microsecond resolution, where epoll_wait rounds up to milliseconds.
        if gap > WAKE_EARLY:
            select.select(ep_fds, (), (), gap - WAKE_EARLY)
            events = ep.poll(0)
        else:
            events = ep.poll(0)
            if not events:
                # Polling without sleeping: let a server sharing this CPU run at once.
                os.sched_yield()
        for fd, _ in events:
            c = by_fd.get(fd)
            if c is None:
                continue
            try:
                data = c.sock.recv(READ_SIZE)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            done_at = clock()
            if not data or not c.busy:
                # Closed by the server (or unsolicited bytes): replace the connection.
                if c.busy:
                    errors["io"] += 1
                    c.busy = False
                    outstanding -= 1
                else:
                    idle.remove(c)
                release(replace(c), done_at)
                continue
            c.buf += data
            try:
                done, keep_alive = parse_response(c)
            except ValueError:
                errors["io"] += 1
                c.busy = False
                outstanding -= 1
                release(replace(c), done_at)
                continue
            if not done:
                continue
            c.busy = False
            outstanding -= 1
            if c.sched >= record_from:
                last_done = done_at
                latencies.append((done_at - c.sched) * 1e6)
                statuses[c.status] = statuses.get(c.status, 0) + 1
                if not 200 <= c.status < 400:
                    errors["status"] += 1
            if not keep_alive:
                c = replace(c)
            release(c, clock())

    for c in conns:
        c.sock.close()
    ep.close()

    latencies.sort()
    lags.sort()
    # Requests recorded over the time from the first recorded schedule to the last answer:
    # below the target rate when the server (or this generator) could not keep up.
    span = max(args.duration, last_done - record_from)
    out = {
        "target_rate": args.rate,
        "achieved_rate": round(len(latencies) / span, 1),
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "connections": args.connections,
        "requests": len(latencies),
        "errors": errors,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "latency_us": {
            "p50": percentile(latencies, 50),
            "p90": percentile(latencies, 90),
            "p99": percentile(latencies, 99),
            "p99.9": percentile(latencies, 99.9),
            "max": latencies[-1] if latencies else None,
        },
        "send_lag_us": {
            "p50": percentile(lags, 50),
            "p99": percentile(lags, 99),
            "max": lags[-1] if lags else None,
        },
    }
    for group in ("latency_us", "send_lag_us"):
        out[group] = {k: (round(v, 1) if v is not None else None) for k, v in out[group].items()}
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default="/")
    p.add_argument("--host-header", default=None, help="Host header (default host:port)")
    p.add_argument("--rate", type=float, required=True, help="requests per second")
    p.add_argument("--duration", type=float, default=10.0, help="recorded seconds")
    p.add_argument("--warmup", type=float, default=1.0, help="unrecorded seconds first")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--drain", type=float, default=5.0, help="max seconds to wait for the last answers")
    args = p.parse_args()
    if args.rate <= 0 or args.connections <= 0 or args.duration <= 0:
        p.error("rate, connections and duration must be positive")
    json.dump(run(args), sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
