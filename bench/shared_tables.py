"""What the tables the workers of `serve --workers` share cost a worker (shared memory, dataplane/shared*.py):

- a rate-limited request's bucket: one process's buckets (a dict) against the shared table (a POSIX record
  lock per group: two fcntl calls a take), alone and with a second process pinned to the other core taking
  from the same route-wide bucket at the same time;
- a connection under maxConnectionsPerClient: its admission and release in the shared table, with 2 and 8
  worker regions;
- a request to a cluster with maxRequests: publishing this worker's count, and reading the other workers'.

    python bench/shared_tables.py [--takes 200000]

Prints microseconds per operation (best of 5 rounds), and for rate limits the ratio shared/one-process.
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
from router.dataplane import sharedclients, sharedvalues  # noqa: E402
from router.dataplane.sharedlimit import SharedBuckets, create_table  # noqa: E402

LIMIT = RateLimit(1e9, 1_000_000, "route")  # never refuses: every take does the whole count


def best_us(op, n: int) -> float:
    """Microseconds per call of `op` (best of 5 rounds of `n`)."""
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(n):
            op()
        best = min(best, time.perf_counter() - start)
    return best / n * 1e6


def worker_tables(takes: int) -> list[tuple[str, float]]:
    """The per-client connection table and the requests-in-flight table, with 2 and 8 worker regions."""
    rows = []
    for regions in (2, 8):
        fd = sharedclients.create_table(regions)
        view = sharedclients.SharedClientCounts(fd, 0)

        def connection():
            view.publish("203.0.113.7", 1, 10)
            view.publish("203.0.113.7", 0, None)
        rows.append((f"a connection admitted and closed, {regions} workers", best_us(connection, takes // 4)))
        view.close()
        os.close(fd)
        fd = sharedvalues.create_table(regions)
        counts = sharedvalues.SharedValues(fd, 0)
        rows.append((f"a request's count published, {regions} workers", best_us(lambda: counts.publish("a", 3),
                                                                               takes)))
        rows.append((f"the other workers' count read, {regions} workers", best_us(lambda: counts.get("a"), takes)))
        counts.close()
        os.close(fd)
    return rows


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
    print()
    for name, us in worker_tables(args.takes):
        print(f"{name:<50} {us:>6.2f} us")


if __name__ == "__main__":
    main()
