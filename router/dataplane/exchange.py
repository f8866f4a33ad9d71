"""Exchange: one request's trip through the proxy: route, choose, connect (or be held while a
service starts), send the request with the proxy's own framing, retry what is safe to retry.

It executes core decisions (`choose_backend`) and reports outcomes back into health, RTT and
the retry budget. The client connection feeds it request events; the upstream connection feeds
it response events, handled by the ResponseRelay half (relay.py); a route's sourceRanges and rate
limit are checked by the RouteGuards half (guards.py); retries are Retrying's (retrying.py), flow
control and upgrade tunnels Streaming's (tunnel.py).
"""
from __future__ import annotations

import asyncio
import errno
import logging
import time

from ..core.affinity import affinity_key
from ..core.choice import Forward, Reject, choose_backend
from ..core.health import is_local_exhaustion
from ..core.session import session_cluster
from .headers import REQUEST_ID, HttpReject, forwarding_headers, redirect_location, request_lines
from .mirror import keep_for_mirrors, mirror_request
from .paths import rewritten
from .pause import PAUSE_HELD
from .authz import ExternalAuthorization
from .guards import RouteGuards
from .hedge import Hedging
from .relay import ResponseRelay
from .retrying import Retrying
from .request import REPLAY_LIMIT, Request
from .tunnel import Streaming
from .upstream import UpstreamConnection, connect_failure

log = logging.getLogger("router.dataplane")
EXHAUSTION_LOG_EVERY_S = 10.0
_exhaustion_logged = [float("-inf")]  # when it was last logged (one line per 10 s, the metric counts all)


def _path(url: bytes) -> str:
    return url.partition(b"?")[0].decode("latin-1")


class Exchange(RouteGuards, ExternalAuthorization, Hedging, Retrying, ResponseRelay, Streaming):
    __slots__ = ("conn", "req", "ctx", "upstream", "backend", "route", "tried", "streaming", "kept", "kept_len",
                 "stale_retried", "resp_started", "finished", "upstream_paused", "resp_chunked",
                 "resp_close_delimited", "status", "keep_alive", "task", "head_mark", "service", "affinity",
                 "decision", "counted", "retrying", "sent_at", "ended", "hold_id", "held_s", "released_to",
                 "deadline_handle", "status_retries", "mirrored", "gzip", "parked",
                 "session", "tries", "resumed", "body_sent", "head_at", "auth_waiting", "sent_continue",
                 "hints", "mirror_body", "mirror_len")

    def __init__(self, conn, req: Request):
        self.conn, self.req, self.ctx = conn, req, conn.ctx
        self.upstream: UpstreamConnection | None = None
        self.backend = None
        self.route = None
        self.tried: frozenset[str] = frozenset()
        self.streaming = False  # body chunks go straight upstream
        self.kept: list[bytes] | None = []  # body sent so far, for a retry on a stale pooled connection
        self.kept_len = 0
        self.stale_retried = False
        self.resp_started = self.finished = self.upstream_paused = False
        self.resp_chunked = self.resp_close_delimited = False
        self.status = 0
        self.keep_alive = req.keep_alive
        self.task = None
        self.head_mark = None  # (cork buffer, index) while the response head is still unsent
        self.service = ""
        self.affinity: str | None = None
        self.session: str | None = None  # the cluster the request's sticky-session token names
        self.decision = None
        self.counted: str | None = None  # the cluster whose in-flight count holds this request
        self.retrying = False  # the current try is a retry (holds a place in the retry budget)
        self.sent_at = 0.0
        self.ended = False
        self.hold_id: int | None = None  # while held by the activator
        self.held_s: float | None = None  # how long it was held, once released
        self.released_to: str | None = None
        self.deadline_handle = None  # the route's request timeout, once the response head went out
        self.status_retries = 0  # responses dropped for the route's retry codes
        self.mirrored = False  # copies went to the route's mirror clusters (once, whatever the retries)
        self.gzip = None  # the response's GzipStream, when the router compresses it
        self.parked = None  # earlier tries still running beside this one (hedging: a list of ParkedTry)
        self.resumed = False  # (hedging) the current try is an earlier one, taken up again
        self.tries = 0  # times the request was sent to a cluster (retries and hedges included), for the access log
        self.body_sent = 0  # response body bytes written to the client (compressed, when gzipped)
        self.head_at = 0.0  # when the answering try's response head arrived (0: none did)
        self.auth_waiting = False  # an authorization check waits for the whole body to be sent with it
        self.sent_continue = False  # the router answered the client's Expect: 100-continue itself
        self.hints = 0  # 103 Early Hints passed on to the client (Router earlyHints)
        self.mirror_body: list[bytes] | None = None  # on a mirrored route, the body as it came (to maxBuffered)
        self.mirror_len = 0
        conn.ctx.retry_budget.start_request()

    # --- start: route, choose, connect ----------------------------------------------------
    def start(self) -> None:
        req = self.req
        url = req.url  # origin-form, or * (see origin_form)
        snap = self.ctx.snapshot
        host = req.facts["host"]
        hit = snap.by_host.get(host) if snap.by_host is not None else None
        if hit is None:  # the path matters, or a Host not seen yet
            hit = snap.resolve(host, _path(url), req)
            if hit is None:
                self.respond_error(404, f"no route for host {host!r}", cluster="-")
                return
        route, self.service = hit
        self.route = route
        if route.mirrors is not None:
            self.mirror_body = []
        if route.max_body != req.max_body and self._body_over(route):
            return
        if route.guarded and self._guard(route):
            return
        self._keyed_choose()

    def _keyed_choose(self) -> None:
        """The choice, with the request's affinity key or session token when the route has them (read after
        an authorization check, which may have set the header they are in)."""
        route, req = self.route, self.req
        if self.ctx.pin is not None and self._pinned(self.ctx.pin):
            return
        if route.affinity is not None:
            self.affinity = affinity_key(route.affinity, req.headers, _path(req.url))
        elif route.session is not None:
            self.session = session_cluster(route.session, req.headers, time.time())
        self._choose()

    def answer_redirect(self, redirect: tuple, scheme: bytes, path_prefix: str, reason: str) -> None:
        """Answer with a redirect (a route's, or the HTTPS redirect listener's) built from this request."""
        facts = self.req.facts
        location = redirect_location(redirect, scheme, facts["host"], facts["raw_host"], self.req.url, path_prefix)
        self.respond_error(redirect[5], reason, cluster="-", location=location)

    def _choose(self, decision=None) -> None:
        ctx = self.ctx
        if self.counted is not None:
            self._uncount()
        if decision is None:
            decision = choose_backend(self.route, ctx.policy, ctx.clock(), ctx.rng, self.tried,
                                      self.service, self.affinity, self.session)
        if isinstance(decision, Reject):
            if not self.fall_back(None):  # (a hedge that could not connect: the earlier try is still there)
                self.respond_error(decision.status, decision.reason, cluster="-")
            return
        if decision.reason == "cold" and self.hold_id is None and self.held_s is None \
                and ctx.activator is not None and ctx.activator.can_hold(self.service):
            ctx.metrics.count_decision("hold")
            ctx.activator.hold(self, decision)  # released into _choose again, or answered 503/504
            return
        self.decision = decision
        self.backend = decision.backend
        ctx.metrics.count_decision(decision.reason)
        if decision.wake:
            ctx.hint_wake(self.service, decision.wake)
        self.counted = decision.backend.cluster
        ctx.count_start(self.service, self.counted)
        if ctx.keep_warm_services and self.service in ctx.keep_warm_services:
            ctx.keep_warm_seen(self.service, self.counted)
        conn = ctx.pool.take_idle(self.backend.pool_key)
        if conn is not None:
            self._attach(conn)
        else:
            self.task = ctx.loop.create_task(self._connect(self.backend))
            self.arm_deadline()

    def request_deadline(self) -> float | None:
        """When the route's request timeout runs out for this request (its clock starts when the head
        was read), or None."""
        timeout = self.route.request_timeout_s
        return None if timeout is None else self.req.t0 + timeout

    def arm_deadline(self) -> None:
        """While connecting, the route's request timeout still runs (_attach's header wait takes over)."""
        deadline = self.request_deadline()
        if deadline is not None:
            self.conn.upstream_timer.set(deadline - self.ctx.clock(), self._on_header_timeout)

    async def _connect(self, backend) -> None:
        ctx = self.ctx
        t = ctx.clock()
        task = asyncio.current_task()  # self.task while this connect is still wanted (hedging may drop it)
        try:
            conn = await ctx.pool.connect(backend.endpoint, backend.pool_key, ctx.settings.timeouts.connect_s,
                                          ctx.settings.limits)
        except (OSError, asyncio.TimeoutError) as exc:
            if is_local_exhaustion(exc):  # the router's own limit, not the cluster's failure: no retry
                self._out_of_resources(exc, backend.cluster)
                return
            ctx.metrics.connect_failures.labels(backend.cluster).inc()
            ctx.health.on_connect_failure(backend.cluster, ctx.clock(), connect_failure(exc))
            if self.finished or self.task is not task:
                return
            self.tried = self.tried | {backend.cluster}
            ctx.metrics.retries.labels("connect").inc()
            self._choose()
            return
        except Exception:  # a fault of the router's own, not the cluster's: answer, never leave the client waiting
            log.exception("internal error while connecting to cluster %s", backend.cluster)
            if not self.finished and self.task is task:
                self.respond_error(502, "internal error while connecting upstream", cluster="-")
            return
        finally:
            current = self.task is task
            if current:
                self.task = None
        connect_s = ctx.clock() - t
        ctx.metrics.connect_duration.labels(backend.cluster).observe(connect_s)
        ctx.policy.rtt.on_connect(backend.cluster, connect_s, ctx.clock())
        if self.finished or not current:  # answered meanwhile, or (hedging) another try won
            ctx.pool.release(conn)
            return
        self._attach(conn)

    def _out_of_resources(self, exc: OSError, cluster: str) -> None:
        ctx = self.ctx
        if ctx.clock() - _exhaustion_logged[0] >= EXHAUSTION_LOG_EVERY_S:
            _exhaustion_logged[0] = ctx.clock()
            log.warning("cannot open connections (to cluster %s): %s; answering 503 "
                        "(router_rejected_requests_total counts them)", cluster, exc)
        if not self.finished:
            ctx.metrics.rejected.labels("503", "local resources exhausted").inc()
            self.keep_alive = False  # closing the client connection gives a descriptor back
            self.respond_error(503, f"router out of local resources ({errno.errorcode[exc.errno]})", cluster="-")

    def forwarding_lines(self, upgrade: bool = False) -> bytes:
        """X-Forwarded-*, Forwarded and Via for what the router sends on this request's behalf: a try, a
        mirror copy, an authorization check (`upgrade`: the try carries the client's Upgrade)."""
        req, client, ctx = self.req, self.conn, self.ctx
        return forwarding_headers(req.facts, client.client_ip_bytes, client.forwarded_node, client.trusted(),
                                  ctx.via, upgrade, ctx.scheme, client.client_cert,
                                  b"2" if client.http2 else req.version.encode())

    def changed_request_lines(self, own: bool = True) -> list[bytes]:
        """The request line and headers under the route's changes (header set/add/remove, then the chosen
        cluster's own unless `own` is False, URL rewrite) and the router's own X-Request-Id; without any,
        the request's own lines (_attach tests the route's flags first and builds those inline: one call
        less per request)."""
        req, route = self.req, self.route
        named = req.facts["named"]
        drop, add = route.request_drop, route.request_add
        if own and route.per_backend is not None:
            drop, add = route.per_backend.get(self.backend.cluster, (drop, add))[:2]  # (a pinned cluster: the route's)
        if drop is not None:  # the route's set/remove names go
            named = (named or frozenset()) | drop
        if req.request_id_made and req.facts["request_id"] is not None:  # the router's id replaces the client's
            named = (named or frozenset()) | REQUEST_ID
        if route.rewrite is None:
            parts = request_lines(req.method, req.url, req.headers, named)
        else:
            parts = request_lines(req.method, *rewritten(req.url, req.headers, route), named)
        if add:  # ... and its set/add lines come after
            parts.append(add)
        if req.request_id_made:
            parts.append(req.request_id_line)
        return parts

    def _attach(self, conn: UpstreamConnection) -> None:
        req, ctx, client = self.req, self.ctx, self.conn
        conn.exchange = self
        self.upstream = conn
        self.tries += 1
        facts = req.facts
        if self.route.request_changes or req.request_id_made:
            parts = self.changed_request_lines()
        else:
            parts = request_lines(req.method, req.url, req.headers, facts["named"])
        trusted = client.trusted()
        cached = client.fwd_cache
        if cached is not None and cached[0] is facts and cached[1] is ctx.via and cached[2] is trusted:
            parts.append(cached[3])
        else:
            fwd = self.forwarding_lines(req.upgrade)
            client.fwd_cache = (facts, ctx.via, trusted, fwd)
            parts.append(fwd)
        if facts["chunked"]:
            parts.append(b"Transfer-Encoding: chunked\r\n")
        elif facts["content_length"] is not None:
            parts += [b"Content-Length: ", str(facts["content_length"]).encode(), b"\r\n"]
        parts.append(b"\r\n")
        if self.kept or req.body:  # what arrived before the connection: one chunk upstream
            new = client.take_buffered(req) if req.body else []
            if self.mirror_body is not None and new:
                keep_for_mirrors(self, new)
            body = b"".join((self.kept or []) + new)
            self.kept, self.kept_len = [], 0
            if body:
                parts += self._framed(body)
        conn.write(b"".join(parts))  # head and buffered body in one send
        self.streaming = True
        if req.complete and facts["chunked"]:
            self.on_request_end()
        self.sent_at = ctx.clock()
        timeouts, route = ctx.settings.timeouts, self.route
        if route.mirrors is not None and req.complete and not self.mirrored:
            self.mirrored = True
            mirror_request(self)
        if route.request_timeout_s is None:
            wait = timeouts.upstream_header_s
        else:  # the route's deadline replaces upstreamHeader
            wait = self.request_deadline() - self.sent_at
        per_try = route.per_try_s
        if per_try and self._may_retry():
            wait = min(wait, per_try)
        client.upstream_timer.set(wait, self._on_header_timeout)

    # --- request body -------------------------------------------------------------------
    def send_body(self, data: bytes) -> None:
        if self.mirror_body is not None:
            keep_for_mirrors(self, (data,))
        self.upstream.write(b"".join(self._framed(data)))

    def _framed(self, data: bytes) -> list[bytes]:
        """Keep the chunk for a possible retry and frame it for the upstream."""
        if self.kept is not None:
            self.kept_len += len(data)
            if self.kept_len <= REPLAY_LIMIT:
                self.kept.append(data)
            else:
                self.kept = None
        if self.req.facts["chunked"]:
            return [b"%x\r\n" % len(data), data, b"\r\n"]
        return [data]

    def on_request_end(self) -> None:
        if self.auth_waiting:  # the body to send with the authorization check is whole
            self.ask_authorization()
            return
        if self.upstream is not None and self.req.facts["chunked"] and not self.finished:
            self.upstream.write(b"0\r\n\r\n")
        route = self.route
        if route is not None and route.mirrors is not None and self.streaming and not self.mirrored:
            self.mirrored = True  # the body has gone to the cluster as it came: now the copy
            mirror_request(self)

    def on_request_rejected(self, reject: HttpReject) -> None:
        """The client's request broke a limit mid-body (413) or its framing went bad."""
        self.keep_alive = False
        if self.resp_started:
            self._abort_both()
        else:
            self.respond_error(reject.status, reject.reason, cluster=self.backend.cluster if self.backend else "-")

    # --- bookkeeping --------------------------------------------------------------------
    def _uncount(self) -> None:
        if self.counted is not None:
            self.ctx.count_finish(self.service, self.counted)
            self.counted = None

    # --- holding (scale from zero) -------------------------------------------------------
    def on_held(self, hold_id: int) -> None:
        self.hold_id = hold_id
        self.conn.upstream_timer.deadline = 0.0
        if self.req.facts["chunked"] or (self.req.facts["content_length"] or 0) > 0:
            self.conn.pause(PAUSE_HELD)  # the body stays in the client's socket while held

    def release(self, cluster: str, waited_s: float) -> None:
        """The activator found a ready copy in `cluster`: forward there now."""
        self.hold_id = None
        self.held_s = waited_s
        self.released_to = cluster
        self.conn.resume(PAUSE_HELD)
        backend = next((b for b in self.route.backends if b.cluster == cluster), None)
        if backend is None:  # the route changed while held
            self._choose()
            return
        self._choose(Forward(backend, "cold", waited_s))

    def spill(self, backend) -> None:
        """The hold queue is full: go to a warm cluster beyond maxRTT (the service allows it)."""
        self._choose(Forward(backend, "spillover"))

    def _end(self) -> None:
        """Once per request: give back its in-flight place and its retry budget share."""
        if self.ended:
            return
        self.ended = True
        if self.deadline_handle is not None:
            self.deadline_handle.cancel()
        if self.parked:
            self.drop_all_parked()
        activator = self.ctx.activator
        if self.released_to is not None and activator is not None:
            activator.released_ended(self.service)
        # A request ending frees a slot that held requests may be waiting for: released ones, and
        # direct ones that found a warm copy saturated and so made later requests wait.
        if self.counted is not None and activator is not None and (self.released_to is not None
                                                                   or activator.buffer.total):
            counted, service = self.counted, self.service
            self._uncount()
            activator.finished(service, counted)
        elif self.counted is not None:
            self._uncount()
        budget = self.ctx.retry_budget
        if self.retrying:
            budget.end_retry()
        budget.end_request()
