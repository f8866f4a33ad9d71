"""What a rate-limited request's bucket costs: one process's buckets (a dict) against the table the
workers of `serve --workers` share (shared memory, a lock per group), alone and with a second process
taking from the same table at the same time.

    python bench/ratelimit.py [--takes 200000]

Prints microseconds per take (best of 5 rounds) for a route-wide bucket and for 10,000 client keys, and
the ratio shared/one-process. The lock is a POSIX record lock (two fcntl calls a take); contention is
the second process pinned to the other core hammering the same route-wide bucket.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from router.config.model import RateLimit  # noqa: E402
from router.core.ratelimit import RateLimiter  # noqa: E402
from router.dataplane.sharedlimit import SharedBuckets, create_table  # noqa: E402

LIMIT = RateLimit(1e9, 1_000_000, "route")  # never refuses: every take does the whole count


def per_take_us(limiter, keys: list[str], takes: int) -> float:
    best = float("inf")
    clock = time.monotonic
    for _ in range(5):
        n = len(keys)
        start = time.perf_counter()
        for i in range(takes):
            limiter.take(keys[i % n], clock())
        best = min(best, time.perf_counter() - start)
    return best / takes * 1e6


def hammer(fd: int, stop) -> None:
    if hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) > 1:
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[-1]})
    limiter = SharedBuckets(fd).limiter("bench", LIMIT)
    while not stop.is_set():
        for _ in range(1000):
            limiter.take("", time.monotonic())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--takes", type=int, default=200_000)
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) > 1:
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    fd = create_table()
    table = SharedBuckets(fd)
    clients = [f"203.0.{i // 256}.{i % 256}" for i in range(10_000)]
    rows = []
    for name, keys in (("route-wide bucket", [""]), ("10,000 client keys", clients)):
        alone = per_take_us(RateLimiter(LIMIT.rate, LIMIT.burst), keys, args.takes)
        shared = per_take_us(table.limiter("bench", LIMIT), keys, args.takes)
        rows.append((name, alone, shared))
    stop = multiprocessing.Event()
    other = multiprocessing.get_context("fork").Process(target=hammer, args=(fd, stop))
    other.start()
    try:
        contended = per_take_us(table.limiter("bench", LIMIT), [""], args.takes)
    finally:
        stop.set()
        other.join(10)
    print(f"{'case':<40} {'one process us':>15} {'shared us':>10} {'ratio':>6}")
    for name, alone, shared in rows:
        print(f"{name:<40} {alone:>15.2f} {shared:>10.2f} {shared / alone:>6.1f}")
    alone = rows[0][1]
    print(f"{'route-wide, a second process taking too':<40} {alone:>15.2f} {contended:>10.2f} "
          f"{contended / alone:>6.1f}")
    table.close()
    os.close(fd)


if __name__ == "__main__":
    main()
