"""The fast lane's Python side: which connections and routes it serves, its timers, and its counts.

fastlane.pyx (compiled) serves the plain requests; this module decides what it may serve and keeps it
in step with the rest of the router:
- the lane is on when nothing configured needs the Python path for every request (Router `fastPath`,
  no access log, no X-Request-Id, no compression, no decision or Server-Timing header, no pin header,
  no TLS listener, errorFormat not `auto`, earlyHints off);
- a route qualifies when a request on it is plain forwarding: no guards (sourceRanges, rate limit,
  CORS, authorization, redirect, direct answer, faults), no header changes or rewrite, no mirrors,
  request timeout, per-try timeout, retries on status, hedging, affinity, sessions or request limits,
  not a keep-warm service, its clusters plain http without connection reuse limits or preconnect;
- the draw (choice.draw_plan) is set again on each tick (every TICK_S) for routes in use, and at once
  after a health change (an ejection, a recovery);
- counts fold into the metrics and the policy on each tick and before each scrape.
"""
from __future__ import annotations

import asyncio
import logging
import os

from ..core.choice import draw_plan
from ..core.health import is_local_exhaustion
from .headers import response_head, simple_response, split_tokens, status_line
from .upstream import connect_failure

try:
    from . import fastlane
except ImportError:  # a source install without a C compiler: the Python path serves every request
    fastlane = None

log = logging.getLogger("router.dataplane")
TICK_S = 0.1
HOST_MEMO_MAX = 1024  # Hosts remembered (a route or "not for the fast lane"); random Hosts cannot grow it
EXPIRE_EVERY_TICKS = 10


def lane_off_reason(ctx) -> str | None:
    """Why the fast lane cannot serve this configuration (None: it can)."""
    s = ctx.settings
    if fastlane is None:
        return "not compiled"
    for off, why in ((not s.fast_path, "Router fastPath is false"), (ctx.access_log is not None, "accessLog"),
                     (s.request_id, "requestId"), (ctx.compression is not None, "compression"),
                     (s.decision_header, "decisionHeader"), (s.server_timing, "serverTiming"),
                     (ctx.pin is not None, "pinHeader"), (s.tls is not None, "TLS listener"),
                     (s.error_format == "auto", "errorFormat auto"), (s.early_hints != "off", "earlyHints")):
        if off:
            return why
    return None


def route_qualifies(ctx, route, service: str) -> bool:
    """Whether requests on `route` are plain forwarding, which the fast lane does as the Python path would."""
    if (route.guarded or route.mirrors is not None or route.affinity is not None or route.session is not None
            or route.request_changes or route.response_changes or route.request_timeout_s is not None
            or route.per_try_s or route.retry_codes is not None or route.hedge or route.limited
            or service in ctx.keep_warm_services or not route.live):
        return False
    reuse = ctx.pool.reuse
    preconnected = {c.name for c in ctx.snapshot.config.clusters if c.preconnect}  # (their pool is the Python path's)
    return all(len(b.pool_key) == 3 and b.pool_key[0] == "http" and b.pool_key not in reuse
               and b.cluster not in preconnected for b in route.backends)


class FastPath:
    def __init__(self, ctx):
        self.ctx = ctx
        self.lane = fastlane.Lane(self, ctx.metrics._bounds, int.from_bytes(os.urandom(8), "little"))
        self.pools: dict[tuple, object] = {}  # pool key -> FastPool
        self.routes: dict[tuple, tuple] = {}  # (id(route), service) -> (route, FastRoute or None)
        self.backends: list = []  # FastBackends whose counts are folded (those of replaced routes until idle)
        self.handle: asyncio.TimerHandle | None = None
        self.ticks = 0
        self.off_reason: str | None = None
        ctx.health.on_change = self.health_changed
        ctx.metrics.before_flush.append(self.fold)
        self.configure()

    # --- configuration ----------------------------------------------------------------------
    def configure(self) -> None:
        """The lane's settings from the live config (at start and after each reload); routes are looked
        up again from the new snapshot."""
        ctx, lane = self.ctx, self.lane
        s = ctx.settings
        self.off_reason = lane_off_reason(ctx)
        lane.enabled = self.off_reason is None
        t, limits = s.timeouts, s.limits
        lane.header_read_s, lane.idle_s = t.header_read_s, t.idle_s
        lane.upstream_header_s, lane.body_idle_s = t.upstream_header_s, t.body_idle_s
        lane.max_connection_age_s = ctx.max_connection_age_s
        lane.max_requests_per_connection = int(min(ctx.max_requests_per_connection, 2 ** 62))
        lane.max_header_bytes, lane.max_request_line_bytes = limits.max_header_bytes, limits.max_request_line_bytes
        lane.max_header_count = limits.max_header_count
        lane.via = ctx.via
        lane.scheme = ctx.scheme
        lane.problem_json = s.error_format == "problem-json"
        lane.hosts = {}
        self.routes = {}

    def take(self, conn, transport) -> bool:
        """Serve an accepted client connection (ClientConnection `conn`, accounted for) in the lane."""
        lane = self.lane
        if not lane.enabled or conn.closed or conn.stopped or conn.transport is not transport:
            return False
        fast = fastlane.FastClient(self.lane, conn, transport, conn.client_ip_bytes, conn.forwarded_node,
                                   conn.born, conn.served)
        conn.fast = fast
        conn.timer.cancel()  # the lane keeps the connection's deadlines while it has it
        transport.set_protocol(fast)
        if self.handle is None:
            self.handle = self.ctx.loop.call_later(TICK_S, self._tick)
        return True

    def describe(self) -> dict:
        """For /debug/state."""
        lane = self.lane
        routes = [{"route": f.name, "service": f.service, "draw": f.reason if f.usable else None}
                  for _, f in self.routes.values() if f is not None]
        return {"enabled": lane.enabled, "off_reason": self.off_reason, "requests": lane.requests,
                "handed_to_python": lane.handoffs, "connections": len(lane.clients), "routes": routes,
                "idle_upstream": sum(len(p.idle) for p in self.pools.values())}

    # --- hooks the lane calls ---------------------------------------------------------------
    def route_host(self, key: bytes):
        """The FastRoute for a Host (lowercase, no port), or None when its requests take the Python path."""
        snap = self.ctx.snapshot
        result = None
        if snap.by_host is not None:  # (None: some route looks at the path)
            host = key.decode("latin-1")
            hit = snap.by_host.get(host) or snap.resolve(host, "/")
            if hit is not None:
                result = self._fast_route(*hit)
        if len(self.lane.hosts) < HOST_MEMO_MAX:
            self.lane.hosts[key] = result
        return result

    def _fast_route(self, route, service: str):
        key = (id(route), service)
        got = self.routes.get(key)
        if got is None:
            fast = None
            if route_qualifies(self.ctx, route, service):
                fast = fastlane.FastRoute(route.name, service, [])
                fast.source = route
                fast.backends = [fastlane.FastBackend(b.cluster, self._pool(b.pool_key),
                                                      self.ctx.response_tail(b.cluster), fast)
                                 for b in route.backends]
                self.backends.extend(fast.backends)
                self._plan(route, fast)
            got = self.routes[key] = (route, fast)
        return got[1]

    def _pool(self, key: tuple):
        pool = self.pools.get(key)
        if pool is None:
            pool = self.pools[key] = fastlane.FastPool(key, self.ctx.pool.max_idle)
        return pool

    def replan(self, fast) -> None:
        self._plan(fast.source, fast)

    def _plan(self, route, fast) -> None:
        if fast.drawn:
            self.ctx.metrics.count_decision(fast.reason, fast.drawn)
            fast.drawn = 0
        ctx = self.ctx
        plan = draw_plan(route, ctx.policy, ctx.clock(), fast.service)
        if plan is None:
            fast.set_plan(None, "weighted")
            return
        index = {id(b): i for i, b in enumerate(route.backends)}
        backends, reason = plan
        fast.set_plan([(index[id(b)], b.weight) for b in backends], reason)
        for b in fast.backends:
            b.report_health = b.cluster in ctx.health.clusters

    def connect(self, fast_client, backend, request: bytes) -> None:
        """No idle connection to the drawn cluster: open one (per connection, not per request)."""
        self.ctx.loop.create_task(self._connect(fast_client, backend, request))

    async def _connect(self, fast_client, backend, request: bytes) -> None:
        ctx = self.ctx
        t = ctx.clock()
        try:
            upstream = await asyncio.wait_for(self._open(backend.pool), ctx.settings.timeouts.connect_s)
        except (OSError, asyncio.TimeoutError) as exc:
            if not is_local_exhaustion(exc):  # (the router's own limit: the Python path answers 503)
                ctx.metrics.connect_failures.labels(backend.cluster).inc()
                ctx.health.on_connect_failure(backend.cluster, ctx.clock(), connect_failure(exc))
                ctx.metrics.retries.labels("connect").inc()
            fast_client.connect_failed()
            return
        except Exception:  # a fault of the router's own: the Python path answers the request
            log.exception("internal error while connecting to cluster %s", backend.cluster)
            fast_client.connect_failed()
            return
        connect_s = ctx.clock() - t
        ctx.metrics.connect_duration.labels(backend.cluster).observe(connect_s)
        ctx.policy.rtt.on_connect(backend.cluster, connect_s, ctx.clock())
        fast_client.attach(upstream, request)

    async def _open(self, pool):
        _, host, port = pool.key
        _, upstream = await self.ctx.pool.open(lambda: fastlane.FastUpstream(pool), host, port)
        upstream.transport.set_write_buffer_limits(high=256 * 1024)
        return upstream

    def health_response(self, backend, status: int) -> None:
        health = self.ctx.health
        health.on_response(backend.cluster, status, self.ctx.clock())
        backend.report_health = backend.cluster in health.clusters

    def health_changed(self) -> None:
        """An ejection began or ended, or probes changed their verdict (and on each tick): every draw is set
        again before its next use."""
        for _, fast in self.routes.values():
            if fast is not None:
                fast.stale = True

    def error_response(self, status: int, reason: str, cluster: str, keep: bool, head: bool) -> bytes:
        extra = [("x-router-cluster", cluster)] if cluster != "-" else []
        if status == 500:
            self.ctx.metrics.rejected.labels("500", "internal error").inc()
        return simple_response(status, reason, close=not keep, extra=extra, head_only=head,
                               problem=self.lane.problem_json)

    def internal_error(self, exc: BaseException) -> None:
        log.error("internal error while handling a request", exc_info=exc)

    def status_line(self, status: int) -> bytes:
        line = self.lane.status_lines[status] = status_line(status)
        return line

    def parse_named(self, head: bytes, tail: bytes):
        """A response head whose Connection header names other fields, rebuilt by the Python path's rules:
        (head lines, Content-Length or -1, chunked, minor version, close, keep-alive), or None if broken."""
        lines = head[:-4].split(b"\r\n")
        headers = []
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep:
                return None
            headers.append((name, value.strip(b" \t")))
        parts, cl, chunked = response_head(int(lines[0][9:12]), headers, tail, False)
        if cl is not None and (not cl.isdigit() or chunked):
            return None
        tokens = {t for name, value in headers if name.lower() == b"connection" for t in split_tokens(value)}
        return (b"".join(parts), -1 if cl is None else int(cl), chunked, lines[0][7] - 48, b"close" in tokens,
                b"keep-alive" in tokens)

    # --- the tick ---------------------------------------------------------------------------
    def _tick(self) -> None:
        self.handle = None
        lane = self.lane
        lane.tick(fastlane.now())
        self.fold()
        self.health_changed()  # (not only health: RTT and warm state move too) every draw is set again when next used
        self.ticks += 1
        if self.ticks % EXPIRE_EVERY_TICKS == 0:
            cutoff = fastlane.now() - self.ctx.settings.timeouts.upstream_idle_s
            for pool in self.pools.values():
                pool.expire(cutoff)
        if lane.clients or any(pool.idle for pool in self.pools.values()):
            self.handle = self.ctx.loop.call_later(TICK_S, self._tick)

    def fold(self) -> None:
        """The lane's counts into the metrics (requests, latency) and the policy (first-byte times)."""
        ctx = self.ctx
        metrics, nbounds, now = ctx.metrics, self.lane.nbounds, ctx.clock()
        kept, current = [], {id(f) for _, f in self.routes.values() if f is not None}
        for b in self.backends:
            codes, lat, (ttfb_sum, ttfb_n) = b.take_counts(nbounds)
            if codes:
                metrics.add_answered(b.cluster, b.route.name, codes, lat)
            if ttfb_n:
                ctx.policy.rtt.on_first_byte(b.route.service, b.cluster, ttfb_sum / ttfb_n, now)
            if b.inflight or id(b.route) in current:
                kept.append(b)
        self.backends = kept
        for _, fast in self.routes.values():
            if fast is not None and fast.drawn:
                metrics.count_decision(fast.reason, fast.drawn)
                fast.drawn = 0

    def close(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
        for pool in self.pools.values():
            pool.close_all()
