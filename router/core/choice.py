"""Choosing a cluster for one request: decisions out, no I/O.

`choose_backend` picks among the route's healthy backends by weight (the operator's
split renormalised over what is healthy and not yet tried for this request).
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from .health import HealthState
from .snapshot import Route, RouteBackend


@dataclass(frozen=True)
class Forward:
    backend: RouteBackend
    reason: str = "weighted"


@dataclass(frozen=True)
class Reject:
    status: int
    reason: str
    retry_after_s: float | None = None


def choose_backend(route: Route, health: HealthState, now: float, rng: random.Random,
                   tried: frozenset[str] = frozenset()) -> Forward | Reject:
    if not tried and not health.clusters:  # the common case: nothing ejected, first try
        candidates, total = route.live, route.live_total
    else:
        candidates = [b for b in route.live if b.cluster not in tried and health.is_healthy(b.cluster, now)]
        total = 0.0
        for b in candidates:
            total += b.weight
    if not candidates:
        if tried:
            return Reject(502, f"no healthy cluster left for route {route.name} (tried {', '.join(sorted(tried))})")
        return Reject(502, f"no healthy cluster for route {route.name}")
    reason = "failover" if tried else "weighted"
    point = rng.random() * total
    for b in candidates:
        point -= b.weight
        if point < 0:
            return Forward(b, reason)
    return Forward(candidates[-1], reason)


def effective_weights(route: Route, health: HealthState, now: float) -> dict[str, float]:
    """The share each backend gets now, for /debug/state."""
    live = {b.cluster: b.weight for b in route.backends if b.weight > 0 and health.is_healthy(b.cluster, now)}
    total = sum(live.values())
    return {b.cluster: (live.get(b.cluster, 0.0) / total * 100 if total else 0.0) for b in route.backends}
