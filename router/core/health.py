"""Health per cluster from two inputs (pure: `now` is passed in).

Passive outlier detection: a connect failure ejects a cluster at once (nothing was sent,
the next request must not pay for it again); 5xx answers, resets and timeouts eject after
`consecutive_5xx` in a row, while fewer than max_ejection_percent of the Clusters are out (or
none is: Envoy's max_ejection_percent), so a fault the clusters share does not empty the
rotation. Ejection lasts base × n (n = times ejected, decaying while healthy), capped at max_s.
An ejection the probes saw too (a probe failed while it lasted) ends early once `probe_healthy`
probes pass in a row: the outage was seen to end (Envoy's successful_active_health_check_uneject_host).
One the probes did not see (5xx behind a passing probe path) lasts its full time.
Active probes: unhealthy after `probe_unhealthy` failures in a row, healthy again after
`probe_healthy` successes. A cluster is healthy when neither input says otherwise.
Slow start (when configured): a cluster that comes back, or joins on a reload, has its weight
ramped up over a window from the moment it is healthy again; `ramp()` gives the share.
Only clusters with something to remember have an entry, so "all is well" is an empty dict.
"""
from __future__ import annotations

import errno
from dataclasses import dataclass, field
from typing import Callable

from ..config.model import SlowStart

# Errors of the router's own host, not of the cluster it was connecting to: out of file descriptors
# or memory, or of local ports. They say nothing about a cluster's health, and trying another
# cluster would hit the same wall.
LOCAL_EXHAUSTION = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.EADDRNOTAVAIL))


def is_local_exhaustion(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in LOCAL_EXHAUSTION


@dataclass
class OutlierPolicy:
    consecutive_5xx: int = 5
    base_ejection_s: float = 30.0
    max_ejection_s: float = 300.0
    probe_unhealthy: int = 3
    probe_healthy: int = 2
    panic_below: float = 0.5  # fraction of a split's clusters that must be healthy
    max_ejection_percent: float = 10.0  # of the Clusters out at once, beyond which answers eject no more


@dataclass
class ClusterHealthState:
    consecutive_5xx: int = 0
    ejections: int = 0
    ejected_until: float = 0.0
    last_reason: str = ""
    probe_fails: int = 0
    probe_oks: int = 0
    probe_down: bool = False
    probe_saw: bool = False  # a probe failed during the current ejection
    back_at: float = float("-inf")  # when it was healthy again last (or joined): where a slow start begins
    own_until: float = 0.0  # the end of an ejection this process decided (what other workers are told)
    ejections_skipped: int = 0  # ejections for answers not made: maxEjectionPercent of the Clusters were out


def _take_out(st: ClusterHealthState, until: float, reason: str) -> None:
    """An ejection until `until` (this process's own or another worker's): the count of 5xx starts afresh, and
    whether probes saw the cluster fail is tracked from here (a probe failing now already has)."""
    st.ejected_until = st.back_at = until
    st.consecutive_5xx = 0
    st.probe_saw = st.probe_fails > 0
    st.last_reason = reason


@dataclass
class HealthState:
    policy: OutlierPolicy = field(default_factory=OutlierPolicy)
    clusters: dict[str, ClusterHealthState] = field(default_factory=dict)
    slow_start: SlowStart | None = None  # the Router's slowStart, set with each config
    cluster_count: int = 0  # Clusters in the config, set with each config: what maxEjectionPercent is of
    # The end an ejection had when passing probes ended it early, per cluster: a copy of it that another
    # worker still publishes (until its next tick) is not taken up again. Apart from `clusters`, which
    # forgets a recovered cluster at once.
    ended: dict[str, float] = field(default_factory=dict)
    # Called when a cluster's health may have changed (an ejection began or was ended, probes changed
    # their verdict): the fast lane sets its draws again. None: nobody listens.
    on_change: Callable[[], None] | None = None

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def _get(self, cluster: str) -> ClusterHealthState:
        st = self.clusters.get(cluster)
        if st is None:
            st = self.clusters[cluster] = ClusterHealthState()
        return st

    def is_healthy(self, cluster: str, now: float) -> bool:
        st = self.clusters.get(cluster)
        return st is None or (st.ejected_until <= now and not st.probe_down)

    def on_probe(self, cluster: str, ok: bool, now: float, reason: str = "probe failed") -> None:
        st = self.clusters.get(cluster)
        if st is None:
            if ok:
                return
            st = self.clusters[cluster] = ClusterHealthState()
        if ok:
            st.probe_fails = 0
            st.probe_oks += 1
            if st.probe_oks >= self.policy.probe_healthy:
                was_down, st.probe_down = st.probe_down, False
                if st.probe_saw and st.ejected_until > now:
                    self.ended[cluster] = st.ejected_until
                    st.ejected_until = st.back_at = now
                    st.own_until = min(st.own_until, now)
                    st.last_reason += f"; ended by {st.probe_oks} passing probes"
                    self._changed()
                elif was_down:  # healthy from now, or when a running ejection ends
                    st.back_at = max(st.ejected_until, now)
                    self._changed()
                st.probe_saw = False
            self._forget_if_clean(cluster, st, now)
        else:
            st.probe_oks = 0
            st.probe_fails += 1
            if st.ejected_until > now:
                st.probe_saw = True
            if st.probe_fails >= self.policy.probe_unhealthy and not st.probe_down:
                st.probe_down = True
                st.last_reason = f"{st.probe_fails} failed probes: {reason}"
                self._changed()

    def in_panic(self, clusters: list[str], now: float) -> bool:
        """Too few healthy to trust health: spread over all rather than pile onto a survivor."""
        if not self.clusters or not clusters:
            return False
        healthy = sum(1 for c in clusters if self.is_healthy(c, now))
        return healthy < self.policy.panic_below * len(clusters)

    def ramp(self, cluster: str, now: float) -> float:
        """The share of its weight a cluster gets now: below 1 only in its slow start (Envoy's formula:
        max(min_weight, (max(t, 1 s) / window) ** (1 / aggression)), t since it came back)."""
        slow, st = self.slow_start, self.clusters.get(cluster)
        if slow is None or st is None:
            return 1.0
        t = now - st.back_at
        if not 0.0 <= t < slow.window_s:  # past the window, or not back yet (only used in panic)
            return 1.0
        return max(slow.min_weight, (max(t, 1.0) / slow.window_s) ** (1.0 / slow.aggression))

    def on_joined(self, cluster: str, now: float) -> None:
        """A cluster new to the config (on a reload): it starts slow like one that came back."""
        if self.slow_start is not None:
            self._get(cluster).back_at = now

    def _forget_if_clean(self, cluster: str, st: ClusterHealthState, now: float) -> None:
        if (not st.ejections and not st.consecutive_5xx and st.ejected_until <= now and not st.probe_down
                and not st.probe_fails and (self.slow_start is None or now - st.back_at >= self.slow_start.window_s)):
            del self.clusters[cluster]  # fully recovered: back to the fast path

    def on_connect_failure(self, cluster: str, now: float, reason: str = "connect") -> None:
        self._eject(self._get(cluster), now, reason)

    def on_response(self, cluster: str, status: int, now: float) -> None:
        st = self.clusters.get(cluster)
        if st is None:
            if status < 500:
                return  # no history and a success: nothing to record (keeps `clusters` empty when all is well)
            st = self.clusters[cluster] = ClusterHealthState()
        if status >= 500:
            st.consecutive_5xx += 1
            if st.consecutive_5xx >= self.policy.consecutive_5xx and st.ejected_until <= now:
                out = sum(1 for other in self.clusters.values() if other.ejected_until > now)
                if out == 0 or out * 100 < self.policy.max_ejection_percent * self.cluster_count:
                    self._eject(st, now, f"{st.consecutive_5xx} consecutive 5xx")
                else:  # too many out already: the fault is likelier shared than this cluster's (Envoy's overflow)
                    st.ejections_skipped += 1
                    st.last_reason = (f"{st.consecutive_5xx} consecutive 5xx, not ejected: {out} of "
                                      f"{self.cluster_count} Clusters out (maxEjectionPercent "
                                      f"{self.policy.max_ejection_percent:g})")
        else:
            st.consecutive_5xx = 0
            # A long healthy stretch forgives one past ejection (Envoy's decay of n).
            if st.ejections and now - st.ejected_until > self.policy.base_ejection_s:
                st.ejections -= 1
                st.ejected_until = now
            self._forget_if_clean(cluster, st, now)

    def _eject(self, st: ClusterHealthState, now: float, reason: str) -> None:
        if st.ejected_until > now:
            return
        st.ejections += 1
        st.own_until = now + min(self.policy.base_ejection_s * st.ejections, self.policy.max_ejection_s)
        _take_out(st, st.own_until, reason)
        self._changed()

    def on_ejected_elsewhere(self, cluster: str, until: float, now: float) -> None:
        """Another worker process ejected `cluster` until `until` (`serve --workers`): it is out here too for
        as long, without counting as an ejection of this process's own (nor being told on to others)."""
        ended = self.ended.get(cluster)
        if ended is not None:
            if ended <= now:
                del self.ended[cluster]
            elif abs(until - ended) <= 0.001:  # (published in milliseconds)
                return
        st = self._get(cluster)
        if until > max(st.ejected_until, now):
            _take_out(st, until, "ejected by another worker")
            self._changed()

    def own_ejections(self, now: float) -> dict[str, float]:
        """The clusters this process has ejected and until when (what other workers are told)."""
        return {cluster: st.own_until for cluster, st in self.clusters.items() if st.own_until > now}

    def describe(self, cluster: str, now: float) -> dict:
        st = self.clusters.get(cluster) or ClusterHealthState()
        healthy = st.ejected_until <= now
        return {"healthy": healthy and not st.probe_down, "ejected": not healthy, "probe_down": st.probe_down,
                "ejections": st.ejections, "ejections_skipped": st.ejections_skipped,
                "ejected_for_s": 0.0 if healthy else round(st.ejected_until - now, 3),
                "last_reason": st.last_reason, "slow_start_share": round(self.ramp(cluster, now), 3)}
