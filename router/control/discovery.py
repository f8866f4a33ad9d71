"""Discovery: where warm/cold state comes from. Providers post into WarmthState.

`StaticDiscovery` reads each Service's `state` (cluster: warm | cached | cold) from config
and re-posts it on every reconcile tick, so static state never turns stale. The Kubernetes
provider implements the same `refresh(now)` contract from list/watch streams.
"""
from __future__ import annotations

from typing import Callable, Protocol

from ..config.model import Config
from ..core.warmth import WarmthState


class DiscoveryProvider(Protocol):
    def refresh(self, now: float) -> None: ...


class StaticDiscovery:
    def __init__(self, config: Callable[[], Config], warmth: WarmthState):
        self.config, self.warmth = config, warmth

    def refresh(self, now: float) -> None:
        for svc in self.config().services:
            for cluster, state in svc.static_state:
                ready = 1 if state == "warm" else 0
                capacity = svc.container_concurrency if ready else None
                self.warmth.on_discovery(svc.name, cluster, ready, state != "cold", now, capacity)
