"""Activator: executes the activation buffer's decisions for held requests.

When the choice finds no warm copy anywhere eligible (reason "cold") and the service has a
wake trigger, the exchange is held here: the wake set is woken (the soonest-ready clusters,
`wakeParallelism` of them), readiness is polled through each woken cluster's
ingress every 25 ms, and on the first ready signal held requests are released in FIFO order, paced by
the cluster's capacity. Deadlines expire into 504; predicted misses and overflow into 503.
It also wakes, in the background, the cold clusters the choice skipped for a warm copy elsewhere
(`wake_skipped`), so the split returns to its weights once they are ready.
"""
from __future__ import annotations

import asyncio
import itertools
import logging

from ..config.model import ClusterConfig, ServiceConfig
from ..core.buffer import ActivationBuffer, BufferLimits, Refuse, capacity_share
from ..core.warmth import Warmth
from .wake import WakeManager, WakeTrigger

log = logging.getLogger("router.activator")
POLL_INTERVAL_S = 0.025
POLL_TIMEOUT_S = 0.5
API_DOWN_POLL_S = 0.5  # readiness over HTTP while the cluster's API refuses wakes
BACKGROUND_POLL_S = 0.25  # readiness of a background wake: nothing waits on it


def client_deadline_s(headers: list[tuple[bytes, bytes]]) -> float | None:
    """x-request-timeout: seconds; grpc-timeout: 1-8 digits and a unit (H M S m u n)."""
    units = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}
    for name, value in headers:
        lname = name.lower()
        try:
            if lname == b"x-request-timeout":
                v = float(value.strip())
                if v > 0:
                    return v
            elif lname == b"grpc-timeout":
                v = value.strip()
                if 1 < len(v) <= 9 and v[:-1].isdigit() and v[-1:] in units:
                    return int(v[:-1]) * units[v[-1:]]
        except ValueError:
            continue
    return None


TOTAL_KEY = "\0all"  # the shared held-requests table's key for a worker's total (no service is named so)
ACTIVE_KEY = "\0active\0"  # + service: held, or released and not finished (sharing a copy's capacity)


class Activator:
    def __init__(self, ctx, trigger: WakeTrigger):
        self.ctx = ctx
        b = ctx.settings.buffer
        self.buffer = ActivationBuffer(BufferLimits(b.per_service, b.total, b.max_bytes))
        self.waiting: dict[int, object] = {}
        self.ids = itertools.count(1)
        self.wakes = WakeManager(trigger, self._on_woken, lambda c, r: ctx.metrics.wakes.labels(c, r).inc())
        self.pollers: dict[tuple[str, str], asyncio.Task] = {}
        self.background: dict[tuple[str, str], float] = {}  # background wakes: (service, cluster) -> give up at
        self.deadline_handle: asyncio.TimerHandle | None = None
        self.out: dict[str, int] = {}  # service -> requests this worker released that have not finished

    # --- used by the exchange -----------------------------------------------------------
    def service(self, name: str) -> ServiceConfig | None:
        for svc in self.ctx.snapshot.config.services:
            if svc.name == name:
                return svc
        return None

    def _cluster(self, name: str) -> ClusterConfig | None:
        return next((c for c in self.ctx.snapshot.config.clusters if c.name == name), None)

    def can_hold(self, service: str) -> bool:
        """Hold only what the router can wake: otherwise the cluster's own activator is the better place."""
        svc = self.service(service)
        return svc is not None and self._can_wake(svc, self.ctx.snapshot.config.clusters)

    def _can_wake(self, svc: ServiceConfig, clusters) -> bool:
        can_wake = getattr(self.wakes.trigger, "can_wake", None)
        if can_wake is not None:
            return can_wake(svc, clusters)
        return svc.wake_path is not None

    def wake_skipped(self, service: str, cluster: str) -> bool:
        """A CACHED or COLD cluster the choice passed over while a warm copy elsewhere serves: wake it
        in the background, so the split returns to its weights once it is ready. Returns whether a
        wake started."""
        svc = self.service(service)
        return svc is not None and svc.wake_skipped and self.wake_in_background(svc, cluster, "skipped")

    def wake_in_background(self, svc: ServiceConfig, cluster: str, reason: str) -> bool:
        """Wake a copy nothing waits on (a skipped cluster, or keep-warm). A wake with no ready copy
        after the service's holdLimit is given up. Returns whether a wake started."""
        target = self._cluster(cluster)
        if target is None or not self._can_wake(svc, (target,)):
            return False
        now = self.ctx.clock()
        warmth = self.ctx.policy.warmth
        if warmth.warmth(svc.name, cluster, now) not in (Warmth.CACHED, Warmth.COLD):
            return False
        if not self.wakes.request(svc, target):
            return False
        warmth.on_wake(svc.name, cluster, now)
        self.ctx.metrics.background_wakes.labels(cluster, reason).inc()
        self.background[(svc.name, cluster)] = now + svc.hold_limit_s
        self._poll(svc, target)
        return True

    async def ping(self, svc: ServiceConfig, cluster: str) -> bool:
        """A request to the service's readinessPath through the cluster's ingress: activity that keeps
        a copy from its idle timeout (keep-warm). Returns whether it was answered below 500."""
        target = self._cluster(cluster)
        return target is not None and await self._ready(svc, target)

    def hold(self, ex, decision) -> None:
        ctx = self.ctx
        now = ctx.clock()
        svc = self.service(ex.service)
        wake_set = self._wake_set(ex, svc, decision, now)
        ready_in = min((ctx.policy.warmth.expected_cold_s(svc.name, c.name, now) for c in wake_set), default=None)
        limit = svc.hold_limit_s
        client = client_deadline_s(ex.req.headers)
        deadline = now + (min(limit, client) if client else limit)
        route_deadline = ex.request_deadline()  # the route's request timeout covers the hold too
        if route_deadline is not None:
            deadline = min(deadline, route_deadline)
        hid = next(self.ids)
        shared = ctx.shared_held  # with serve --workers: what the other workers hold counts too
        elsewhere = (shared.get(svc.name), shared.get(TOTAL_KEY)) if shared is not None else (0, 0)
        res = self.buffer.on_hold(hid, svc.name, ex.req.head_size + 512, now, deadline, ready_in, elsewhere)
        if isinstance(res, Refuse):
            spill = self._spillover(ex, svc, now) if res.overflow and svc.spillover else None
            if spill is not None:
                ctx.metrics.buffer_outcomes.labels("spilled").inc()
                ex.spill(spill)
                return
            ctx.metrics.buffer_outcomes.labels("rejected").inc()
            ex.respond_error(503, res.reason, retry_after_s=res.retry_after_s)
            return
        self.waiting[hid] = ex
        ex.on_held(hid)
        self._held_changed(svc.name)
        for cluster in wake_set:
            if ctx.policy.warmth.warmth(svc.name, cluster.name, now) != Warmth.WARM:
                ctx.policy.warmth.on_wake(svc.name, cluster.name, now)
                self.wakes.request(svc, cluster)
            self._poll(svc, cluster)
        self._arm_deadline()

    def finished(self, service: str, cluster: str) -> None:
        self._release(self.buffer.on_finished(service, cluster, self.ctx.clock()))

    def released_ended(self, service: str) -> None:
        """A request this worker held and released has ended, however it ended."""
        left = self.out.get(service, 0) - 1
        if left > 0:
            self.out[service] = left
        else:
            self.out.pop(service, None)
        self._held_changed(service)

    def gone(self, hid: int, service: str) -> None:
        if self.buffer.on_gone(hid, service):
            self.waiting.pop(hid, None)
            self.ctx.metrics.buffer_outcomes.labels("client_gone").inc()
            self._held_changed(service)

    def latest_deadline(self) -> float | None:
        deadlines = [h.deadline for q in self.buffer.queues.values() for h in q.values()]
        return max(deadlines) if deadlines else None

    # --- internals ----------------------------------------------------------------------
    def _spillover(self, ex, svc: ServiceConfig, now: float):
        """Queue full: a warm, healthy cluster of the route, however far (maxRTT does not apply)."""
        policy = self.ctx.policy
        warm = [b for b in ex.route.live if policy.health.is_healthy(b.cluster, now)
                and policy.warmth.warmth(svc.name, b.cluster, now) == Warmth.WARM
                and not policy.saturated(svc.name, b.cluster)]
        return min(warm, key=lambda b: policy.expected(svc.name, b, now)) if warm else None

    def _wake_set(self, ex, svc: ServiceConfig, decision, now: float) -> list[ClusterConfig]:
        """The clusters expected to be ready soonest (cached image and low RTT first)."""
        policy = self.ctx.policy
        candidates = [b for b in ex.route.live
                      if policy.warmth.warmth(svc.name, b.cluster, now) in (Warmth.CACHED, Warmth.COLD,
                                                                            Warmth.WAKING)
                      and policy.health.is_healthy(b.cluster, now)]
        candidates.sort(key=lambda b: policy.expected(svc.name, b, now))
        chosen = [decision.backend] + [b for b in candidates if b is not decision.backend]
        names = [b.cluster for b in chosen[:svc.wake_parallelism]]
        # A warm copy that is only saturated needs no wake (its autoscaler adds replicas): wait for a slot.
        names = [n for n in names if policy.warmth.warmth(svc.name, n, now) != Warmth.WARM] or names
        return [c for c in self.ctx.snapshot.config.clusters if c.name in names]

    def _poll(self, svc: ServiceConfig, cluster: ClusterConfig) -> None:
        key = (svc.name, cluster.name)
        if key not in self.pollers:
            self.pollers[key] = asyncio.get_running_loop().create_task(self._poll_loop(svc, cluster))

    async def _poll_loop(self, svc: ServiceConfig, cluster: ClusterConfig) -> None:
        key = (svc.name, cluster.name)
        try:
            while self.buffer.held(svc.name) or key in self.background:
                if not self.buffer.held(svc.name) and self.ctx.clock() >= self.background[key]:
                    self._give_up(svc, cluster)
                    return
                warm = self.ctx.policy.warmth.warmth(svc.name, cluster.name, self.ctx.clock()) == Warmth.WARM
                # A cluster watched through its API says when it is ready; others are asked over HTTP.
                # So is one whose API refused the wake (an API outage): its ingress may still wake the
                # service on a request (Knative's activator does), and the watch cannot tell.
                api_down = cluster.kubernetes is not None and self.wakes.failing(svc.name, cluster.name)
                if warm or ((cluster.kubernetes is None or api_down) and await self._ready(svc, cluster)):
                    self._on_ready(svc, cluster)
                    return
                await asyncio.sleep(API_DOWN_POLL_S if api_down else POLL_INTERVAL_S if self.buffer.held(svc.name)
                                    else BACKGROUND_POLL_S)
        finally:
            if self.pollers.get(key) is asyncio.current_task():
                del self.pollers[key]

    async def _ready(self, svc: ServiceConfig, cluster: ClusterConfig) -> bool:
        ep = cluster.endpoint
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(ep.host, ep.port, **ep.connect_options()), POLL_TIMEOUT_S)
        except (OSError, asyncio.TimeoutError):
            return False
        try:
            host = svc.hosts[0] if svc.hosts else ep.host
            writer.write(f"GET {svc.readiness_path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: edge-router-readiness\r\n"
                         f"Connection: close\r\n\r\n".encode())
            line = await asyncio.wait_for(reader.readline(), POLL_TIMEOUT_S)
        except (OSError, asyncio.TimeoutError):
            return False
        finally:
            writer.transport.abort()  # a probe connection: nothing to flush, no close handshake to wait for
        parts = line.split()
        return len(parts) >= 2 and parts[1].isdigit() and int(parts[1]) < 500

    def _give_up(self, svc: ServiceConfig, cluster: ClusterConfig) -> None:
        """A background wake found no ready copy within holdLimit: a later skip may wake it again."""
        self.background.pop((svc.name, cluster.name), None)
        self.ctx.policy.warmth.on_wake_abandoned(svc.name, cluster.name, self.ctx.clock())
        self.wakes.done(svc.name, cluster.name)
        log.info("background wake of %s in %s: no ready copy within %gs", svc.name, cluster.name, svc.hold_limit_s)

    def _on_woken(self, service: str, cluster: str) -> None:
        log.info("woke %s in %s", service, cluster)

    def _on_ready(self, svc: ServiceConfig, cluster: ClusterConfig) -> None:
        ctx = self.ctx
        now = ctx.clock()
        warmth = ctx.policy.warmth
        st = warmth.get(svc.name, cluster.name)
        if st is not None and st.wake_started is not None:
            ctx.metrics.cold_start.labels(cluster.name, str(bool(st.wake_cached)).lower()).observe(now - st.wake_started)
        cached = st.image_cached if st is not None and st.image_cached is not None else True
        warmth.on_discovery(svc.name, cluster.name, max(st.ready_replicas if st else 0, 1), cached, now,
                            svc.container_concurrency)
        self.wakes.done(svc.name, cluster.name)
        self.background.pop((svc.name, cluster.name), None)
        in_flight = ctx.policy.inflight_service.get((svc.name, cluster.name), 0)
        shared = ctx.shared_held  # with serve --workers: the other workers holding (or releasing) requests for
        # it share the copy
        holders = (sum(1 for n in shared.values_elsewhere(ACTIVE_KEY + svc.name) if n > 0) if shared is not None
                   else 0)
        capacity = capacity_share(svc.container_concurrency, holders)
        self._release(self.buffer.on_ready(svc.name, cluster.name, capacity, in_flight, now))

    def _release(self, releases) -> None:
        metrics = self.ctx.metrics
        for r in releases:
            ex = self.waiting.pop(r.id, None)
            metrics.buffer_outcomes.labels("forwarded").inc()
            metrics.buffer_wait.observe(r.waited_s)
            if ex is not None:
                if ex.released_to is None:  # (its first release: counted out once, as it ends once)
                    self.out[ex.service] = self.out.get(ex.service, 0) + 1
                self._held_changed(ex.service)
                ex.release(r.cluster, r.waited_s)

    def _arm_deadline(self) -> None:
        nxt = self.buffer.next_deadline()
        if nxt is None:
            return
        loop = asyncio.get_running_loop()
        if self.deadline_handle is not None:
            self.deadline_handle.cancel()
        delay = max(nxt - self.ctx.clock(), 0.0)
        self.deadline_handle = loop.call_later(delay + 0.001, self._on_deadline)

    def _on_deadline(self) -> None:
        self.deadline_handle = None
        for e in self.buffer.on_tick(self.ctx.clock()):
            ex = self.waiting.pop(e.id, None)
            self.ctx.metrics.buffer_outcomes.labels("expired").inc()
            if ex is not None:
                self._held_changed(e.service)
                ex.respond_error(504, f"no copy of {e.service} became ready within {e.waited_s:.1f}s")
        self._arm_deadline()

    def _held_changed(self, service: str) -> None:
        """The gauge, and with serve --workers this worker's counts for the others: held (their bounds) and
        held or released and not finished (their share of a copy's capacity)."""
        held = self.buffer.held(service)
        self.ctx.metrics.buffered.labels(service).set(held)
        shared = self.ctx.shared_held
        if shared is not None:
            shared.publish(service, held)
            shared.publish(TOTAL_KEY, self.buffer.total)
            shared.publish(ACTIVE_KEY + service, held + self.out.get(service, 0))

    def stop(self) -> None:
        self.wakes.stop()
        for task in self.pollers.values():
            task.cancel()
        if self.deadline_handle is not None:
            self.deadline_handle.cancel()
