"""Active probes: per cluster, every interval (±20% jitter), a fresh TCP connect (timed) and
an HTTP GET of the cluster's probe path (timed to the response head). Results go into the
policy inputs: health (probe thresholds) and RTT (network RTT from the probe's round trip;
connect time kept apart). A failed probe is repeated sooner, so a silent cluster is found fast.
"""
from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Callable

from ..config.model import ClusterConfig
from ..core.choice import PolicyInputs
from ..core.health import is_local_exhaustion
from ..dataplane.dns import DnsCache

log = logging.getLogger("router.probes")
RETRY_AFTER_FAILURE = 0.25  # fraction of the interval before re-probing a failing cluster


async def probe_once(cluster: ClusterConfig, timeout_s: float, dns: DnsCache | None = None) -> tuple[float, float]:
    """(connect_s, http_s) or raises OSError / asyncio.TimeoutError / ValueError. A named endpoint is
    reached at the address the data path uses (`dns`), so a failing resolver that the data path rides
    out on its last good addresses does not fail the probes either."""
    ep = cluster.endpoint
    host = ep.host if dns is None else (await asyncio.wait_for(dns.resolve(ep.host, ep.port), timeout_s))[0]
    t0 = time.monotonic()  # the connect alone: it is an RTT sample
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(host, ep.port, **ep.connect_options()), timeout_s)
    connect_s = time.monotonic() - t0
    try:
        t1 = time.monotonic()
        writer.write(f"GET {cluster.probe_path} HTTP/1.1\r\nHost: {ep.host}\r\nUser-Agent: edge-router-probe\r\n"
                     f"Connection: close\r\n\r\n".encode())
        line = await asyncio.wait_for(reader.readline(), max(timeout_s - connect_s, 0.01))
        http_s = time.monotonic() - t1
    finally:
        writer.close()
    parts = line.split()
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise ValueError(f"not an HTTP response: {line[:40]!r}")
    if int(parts[1]) >= 500:
        raise ValueError(f"probe answered {int(parts[1])}")
    return connect_s, http_s


class Prober:
    def __init__(self, policy: PolicyInputs, clusters: Callable[[], tuple[ClusterConfig, ...]],
                 interval_s: Callable[[], float], timeout_s: Callable[[], float], on_result=None,
                 rng: random.Random | None = None, dns: DnsCache | None = None):
        self.policy, self.clusters = policy, clusters
        self.dns = dns  # the data path's names and addresses
        self.interval_s, self.timeout_s = interval_s, timeout_s
        self.on_result = on_result  # (cluster, ok, connect_s, http_s) -> None, for metrics
        self.rng = rng or random.Random()
        self.tasks: dict[str, asyncio.Task] = {}
        self.last: dict[str, dict] = {}

    def sync(self) -> None:
        """Start probing new clusters, stop probing removed ones (called after each reload)."""
        wanted = {c.name for c in self.clusters()}
        for name in list(self.tasks):
            if name not in wanted:
                self.tasks.pop(name).cancel()
        for name in wanted - set(self.tasks):
            self.tasks[name] = asyncio.get_running_loop().create_task(self._run(name))

    def stop(self) -> None:
        for task in self.tasks.values():
            task.cancel()
        self.tasks.clear()

    def _cluster(self, name: str) -> ClusterConfig | None:
        for c in self.clusters():
            if c.name == name:
                return c
        return None

    async def _run(self, name: str) -> None:
        await asyncio.sleep(self.rng.uniform(0, 0.2) * self.interval_s())  # spread the first round
        while True:
            cluster = self._cluster(name)
            if cluster is None:
                return
            ok = await self.probe(cluster)
            delay = self.interval_s() * self.rng.uniform(0.8, 1.2)
            await asyncio.sleep(delay if ok else delay * RETRY_AFTER_FAILURE)

    async def probe(self, cluster: ClusterConfig) -> bool:
        now = time.monotonic()
        try:
            connect_s, http_s = await probe_once(cluster, self.timeout_s(), self.dns)
        except (OSError, asyncio.TimeoutError, ValueError) as exc:
            reason = "timeout" if isinstance(exc, asyncio.TimeoutError) else str(exc) or type(exc).__name__
            if is_local_exhaustion(exc):  # the router's own limit: says nothing about the cluster
                self.last[cluster.name] = {"ok": None, "error": f"not probed: {reason}", "at": now}
                return False
            self.policy.health.on_probe(cluster.name, False, time.monotonic(), reason)
            self.last[cluster.name] = {"ok": False, "error": reason, "at": now}
            if self.on_result:
                self.on_result(cluster.name, False, None, None)
            return False
        done = time.monotonic()
        health = self.policy.health
        was_healthy = health.is_healthy(cluster.name, done)
        health.on_probe(cluster.name, True, done)
        if not was_healthy and health.is_healthy(cluster.name, done):
            self.policy.rtt.forget(cluster.name)  # back from an outage: measure afresh from this probe
        self.policy.rtt.on_probe(cluster.name, connect_s, http_s, done)
        self.last[cluster.name] = {"ok": True, "connect_s": round(connect_s, 6), "http_s": round(http_s, 6), "at": now}
        if self.on_result:
            self.on_result(cluster.name, True, connect_s, http_s)
        return True
