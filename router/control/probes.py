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
from ..core.probeturn import unseen
from ..dataplane.dns import DnsCache
from ..dataplane.sharedprobes import probe_key

log = logging.getLogger("router.probes")
RETRY_AFTER_FAILURE = 0.25  # fraction of the interval before re-probing a failing cluster
TURN_SPREAD_S = 0.01  # workers look at a due probe within this of each other, not all at one instant


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
    """Probes every cluster of the config. With `shared` (a worker of `serve --workers N`: a SharedProbes
    table) the workers take turns: a cluster is probed by one worker an interval, and the others apply
    the result it publishes as if they had probed (health and RTT), so each cluster sees one probe an
    interval from the router and every worker judges it alike."""

    def __init__(self, policy: PolicyInputs, clusters: Callable[[], tuple[ClusterConfig, ...]],
                 interval_s: Callable[[], float], timeout_s: Callable[[], float], on_result=None,
                 rng: random.Random | None = None, dns: DnsCache | None = None, shared=None):
        self.policy, self.clusters = policy, clusters
        self.dns = dns  # the data path's names and addresses
        self.interval_s, self.timeout_s = interval_s, timeout_s
        self.on_result = on_result  # (cluster, ok, connect_s, http_s) -> None, for metrics: own probes only
        self.rng = rng or random.Random()
        self.shared = shared
        self.seen: dict[str, int] = {}  # cluster -> the shared result applied last (its sequence number)
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
            if self.shared is None:
                delay = self._next_delay(await self.probe(cluster))
            else:
                delay = await self._take_turn(cluster)
            await asyncio.sleep(delay)

    def _next_delay(self, ok: bool) -> float:
        delay = self.interval_s() * self.rng.uniform(0.8, 1.2)
        return delay if ok else delay * RETRY_AFTER_FAILURE

    async def probe(self, cluster: ClusterConfig) -> bool:
        """Probe now and apply the result; False when it failed (or could not be sent)."""
        result = await self._measure(cluster)
        if result is None:
            return False
        self._apply(cluster.name, *result)
        return result[1]

    async def _take_turn(self, cluster: ClusterConfig) -> float:
        """One look at the shared record: apply a result not applied yet (another worker's), then sleep
        until the next probe is due, look again soon while another worker probes, or probe and publish.
        Returns how long to sleep before the next look."""
        key = probe_key(cluster)
        now = time.monotonic()
        interval, timeout = self.interval_s(), self.timeout_s()
        what, when, record = self.shared.turn(key, now, timeout)
        if unseen(record, self.seen.get(cluster.name), now, 2 * (interval + timeout)):
            self.seen[cluster.name] = record.seq
            self._apply(cluster.name, record.at, record.ok, record.connect_s, record.http_s, record.reason,
                        by=record.by)
        if what == "take":
            return when - now + self.rng.uniform(0, TURN_SPREAD_S)
        if what == "wait":  # (looked at again well within the interval: the result comes before the next is due)
            return min(when - now, RETRY_AFTER_FAILURE * interval)
        try:
            result = await self._measure(cluster)
        except asyncio.CancelledError:  # the cluster left the config, or the worker stops
            self.shared.release(key)
            raise
        if result is None:
            self.shared.release(key)
            return self._next_delay(False)
        self._apply(cluster.name, *result)
        delay = self._next_delay(result[1])
        self.seen[cluster.name] = self.shared.publish(key, result[0], time.monotonic() + delay, *result[1:])
        return delay + self.rng.uniform(0, TURN_SPREAD_S)  # the next turn goes to whoever looks first

    async def _measure(self, cluster: ClusterConfig) -> tuple | None:
        """(started, ok, connect_s, http_s, reason); None when the router's own limits kept it from probing
        (that says nothing about the cluster). Counted in on_result."""
        now = time.monotonic()
        try:
            connect_s, http_s = await probe_once(cluster, self.timeout_s(), self.dns)
        except (OSError, asyncio.TimeoutError, ValueError) as exc:
            reason = "timeout" if isinstance(exc, asyncio.TimeoutError) else str(exc) or type(exc).__name__
            if is_local_exhaustion(exc):
                self.last[cluster.name] = {"ok": None, "error": f"not probed: {reason}", "at": now}
                return None
            if self.on_result:
                self.on_result(cluster.name, False, None, None)
            return now, False, None, None, reason
        if self.on_result:
            self.on_result(cluster.name, True, connect_s, http_s)
        return now, True, connect_s, http_s, ""

    def _apply(self, name: str, started: float, ok: bool, connect_s: float | None, http_s: float | None,
               reason: str, by: int | None = None) -> None:
        """A probe result (this worker's, or with `by` another worker's) into health, RTT and `last`."""
        done = time.monotonic()
        health = self.policy.health
        if not ok:
            health.on_probe(name, False, done, reason)
            last = {"ok": False, "error": reason, "at": started}
        else:
            was_healthy = health.is_healthy(name, done)
            health.on_probe(name, True, done)
            if not was_healthy and health.is_healthy(name, done):
                self.policy.rtt.forget(name)  # back from an outage: measure afresh from this probe
            self.policy.rtt.on_probe(name, connect_s, http_s, done)
            last = {"ok": True, "connect_s": round(connect_s, 6), "http_s": round(http_s, 6), "at": started}
        if by is not None:
            last["by_worker"] = by
        self.last[name] = last
