"""Faults a drill (or a person at run time) injects into the lab.

In a cluster's WAN relay, Toxiproxy's set: latency (± jitter), bandwidth, blackhole, reset_peer,
slow_close, slicer, limit_data. At the lab: error_rate (5xx from the pods), kill_cluster (its
ingress refuses connections), scale_to_zero (a service), evict_images (the node's image cache),
api_outage (the cluster's Kubernetes API answers 503).

A fault is a dict as written in a drill:

    {type: latency, cluster: ap-east, latency: 300ms, jitter: 20ms}
    {type: limit_data, cluster: us-west, bytes: 300}
    {type: kill_cluster, cluster: all}

`await apply(lab, fault)` injects it and returns a coroutine function that reverts it.
"""
from __future__ import annotations

from typing import Awaitable, Callable

from router.config.values import parse_duration

from .relay import Bandwidth, Latency, LimitData, ResetPeer, Slicer, SlowClose

RELAY = ("latency", "bandwidth", "blackhole", "reset_peer", "slow_close", "slicer", "limit_data")
LAB = ("error_rate", "kill_cluster", "scale_to_zero", "evict_images", "api_outage")
KINDS = RELAY + LAB
# what each fault reads besides type/cluster/at/duration
PARAMS = {"latency": {"latency", "jitter"}, "bandwidth": {"rate"}, "blackhole": set(), "reset_peer": {"timeout", "toxicity"},
          "slow_close": {"delay"}, "slicer": {"averageSize", "sizeVariation", "delay"},
          "limit_data": {"bytes", "direction"}, "error_rate": {"rate"}, "kill_cluster": set(),
          "scale_to_zero": {"service"}, "evict_images": set(), "api_outage": set()}


COMMON = {"type", "cluster", "at", "duration", "name", "at_s", "duration_s"}  # fields every fault may carry


class FaultError(ValueError):
    pass


def check(fault: dict, cluster_names: list[str] | None = None) -> None:
    """Raise FaultError naming the problem when a fault is malformed."""
    kind = fault.get("type")
    if kind not in KINDS:
        raise FaultError(f"type: {kind!r} is not a fault (known: {', '.join(KINDS)})")
    unknown = set(fault) - PARAMS[kind] - COMMON
    if unknown:
        raise FaultError(f"{kind}: unknown field(s) {', '.join(sorted(unknown))}")
    target = fault.get("cluster", "all")
    if cluster_names is not None and target != "all" and target not in cluster_names:
        raise FaultError(f"{kind}: cluster {target!r} is not in the lab ({', '.join(cluster_names)})")
    if kind == "scale_to_zero" and not fault.get("service"):
        raise FaultError("scale_to_zero: service is required")
    if kind == "limit_data" and not isinstance(fault.get("bytes"), int):
        raise FaultError("limit_data: bytes (an integer) is required")
    if kind == "limit_data" and fault.get("direction", "down") not in ("up", "down"):
        raise FaultError("limit_data: direction must be up or down")
    for key in ("latency", "jitter", "delay", "timeout"):
        if key in fault:
            parse_duration(fault[key])


def _toxic(fault: dict):
    kind = fault["type"]
    if kind == "latency":
        return Latency(parse_duration(fault.get("latency", "100ms")), parse_duration(fault.get("jitter", "0ms")))
    if kind == "bandwidth":
        return Bandwidth(float(fault.get("rate", 100_000)))
    if kind == "reset_peer":
        return ResetPeer(parse_duration(fault.get("timeout", "0s")), float(fault.get("toxicity", 1.0)))
    if kind == "slow_close":
        return SlowClose(parse_duration(fault.get("delay", "1s")))
    if kind == "slicer":
        return Slicer(int(fault.get("averageSize", 64)), int(fault.get("sizeVariation", 32)),
                      parse_duration(fault.get("delay", "1ms")))
    if kind == "limit_data":
        return LimitData(int(fault["bytes"]), fault.get("direction", "down"))
    return True


async def apply(lab, fault: dict) -> Callable[[], Awaitable[None]]:
    check(fault, list(lab.clusters))
    target = fault.get("cluster", "all")
    clusters = list(lab.clusters.values()) if target == "all" else [lab.clusters[target]]
    kind = fault["type"]
    undo: list = []
    for c in clusters:
        if kind in RELAY:
            c.relay.set_toxic(kind, _toxic(fault))
            undo.append(lambda c=c: c.relay.clear_toxic(kind))
        elif kind == "error_rate":
            before = c.error_rate
            c.error_rate = float(fault.get("rate", 1.0))
            undo.append(lambda c=c, before=before: setattr(c, "error_rate", before))
        elif kind == "kill_cluster":
            c.killed = True
            await c.relay.refuse()

            async def revive(c=c):
                await c.relay.accept_again()
                c.killed = False
            undo.append(revive)
        elif kind == "scale_to_zero":
            c.scale_to_zero(fault["service"])
        elif kind == "evict_images":
            c.evict_images()
        elif kind == "api_outage":
            c.api.outage = True
            undo.append(lambda c=c: setattr(c.api, "outage", False))

    async def revert() -> None:
        for fn in undo:
            result = fn()
            if hasattr(result, "__await__"):
                await result
    return revert


def describe(fault: dict) -> str:
    extra = ", ".join(f"{k}={v}" for k, v in fault.items() if k not in COMMON)
    return f"{fault['type']}@{fault.get('cluster', 'all')}" + (f" ({extra})" if extra else "")
