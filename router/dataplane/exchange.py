"""Exchange: one request's trip through the proxy (choose, connect, stream both ways).

It executes core decisions (`choose_backend`) and reports outcomes back into health.
The client connection feeds it request events; the upstream connection feeds it
response events. Response framing toward the client is the proxy's own: Content-Length
when the upstream gave one, else chunked (HTTP/1.1) or close-delimited (HTTP/1.0).
"""
from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

from ..core.affinity import affinity_key
from ..core.choice import Forward, Reject, choose_backend
from .headers import HttpReject, response_head, simple_response, upstream_request_head
from .upstream import UpstreamConnection

REPLAY_LIMIT = 64 * 1024
IDEMPOTENT = frozenset((b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"))
PAUSE_UPSTREAM, PAUSE_HELD = 2, 8  # mirror server.PAUSE_*


class Request:
    __slots__ = ("method", "url", "version", "headers", "special", "facts", "keep_alive", "upgrade", "body", "body_len",
                 "complete", "reject", "tunnel_bytes", "head_done", "head_size", "header_count", "t0")

    def __init__(self):
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []  # passed through (Host included)
        self.special: list[tuple[bytes, bytes]] = []  # (lowercase name, value) the proxy interprets
        self.body: list[bytes] = []
        self.body_len = 0
        self.complete = self.head_done = self.upgrade = False
        self.keep_alive = True
        self.reject: HttpReject | None = None
        self.tunnel_bytes = b""
        self.head_size = 0
        self.header_count = 0
        self.method = b""
        self.version = "1.1"
        self.facts: dict = {}
        self.t0 = 0.0


class Exchange:
    __slots__ = ("conn", "req", "ctx", "upstream", "backend", "route", "tried", "streaming", "kept", "kept_len",
                 "stale_retried", "resp_started", "finished", "upstream_paused", "resp_chunked",
                 "resp_close_delimited", "status", "keep_alive", "task", "head_mark", "service", "affinity",
                 "decision", "counted", "retrying", "sent_at", "ended", "hold_id", "held_s", "released_to")

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
        self.decision = None
        self.counted: str | None = None  # the cluster whose in-flight count holds this request
        self.retrying = False  # the current try is a retry (holds a place in the retry budget)
        self.sent_at = 0.0
        self.ended = False
        self.hold_id: int | None = None  # while held by the activator
        self.held_s: float | None = None  # how long it was held, once released
        self.released_to: str | None = None
        conn.ctx.retry_budget.start_request()

    # --- start: route, choose, connect ----------------------------------------------------
    def start(self) -> None:
        req = self.req
        url = req.url
        if url[:7].lower() == b"http://" or url[:8].lower() == b"https://":
            parts = urlsplit(url.decode("latin-1"))
            req.url = (parts.path or "/").encode() + (b"?" + parts.query.encode() if parts.query else b"")
        path = req.url.partition(b"?")[0].decode("latin-1")
        snap = self.ctx.snapshot
        route = self.route = snap.route_for(req.facts["host"], path)
        if route is None:
            self.respond_error(404, f"no route for host {req.facts['host']!r}", cluster="-")
            return
        self.service = snap.service_for(req.facts["host"], route)
        if route.affinity is not None:
            self.affinity = affinity_key(route.affinity, req.headers, path)
        self._choose()

    def _choose(self, decision=None) -> None:
        ctx = self.ctx
        self._uncount()
        if decision is None:
            decision = choose_backend(self.route, ctx.policy, ctx.clock(), ctx.rng, self.tried,
                                      self.service, self.affinity)
        if isinstance(decision, Reject):
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
        ctx.policy.start(self.service, self.counted)
        conn = ctx.pool.take_idle(self.backend.pool_key)
        if conn is not None:
            self._attach(conn)
        else:
            self.task = ctx.loop.create_task(self._connect(self.backend))

    async def _connect(self, backend) -> None:
        ctx = self.ctx
        t = ctx.clock()
        try:
            conn = await ctx.pool.connect(backend.endpoint, backend.pool_key, ctx.settings.timeouts.connect_s)
        except (OSError, asyncio.TimeoutError) as exc:
            ctx.metrics.connect_failures.labels(backend.cluster).inc()
            ctx.health.on_connect_failure(backend.cluster, ctx.clock(),
                                          "connect timeout" if isinstance(exc, asyncio.TimeoutError) else "connect refused")
            if self.finished:
                return
            self.tried = self.tried | {backend.cluster}
            ctx.metrics.retries.labels("connect").inc()
            self._choose()
            return
        finally:
            self.task = None
        connect_s = ctx.clock() - t
        ctx.metrics.connect_duration.labels(backend.cluster).observe(connect_s)
        ctx.policy.rtt.on_connect(backend.cluster, connect_s, ctx.clock())
        if self.finished:
            ctx.pool.release(conn)
            return
        self._attach(conn)

    def _attach(self, conn: UpstreamConnection) -> None:
        req, ctx = self.req, self.ctx
        conn.exchange = self
        self.upstream = conn
        client = self.conn
        parts = upstream_request_head(req.method, req.url, req.headers, req.facts, client.client_ip_bytes,
                                      client.forwarded_node, client.trusted(), ctx.via, req.upgrade)
        if req.facts["chunked"]:
            parts.append(b"Transfer-Encoding: chunked\r\n")
        elif req.facts["content_length"] is not None:
            parts += [b"Content-Length: ", str(req.facts["content_length"]).encode(), b"\r\n"]
        parts.append(b"\r\n")
        chunks = (self.kept or []) + self.conn.take_buffered(req)
        self.kept, self.kept_len = [], 0
        for chunk in chunks:
            parts += self._framed(chunk)
        conn.write(b"".join(parts))  # head and buffered body in one send
        self.streaming = True
        if req.complete:
            self.on_request_end()
        self.sent_at = ctx.clock()
        timeouts = ctx.settings.timeouts
        wait = timeouts.upstream_header_s
        if timeouts.per_try_s is not None and self._may_retry():
            wait = min(wait, timeouts.per_try_s)
        self.conn.upstream_timer.set(wait, self._on_header_timeout)

    # --- request body -------------------------------------------------------------------
    def send_body(self, data: bytes) -> None:
        self._write_body(data)

    def _write_body(self, data: bytes) -> None:
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
        if self.upstream is not None and self.req.facts["chunked"] and not self.finished:
            self.upstream.write(b"0\r\n\r\n")

    def on_request_rejected(self, reject: HttpReject) -> None:
        """The client's request broke a limit mid-body (413) or its framing went bad."""
        self.keep_alive = False
        if self.resp_started:
            self._abort_both()
        else:
            self.respond_error(reject.status, reject.reason, cluster=self.backend.cluster if self.backend else "-")

    # --- response -----------------------------------------------------------------------
    def on_response_head(self, status: int, headers: list, upgrade: bool) -> None:
        req = self.req
        if 100 <= status < 200 and status != 101:
            if status == 100 and req.facts.get("expect_continue") and not self.resp_started:
                self.conn.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            return
        self._cancel_header_timer()
        self.status = status
        ctx = self.ctx
        ctx.policy.rtt.on_first_byte(self.service, self.backend.cluster, ctx.clock() - self.sent_at, ctx.clock())
        if status == 101 and not req.upgrade:
            self.on_upstream_error("upstream switched protocols without an Upgrade request")
            return
        if req.upgrade and status != 101:
            self.keep_alive = False  # the client parser stopped at the Upgrade request
        no_body = req.method == b"HEAD" or status in (204, 304) or status == 101
        parts, cl, upstream_chunked = response_head(status, headers, self.ctx.response_tail(self.backend.cluster),
                                                    status == 101)
        if status == 101:
            pass
        elif no_body:
            if cl is not None and req.method == b"HEAD":
                parts += (b"Content-Length: ", cl, b"\r\n")
        elif cl is not None:
            parts += (b"Content-Length: ", cl, b"\r\n")
        elif req.version == "1.1":
            self.resp_chunked = True
            parts.append(b"Transfer-Encoding: chunked\r\n")
        else:
            self.keep_alive = False
        if cl is None and not no_body and not upstream_chunked and not self.upstream.keep_alive:
            self.resp_close_delimited = True
        if self.ctx.draining or (self.conn.stopped and not req.complete):
            self.keep_alive = False
        if self.ctx.settings.decision_header and self.decision is not None:
            d = self.decision
            expected = f"; expected-ms={d.expected_s * 1000:.1f}" if d.expected_s is not None else ""
            parts.append(f"x-router-decision: {d.reason}{expected}\r\n".encode())
        if self.held_s is not None:
            parts.append(b"Server-Timing: queue;dur=%.1f, cold;desc=%s\r\n" % (self.held_s * 1000,
                                                                              self.released_to.encode()))
        elif self.ctx.settings.server_timing:
            parts.append(b"Server-Timing: upstream;dur=%.1f\r\n" % ((self.ctx.clock() - req.t0) * 1000))
        if status != 101:
            if not self.keep_alive:
                parts.append(b"Connection: close\r\n")
            elif req.version == "1.0":
                parts.append(b"Connection: keep-alive\r\n")
        parts.append(b"\r\n")
        corked = self.conn.corked
        self.head_mark = (corked, len(corked)) if corked is not None else None
        self.conn.write(b"".join(parts))
        self.resp_started = True
        if req.method == b"HEAD" and status != 101:
            # llhttp cannot know a HEAD response has no body; 204/304 end through on_message_complete.
            self.upstream.reset_parser()
            self.on_response_end()

    def on_response_body(self, data: bytes) -> None:
        if self.finished:
            return
        if self.resp_chunked:
            self.conn.write(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            self.conn.write(data)

    def on_response_end(self) -> None:
        if self.finished:
            return
        self.finished = True
        self._cancel_header_timer()
        if self.resp_chunked:
            self.conn.write(b"0\r\n\r\n")
        ctx, up = self.ctx, self.upstream
        self.upstream = None
        if up is not None:
            if self.upstream_paused:
                up.transport.resume_reading()
            if self.req.complete and not self.resp_close_delimited:
                ctx.pool.release(up)
            else:
                up.exchange = None
                up.close()
        if not self.req.complete:
            self.keep_alive = False  # answered before the body finished: the rest is not worth reading
        now = ctx.clock()
        ctx.health.on_response(self.backend.cluster, self.status, now)
        ctx.metrics.count_request(self.backend.cluster, self.status, now - self.req.t0)
        self._end()
        self.conn.exchange_done(self.keep_alive)

    # --- bookkeeping --------------------------------------------------------------------
    def _uncount(self) -> None:
        if self.counted is not None:
            self.ctx.policy.finish(self.service, self.counted)
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
        if self.released_to is not None and self.ctx.activator is not None and self.counted is not None:
            counted, service = self.counted, self.service
            self._uncount()
            self.ctx.activator.finished(service, counted)
        self._uncount()
        budget = self.ctx.retry_budget
        if self.retrying:
            budget.end_retry()
        budget.end_request()

    def _may_retry(self) -> bool:
        req = self.req
        return (not self.resp_started and self.kept is not None and req.method in IDEMPOTENT
                and not req.upgrade and not self.finished)

    def _retry_elsewhere(self, reason: str) -> bool:
        """Reset or timeout before any response byte: try the next choice, within the budget."""
        if not self._may_retry():
            return False
        ctx = self.ctx
        cluster = self.backend.cluster
        decision = choose_backend(self.route, ctx.policy, ctx.clock(), ctx.rng, self.tried | {cluster},
                                  self.service, self.affinity)
        if isinstance(decision, Reject):
            return False  # nowhere else to go: the caller answers with the failure itself
        budget = ctx.retry_budget
        if self.retrying:
            budget.end_retry()
            self.retrying = False
        if not budget.start_retry():
            ctx.metrics.retries.labels("budget_exhausted").inc()
            return False
        self.retrying = True
        ctx.health.on_response(cluster, 502, ctx.clock())  # counts toward outlier ejection
        self.tried = self.tried | {cluster}
        ctx.metrics.retries.labels(reason).inc()
        self._cancel_header_timer()
        self._abort_upstream()
        self.streaming = False
        self._choose(decision)
        return True

    # --- failures -----------------------------------------------------------------------
    def on_upstream_lost(self, exc) -> None:
        up, self.upstream = self.upstream, None
        if self.finished:
            return
        if (not self.resp_started and up is not None and up.reused and not self.stale_retried
                and self.kept is not None and self.req.method in IDEMPOTENT):
            # A pooled connection the upstream had already closed: nothing was processed, try a fresh one.
            self.stale_retried = True
            self.streaming = False
            self._cancel_header_timer()
            self.ctx.metrics.retries.labels("stale_connection").inc()
            self.task = self.ctx.loop.create_task(self._connect(self.backend))
            return
        if self.conn.tunnel is self:
            self.finished = True
            self.conn.close()
            return
        if self.resp_started:
            if self.resp_close_delimited:
                self.on_response_end()
            else:
                self._truncated("upstream closed the connection mid-response")
            return
        if self._retry_elsewhere("reset"):
            return
        self.respond_error(502, "upstream closed the connection before responding")

    def on_upstream_error(self, reason: str) -> None:
        self.upstream = None
        if self.finished:
            return
        mark = self.head_mark
        if self.resp_started and mark is not None and mark[0] is self.conn.corked:
            del mark[0][mark[1]:]  # the head has not left yet: take it back and answer 502 instead
            self.resp_started = self.resp_chunked = False
        if self.resp_started:
            self._truncated(reason)
        else:
            self.respond_error(502, reason)

    def _on_header_timeout(self) -> None:
        if not self.finished and not self.resp_started:
            if self.ctx.settings.timeouts.per_try_s is not None and self._retry_elsewhere("timeout"):
                return
            self.respond_error(504, f"upstream did not answer within {self.ctx.settings.timeouts.upstream_header_s:g}s")

    def _truncated(self, reason: str) -> None:
        """Never let a cut-short body look complete: abort the client connection."""
        self.finished = True
        self._cancel_header_timer()
        cluster = self.backend.cluster if self.backend else "-"
        self.ctx.health.on_response(cluster, 502, self.ctx.clock())
        self.ctx.metrics.count_request(cluster, 502, self.ctx.clock() - self.req.t0)
        self._end()
        self.conn.abort()

    def respond_error(self, status: int, reason: str, cluster: str | None = None,
                      retry_after_s: float | None = None) -> None:
        self.finished = True
        self.hold_id = None
        self._cancel_header_timer()
        if self.upstream is not None:
            up, self.upstream = self.upstream, None
            up.exchange = None
            up.abort()
        if cluster is None:
            cluster = self.backend.cluster if self.backend else "-"
            if status in (502, 504) and cluster != "-":
                self.ctx.health.on_response(cluster, status, self.ctx.clock())
        keep = self.keep_alive and self.req.complete and not self.ctx.draining
        extra = [("x-router-cluster", cluster)] if cluster != "-" else []
        if status == 503:
            extra.append(("Retry-After", str(max(1, round(retry_after_s or 1)))))
        self.ctx.metrics.count_request(cluster, status, self.ctx.clock() - self.req.t0)
        self.conn.write(simple_response(status, reason, close=not keep, extra=extra))
        self._end()
        self.conn.exchange_done(keep)

    def on_client_lost(self) -> None:
        if self.task is not None:
            self.task.cancel()
        if self.hold_id is not None and self.ctx.activator is not None:
            self.ctx.activator.gone(self.hold_id, self.service)  # nothing went upstream
            self.hold_id = None
        if not self.finished:
            self.finished = True
            self._cancel_header_timer()
            cluster = self.backend.cluster if self.backend else "-"
            self.ctx.metrics.count_request(cluster, 499, self.ctx.clock() - self.req.t0)
        self._end()
        self._abort_upstream()

    def _abort_both(self) -> None:
        self.finished = True
        self._abort_upstream()
        self.conn.abort()

    def _abort_upstream(self) -> None:
        if self.upstream is not None:
            up, self.upstream = self.upstream, None
            up.exchange = None
            up.abort()

    def _cancel_header_timer(self) -> None:
        timer = self.conn.upstream_timer
        if timer.deadline and timer.callback == self._on_header_timeout:
            timer.deadline = 0.0

    # --- flow control -------------------------------------------------------------------
    def on_client_pause_writing(self) -> None:
        if self.upstream is not None and not self.upstream_paused:
            self.upstream_paused = True
            self.upstream.transport.pause_reading()

    def on_client_resume_writing(self) -> None:
        if self.upstream is not None and self.upstream_paused:
            self.upstream_paused = False
            self.upstream.transport.resume_reading()

    def on_upstream_pause_writing(self) -> None:
        self.conn.pause(PAUSE_UPSTREAM)

    def on_upstream_resume_writing(self) -> None:
        self.conn.resume(PAUSE_UPSTREAM)

    # --- upgrade tunnel -----------------------------------------------------------------
    def on_upgraded(self, rest: bytes) -> None:
        if self.finished or self.status != 101:
            return
        if rest:
            self.conn.write(rest)
        self.conn.start_tunnel(self)
        if self.req.tunnel_bytes:
            self.upstream.write(self.req.tunnel_bytes)
            self.req.tunnel_bytes = b""
        self.ctx.metrics.count_request(self.backend.cluster, 101, self.ctx.clock() - self.req.t0)

    def on_client_tunnel_data(self, data: bytes) -> None:
        if self.upstream is not None:
            self.upstream.write(data)

    def on_tunnel_data(self, data: bytes) -> None:
        self.conn.write(data)
