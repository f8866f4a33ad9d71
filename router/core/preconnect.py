"""Preconnect policy: how many connections to open to each cluster so that `preconnect` of them
wait idle in the pool, ready for requests (Cluster spec.preconnect; Envoy's preconnect_policy).

Pure: the counts in, the plan out. A cluster out of rotation (ejected, or failing its probes)
gets none: its connects would fail or feed traffic-free load to a broken region; it is
preconnected again once it is back.
"""
from __future__ import annotations

from typing import Callable


def connections_to_open(wanted: dict[str, int], idle: dict[str, int], opening: dict[str, int],
                        healthy: Callable[[str], bool]) -> dict[str, int]:
    """cluster -> connections to open now: what `wanted` asks beyond those idle and those opening."""
    plan = {}
    for cluster, n in wanted.items():
        missing = n - idle.get(cluster, 0) - opening.get(cluster, 0)
        if missing > 0 and healthy(cluster):
            plan[cluster] = missing
    return plan
