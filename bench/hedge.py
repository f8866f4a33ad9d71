"""Tail latency with hedging. Two scenarios, each with two clusters and one router process:
  twins     two clusters alike: handlers take 5 ms, and now and then (5% of requests, at random)
            300 ms, as a replica in a GC pause or behind a cold cache does; weights 1:1
  near-far  a near cluster like that but with a 60 ms tail, and a far one (another region) that
            answers in 80 ms; weights 1000:1, so the far one is where a second try goes
Three routes over the same two clusters, the same load on each in turn:
  none    no per-try timeout: a slow answer is waited for
  retry   perTry 15 ms: a slow try is given up and the request sent to the other cluster
  hedge   the same perTry with hedge: the slow try is kept and raced against the other cluster
Reported per scenario and route: client-side p50, p90, p99, p99.9 and max, and the cluster
requests per client request (what a second try costs the clusters).

    python bench/hedge.py [--requests 4000] [--concurrency 8] [--seed 1] [--out FILE.json]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time

from aiohttp import web

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from coldstart import start_router  # noqa: E402
from router.obs.admin import start_site  # noqa: E402

# per scenario: cluster -> (weight, usual ms, tail ms, tail share)
SCENARIOS = {"twins": {"a": (1, 5.0, 300.0, 0.05), "b": (1, 5.0, 300.0, 0.05)},
             "near-far": {"a": (1000, 5.0, 60.0, 0.05), "b": (1, 80.0, 80.0, 0.0)}}
PER_TRY = "15ms"
ROUTES = {"none": "", "retry": f"  timeouts: {{perTry: {PER_TRY}}}\n",
          "hedge": f"  timeouts: {{perTry: {PER_TRY}, hedge: true}}\n"}


class Cluster:
    def __init__(self, rng: random.Random, usual_ms: float, tail_ms: float, tail_share: float):
        self.rng, self.requests = rng, 0
        self.usual_s, self.tail_s, self.tail_share = usual_ms / 1000, tail_ms / 1000, tail_share

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        await asyncio.sleep(self.tail_s if self.rng.random() < self.tail_share else self.usual_s)
        return web.Response(text="ok")


def config(ports: dict[str, int], weights: dict[str, int]) -> str:
    docs = "".join(f"---\napiVersion: edge.router/v1alpha1\nkind: Cluster\nmetadata: {{name: {n}}}\n"
                   f"spec: {{endpoint: 'http://127.0.0.1:{p}'}}\n" for n, p in ports.items())
    for name, extra in ROUTES.items():
        docs += (f"---\napiVersion: edge.router/v1alpha1\nkind: TrafficSplit\nmetadata: {{name: {name}}}\nspec:\n"
                 f"  hosts: [{name}]\n  clusters: [{{name: a, weight: {weights['a']}}}, "
                 f"{{name: b, weight: {weights['b']}}}]\n" + extra)
    return docs + ("---\napiVersion: edge.router/v1alpha1\nkind: Router\nmetadata: {name: edge}\n"
                   "spec:\n  probes: {enabled: false}\n")


async def load(port: int, host: str, n: int, concurrency: int) -> list[float]:
    """n GETs over `concurrency` keep-alive connections; each one's time to its whole answer."""
    took: list[float] = []
    per = [n // concurrency + (1 if i < n % concurrency else 0) for i in range(concurrency)]

    async def one_connection(count: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        request = f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
        for _ in range(count):
            t = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise SystemExit(f"route {host}: {head[:60]!r}: the measurement is not valid")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            took.append(time.perf_counter() - t)
        writer.close()
    await asyncio.gather(*(one_connection(c) for c in per))
    return took


def summary(took: list[float], cluster_requests: int) -> dict:
    took = sorted(took)
    at = lambda q: round(took[min(len(took) - 1, int(q * len(took)))] * 1000, 1)  # noqa: E731
    return {"p50_ms": at(0.5), "p90_ms": at(0.9), "p99_ms": at(0.99), "p999_ms": at(0.999),
            "max_ms": round(took[-1] * 1000, 1), "cluster_requests_per_request": round(cluster_requests / len(took), 3)}


async def scenario(shape: dict, args, rng: random.Random) -> dict:
    clusters = {n: Cluster(random.Random(rng.random()), *shape[n][1:]) for n in "ab"}
    runners, ports = [], {}
    for name, cluster in clusters.items():
        app = web.Application()
        app.router.add_get("/", cluster.handle)
        runner, ports[name] = await start_site(app, "127.0.0.1", 0)
        runners.append(runner)
    with tempfile.TemporaryDirectory() as work:
        proc, port = await start_router(work, config(ports, {n: shape[n][0] for n in shape}))
        try:
            await load(port, "none", 200, args.concurrency)  # warm the pools
            results = {}
            for route in ROUTES:
                before = sum(c.requests for c in clusters.values())
                took = await load(port, route, args.requests, args.concurrency)
                results[route] = summary(took, sum(c.requests for c in clusters.values()) - before)
        finally:
            proc.terminate()
            proc.wait(20)
    for runner in runners:
        await runner.cleanup()
    return results


async def main_async(args) -> dict:
    rng = random.Random(args.seed)
    return {"model": {"scenarios": {k: {n: dict(zip(("weight", "usual_ms", "tail_ms", "tail_share"), v))
                                        for n, v in shape.items()} for k, shape in SCENARIOS.items()},
                      "per_try": PER_TRY, "requests": args.requests, "concurrency": args.concurrency,
                      "seed": args.seed},
            "scenarios": {name: await scenario(shape, args, rng) for name, shape in SCENARIOS.items()}}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=4000)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out")
    args = ap.parse_args()
    report = asyncio.run(main_async(args))
    print(f"perTry {PER_TRY}; {args.requests} requests per route over {args.concurrency} connections")
    print(f"{'scenario':<10}{'route':<8}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'p99.9 ms':>10}{'max ms':>9}"
          f"{'cluster req/req':>17}")
    for name, routes in report["scenarios"].items():
        for route, r in routes.items():
            print(f"{name:<10}{route:<8}{r['p50_ms']:>9}{r['p90_ms']:>9}{r['p99_ms']:>9}{r['p999_ms']:>10}"
                  f"{r['max_ms']:>9}{r['cluster_requests_per_request']:>17}")
        print(f"{name:<10}p99 hedge/none {routes['hedge']['p99_ms'] / routes['none']['p99_ms']:.2f}, "
              f"hedge/retry {routes['hedge']['p99_ms'] / routes['retry']['p99_ms']:.2f}")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(report, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
