"""Round-trip and server time estimates (pure, `now` passed in).

The RTT of a cluster is the active probe's round trip (request sent to response head of the
cheap probe path) when probes run, else the TCP connect time; connect times (probes and real
connects) are kept as their own estimate. Server time per (service, cluster) is time to first
byte minus the RTT, so a slow handler is not mistaken for a far cluster. All are Peak-EWMAs
(decay 10 s by default).
"""
from __future__ import annotations

from .ewma import PeakEwma


class RttState:
    def __init__(self, decay_s: float = 10.0):
        self.decay_s = decay_s
        self.network: dict[str, PeakEwma] = {}
        self.probe_http: dict[str, PeakEwma] = {}
        self.server: dict[tuple[str, str], PeakEwma] = {}
        self.by_service: dict[str, dict[str, PeakEwma]] = {}  # the same estimates, by service

    def _ewma(self, table: dict, key) -> PeakEwma:
        e = table.get(key)
        if e is None:
            e = table[key] = PeakEwma(self.decay_s)
        return e

    def on_connect(self, cluster: str, connect_s: float, now: float) -> None:
        self._ewma(self.network, cluster).observe(connect_s, now)

    def on_probe(self, cluster: str, tcp_s: float, http_s: float | None, now: float) -> None:
        self._ewma(self.network, cluster).observe(tcp_s, now)
        if http_s is not None:
            self._ewma(self.probe_http, cluster).observe(http_s, now)

    def on_first_byte(self, service: str, cluster: str, ttfb_s: float, now: float) -> None:
        net = self.rtt(cluster) or 0.0
        key = (service, cluster)
        e = self.server.get(key)
        if e is None:
            e = self.server[key] = PeakEwma(self.decay_s)
            self.by_service.setdefault(service, {})[cluster] = e
        e.observe(max(ttfb_s - net, 0.0), now)

    def forget(self, cluster: str) -> None:
        """Drop every estimate of a cluster that has just come back from an outage: samples that
        straddled it (a probe or response held until the link returned) measured the outage, not
        the distance or the handler, and a Peak-EWMA would keep them for several decay times."""
        self.network.pop(cluster, None)
        self.probe_http.pop(cluster, None)
        for key in [k for k in self.server if k[1] == cluster]:
            del self.server[key]
            self.by_service.get(key[0], {}).pop(cluster, None)

    def rtt(self, cluster: str) -> float | None:
        e = self.probe_http.get(cluster) or self.network.get(cluster)
        return e.value if e is not None else None

    def connect_time(self, cluster: str) -> float | None:
        e = self.network.get(cluster)
        return e.value if e is not None else None

    def server_time(self, service: str, cluster: str) -> float:
        """Measured here, else what the same service takes in other clusters (same code), else 0."""
        e = self.server.get((service, cluster))
        if e is not None and e.value is not None:
            return e.value
        elsewhere = self.by_service.get(service)
        if elsewhere:
            values = [v.value for v in elsewhere.values() if v.value is not None]
            if values:
                return sum(values) / len(values)
        return 0.0
