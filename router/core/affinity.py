"""Consistent-hash affinity with bounded load.

A key (header, cookie or path prefix) maps onto a weighted ketama ring (uhashring) over the
eligible clusters, so a key keeps landing where its service is warm. Bounded load: a
cluster with more than ceil(balance × average in-flight) is skipped for the next one on
the ring. Rings are cached per set of eligible clusters.
"""
from __future__ import annotations

import math
from typing import Sequence

from uhashring import HashRing

from .snapshot import RouteBackend

_RINGS: dict[tuple, HashRing] = {}
_MAX_RINGS = 256


def _ring(backends: Sequence[RouteBackend]) -> HashRing:
    key = tuple(sorted((b.cluster, b.weight) for b in backends))
    ring = _RINGS.get(key)
    if ring is None:
        if len(_RINGS) >= _MAX_RINGS:
            _RINGS.clear()
        # ketama weights are integers: scale so small SMI quantities keep their proportions
        scale = 100.0 / max(b.weight for b in backends)
        ring = _RINGS[key] = HashRing(
            nodes={b.cluster: {"weight": max(1, round(b.weight * scale))} for b in backends}, hash_fn="ketama")
    return ring


def pick_by_key(backends: Sequence[RouteBackend], key: str, inflight: dict[str, int],
                balance: float = 1.25) -> RouteBackend:
    by_name = {b.cluster: b for b in backends}
    if len(backends) == 1:
        return backends[0]
    total = sum(inflight.get(b.cluster, 0) for b in backends)
    bound = math.ceil(balance * (total + 1) / len(backends))  # +1: the request being placed
    order = [n["nodename"] for n in _ring(backends).range(key, unique=True)]
    for name in order:
        if inflight.get(name, 0) + 1 <= bound:
            return by_name[name]
    return by_name[order[0]]


def affinity_key(spec: tuple[str, str] | None, headers: list[tuple[bytes, bytes]], path: str) -> str | None:
    """Extract the key named by a route's affinity spec: ("header", name), ("cookie", name),
    ("path", "N") for the first N path segments."""
    if spec is None:
        return None
    kind, name = spec
    if kind == "path":
        parts = [p for p in path.split("/") if p][: int(name)]
        return "/" + "/".join(parts)
    want = name.lower().encode() if kind == "header" else b"cookie"
    for hname, value in headers:
        if hname.lower() != want:
            continue
        if kind == "header":
            return value.decode("latin-1")
        for item in value.split(b";"):
            k, _, v = item.strip().partition(b"=")
            if k.decode("latin-1") == name:
                return v.decode("latin-1")
    return None
