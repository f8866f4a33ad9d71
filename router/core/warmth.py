"""Warm/cold state per (service, cluster) and learned cold-start times (pure, `now` passed in).

States: WARM (ready replicas > 0), CACHED (none ready, image on a node), COLD (none ready,
image not cached), WAKING (a wake was triggered, not ready yet), UNKNOWN (no discovery data,
or stale). Discovery providers (static config, Kubernetes) post `on_discovery`; wakes post
`on_wake`; the first ready signal after a wake records a cold-start sample.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from .ewma import PeakEwma

PRIOR_CACHED_S = 1.0
PRIOR_UNCACHED_S = 6.0


class Warmth(str, Enum):
    WARM = "warm"
    CACHED = "cached"
    COLD = "cold"
    WAKING = "waking"
    UNKNOWN = "unknown"


@dataclass
class ServiceClusterState:
    warmth: Warmth = Warmth.UNKNOWN
    ready_replicas: int = 0
    image_cached: bool | None = None
    capacity: int | None = None  # concurrent requests the ready replicas take, when known
    wake_started: float | None = None
    wake_cached: bool = False
    updated: float = 0.0


@dataclass
class ColdStartModel:
    """Learned wake -> ready durations, cached and uncached images kept apart."""
    cached: PeakEwma = field(default_factory=lambda: PeakEwma(60.0, PRIOR_CACHED_S))
    uncached: PeakEwma = field(default_factory=lambda: PeakEwma(60.0, PRIOR_UNCACHED_S))

    def estimate(self, image_cached: bool) -> float:
        return (self.cached if image_cached else self.uncached).value

    def observe(self, image_cached: bool, duration_s: float, now: float) -> None:
        (self.cached if image_cached else self.uncached).observe(duration_s, now)


class WarmthState:
    def __init__(self, stale_after_s: float = 30.0):
        self.stale_after_s = stale_after_s
        self.states: dict[tuple[str, str], ServiceClusterState] = {}
        self.cold_starts: dict[tuple[str, str], ColdStartModel] = {}
        self.heard: dict[str, float] = {}  # cluster -> last time its provider was known to be current

    def on_heartbeat(self, cluster: str, now: float) -> None:
        """The provider for `cluster` is connected and current (a watch event, bookmark or relist)."""
        self.heard[cluster] = now

    def forget_cluster(self, cluster: str) -> None:
        """What discovery said of a cluster no longer watched (its learned cold-start times are kept)."""
        for key in [k for k in self.states if k[1] == cluster]:
            del self.states[key]
        self.heard.pop(cluster, None)

    def get(self, service: str, cluster: str) -> ServiceClusterState | None:
        return self.states.get((service, cluster))

    def warmth(self, service: str, cluster: str, now: float) -> Warmth:
        st = self.states.get((service, cluster))
        if st is None:
            return Warmth.UNKNOWN
        if now - self.heard.get(cluster, st.updated) > self.stale_after_s and st.warmth != Warmth.WAKING:
            return Warmth.UNKNOWN  # its provider went quiet: last-known state is no longer trusted
        return st.warmth

    def model(self, service: str, cluster: str) -> ColdStartModel:
        key = (service, cluster)
        m = self.cold_starts.get(key)
        if m is None:
            m = self.cold_starts[key] = ColdStartModel()
        return m

    def on_discovery(self, service: str, cluster: str, ready_replicas: int, image_cached: bool | None,
                     now: float, capacity: int | None = None) -> Warmth:
        """A discovery provider's view. Returns the new state."""
        st = self.states.setdefault((service, cluster), ServiceClusterState())
        st.ready_replicas, st.image_cached, st.capacity, st.updated = ready_replicas, image_cached, capacity, now
        self.heard[cluster] = now
        if ready_replicas > 0:
            if st.wake_started is not None:
                self.model(service, cluster).observe(st.wake_cached, now - st.wake_started, now)
                st.wake_started = None
            st.warmth = Warmth.WARM
        elif st.wake_started is not None:
            st.warmth = Warmth.WAKING
        elif image_cached is None:
            st.warmth = Warmth.UNKNOWN
        else:
            st.warmth = Warmth.CACHED if image_cached else Warmth.COLD
        return st.warmth

    def on_wake(self, service: str, cluster: str, now: float) -> None:
        st = self.states.setdefault((service, cluster), ServiceClusterState(updated=now))
        if st.warmth in (Warmth.WARM, Warmth.WAKING):
            return
        st.wake_cached = bool(st.image_cached)
        st.wake_started = now
        st.warmth = Warmth.WAKING
        st.updated = now

    def on_wake_abandoned(self, service: str, cluster: str, now: float) -> None:
        """A wake that produced no ready copy in time: back to what discovery last said, so the
        copy no longer looks nearly ready (a WAKING estimate only shrinks with time)."""
        st = self.states.get((service, cluster))
        if st is None or st.warmth != Warmth.WAKING:
            return
        st.wake_started = None
        st.updated = now
        st.warmth = (Warmth.UNKNOWN if st.image_cached is None
                     else Warmth.CACHED if st.image_cached else Warmth.COLD)

    def expected_cold_s(self, service: str, cluster: str, now: float) -> float:
        """Seconds until a copy is ready here: 0 when warm or unknown."""
        w = self.warmth(service, cluster, now)
        if w in (Warmth.WARM, Warmth.UNKNOWN):
            return 0.0
        st = self.states[(service, cluster)]
        model = self.model(service, cluster)
        if w == Warmth.WAKING:
            return max(model.estimate(st.wake_cached) - (now - st.wake_started), 0.05)
        return model.estimate(w == Warmth.CACHED)
