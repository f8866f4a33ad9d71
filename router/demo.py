"""`edge-router demo`: three local regional backends behind the seed TrafficSplit.

Starts us-west, eu-central and ap-east stand-ins on 127.0.0.1, the router in front with
the seed config/trafficsplit.yaml, drives traffic through it, takes ap-east down halfway,
and prints the observed split, latency and failures next to the configured weights.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time

import aiohttp
from aiohttp import web

from .app import RouterApp
from .obs.admin import start_site

REGIONS = {  # name -> (labels, simulated handler time in seconds)
    "us-west": ({"region": "us-west"}, 0.002),
    "eu-central": ({"region": "eu-central"}, 0.004),
    "ap-east": ({"region": "ap-east", "zone": "ap-east"}, 0.006),
}


def find_seed(explicit: str | None) -> str:
    candidates = [explicit] if explicit else [
        os.path.join(os.getcwd(), "config", "trafficsplit.yaml"),
        os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "config", "trafficsplit.yaml")]
    for path in candidates:
        if path and os.path.isfile(path):
            return path
    raise SystemExit(f"edge-router demo: seed TrafficSplit not found (looked in {', '.join(c for c in candidates if c)})")


async def start_region(name: str, delay_s: float) -> tuple[web.AppRunner, int]:
    async def handle(request: web.Request) -> web.Response:
        await asyncio.sleep(delay_s)
        return web.Response(text=f"hello from {name}\n")
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return await start_site(app, "127.0.0.1", 0)


def cluster_yaml(ports: dict[str, int]) -> str:
    docs = []
    for name, (labels, _) in REGIONS.items():
        label_text = ", ".join(f"{k}: {v}" for k, v in labels.items())
        docs.append(f"apiVersion: edge.router/v1alpha1\nkind: Cluster\nmetadata:\n  name: {name}\n"
                    f"  labels: {{{label_text}}}\nspec:\n  endpoint: http://127.0.0.1:{ports[name]}\n")
    return "---\n".join(docs)


async def drive(port: int, n: int, concurrency: int, results: list) -> None:
    queue = iter(range(n))
    async with aiohttp.ClientSession() as session:
        async def worker():
            for _ in queue:
                t = time.perf_counter()
                try:
                    async with session.get(f"http://127.0.0.1:{port}/demo") as r:
                        await r.read()
                        results.append((r.headers.get("x-router-cluster", "-"), r.status, time.perf_counter() - t))
                except aiohttp.ClientError:
                    results.append(("-", 0, time.perf_counter() - t))
        await asyncio.gather(*[worker() for _ in range(concurrency)])


def summarise(title: str, results: list, weights: dict[str, float]) -> None:
    total = len(results)
    ok = [r for r in results if r[1] == 200]
    lat = sorted(r[2] for r in ok)
    print(f"\n{title}: {total} requests, {total - len(ok)} failed")
    print(f"  {'cluster':<12}{'configured':>11}{'observed':>10}")
    wsum = sum(weights.values()) or 1
    for name in REGIONS:
        seen = sum(1 for r in ok if r[0] == name)
        print(f"  {name:<12}{weights.get(name, 0) / wsum * 100:>10.1f}%{seen / max(len(ok), 1) * 100:>9.1f}%")
    if lat:
        print(f"  latency p50 {lat[len(lat) // 2] * 1000:.1f} ms, p99 {lat[int(len(lat) * 0.99)] * 1000:.1f} ms")


async def demo(requests: int, seed: str | None) -> int:
    seed_path = find_seed(seed)
    runners, ports = {}, {}
    for name, (_, delay) in REGIONS.items():
        runners[name], ports[name] = await start_region(name, delay)
    work = tempfile.mkdtemp(prefix="edge-router-demo-")
    app = None
    try:
        shutil.copy(seed_path, os.path.join(work, "trafficsplit.yaml"))
        with open(os.path.join(work, "clusters.yaml"), "w") as fh:
            fh.write(cluster_yaml(ports))
        app = RouterApp([work], "127.0.0.1:0", "127.0.0.1:0", watch_interval_s=0)
        await app.start()
        weights = {b.cluster: b.weight for b in app.config.splits[0].backends}
        print(f"edge-router demo: router on 127.0.0.1:{app.port}, admin on 127.0.0.1:{app.admin_port}")
        print(f"  seed split {seed_path}: " + ", ".join(f"{k} {v:g}" for k, v in weights.items()))
        first: list = []
        await drive(app.port, requests // 2, 16, first)
        summarise("all regions healthy", first, weights)
        print("\n  ... stopping ap-east (its ingress now refuses connections)")
        await runners.pop("ap-east").cleanup()
        second: list = []
        await drive(app.port, requests - requests // 2, 16, second)
        summarise("ap-east down", second, {k: v for k, v in weights.items() if k != "ap-east"})
        failed = sum(1 for r in first + second if r[1] != 200)
        print(f"\n{failed} failed requests in total; connect failures are retried on another region.")
        return 0 if failed == 0 else 1
    finally:
        if app is not None:
            await app.stop()
        for runner in runners.values():
            await runner.cleanup()
        shutil.rmtree(work, ignore_errors=True)


def run_demo(requests: int, seed: str | None) -> int:
    import uvloop
    return uvloop.run(demo(requests, seed))
