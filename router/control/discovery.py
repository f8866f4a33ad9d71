"""Discovery: where warm/cold state comes from. Providers post into WarmthState.

`StaticDiscovery` reads each Service's `state` (cluster: warm | cached | cold) from config. It
posts a state when the config declares it (at start and when a reload changes it) and keeps
every cluster's provider heartbeat fresh, so what the router observes itself in between (a
copy it woke becoming ready) is not overwritten every tick. The Kubernetes provider implements
the same `refresh(now)` contract from list/watch streams.
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
        self.posted: dict[tuple[str, str], tuple] = {}

    def refresh(self, now: float) -> None:
        config = self.config()
        for svc in config.services:
            for cluster, state in svc.static_state:
                declared = (state, svc.container_concurrency)
                if self.posted.get((svc.name, cluster)) == declared:
                    continue
                self.posted[(svc.name, cluster)] = declared
                ready = 1 if state == "warm" else 0
                capacity = svc.container_concurrency if ready else None
                self.warmth.on_discovery(svc.name, cluster, ready, state != "cold", now, capacity)
        for cluster in config.clusters:
            self.warmth.on_heartbeat(cluster.name, now)
