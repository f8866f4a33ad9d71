"""Keep-warm: when to hold a copy of a rarely called service warm, learned from its idle times.

The hybrid-histogram policy of "Serverless in the Wild" (Shahrad et al., ATC '20), on the
router's side of the platform: per service, a histogram of idle times (the gap between one
request and the next, seen at the edge). Once it holds enough samples and most gaps fall inside
its range, the next request is expected between the head percentile (5th) and the tail
percentile (99th) of past gaps after the last one; a copy is wanted warm in that window
(the head lowered and the tail raised by a margin), and not before it when the head is long
(so a service called every 10 minutes is not kept warm for all 10). Outside the window, and for
services without a usable histogram, nothing changes: the cluster's own idle timeout applies.

Pure: the caller passes `now`; `actions()` says what to do (wake a copy at zero, or ping a warm
one so the cluster's idle timeout does not take it away) and the control side does it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable


@dataclass(frozen=True)
class KeepWarmSettings:
    bin_s: float = 10.0  # histogram resolution
    range_s: float = 1800.0  # idle times longer than this are out of range
    min_samples: int = 8  # gaps seen before the histogram is trusted
    max_out_of_range: float = 0.1  # more gaps than this beyond the range: no prediction
    head_pct: float = 5.0
    tail_pct: float = 99.0
    margin: float = 0.10  # head lowered, tail raised by this share (the paper's 10%)
    lead_s: float = 6.0  # wake this long before the window opens (an uncached cold start)
    min_idle_s: float = 60.0  # gaps the cluster's own idle timeout already covers need no help
    ping_s: float = 10.0  # a kept copy gets a request this often (idle timeouts are 30 s and more)


@dataclass
class IdleHistogram:
    bins: list[int]
    out_of_range: int = 0
    samples: int = 0
    last: float | None = None
    cached: tuple | None = None  # (window,) computed since the last sample

    def percentile(self, pct: float, bin_s: float, upper: bool) -> float:
        """Idle time below which `pct`% of in-range gaps fall (a bin's lower or upper edge)."""
        total = sum(self.bins)
        target = total * pct / 100.0
        seen = 0
        for i, n in enumerate(self.bins):
            seen += n
            if seen >= target and n:
                return (i + 1) * bin_s if upper else i * bin_s
        return len(self.bins) * bin_s


@dataclass
class KeepWarmPolicy:
    settings: KeepWarmSettings = field(default_factory=KeepWarmSettings)
    services: dict[str, IdleHistogram] = field(default_factory=dict)
    cluster: dict[str, str] = field(default_factory=dict)  # service -> the cluster that served it last
    pinged: dict[str, float] = field(default_factory=dict)  # service -> last keep-alive request

    def on_served(self, service: str, cluster: str, now: float) -> None:
        """A request for `service` went to `cluster`: a gap sample, and the copy to keep."""
        self.on_request(service, now)
        self.cluster[service] = cluster

    def actions(self, now: float, state: Callable[[str, str], str]) -> list[tuple[str, str, str]]:
        """(action, service, cluster) to do now: "wake" a copy at zero (cached or cold) whose window
        opens, "ping" a warm one inside its window every ping_s. `state(service, cluster)` is the
        warm/cold state's value (warm, cached, cold, waking, unknown)."""
        out = []
        for service, cluster in self.cluster.items():
            if not self.wanted(service, now):
                continue
            st = state(service, cluster)
            if st in ("cached", "cold"):
                out.append(("wake", service, cluster))
            elif st in ("warm", "unknown") and now - self.pinged.get(service, -1e18) >= self.settings.ping_s:
                self.pinged[service] = now
                out.append(("ping", service, cluster))
        return out

    def forget(self, keep: set[str]) -> None:
        """Drop services no longer configured for keep-warm."""
        for table in (self.services, self.cluster, self.pinged):
            for name in [n for n in table if n not in keep]:
                del table[name]

    def on_request(self, service: str, now: float) -> None:
        s = self.settings
        h = self.services.get(service)
        if h is None:
            h = self.services[service] = IdleHistogram([0] * int(s.range_s / s.bin_s))
        if h.last is not None:
            gap = now - h.last
            if gap >= s.bin_s:  # requests within one bin of each other are one busy period
                h.samples += 1
                i = int(gap / s.bin_s)
                if i < len(h.bins):
                    h.bins[i] += 1
                else:
                    h.out_of_range += 1
                h.cached = None
        h.last = now

    def window(self, service: str) -> tuple[float, float] | None:
        """(opens, closes) in seconds after the last request, or None without a usable histogram."""
        h = self.services.get(service)
        if h is None:
            return None
        if h.cached is None:
            h.cached = (self._window(h),)
        return h.cached[0]

    def _window(self, h: IdleHistogram) -> tuple[float, float] | None:
        s = self.settings
        if h.samples < s.min_samples or h.out_of_range > s.max_out_of_range * h.samples:
            return None
        head = h.percentile(s.head_pct, s.bin_s, upper=False) * (1.0 - s.margin)
        tail = h.percentile(s.tail_pct, s.bin_s, upper=True) * (1.0 + s.margin)
        if tail <= s.min_idle_s:
            return None  # the cluster's idle timeout keeps it warm anyway
        return head, tail

    def wanted(self, service: str, now: float) -> bool:
        """Should a copy be warm (or starting) now?"""
        h = self.services.get(service)
        w = self.window(service)
        if h is None or w is None or h.last is None:
            return False
        # In absolute time, as the caller's clock reads: a deadline computed from it is met exactly.
        return h.last + w[0] - self.settings.lead_s <= now < h.last + w[1]
