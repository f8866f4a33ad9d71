"""Scale-from-zero burst: 1,000 requests at a service that is at zero everywhere.

A router process holds the burst while a simulated cluster wakes the service (cold start 1 s,
image cached); pods take 10 concurrent requests each and the cluster adds a pod per 10
requests it is asked to queue (each pod also takes the cold start). Two runs side by side:
  router       paced release (containerConcurrency 10 known: at most 10 per ready pod)
  release_all  the same router without a known capacity: every held request at once, which
               is what the Knative activator does at containerConcurrency 0
Reported per run: lost (never answered), rejected (503), expired (504), time from the ready
signal to the first and last request reaching the cluster, p50/p99 hold (client-side time
from sending to the response head, minus the handler), peak router RSS. A second phase holds
10,000 requests at once and reports the router's RSS while holding them.

    python bench/coldstart.py [--requests 1000] [--held 10000] [--out FILE.json]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

from aiohttp import web

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from router.obs.admin import start_site  # noqa: E402
COLD_START_S = 1.0
HANDLER_S = 0.05
CONCURRENCY = 10


class Cluster:
    """An ingress in front of a service at zero, with pods of CONCURRENCY slots each."""

    def __init__(self):
        self.pods = 0
        self.starting = 0
        self.busy = 0
        self.waiting: list[asyncio.Future] = []
        self.ready_at: float | None = None
        self.arrivals: list[float] = []
        self.max_queue = 0

    async def handle(self, request: web.Request) -> web.Response:
        if request.path == "/wake":
            if not self.pods and not self.starting:
                self._start_pod()
            return web.Response(status=202)
        if request.path == "/healthz":
            return web.Response(status=200 if self.pods else 503)
        if not self.pods and not self.starting:
            self._start_pod()  # traffic wakes it too
        self.arrivals.append(time.monotonic())
        while self.busy >= self.pods * CONCURRENCY:
            fut = asyncio.get_running_loop().create_future()
            self.waiting.append(fut)
            self.max_queue = max(self.max_queue, len(self.waiting))
            if len(self.waiting) > (self.pods + self.starting) * CONCURRENCY:
                self._start_pod()  # autoscaler: one more pod per CONCURRENCY queued
            await fut
        self.busy += 1
        try:
            await asyncio.sleep(HANDLER_S)
        finally:
            self.busy -= 1
            self._wake_one()
        return web.Response(text="ok")

    def _start_pod(self) -> None:
        self.starting += 1
        asyncio.get_running_loop().call_later(COLD_START_S, self._pod_ready)

    def _pod_ready(self) -> None:
        self.starting -= 1
        self.pods += 1
        if self.ready_at is None:
            self.ready_at = time.monotonic()
        for _ in range(CONCURRENCY):
            self._wake_one()

    def _wake_one(self) -> None:
        while self.waiting:
            fut = self.waiting.pop(0)
            if not fut.done():
                fut.set_result(None)
                return


def config(port: int, paced: bool) -> str:
    cc = "  containerConcurrency: 10\n" if paced else ""
    return f"""apiVersion: edge.router/v1alpha1
kind: Cluster
metadata: {{name: us-west, labels: {{region: us-west}}}}
spec: {{endpoint: "http://127.0.0.1:{port}"}}
---
apiVersion: edge.router/v1alpha1
kind: Service
metadata: {{name: svc}}
spec:
  hosts: [svc.example.com]
{cc}  holdLimit: 30s
  wake: {{http: {{path: /wake}}}}
  readinessPath: /healthz
  state: {{us-west: cached}}
---
apiVersion: edge.router/v1alpha1
kind: TrafficSplit
metadata: {{name: s}}
spec:
  service: svc
  clusters: [{{name: us-west, weight: 1}}]
---
apiVersion: edge.router/v1alpha1
kind: Router
metadata: {{name: edge}}
spec:
  probes: {{enabled: false}}
  limits: {{maxHeaders: 100}}
  buffer: {{perService: 20000, total: 20000}}
  timeouts: {{drain: 1s}}
"""


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


async def start_router(work: str, text: str) -> tuple[subprocess.Popen, int]:
    path = os.path.join(work, "router.yaml")
    with open(path, "w") as fh:
        fh.write(text)
    proc = subprocess.Popen([sys.executable, "-m", "router", "serve", "--config", path, "--listen", "127.0.0.1:0",
                             "--admin", "127.0.0.1:0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=ROOT)
    loop = asyncio.get_running_loop()
    while True:
        line = await asyncio.wait_for(loop.run_in_executor(None, proc.stdout.readline), 20)
        if not line:
            raise RuntimeError("router did not start")
        if "serving on" in line:
            return proc, int(re.findall(r":(\d+)", line)[-2])


async def one_request(port: int, out: list) -> None:
    t0 = time.monotonic()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /x HTTP/1.1\r\nHost: svc.example.com\r\nConnection: close\r\n\r\n")
        line = await asyncio.wait_for(reader.readline(), 60)
        await reader.read()
        writer.close()
        status = int(line.split()[1]) if line.startswith(b"HTTP/1.1 ") else 0
    except (OSError, asyncio.TimeoutError, ValueError, IndexError):
        status = 0
    out.append((status, time.monotonic() - t0))


async def burst(paced: bool, n: int, work: str) -> dict:
    cluster = Cluster()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", cluster.handle)
    runner, port = await start_site(app, "127.0.0.1", 0, backlog=4096)
    proc, rport = await start_router(work, config(port, paced))
    try:
        results: list = []
        await asyncio.gather(*[one_request(rport, results) for _ in range(n)])
        peak = rss_mb(proc.pid, "VmHWM")
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.get_running_loop().run_in_executor(None, proc.wait, 30)
        proc.stdout.close()
        await runner.cleanup()
    statuses = [s for s, _ in results]
    holds = sorted(max(t - HANDLER_S, 0.0) for s, t in results if s == 200)
    ready = cluster.ready_at or 0.0
    after = sorted(t - ready for t in cluster.arrivals if t >= ready)

    def pct(p: float) -> float:
        return round(holds[min(int(p * len(holds)), len(holds) - 1)] * 1000, 1) if holds else 0.0
    return {"requests": n, "lost": sum(1 for s in statuses if s == 0),
            "rejected": statuses.count(503), "expired": statuses.count(504),
            "ok": statuses.count(200),
            "first_release_ms": round(after[0] * 1000, 1) if after else None,
            "last_release_ms": round(after[-1] * 1000, 1) if after else None,
            "p50_hold_ms": pct(0.5), "p99_hold_ms": pct(0.99), "peak_rss_mb": round(peak, 1),
            "cluster_max_queue": cluster.max_queue, "pods_started": cluster.pods}


async def hold_many(n: int, work: str) -> dict:
    """Hold n requests at once (the cluster never wakes) and read the router's RSS."""
    sink = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)  # a wake target that never starts
    port = sink.sockets[0].getsockname()[1]
    proc, rport = await start_router(work, config(port, True).replace("holdLimit: 30s", "holdLimit: 60s"))
    writers = []
    try:
        base = rss_mb(proc.pid)
        for i in range(n):
            _, w = await asyncio.open_connection("127.0.0.1", rport)
            w.write(b"GET /x HTTP/1.1\r\nHost: svc.example.com\r\n\r\n")
            writers.append(w)
            if i % 500 == 499:
                await asyncio.sleep(0.05)
        end, last = time.monotonic() + 30, -1.0
        while time.monotonic() < end:  # wait until every request is parsed and held (RSS stops growing)
            await asyncio.sleep(1.0)
            now_rss = rss_mb(proc.pid)
            if abs(now_rss - last) < 0.5:
                break
            last = now_rss
        return {"held": n, "router_rss_idle_mb": round(base, 1), "router_rss_holding_mb": round(rss_mb(proc.pid), 1)}
    finally:
        for w in writers:
            w.transport.abort()
        await asyncio.sleep(0.5)  # let the aborts reach the sockets before the router is told to stop
        proc.send_signal(signal.SIGTERM)
        await asyncio.get_running_loop().run_in_executor(None, proc.wait, 60)
        proc.stdout.close()
        sink.close()


async def main_async(args) -> dict:
    work = tempfile.mkdtemp(prefix="edge-coldstart-")
    report = {"router": await burst(True, args.requests, work), "release_all": await burst(False, args.requests, work)}
    if args.held:
        report["holding"] = await hold_many(args.held, work)
    return report


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--held", type=int, default=10_000)
    ap.add_argument("--out")
    args = ap.parse_args()
    import uvloop
    report = uvloop.run(main_async(args))
    keys = ["lost", "rejected", "expired", "first_release_ms", "last_release_ms", "p50_hold_ms", "p99_hold_ms",
            "peak_rss_mb", "cluster_max_queue", "pods_started"]
    print(f"{'':12}" + "".join(f"{k:>18}" for k in keys))
    for name in ("router", "release_all"):
        print(f"{name:12}" + "".join(f"{str(report[name][k]):>18}" for k in keys))
    if "holding" in report:
        h = report["holding"]
        print(f"holding {h['held']} requests: router RSS {h['router_rss_holding_mb']} MB (idle {h['router_rss_idle_mb']} MB)")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(report, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
