"""ProxyContext: what every connection of one worker shares.

The snapshot attribute is replaced whole on reload (build, then swap); a request reads
it once when its head is complete.
"""
from __future__ import annotations

import asyncio
import os
import random
import time

from ..config.model import RouterSettings
from ..core.choice import PolicyInputs
from ..core.health import HealthState, OutlierPolicy
from ..core.ratelimit import RateLimiter
from ..core.retry import RetryBudget
from ..core.rtt import RttState
from ..core.snapshot import RoutingSnapshot
from ..obs.metrics import Metrics
from ..openfiles import open_files_limit
from .fastpath import FastPath, fastlane
from .headers import is_trusted, wants_json
from .upstream import UpstreamPool


RESERVED_FILES = 64  # descriptors kept for what is not a proxied request: listeners, admin, probes, watches, logs


def connection_limit(settings: RouterSettings) -> int:
    """Client connections one process accepts: `maxConnections`, else as many as leave each one
    room for its upstream connection within the open files limit (nginx's worker_connections,
    counted the same way: both sides of a proxied request)."""
    if settings.limits.max_connections is not None:
        return settings.limits.max_connections
    return max(1, (open_files_limit() - RESERVED_FILES) // 2)


def _limited(snapshot: RoutingSnapshot) -> frozenset[str]:
    """Clusters with a request limit (maxRequests): their counts are what other workers need to see."""
    return frozenset(c.name for c in snapshot.config.clusters if c.max_requests is not None)


class ProxyContext:
    def __init__(self, loop: asyncio.AbstractEventLoop, snapshot: RoutingSnapshot, metrics: Metrics,
                 health: HealthState | None = None, rng: random.Random | None = None):
        self.loop = loop
        self.snapshot = snapshot
        self.metrics = metrics
        self.policy = PolicyInputs(health=health or HealthState(), rtt=RttState(snapshot.config.router.rtt_decay_s))
        self.health = self.policy.health
        self._health_settings(snapshot.config)
        self.inflight = self.policy.inflight  # cluster -> requests in flight there
        self.retry_budget = RetryBudget()
        self.activator = None  # set by the app: holds requests while a service starts
        self.keep_warm = None  # set by the app: a KeepWarmPolicy fed with what is sent where
        self.access_log = None  # set by the app when the Router asks for one: an AccessLog
        self.keep_warm_services = self._keep_warm_services(snapshot)
        self.wake_hints: dict[tuple[str, str], float] = {}  # (service, cluster) -> last hinted
        self.rng = rng or random.Random()
        self.settings: RouterSettings = snapshot.config.router
        self.compression = self.settings.compression  # read once per response head: kept at hand
        self.pin = _pin(self.settings.pin_header)  # (header name as bytes, CIDRs), read once per request
        self.pool = UpstreamPool(loop, self.settings.timeouts.upstream_idle_s)
        self.pool.recycled = metrics.upstream_recycled
        self.pool.set_reuse(snapshot.config.clusters)
        self.connections: set = set()
        self.max_connections = connection_limit(self.settings)
        self._connection_reuse()
        self.draining = False
        self.via = self.settings.via.encode()
        self.scheme = b"https" if self.settings.tls is not None else b"http"  # the listener's, fixed at start
        # HTTP/2 offered by ALPN on the TLS listener, and with prior knowledge on a plain one (fixed at start)
        http2 = self.settings.http2
        self.http2_alpn = http2 is not None and self.settings.tls is not None
        self.http2_cleartext = http2 is not None and http2.cleartext and self.settings.tls is None
        self.clock = time.monotonic
        self._tails: dict[str, bytes] = {}
        # Request ids: 64 random bits per process, then a counter: unique across workers and replicas
        # without a random draw per request; 32 hex digits, like a UUID without dashes.
        self._id_prefix = os.urandom(8).hex().encode()
        self._id_count = 0
        self.rate_limiters: dict[tuple, RateLimiter] = {}  # (route name, its RateLimit) -> buckets
        self.shared_buckets = None  # set by a worker of `serve --workers`: the table its buckets share
        self.mirrors: set = set()  # request copies out to mirror clusters (MirrorCopy)
        self.auth_checks: set = set()  # authorization checks out to routes' externalAuth clusters (AuthCheck)
        self.openings: set = set()  # accepted, not yet HTTP: reading a PROXY header, in a TLS handshake (Opening)
        self.per_client: dict[str, int] = {}  # client address -> its open connections, with maxConnectionsPerClient
        self.shared_clients = None  # set by a worker of `serve --workers`: every worker's per_client, published
        self.shared_inflight = None  # set by a worker of `serve --workers`: requests in flight, published
        self.shared_ejections = None  # set by a worker of `serve --workers`: ejections, published (app.py)
        self.shared_probes = None  # set by a worker of `serve --workers`: probe turns and results (app.py)
        self.shared_held = None  # set by a worker of `serve --workers`: requests held per service, published
        # A request's place in its cluster's requests in flight, taken and given back (bound to the policy's
        # own methods; with shared counts, to ones that also publish the count of a cluster with a limit).
        self.count_start, self.count_finish = self.policy.start, self.policy.finish
        self.limited_clusters = _limited(snapshot)
        # The compiled fast lane for plain requests (fastpath.py); None when it is not built.
        self.fast = FastPath(self) if fastlane is not None else None

    def rate_limiter(self, route) -> RateLimiter:
        """The buckets of a route's rate limit: kept across reloads while the route keeps its name and limit."""
        key = (route.name, route.rate_limit)
        limiter = self.rate_limiters.get(key)
        if limiter is None:
            limit, shared = route.rate_limit, self.shared_buckets
            limiter = self.rate_limiters[key] = (RateLimiter(limit.rate, limit.burst) if shared is None
                                                 else shared.limiter(route.name, limit))
        return limiter

    def new_request_id(self) -> bytes:
        self._id_count += 1
        return b"%s%016x" % (self._id_prefix, self._id_count)

    def problem_replies(self, req) -> bool:
        """Whether the router's own answer to `req` is an RFC 9457 problem document (Router errorFormat)."""
        fmt = self.settings.error_format
        return fmt != "text" and (fmt == "problem-json" or wants_json(req.headers))

    def response_tail(self, cluster: str) -> bytes:
        """The router's own response headers for a cluster, built once per config."""
        tail = self._tails.get(cluster)
        if tail is None:
            tail = self._tails[cluster] = b"Via: 1.1 %s\r\nx-router-cluster: %s\r\n" % (self.via, cluster.encode())
        return tail

    def use_shared(self, tables: dict) -> None:
        """A worker's tables shared with the other workers (ProxyContext attributes by name); shared
        requests-in-flight counts also feed the choice and are published as requests start and finish."""
        for name, table in tables.items():
            setattr(self, name, table)
            table.on_full = self.metrics.shared_table_full.labels(name.removeprefix("shared_")).inc
        shared = self.shared_inflight
        if shared is not None:
            policy = self.policy
            policy.elsewhere = shared

            def publishing(count):  # the policy's own step, then the cluster's new count when it has a limit
                def counted(service: str, cluster: str) -> None:
                    count(service, cluster)
                    if cluster in self.limited_clusters:
                        shared.publish(cluster, policy.inflight[cluster])
                return counted
            self.count_start, self.count_finish = publishing(policy.start), publishing(policy.finish)

    @staticmethod
    def _keep_warm_services(snapshot: RoutingSnapshot) -> frozenset[str]:
        return frozenset(svc.name for svc in snapshot.config.services if svc.keep_warm)

    def keep_warm_seen(self, service: str, cluster: str) -> None:
        """A request for a keep-warm service was sent to `cluster`."""
        if self.keep_warm is not None:
            self.keep_warm.on_served(service, cluster, self.clock())

    def swap(self, snapshot: RoutingSnapshot) -> None:
        old = {c.name for c in self.snapshot.config.clusters}
        self._health_settings(snapshot.config)
        for cluster in snapshot.config.clusters:
            if cluster.name not in old:  # new to the config: its traffic ramps up like a returning one's
                self.health.on_joined(cluster.name, self.clock())
        self.snapshot = snapshot
        self.keep_warm_services = self._keep_warm_services(snapshot)
        self.limited_clusters = _limited(snapshot)
        self.settings = snapshot.config.router
        self.compression = self.settings.compression
        self.pin = _pin(self.settings.pin_header)
        self.max_connections = connection_limit(self.settings)
        self._connection_reuse()
        self.pool.set_reuse(snapshot.config.clusters)
        self.via = self.settings.via.encode()
        self._tails = {}
        kept = {(s.name, s.rate_limit) for s in snapshot.config.splits if s.rate_limit is not None}
        self.rate_limiters = {k: v for k, v in self.rate_limiters.items() if k in kept}
        self.metrics.config_version.set(snapshot.version)
        if self.fast is not None:
            self.fast.configure()

    def _health_settings(self, config) -> None:
        """The Router's thresholds for health (what the state remembers carries over a reload)."""
        o, probes = config.router.outlier_detection, config.router.probes
        self.health.policy = OutlierPolicy(o.consecutive_5xx, o.base_ejection_s, o.max_ejection_s,
                                           probes.unhealthy_threshold, probes.healthy_threshold, o.panic_below,
                                           o.max_ejection_percent)
        self.health.slow_start = config.router.slow_start
        self.health.cluster_count = len(config.clusters)

    def _connection_reuse(self) -> None:
        """How long a client connection is kept: requests and seconds, infinite when unset (one comparison
        per request, no None test)."""
        limit = self.settings.limits.max_requests_per_connection
        age = self.settings.timeouts.max_connection_age_s
        self.max_requests_per_connection = float(limit) if limit else float("inf")
        self.max_connection_age_s = age if age else float("inf")

    def count_client(self, address: str) -> bool | None:
        """A new connection from `address` (the peer's, or the PROXY header's) against
        limits.maxConnectionsPerClient: True when counted (release_client() when it closes), False when the
        address has that many open already (nothing counted: refuse it), None when no limit applies: none
        is set, or the address is in trustedProxies (a load balancer in front carries many clients)."""
        limit = self.settings.limits.max_connections_per_client
        if limit is None or is_trusted(address, self.settings.trusted_proxies):
            return None
        held = self.per_client.get(address, 0)
        if held >= limit:
            return False
        shared = self.shared_clients  # with `serve --workers`: the address's connections at every worker
        if shared is not None and not shared.publish(address, held + 1, limit):
            return False
        self.per_client[address] = held + 1
        return True

    def release_client(self, address: str) -> None:
        held = self.per_client.get(address, 0)
        if held > 1:
            self.per_client[address] = held - 1
        else:
            self.per_client.pop(address, None)
        if self.shared_clients is not None:
            self.shared_clients.publish(address, max(held - 1, 0), None)

    def hint_wake(self, service: str, clusters: tuple[str, ...]) -> None:
        """Cold clusters the choice skipped: counted, and woken in the background by the activator
        (which skips pairs already waking), so the split returns to its weights once they are warm."""
        now = self.clock()
        for cluster in clusters:
            key = (service, cluster)
            if now - self.wake_hints.get(key, -1e9) >= 1.0:  # at most once a second per pair
                self.wake_hints[key] = now
                self.metrics.wake_hints.labels(cluster).inc()
                if self.activator is not None:
                    self.activator.wake_skipped(service, cluster)

    def start_drain(self) -> None:
        """Stop keep-alive: idle connections close now, busy ones after their response."""
        self.draining = True
        for conn in list(self.connections):
            conn.on_drain()


def _pin(pin) -> tuple[bytes, tuple] | None:
    return (pin.name.encode(), pin.allow) if pin is not None else None
