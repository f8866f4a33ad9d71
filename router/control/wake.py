"""Wake triggers: ask a cluster to start a copy of a service. One interface, several kinds.

`HttpWake` requests a configured path on the cluster's ingress with the service's Host (for
example the service through the cluster's own activator); the request being accepted is the
wake. `FakeWake` records calls for tests and the lab. The Kubernetes triggers (scale
subresource, Knative min-scale) implement the same interface. `WakeManager` makes wakes
idempotent: one in progress per (service, cluster), backoff with jitter after a failure.
"""
from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Callable, Protocol

from ..config.model import ClusterConfig, ServiceConfig

log = logging.getLogger("router.wake")


class WakeError(Exception):
    pass


class WakeTrigger(Protocol):
    async def wake(self, service: ServiceConfig, cluster: ClusterConfig) -> None: ...


class HttpWake:
    def __init__(self, timeout_s: float = 2.0):
        self.timeout_s = timeout_s
        self.pending: set[asyncio.Task] = set()

    async def wake(self, service: ServiceConfig, cluster: ClusterConfig) -> None:
        if service.wake_path is None:
            raise WakeError(f"service {service.name} has no wake configured")
        ep = cluster.endpoint
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(ep.host, ep.port, **ep.connect_options()), self.timeout_s)
        except (OSError, asyncio.TimeoutError) as exc:
            raise WakeError(f"cannot reach {cluster.name}: {exc or 'timeout'}") from None
        host = service.hosts[0] if service.hosts else ep.host
        writer.write(f"{service.wake_method} {service.wake_path} HTTP/1.1\r\nHost: {host}\r\n"
                     f"User-Agent: edge-router-wake\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())
        # The cluster may hold this request until its copy is ready: wait for the answer in the background.
        task = asyncio.get_running_loop().create_task(self._drain(reader, writer, service.name, cluster.name))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def _drain(self, reader, writer, service: str, cluster: str) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 120)
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit() and int(parts[1]) >= 500:
                log.warning("wake of %s in %s answered %s", service, cluster, int(parts[1]))
        except (OSError, asyncio.TimeoutError):
            pass
        finally:
            writer.close()

    def close(self) -> None:
        for task in self.pending:
            task.cancel()


class FakeWake:
    """Records wakes; `fail` makes the next calls raise; `on_wake` runs for each call."""

    def __init__(self, on_wake: Callable[[str, str], None] | None = None):
        self.calls: list[tuple[str, str]] = []
        self.fail = 0
        self.on_wake = on_wake

    async def wake(self, service: ServiceConfig, cluster: ClusterConfig) -> None:
        self.calls.append((service.name, cluster.name))
        if self.fail:
            self.fail -= 1
            raise WakeError("fake failure")
        if self.on_wake:
            self.on_wake(service.name, cluster.name)


class WakeManager:
    BACKOFF_BASE_S = 0.5
    BACKOFF_MAX_S = 30.0

    def __init__(self, trigger: WakeTrigger, on_woken: Callable[[str, str], None],
                 count: Callable[[str, str], None], rng: random.Random | None = None):
        self.trigger, self.on_woken, self.count = trigger, on_woken, count
        self.rng = rng or random.Random()
        self.in_progress: set[tuple[str, str]] = set()
        self.failures: dict[tuple[str, str], int] = {}
        self.not_before: dict[tuple[str, str], float] = {}
        self.tasks: set[asyncio.Task] = set()

    def request(self, service: ServiceConfig, cluster: ClusterConfig) -> bool:
        """Start a wake unless one is running or backing off. Returns whether one started."""
        key = (service.name, cluster.name)
        if key in self.in_progress or time.monotonic() < self.not_before.get(key, 0.0):
            self.count(cluster.name, "deduplicated")
            return False
        self.in_progress.add(key)
        task = asyncio.get_running_loop().create_task(self._run(service, cluster, key))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return True

    def failing(self, service: str, cluster: str) -> bool:
        """The last wake of this pair failed (it is backing off)."""
        return self.failures.get((service, cluster), 0) > 0

    def done(self, service: str, cluster: str) -> None:
        """The copy is ready: a later wake for this pair is a new one."""
        self.in_progress.discard((service, cluster))

    async def _run(self, service: ServiceConfig, cluster: ClusterConfig, key) -> None:
        try:
            await self.trigger.wake(service, cluster)
        except (WakeError, OSError) as exc:
            n = self.failures.get(key, 0) + 1
            self.failures[key] = n
            delay = min(self.BACKOFF_BASE_S * 2 ** (n - 1), self.BACKOFF_MAX_S) * self.rng.uniform(0.5, 1.0)
            self.not_before[key] = time.monotonic() + delay
            self.in_progress.discard(key)
            self.count(cluster.name, "error")
            log.warning("wake of %s in %s failed (%s); next try in %.1fs", service.name, cluster.name, exc, delay)
            return
        self.failures.pop(key, None)
        self.count(cluster.name, "ok")
        self.on_woken(service.name, cluster.name)

    def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        close = getattr(self.trigger, "close", None)
        if close is not None:
            close()  # e.g. wake requests still waiting for their answer
