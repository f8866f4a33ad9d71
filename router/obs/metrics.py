"""Every metric the router exports, defined once. The registry is passed in.

Names follow router_<subsystem>_<name>_<unit>. Hot-path label children are cached so
a request pays a dict lookup, not a label resolution.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter("router_requests_total", "Requests answered, by cluster and status code",
                                ["cluster", "code"], registry=r)
        self.request_duration = Histogram("router_request_duration_seconds",
                                          "Time from request head to end of response", ["cluster"],
                                          buckets=LATENCY_BUCKETS, registry=r)
        self.connect_duration = Histogram("router_upstream_connect_seconds", "Upstream TCP connect time",
                                          ["cluster"], buckets=LATENCY_BUCKETS, registry=r)
        self.connect_failures = Counter("router_upstream_connect_failures_total", "Failed upstream connects",
                                        ["cluster"], registry=r)
        self.open_connections = Gauge("router_open_connections", "Open downstream connections",
                                      registry=r, multiprocess_mode="livesum")
        self.reloads = Counter("router_config_reloads_total", "Config reloads by result", ["result"], registry=r)
        self.rejected = Counter("router_rejected_requests_total", "Requests refused by the router itself",
                                ["code", "reason"], registry=r)
        self.retries = Counter("router_retries_total", "Requests sent again to another try", ["reason"],
                               registry=r)
        self.config_version = Gauge("router_config_version", "Version of the routing snapshot in use",
                                    registry=r, multiprocess_mode="max")
        self._req_children: dict = {}
        self._dur_children: dict = {}

    def count_request(self, cluster: str, code: int, duration_s: float) -> None:
        key = (cluster, code)
        child = self._req_children.get(key)
        if child is None:
            child = self._req_children[key] = self.requests.labels(cluster, str(code))
        child.inc()
        dur = self._dur_children.get(cluster)
        if dur is None:
            dur = self._dur_children[cluster] = self.request_duration.labels(cluster)
        dur.observe(duration_s)
