"""Keep-warm loop: executes router.core.keepwarm's actions for Services with `keepWarm: true`.

The data path reports each request it sends (`ProxyContext.keep_warm_seen`); every few seconds
this loop asks the policy what to do and does it: "wake" goes through the activator's
background wake (the same triggers as scale from zero; nothing waits on it), "ping" sends a
request to the service's readinessPath through the cluster's ingress, which the cluster's
autoscaler counts as activity (Knative's activator and queue-proxy do), so the copy outlives
its idle timeout while the next request is expected.
"""
from __future__ import annotations

import random

from ..core.keepwarm import KeepWarmPolicy
from .ticker import TickLoop

TICK_S = 2.5


class KeepWarmer(TickLoop):
    name = "keep-warm"

    def __init__(self, ctx, activator, policy: KeepWarmPolicy | None = None, rng: random.Random | None = None):
        super().__init__(TICK_S, jitter=0.2, rng=rng)
        self.ctx, self.activator = ctx, activator
        self.policy = policy or KeepWarmPolicy()

    def tick(self) -> list[tuple[str, str, str]]:
        """Decide with the policy, then act. Returns the actions (for tests and logs)."""
        ctx = self.ctx
        now = ctx.clock()
        self.policy.forget(ctx.keep_warm_services)
        warmth = ctx.policy.warmth
        actions = self.policy.actions(now, lambda svc, c: warmth.warmth(svc, c, now).value)
        for action, service, cluster in actions:
            svc = self.activator.service(service)
            if svc is None:
                continue
            if action == "wake":
                self.activator.wake_in_background(svc, cluster, "keepwarm")
            else:
                self.spawn(self._ping(svc, cluster))
        return actions

    async def _ping(self, svc, cluster: str) -> None:
        ok = await self.activator.ping(svc, cluster)
        self.ctx.metrics.keepwarm_pings.labels(cluster, "ok" if ok else "error").inc()
