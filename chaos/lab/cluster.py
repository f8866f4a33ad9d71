"""One simulated regional cluster of the lab.

    WAN relay (one-way delay ± jitter, faults) -> ingress (routes by Host; at zero it holds the
    request and scales up, like Knative's activator) -> pods (asyncio HTTP servers with a handler
    time and a concurrency limit)

plus the Kubernetes API double the router's provider watches: one Deployment per service
(spec.replicas = what the autoscaler or a wake asked for, status.readyReplicas = pods serving)
and one Node whose status.images lists the images pulled. A pod starts after the image pull
(cold start uncached) or at once from the cache (cold start cached). The autoscaler sizes each
Deployment from its peak concurrency over a short window, keeps that for the idle grace, and
scales to zero after the idle grace without requests.
"""
from __future__ import annotations

import asyncio
import math
import random
import time

import aiohttp
from aiohttp import web

from chaos.kubeapi import KubeApiDouble
from chaos.relay import DelayRelay
from router.obs.admin import start_site

from .config import ClusterSpec, LabConfig, ServiceSpec

NAMESPACE = "lab"
HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection",
       "content-length", "host"}
TARGET_UTILISATION = 0.7  # Knative's default target: 70% of containerConcurrency


class Pod:
    """A replica: its own HTTP server on 127.0.0.1 serving one service."""

    def __init__(self, cluster: "SimCluster", deployment: "Deployment", name: str):
        self.cluster, self.deployment, self.name = cluster, deployment, name
        self.spec = deployment.spec
        self.slots = asyncio.Semaphore(self.spec.concurrency)
        self.inflight = 0
        self.runner: web.AppRunner | None = None
        self.port = 0
        self.body = b"x" * self.spec.body_bytes

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner, self.port = await start_site(app, "127.0.0.1", 0)

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def handle(self, request: web.Request) -> web.Response:
        rid = request.headers.get("x-lab-request-id")
        if rid:
            self.cluster.lab_seen(rid)
        await request.read()
        async with self.slots:
            spec = self.spec
            await asyncio.sleep(spec.handler_s * (1 + self.cluster.rng.uniform(-spec.handler_jitter, spec.handler_jitter)))
            if self.cluster.error_rate and self.cluster.rng.random() < self.cluster.error_rate:
                return web.Response(status=500, text=f"injected failure in {self.cluster.spec.name}\n")
            return web.Response(body=self.body, headers={
                "x-lab-cluster": self.cluster.spec.name, "x-lab-pod": self.name, "x-lab-bytes": str(len(self.body)),
                "content-type": "application/octet-stream"})


class Deployment:
    def __init__(self, cluster: "SimCluster", spec: ServiceSpec, replicas: int):
        self.cluster, self.spec = cluster, spec
        self.desired = replicas
        self.pods: list[Pod] = []
        self.starting = 0
        self.inflight = 0  # at the ingress, held requests included
        self.peak = 0
        self.wants: list[tuple[float, int]] = []  # (time, replicas wanted) over the idle grace
        self.last_request = 0.0
        self.ready = asyncio.Event()
        self.published: tuple | None = None
        self.counter = 0
        self.cold_starts = 0

    def pick(self) -> Pod:
        return min(self.pods, key=lambda p: p.inflight)

    def want(self, now: float, replicas: int) -> None:
        self.wants.append((now, replicas))


class SimCluster:
    def __init__(self, spec: ClusterSpec, lab: LabConfig, seen: dict, rng: random.Random | None = None):
        self.spec, self.lab = spec, lab
        self.rng = rng or random.Random(hash(spec.name) & 0xFFFF)
        self.seen = seen
        self.api = KubeApiDouble(bookmark_interval_s=1.0)
        self.api.scale_hooks.append(self._on_scale_patch)
        self.api.pod_delete_hooks.append(self._on_pods_deleted)
        one_way = spec.rtt_ms / 2000.0
        self.relay: DelayRelay | None = None
        self.one_way_s = one_way
        self.deployments: dict[str, Deployment] = {}
        self.by_host: dict[str, Deployment] = {}
        self.node_images: set[str] = set()
        self.pulling: dict[str, asyncio.Future] = {}
        self.error_rate = 0.0
        self.killed = False
        self.runner: web.AppRunner | None = None
        self.ingress_port = 0
        self.session: aiohttp.ClientSession | None = None
        self.tasks: set[asyncio.Task] = set()
        self.ticker: asyncio.Task | None = None
        self.node = f"{spec.name}-node-1"
        for svc in lab.services:
            d = Deployment(self, svc, int(svc.replicas.get(spec.name, 0)))
            self.deployments[svc.name] = d
            self.by_host[svc.host] = d
            if spec.name in svc.cached_in:
                self.node_images.add(svc.image)

    def lab_seen(self, rid: str) -> None:
        self.seen[rid] = self.seen.get(rid, 0) + 1

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.relay.port}"

    # --- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        await self.api.start()
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self.ingress)
        self.runner, self.ingress_port = await start_site(app, "127.0.0.1", 0)
        self.relay = DelayRelay(("127.0.0.1", self.ingress_port), delay_s=self.one_way_s,
                                jitter_s=self.one_way_s * self.lab.jitter, rng=random.Random(self.rng.random()))
        await self.relay.start()
        self._publish_node()
        now = time.monotonic()
        for d in self.deployments.values():
            if d.desired:
                d.want(now, d.desired)
                d.last_request = now
            self._publish(d)
        # initial replicas are already running: start their pods before the lab reports ready
        await asyncio.gather(*[self._start_pod(d, instant=True) for d in self.deployments.values()
                               for _ in range(d.desired)])
        self.ticker = asyncio.get_running_loop().create_task(self._autoscale_loop())

    async def stop(self) -> None:
        if self.ticker is not None:
            self.ticker.cancel()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.relay is not None:
            await self.relay.stop()
        if self.runner is not None:
            await self.runner.cleanup()
        for d in self.deployments.values():
            for pod in d.pods:
                await pod.stop()
            d.pods.clear()
        if self.session is not None:
            await self.session.close()
        await self.api.stop()

    def spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    # --- ingress ------------------------------------------------------------------------
    async def ingress(self, request: web.Request) -> web.StreamResponse:
        host = (request.host or "").rsplit(":", 1)[0] if not (request.host or "").startswith("[") else request.host
        d = self.by_host.get(host)
        if d is None:
            return web.Response(status=404, text=f"{self.spec.name}: no service for host {host!r}\n")
        now = time.monotonic()
        d.inflight += 1
        d.peak = max(d.peak, d.inflight)
        d.last_request = now
        try:
            queued = 0.0
            if not d.pods:  # at zero: hold here and scale up, as Knative's activator does
                if d.desired == 0:
                    d.want(now, 1)
                    self._scale_to(d, 1)
                try:
                    await asyncio.wait_for(d.ready.wait(), 60)
                except asyncio.TimeoutError:
                    return web.Response(status=503, text=f"{self.spec.name}: {d.spec.name} did not become ready\n")
                queued = time.monotonic() - now
            pod = d.pick()
            pod.inflight += 1
            try:
                headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
                body = await request.read()
                async with self.session.request(request.method, f"http://127.0.0.1:{pod.port}{request.path_qs}",
                                                headers=headers, data=body or None) as r:
                    payload = await r.read()
                    out = {k: v for k, v in r.headers.items() if k.lower() not in HOP}
                    if queued:
                        out["x-lab-queued-ms"] = f"{queued * 1000:.0f}"
                    return web.Response(status=r.status, headers=out, body=payload)
            finally:
                pod.inflight -= 1
        except aiohttp.ClientError as exc:
            return web.Response(status=502, text=f"{self.spec.name}: pod failed: {exc}\n")
        finally:
            d.inflight -= 1
            d.last_request = time.monotonic()

    # --- autoscaler ---------------------------------------------------------------------
    def _on_scale_patch(self, namespace: str, name: str, replicas: int) -> None:
        d = self.deployments.get(name)
        if d is None or namespace != NAMESPACE:
            return
        now = time.monotonic()
        d.want(now, replicas)
        if replicas:
            d.last_request = max(d.last_request, now)  # a wake counts as activity for the idle grace
        self._scale_to(d, replicas)

    def _on_pods_deleted(self, namespace: str, selector: str) -> int:
        """Pods deleted by label (app=NAME): the Deployment's ReplicaSet starts new ones (a cold start)."""
        name = selector.partition("app=")[2].split(",")[0]
        d = self.deployments.get(name)
        if d is None or namespace != NAMESPACE:
            return 0
        gone = list(d.pods)
        d.pods.clear()
        d.ready.clear()
        for pod in gone:
            self.spawn(pod.stop())
        self._scale_to(d, d.desired)
        return len(gone)

    async def _autoscale_loop(self) -> None:
        while True:
            await asyncio.sleep(0.25)
            now = time.monotonic()
            for d in self.deployments.values():
                self.autoscale(d, now)

    def autoscale(self, d: Deployment, now: float) -> None:
        grace = self.lab.idle_grace_s
        window = self.lab.autoscale_window_s
        demand = max(d.peak, d.inflight)
        d.peak = d.inflight
        if demand:
            d.want(now, math.ceil(demand / (d.spec.concurrency * TARGET_UTILISATION)))
        d.wants = [(t, n) for t, n in d.wants if now - t <= grace]
        recent = [n for t, n in d.wants if now - t <= window]
        if d.inflight == 0 and now - d.last_request > grace:
            target = 0
        else:
            target = max([n for _, n in d.wants] + [1 if d.desired else 0])
        target = max(target, max(recent, default=0))
        target = min(target, self.lab.max_replicas)
        if target != d.desired:
            self._scale_to(d, target)

    def scale_to_zero(self, name: str) -> None:
        d = self.deployments[name]
        d.wants.clear()
        d.last_request = 0.0
        self._scale_to(d, 0)

    def _scale_to(self, d: Deployment, replicas: int) -> None:
        d.desired = replicas
        have = len(d.pods) + d.starting
        for _ in range(replicas - have):
            self.spawn(self._start_pod(d))
        if replicas < len(d.pods):
            extra = sorted(d.pods, key=lambda p: p.inflight)[:len(d.pods) - replicas]
            for pod in extra:
                d.pods.remove(pod)
                self.spawn(self._drain_pod(pod))
            if not d.pods:
                d.ready.clear()
        self._publish(d)

    async def _start_pod(self, d: Deployment, instant: bool = False) -> None:
        d.starting += 1
        self._publish(d)
        try:
            if not instant:
                d.cold_starts += 1
                image = d.spec.image
                if image not in self.node_images:
                    await self._pull(image)
                await asyncio.sleep(self.lab.cold_start_cached_s)
            if len(d.pods) >= d.desired and not instant:
                return  # scaled back down while starting
            d.counter += 1
            pod = Pod(self, d, f"{d.spec.name}-{d.counter}")
            await pod.start()
            d.pods.append(pod)
            d.ready.set()
        finally:
            d.starting -= 1
            self._publish(d)

    async def _pull(self, image: str) -> None:
        fut = self.pulling.get(image)
        if fut is None:
            async def pull():
                await asyncio.sleep(max(self.lab.cold_start_uncached_s - self.lab.cold_start_cached_s, 0))
                self.node_images.add(image)
                self._publish_node()
            fut = self.pulling[image] = asyncio.ensure_future(pull())
            fut.add_done_callback(lambda _: self.pulling.pop(image, None))
        await asyncio.shield(fut)

    async def _drain_pod(self, pod: Pod) -> None:
        end = time.monotonic() + 30
        while pod.inflight and time.monotonic() < end:
            await asyncio.sleep(0.05)
        await pod.stop()

    # --- API double ---------------------------------------------------------------------
    def _publish(self, d: Deployment) -> None:
        state = (d.desired, len(d.pods))
        if state == d.published:
            return
        d.published = state
        self.api.set_deployment(NAMESPACE, d.spec.name, replicas=d.desired, ready=len(d.pods), image=d.spec.image)

    def _publish_node(self) -> None:
        self.api.set_node_images(self.node, [[image] for image in sorted(self.node_images)])

    def evict_images(self) -> None:
        """The node's image cache is emptied (images of running pods stay, as the kubelet keeps them)."""
        running = {d.spec.image for d in self.deployments.values() if d.pods}
        self.node_images &= running
        self._publish_node()

    # --- state for views and reports ----------------------------------------------------------
    def describe(self) -> dict:
        return {name: {"desired": d.desired, "ready": len(d.pods), "starting": d.starting, "inflight": d.inflight,
                       "cached": d.spec.image in self.node_images, "cold_starts": d.cold_starts}
                for name, d in self.deployments.items()}
