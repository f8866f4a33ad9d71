"""Choosing a cluster for one request: decisions out, no I/O.

Semantics (the README's "Routing semantics" states them for users):
1. Candidates: the route's clusters with weight > 0 not yet tried for this request and
   healthy. Panic: when under half of the split's clusters are healthy, health is ignored.
   A sticky session's cluster (a route's sessionPersistence), when a candidate, is taken at once.
2. Eligible: candidates whose RTT estimate is within the split's maxRTT (unknown RTT counts
   as within); if none is, the nearest ones (within 10% of the lowest RTT) are eligible.
3. Warm preference: if some eligible cluster is warm (or of unknown state), cold ones are
   skipped unless their expected latency still beats the best warm one; skipped cold clusters
   are returned as wake hints so the split returns to its weights once they are warm.
4. Among what is left, an affinity key picks by consistent hash with bounded load;
   otherwise a weighted draw (the operator's weights, renormalised; a cluster in its slow start
   with its weight ramped down).
Expected latency = RTT + server time + cold-start estimate (when not warm) + queueing
(in-flight / capacity × server time).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from .affinity import pick_by_key
from .decisions import Forward, Reject
from .health import HealthState
from .rtt import RttState
from .snapshot import Route, RouteBackend
from .warmth import Warmth, WarmthState

NEAREST_SLACK = 1.10


@dataclass
class PolicyInputs:
    """Everything the choice reads besides the route; owned by the reconcile side."""
    health: HealthState = field(default_factory=HealthState)
    rtt: RttState = field(default_factory=RttState)
    warmth: WarmthState = field(default_factory=WarmthState)
    inflight: dict[str, int] = field(default_factory=dict)  # cluster -> requests in flight
    inflight_service: dict[tuple[str, str], int] = field(default_factory=dict)  # (service, cluster) -> same
    # With `serve --workers`: the other workers' requests in flight per cluster (read with .get), so that
    # maxRequests holds over all of them; None: this process alone.
    elsewhere: Any = None

    def start(self, service: str, cluster: str) -> None:
        self.inflight[cluster] = self.inflight.get(cluster, 0) + 1
        key = (service, cluster)
        self.inflight_service[key] = self.inflight_service.get(key, 0) + 1

    def finish(self, service: str, cluster: str) -> None:
        self.inflight[cluster] -= 1
        self.inflight_service[(service, cluster)] -= 1

    def saturated(self, service: str, cluster: str) -> bool:
        """Every ready replica is busy: the next request waits for one more to start."""
        st = self.warmth.get(service, cluster)
        return bool(st is not None and st.capacity and self.inflight_service.get((service, cluster), 0) >= st.capacity)

    def expected(self, service: str, b: RouteBackend, now: float) -> float:
        rtt = self.rtt.rtt(b.cluster) or 0.0
        server = self.rtt.server_time(service, b.cluster)
        cold = self.warmth.expected_cold_s(service, b.cluster, now)
        st = self.warmth.get(service, b.cluster)
        queue = 0.0
        if st is not None and st.capacity:
            busy = self.inflight_service.get((service, b.cluster), 0)
            if busy >= st.capacity and not cold:
                cold = self.warmth.model(service, b.cluster).estimate(True)  # scale-up: image is there
            queue = busy / st.capacity * server
        return rtt + server + cold + queue

    def breakdown(self, service: str, b: RouteBackend, now: float) -> dict:
        """The cost formula's inputs, for /debug/state."""
        return {"rtt_s": self.rtt.rtt(b.cluster), "server_s": self.rtt.server_time(service, b.cluster),
                "cold_s": self.warmth.expected_cold_s(service, b.cluster, now),
                "warmth": self.warmth.warmth(service, b.cluster, now).value,
                "inflight": self.inflight_service.get((service, b.cluster), 0),
                "saturated": self.saturated(service, b.cluster), "expected_s": self.expected(service, b, now)}


def _weighted(candidates, rng: random.Random) -> int:
    """Index of a weighted draw among `candidates`."""
    total = 0.0
    for b in candidates:
        total += b.weight
    point = rng.random() * total
    for i, b in enumerate(candidates):
        point -= b.weight
        if point < 0:
            return i
    return len(candidates) - 1


def _draw(candidates, health: HealthState, now: float, rng: random.Random):
    """A weighted draw, with the weights of clusters in their slow start ramped down."""
    if health.slow_start is not None:
        return rng.choices(candidates, [b.weight * health.ramp(b.cluster, now) for b in candidates])[0]
    return candidates[_weighted(candidates, rng)]


def _in_flight(inputs: PolicyInputs, cluster: str) -> int:
    """Requests in flight to `cluster` from this process, and from the other workers when they share counts."""
    here = inputs.inflight.get(cluster, 0)
    return here if inputs.elsewhere is None else here + inputs.elsewhere.get(cluster, 0)


def _within_rtt(route: Route, pool: list, inputs: PolicyInputs, reason: str) -> tuple[list, str]:
    """The clusters of `pool` whose RTT estimate is within the route's maxRTT (unknown counts as within);
    if none is, the nearest ones (a spillover)."""
    if route.max_rtt_s is None:
        return pool, reason
    rtts = {b.cluster: inputs.rtt.rtt(b.cluster) for b in pool}
    eligible = [b for b in pool if rtts[b.cluster] is None or rtts[b.cluster] <= route.max_rtt_s]
    if not eligible:
        nearest = min(rtts.values())
        eligible = [b for b in pool if rtts[b.cluster] <= nearest * NEAREST_SLACK + 1e-4]
        reason = reason if reason != "weighted" else "spillover"
    return eligible, reason


def choose_backend(route: Route, inputs: PolicyInputs | HealthState, now: float, rng: random.Random,
                   tried: frozenset[str] = frozenset(), service: str = "",
                   affinity: str | None = None, session: str | None = None) -> Forward | Reject:
    if isinstance(inputs, HealthState):
        inputs = PolicyInputs(health=inputs)
    health, warmth = inputs.health, inputs.warmth
    live_all = route.live
    if not tried and not route.limited:
        if len(live_all) == 1 and not warmth.states:  # one cluster, no warm/cold data: nothing to choose
            only = live_all[0]
            if not health.clusters or health.is_healthy(only.cluster, now):
                return route.plain[0]
            return Forward(only, "panic")
        if not health.clusters and affinity is None and session is None and (
                route.max_rtt_s is None and not warmth.states or route.algorithm == "weighted"):
            if not live_all:
                return Reject(502, f"no cluster with weight for route {route.name}")
            return route.plain[_weighted(live_all, rng)]  # the common case, kept cheap

    live = [b for b in route.live if b.cluster not in tried]
    panic = health.in_panic([b.cluster for b in route.live], now)
    pool = live if panic else [b for b in live if health.is_healthy(b.cluster, now)]
    if not pool:
        if tried:
            return Reject(502, f"no healthy cluster left for route {route.name} (tried {', '.join(sorted(tried))})")
        return Reject(502, f"no healthy cluster for route {route.name}")
    reason = "panic" if panic else "failover" if tried else "weighted"
    if route.limited:  # a cluster at its request limit is passed over; all of them: 503 (Envoy's overflow)
        room = [b for b in pool if b.max_requests is None or _in_flight(inputs, b.cluster) < b.max_requests]
        if not room:
            return Reject(503, f"every cluster of route {route.name} is at its request limit")
        if len(room) < len(pool):
            pool = room
            reason = "overflow" if reason == "weighted" else reason
    if session is not None:  # a sticky session's cluster, while it can take the request
        for b in pool:
            if b.cluster == session:
                return Forward(b, "session")
    if route.algorithm == "weighted":
        if affinity is not None:  # weights and health only, but a key still keeps its cluster
            return Forward(pick_by_key(pool, affinity, inputs.inflight), "affinity" if reason == "weighted" else reason)
        return Forward(_draw(pool, health, now, rng), reason)

    eligible, reason = _within_rtt(route, pool, inputs, reason)

    # Warm: a ready replica with room (or unknown state). A saturated copy counts as cold: the
    # request would wait for a new replica to start.
    if warmth.states:
        warm = [b for b in eligible if warmth.warmth(service, b.cluster, now) in (Warmth.WARM, Warmth.UNKNOWN)
                and not inputs.saturated(service, b.cluster)]
    else:
        warm = eligible  # no discovery data at all: every state is unknown
    cost = {b.cluster: inputs.expected(service, b, now) for b in eligible} if len(warm) < len(eligible) else None
    wake: tuple[str, ...] = ()
    if warm and len(warm) < len(eligible):
        best_warm = min(cost[b.cluster] for b in warm)
        cold = [b for b in eligible if b not in warm]
        faster = [b for b in cold if cost[b.cluster] < best_warm]
        skipped = [b for b in cold if b not in faster]
        wake = tuple(b.cluster for b in skipped
                     if warmth.warmth(service, b.cluster, now) in (Warmth.CACHED, Warmth.COLD))
        candidates = warm + faster
        if skipped and reason == "weighted":
            reason = "warm-preferred"
    elif not warm:
        # Nothing warm anywhere: the copy that will be ready soonest (the buffering layer holds).
        best = min(eligible, key=lambda b: cost[b.cluster])
        return Forward(best, "cold" if reason == "weighted" else reason, cost[best.cluster],
                       tuple(b.cluster for b in eligible if b is best
                             and warmth.warmth(service, b.cluster, now) in (Warmth.CACHED, Warmth.COLD)))
    else:
        candidates = eligible

    if affinity is not None:
        chosen = pick_by_key(candidates, affinity, inputs.inflight)
        if reason == "weighted":
            reason = "affinity"
    else:
        chosen = _draw(candidates, health, now, rng)
    expected = cost[chosen.cluster] if cost is not None else inputs.expected(service, chosen, now)
    return Forward(chosen, reason, expected, wake)


def effective_weights(route: Route, health: HealthState, now: float) -> dict[str, float]:
    """The share each backend gets now (health and slow start only), for /debug/state."""
    live = {b.cluster: b.weight * health.ramp(b.cluster, now) for b in route.backends
            if b.weight > 0 and health.is_healthy(b.cluster, now)}
    total = sum(live.values())
    return {b.cluster: (live.get(b.cluster, 0.0) / total * 100 if total else 0.0) for b in route.backends}


def draw_plan(route: Route, inputs: PolicyInputs, now: float,
              service: str = "") -> tuple[list[RouteBackend], str] | None:
    """The weighted draw choose_backend makes at `now` for a request with no affinity key, no session and
    no earlier try, as (the backends drawn from, the decision's reason), when that draw depends on nothing
    but the state at `now`: what the fast lane draws from until the state changes. None when it depends on
    the request or on counts that move with each one (request limits, keys, sessions, a cold or
    saturated copy, a cluster in its slow start), or when no cluster can be chosen: such requests take
    the Python path, which decides them one by one."""
    if route.limited or route.affinity is not None or route.session is not None or not route.live:
        return None
    health, warmth = inputs.health, inputs.warmth
    live = route.live
    if len(live) == 1 and not warmth.states:  # as choose_backend: one cluster, nothing to choose
        only = live[0]
        healthy = not health.clusters or health.is_healthy(only.cluster, now)
        return [only], "weighted" if healthy else "panic"
    panic = health.in_panic([b.cluster for b in live], now)
    pool = list(live) if panic else [b for b in live if health.is_healthy(b.cluster, now)]
    if not pool or health.slow_start is not None and any(health.ramp(b.cluster, now) < 1.0 for b in pool):
        return None
    reason = "panic" if panic else "weighted"
    if route.algorithm == "weighted":
        return pool, reason
    pool, reason = _within_rtt(route, pool, inputs, reason)
    if warmth.states:
        for b in pool:
            st = warmth.get(service, b.cluster)
            if st is not None and st.capacity or warmth.warmth(service, b.cluster, now) not in (Warmth.WARM,
                                                                                               Warmth.UNKNOWN):
                return None
    return pool, reason
