"""Every metric the router exports, defined once. The registry is passed in.

Names follow router_<subsystem>_<name>_<unit>. Hot-path label children are cached so
a request pays a dict lookup, not a label resolution.
"""
from __future__ import annotations

from bisect import bisect_left

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        # By route too: clusters are regions every service shares, so a service failing in one region
        # shows only by route ("-": answered before a route was found, or by the redirect listener).
        self.requests = Counter("router_requests_total", "Requests answered, by cluster, status code and route",
                                ["cluster", "code", "route"], registry=r)
        self.request_duration = Histogram("router_request_duration_seconds",
                                          "Time from request head to end of response", ["cluster", "route"],
                                          buckets=LATENCY_BUCKETS, registry=r)
        self.connect_duration = Histogram("router_upstream_connect_seconds", "Upstream TCP connect time",
                                          ["cluster"], buckets=LATENCY_BUCKETS, registry=r)
        self.connect_failures = Counter("router_upstream_connect_failures_total", "Failed upstream connects",
                                        ["cluster"], registry=r)
        self.open_connections = Gauge("router_open_connections", "Open downstream connections",
                                      registry=r, multiprocess_mode="livesum")
        self.reloads = Counter("router_config_reloads_total", "Config reloads by result", ["result"], registry=r)
        self.worker_restarts = Counter("router_worker_restarts_total",
                                       "Worker processes that exited unexpectedly and were started again",
                                       registry=r)
        self.rejected = Counter("router_rejected_requests_total", "Requests refused by the router itself",
                                ["code", "reason"], registry=r)
        self.faults = Counter("router_faults_injected_total", "Delays and aborts a route's fault injected",
                              ["route", "kind"], registry=r)
        self.rate_limited = Counter("router_rate_limited_total", "Requests refused 429 by a route's rate limit",
                                    ["route"], registry=r)
        self.shared_table_full = Counter("router_shared_table_full_total",
                                         "A key that found its place in a table the workers share taken: a rate-limit "
                                         "bucket or a cluster's probe record evicted, or a count kept by one worker "
                                         "alone", ["table"], registry=r)
        self.upstream_recycled = Counter("router_upstream_connections_recycled_total",
                                         "Pooled cluster connections closed at their cluster's maxRequestsPerConnection"
                                         " or maxConnectionAge, by reason", ["reason"], registry=r)
        self.external_auth = Counter("router_external_auth_total",
                                     "Authorization checks of routes with externalAuth, by route and result",
                                     ["route", "result"], registry=r)
        self.cors_preflights = Counter("router_cors_preflights_total",
                                       "CORS preflights answered by the router, by route and result",
                                       ["route", "result"], registry=r)
        self.mirrored = Counter("router_mirrored_requests_total", "Request copies for mirror clusters, by result",
                                ["cluster", "result"], registry=r)
        self.dropped_headers = Counter("router_dropped_headers_total", "Request header fields dropped, by reason",
                                       ["reason"], registry=r)
        self.retries = Counter("router_retries_total", "Requests sent again to another try", ["reason"],
                               registry=r)
        self.hedge_winners = Counter("router_hedge_winners_total", "Hedged requests answered, by which try answered "
                                     "first: the latest one, or an earlier one kept past its perTry", ["winner"],
                                     registry=r)
        self.cluster_rtt = Gauge("router_cluster_rtt_seconds", "RTT estimate per cluster (Peak-EWMA)",
                                 ["cluster"], registry=r, multiprocess_mode="max")
        self.cluster_healthy = Gauge("router_cluster_healthy", "1 while a cluster is healthy (not ejected, probes ok)",
                                     ["cluster"], registry=r, multiprocess_mode="min")
        self.probes = Counter("router_probes_total", "Active probes by result", ["cluster", "result"], registry=r)
        self.decisions = Counter("router_decisions_total", "Routing decisions by reason", ["reason"], registry=r)
        self.wake_hints = Counter("router_wake_hints_total",
                                  "Cold clusters the choice skipped and asked to wake, by cluster", ["cluster"],
                                  registry=r)
        self.background_wakes = Counter("router_background_wakes_total",
                                        "Wakes nothing waits on, by cluster and reason (skipped, keepwarm)",
                                        ["cluster", "reason"], registry=r)
        self.access_log_dropped = Counter("router_access_log_dropped_total",
                                          "Access log lines dropped: the writer was behind, or a write failed",
                                          registry=r)
        self.keepwarm_pings = Counter("router_keepwarm_pings_total", "Keep-alive requests to kept copies",
                                      ["cluster", "result"], registry=r)
        self.buffered = Gauge("router_buffered_requests", "Requests held while a service starts", ["service"],
                              registry=r, multiprocess_mode="livesum")
        self.buffer_wait = Histogram("router_buffer_wait_seconds", "Time held before release",
                                     buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60), registry=r)
        self.buffer_outcomes = Counter("router_buffer_outcomes_total", "How held requests ended", ["outcome"],
                                       registry=r)
        self.cold_start = Histogram("router_cold_start_seconds", "Wake to ready, per cluster",
                                    ["cluster", "image_cached"], buckets=(0.25, 0.5, 1, 2, 4, 6, 8, 12, 20, 30, 60),
                                    registry=r)
        self.wakes = Counter("router_wakes_total", "Wake triggers by cluster and result", ["cluster", "result"],
                             registry=r)
        self.config_version = Gauge("router_config_version", "Version of the routing snapshot in use",
                                    registry=r, multiprocess_mode="max")
        self.tls_not_after = Gauge("router_tls_certificate_expiry_timestamp_seconds",
                                   "When the first of the TLS certificates the listener serves expires "
                                   "(seconds since the epoch)",
                                   registry=r, multiprocess_mode="min")
        self.preconnects = Counter("router_upstream_preconnects_total",
                                   "Connections opened to a cluster ahead of requests (Cluster spec.preconnect)",
                                   ["cluster", "result"], registry=r)
        self.upstream_tls_not_after = Gauge(
            "router_upstream_tls_certificate_expiry_timestamp_seconds",
            "When the client certificate the router shows a cluster (Cluster spec.tls) expires "
            "(seconds since the epoch)",
            ["cluster"], registry=r, multiprocess_mode="min")
        self.compressed = Counter("router_compressed_responses_total", "Responses the router sent gzip-compressed",
                                  registry=r)
        self.compression_bytes = Counter("router_compression_bytes_total",
                                         "Bytes of compressed responses before (in) and after (out) gzip",
                                         ["stage"], registry=r)
        self._bounds = tuple(LATENCY_BUCKETS) + (float("inf"),)
        self._decisions: dict[str, int] = {}
        self.before_flush: list = []  # callables that add what they counted (the fast lane's fold)
        # (cluster, route) -> (status code -> requests, per-bucket latency counts + [sum])
        self._answered: dict[tuple[str, str], tuple[dict, list]] = {}

    def count_request(self, cluster: str, code: int, duration_s: float, route: str = "-") -> None:
        """Hot path: plain dict arithmetic, folded into the exported series by flush()."""
        where = (cluster, route)
        seen = self._answered.get(where)
        if seen is None:
            seen = self._answered[where] = ({}, [0] * len(self._bounds) + [0.0])
        codes, lat = seen
        codes[code] = codes.get(code, 0) + 1
        lat[bisect_left(self._bounds, duration_s)] += 1
        lat[-1] += duration_s

    def count_decision(self, reason: str, n: int = 1) -> None:
        self._decisions[reason] = self._decisions.get(reason, 0) + n

    def add_answered(self, cluster: str, route: str, codes: dict, lat: list) -> None:
        """Counts gathered elsewhere (the fast lane's) in count_request's form: status -> requests, and
        the per-bucket latency counts with their sum last."""
        seen = self._answered.get((cluster, route))
        if seen is None:
            self._answered[(cluster, route)] = (codes, lat)
            return
        mine, mine_lat = seen
        for code, n in codes.items():
            mine[code] = mine.get(code, 0) + n
        for i, n in enumerate(lat):
            mine_lat[i] += n

    def flush(self) -> None:
        """Move what count_request gathered into the prometheus series (before each scrape,
        and every second in worker processes, whose series are merged from files)."""
        for source in self.before_flush:
            source()
        answered, self._answered = self._answered, {}
        decisions, self._decisions = self._decisions, {}
        for reason, n in decisions.items():
            self.decisions.labels(reason).inc(n)
        for (cluster, route), (codes, lat) in answered.items():
            for code, n in codes.items():
                self.requests.labels(cluster, str(code), route).inc(n)
            child = self.request_duration.labels(cluster, route)
            # Histogram children keep one non-cumulative value per bucket plus the sum.
            for i, n in enumerate(lat[:-1]):
                if n:
                    child._buckets[i].inc(n)
            child._sum.inc(lat[-1])
