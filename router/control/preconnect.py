"""Preconnect loop: keeps Cluster spec.preconnect idle connections open to each cluster.

A request that finds an idle pooled connection skips the TCP (and TLS) handshake: over a WAN
link that is one round trip (two with TLS) off its latency, which matters most for the first
requests after a failover to a far region and for rarely used clusters. Every tick the loop
counts the pool's idle connections per cluster, asks router.core.preconnect what to open, opens
those off the request path and hands them to the pool, where requests take them (and return
them) like any other; idle ones are closed after `timeouts.upstreamIdle` as usual and replaced.
"""
from __future__ import annotations

import asyncio
import logging

from ..core.preconnect import connections_to_open
from ..core.snapshot import pool_key
from .ticker import TickLoop

log = logging.getLogger("router.preconnect")
TICK_S = 1.0


class Preconnector(TickLoop):
    name = "preconnect"

    def __init__(self, ctx, tick_s: float = TICK_S):
        super().__init__(tick_s)
        self.ctx = ctx
        self.opening: dict[str, int] = {}

    def tick(self) -> dict[str, int]:
        """Decide with the policy, then open. Returns the plan (for tests)."""
        ctx = self.ctx
        if ctx.draining:
            return {}
        clusters = {c.name: c for c in ctx.snapshot.config.clusters if c.preconnect}
        now = ctx.clock()
        idle = {name: ctx.pool.idle_count(pool_key(c.endpoint)) for name, c in clusters.items()}
        plan = connections_to_open({name: c.preconnect for name, c in clusters.items()}, idle, self.opening,
                                   lambda name: ctx.health.is_healthy(name, now))
        for name, n in plan.items():
            for _ in range(n):
                self.opening[name] = self.opening.get(name, 0) + 1
                self.spawn(self._open(clusters[name]))
        return plan

    async def _open(self, cluster) -> None:
        ctx = self.ctx
        try:
            conn = await ctx.pool.connect(cluster.endpoint, pool_key(cluster.endpoint), ctx.settings.timeouts.connect_s,
                                          ctx.settings.limits)
        except (OSError, asyncio.TimeoutError) as exc:  # the probes and real requests judge health, not this
            ctx.metrics.preconnects.labels(cluster.name, "error").inc()
            log.debug("preconnect to %s failed: %s", cluster.name, exc)
            return
        finally:
            self.opening[cluster.name] -= 1
        ctx.metrics.preconnects.labels(cluster.name, "ok").inc()
        ctx.pool.release(conn)
