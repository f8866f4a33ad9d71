"""Outlier ejections shared by the workers of `serve --workers N`: a cluster one worker ejects (5 consecutive
5xx, a refused connect) is taken out at every worker for as long, so a failing cluster costs the clients
about one worker's worth of failures rather than one per worker.

Every TICK_S each worker publishes the ejections it decided itself (until when, in milliseconds of the
monotonic clock, which every process on the host shares) in its region of a shared-memory table, and
takes up those the other workers publish (HealthState.on_ejected_elsewhere). A worker's own probes may
end such an ejection early, as they end its own; the worker that decided it is told by its own probes too.
"""
from __future__ import annotations

from .ticker import TickLoop

TICK_S = 0.25


class EjectionSharing(TickLoop):
    name = "ejection sharing"

    def __init__(self, ctx, table, tick_s: float = TICK_S):
        super().__init__(tick_s)
        self.ctx, self.table = ctx, table
        self.published: set[str] = set()  # clusters this worker told the others it ejected

    def tick(self) -> dict[str, float]:
        """Publish this worker's ejections, take up the others'; returns those taken up."""
        ctx = self.ctx
        now = ctx.clock()
        health, table = ctx.health, self.table
        own = health.own_ejections(now)
        for cluster in self.published | set(own):
            table.publish(cluster, int(own.get(cluster, 0.0) * 1000))
        self.published = set(own)
        taken = {}
        for cluster in ctx.snapshot.config.clusters:
            until = table.most(cluster.name) / 1000
            if until > now:
                health.on_ejected_elsewhere(cluster.name, until, now)
                taken[cluster.name] = until
        return taken
