"""The response half of an exchange: relaying the upstream's answer to the client, and failures on
the way (flow control and the tunnel after an upgrade are in tunnel.py).

A mixin of Exchange (which owns the state, see exchange.py): kept apart so each module stays
readable on its own. Response framing toward the client is the proxy's own: Content-Length
when the upstream gave one, else chunked (HTTP/1.1) or close-delimited (HTTP/1.0).
"""
from __future__ import annotations

import time

from ..core.cors import field
from ..core.session import session_line
from .compress import GzipStream, plan as compression_plan
from .headers import CONTINUE, response_head, simple_response
from .request import IDEMPOTENT

_PLANNED = frozenset((b"vary", b"etag"))  # response headers a compression plan writes itself
MAX_HINTS = 4  # 103 Early Hints passed on per request (more from a cluster are dropped)


class ResponseRelay:
    __slots__ = ()
    # --- response -----------------------------------------------------------------------
    def on_response_head(self, status: int, headers: list, upgrade: bool) -> None:
        req = self.req
        if 100 <= status < 200 and status != 101:
            if status == 100 and req.facts.get("expect_continue") and not self.resp_started \
                    and not self.sent_continue:
                self.conn.write(CONTINUE)
            elif status == 103 and self.ctx.settings.early_hints != "off":
                self._pass_hints(headers)
            return
        route = self.route
        if route.retry_codes is not None and status in route.retry_codes \
                and self.status_retries < route.retry_attempts \
                and (self.fall_back(status) or self._retry_elsewhere("status", status, self._backoff_s())):
            self.status_retries += 1  # this answer is dropped (its connection closed) for the next choice's
            return
        if self.parked is not None:  # a hedged request: this try answered first
            self.drop_all_parked()
            self.ctx.metrics.hedge_winners.labels("earlier" if self.resumed else "latest").inc()
        self._cancel_header_timer()
        self.status = status
        ctx = self.ctx
        self.head_at = now = ctx.clock()
        ctx.policy.rtt.on_first_byte(self.service, self.backend.cluster, now - self.sent_at, now)
        if status == 101 and not req.upgrade:
            self.on_upstream_error("upstream switched protocols without an Upgrade request")
            return
        if req.upgrade and status != 101:
            self.keep_alive = False  # the client parser stopped at the Upgrade request
        head = req.method == b"HEAD"
        no_body = head or status in (204, 304) or status == 101
        tail = self.ctx.response_tail(self.backend.cluster)
        compression = ctx.compression
        # (a HEAD answer gets the head its GET would: the plan's fields, and no length when it would be gzipped)
        plan = compression_plan(compression, status, headers, req.headers) \
            if compression and (not no_body or head and status != 101) else None
        if route.response_changes or req.request_id or plan is not None:
            drop, add = route.response_drop, route.response_add
            if route.per_backend is not None:  # the route's changes, then the cluster's own
                drop, add = route.per_backend.get(self.backend.cluster, (None, None, drop, add))[2:]
            if add:
                tail = add + tail
            if route.cors is not None:
                tail = route.cors.response_lines(field(req.headers, b"origin")) + tail
            session = route.session  # a new or moved session, or one that is renewed with each use
            if session is not None and (self.backend.cluster != self.session or session.idle_s is not None):
                tail = session_line(session, self.backend.cluster, time.time(), route.path_prefix,
                                    ctx.scheme == b"https", req.headers) + tail
            if req.request_id:  # the client learns the id its request went by (the cluster's echo is replaced)
                tail = req.request_id_line + tail
            if plan is not None:  # Vary and ETag are written below
                tail = plan.head_lines() + tail
                drop = _PLANNED if drop is None else drop | _PLANNED
            parts, cl, upstream_chunked = response_head(status, headers, tail, status == 101, drop,
                                                        bool(req.request_id))
        else:
            parts, cl, upstream_chunked = response_head(status, headers, tail, status == 101)
        client_cl = cl
        if plan is not None and plan.gzip:
            if not head:
                self.gzip = GzipStream(compression.level)
            client_cl = None  # the length changes: chunked (or close-delimited for HTTP/1.0)
        if status == 101:
            pass
        elif no_body:
            if client_cl is not None and head:
                parts += (b"Content-Length: ", cl, b"\r\n")
        elif client_cl is not None:
            parts += (b"Content-Length: ", cl, b"\r\n")
        elif req.version == "1.1":
            self.resp_chunked = True
            parts.append(b"Transfer-Encoding: chunked\r\n")
        else:
            self.keep_alive = False
        if cl is None and not no_body and not upstream_chunked and not self.upstream.keep_alive:
            self.resp_close_delimited = True
        if self.ctx.draining or self.conn.retiring or (self.conn.stopped and not req.complete):
            self.keep_alive = False
        if self.ctx.settings.decision_header and self.decision is not None:
            d = self.decision
            expected = f"; expected-ms={d.expected_s * 1000:.1f}" if d.expected_s is not None else ""
            parts.append(f"x-router-decision: {d.reason}{expected}\r\n".encode())
        if self.held_s is not None:
            parts.append(b"Server-Timing: queue;dur=%.1f, cold;desc=%s\r\n" % (self.held_s * 1000,
                                                                              self.released_to.encode()))
        elif self.ctx.settings.server_timing:
            parts.append(b"Server-Timing: upstream;dur=%.1f\r\n" % ((now - req.t0) * 1000))
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
        if route.request_timeout_s is not None and status != 101:  # the deadline covers the body too
            self.deadline_handle = ctx.loop.call_later(self.request_deadline() - now, self._on_request_deadline)
        if head and status not in (101, 204, 304) and not (cl is not None and cl.strip(b" \t").isdigit()
                                                              and int(cl) == 0):
            # llhttp cannot know a HEAD response has no body; 204/304 and Content-Length: 0 end through
            # on_message_complete (a reset here would leave that completion to land on the next request's
            # exchange, pipelined behind).
            self.upstream.reset_parser()
            self.on_response_end()

    def on_response_body(self, data: bytes) -> None:
        if self.finished:
            return
        if self.gzip is not None:
            data = self.gzip.compress(data)  # never empty: each piece ends with a flush block
        self.body_sent += len(data)
        if self.resp_chunked:
            self.conn.write(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            self.conn.write(data)

    def _finish_gzip(self) -> None:
        """The gzip stream's end (its last block and trailer), and the counts."""
        stream, self.gzip = self.gzip, None
        end = stream.finish()
        self.conn.write(b"%x\r\n%b\r\n" % (len(end), end) if self.resp_chunked else end)
        metrics = self.ctx.metrics
        metrics.compressed.inc()
        metrics.compression_bytes.labels("in").inc(stream.bytes_in)
        metrics.compression_bytes.labels("out").inc(stream.bytes_out)

    def on_response_end(self) -> None:
        if self.finished:
            return
        if not self.resp_started:  # a message end without a head of ours: never a silent non-answer
            self.on_upstream_error("upstream response ended before its head")
            return
        self.finished = True
        # the header timer was cleared when the head arrived
        if self.gzip is not None:
            self._finish_gzip()
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
        self._record(self.backend.cluster, self.status, now)
        self._end()
        self.conn.exchange_done(self.keep_alive)

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
            self.arm_deadline()
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
        if self.fall_back(502) or self._retry_elsewhere("reset"):
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
            self.gzip = None
        if self.resp_started:
            self._truncated(reason)
        elif not self.fall_back(502):
            self.respond_error(502, reason)

    def _on_header_timeout(self) -> None:
        """No response head yet: a per-try timeout (try the next choice), or the overall wait is over:
        upstreamHeader since this try was sent, or the route's request timeout since the head was read."""
        if self.finished or self.resp_started:
            return
        route = self.route
        left = self._header_wait_left()
        if left > 0.001:
            if route.per_try_s and self._retry_elsewhere("hedge" if route.hedge else "timeout"):
                return
            # Nowhere else to try: this try may still answer, so it gets the rest of the overall timeout.
            self.conn.upstream_timer.set(left, self._on_header_timeout)
            return
        if route.request_timeout_s is None:
            self.respond_error(504, f"upstream did not answer within {self.ctx.settings.timeouts.upstream_header_s:g}s")
        else:
            self.respond_error(504, f"no answer within the route's request timeout ({route.request_timeout_s:g}s)")

    def _header_wait_left(self) -> float:
        """What is left of the overall wait for a response head: upstreamHeader since this try was sent, or
        the route's request timeout since the request head was read."""
        deadline, now = self.request_deadline(), self.ctx.clock()
        if deadline is None:
            return self.ctx.settings.timeouts.upstream_header_s - (now - self.sent_at)
        return deadline - now

    def _on_request_deadline(self) -> None:
        """The route's request timeout ran out mid-response: the head has gone out, so the client
        connection is aborted (a cut-short body must not look complete)."""
        if not self.finished:
            self._truncated(f"route's request timeout ({self.route.request_timeout_s:g}s) ran out mid-response", 504)

    def on_body_idle(self) -> None:
        """No response bytes for bodyIdle: the upstream stalled mid-body, or the client stopped reading
        (the upstream is paused for it). The head has gone out, so the client connection is aborted."""
        if self.finished or not self.resp_started:
            return
        if self.upstream_paused:
            self.conn.abort()  # the client's doing: counted as 499 when the connection is lost
            return
        self._truncated("upstream response body stalled")

    def _truncated(self, reason: str, status: int = 502) -> None:
        """Never let a cut-short body look complete: abort the client connection. `status` is what
        the metrics and the access log record."""
        self.finished = True
        self._cancel_header_timer()
        cluster = self.backend.cluster if self.backend else "-"
        self.ctx.health.on_response(cluster, status, self.ctx.clock())
        self._record(cluster, status, self.ctx.clock(), reason)
        self._end()
        self.conn.abort()

    def _pass_hints(self, headers: list) -> None:
        """A cluster's 103 Early Hints (RFC 8297) on to the client, its end-to-end fields only: with earlyHints
        `http2` to HTTP/2 clients only, never to an HTTP/1.0 client (RFC 9110 15.2), at most MAX_HINTS a
        request, none once the response has begun."""
        if (self.resp_started or self.hints >= MAX_HINTS or self.req.version != "1.1"
                or self.ctx.settings.early_hints == "http2" and not self.conn.http2):
            return
        self.hints += 1
        parts = response_head(103, headers, b"", False)[0]
        parts.append(b"\r\n")
        self.conn.write(b"".join(parts))

    def respond_error(self, status: int, reason: str, cluster: str | None = None,
                      retry_after_s: float | None = None, location: bytes | None = None,
                      lines: bytes = b"", body: bytes | None = None, cors: bool = True) -> None:
        """The router's own answer: `reason` is its body (unless `body` is given) and the access log's;
        `lines`: more header lines; `cors`: the route's CORS lines go with it (not on a preflight's answer)."""
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
        # Answered before the parser saw the request end (a 404 or a redirect, from the head alone): a
        # request without a body keeps the connection, one whose body is still coming does not.
        keep = (self.keep_alive and (self.req.complete or not self.req.has_body()) and not self.ctx.draining
                and not self.conn.retiring)
        extra = [("x-router-cluster", cluster)] if cluster != "-" else []
        if self.req.request_id:
            extra.append(("X-Request-Id", self.req.request_id.decode("latin-1")))
        if status in (429, 503):
            extra.append(("Retry-After", str(max(1, round(retry_after_s or 1)))))
        raw = (b"Location: " + location + b"\r\n" if location else b"") + lines
        route = self.route
        if cors and route is not None and route.cors is not None:  # so a page's script can read a 503, Retry-After
            raw += route.cors.response_lines(field(self.req.headers, b"origin"))
        answer = simple_response(status, reason if body is None else body, close=not keep, extra=extra,
                                 raw_extra=raw, head_only=self.req.method == b"HEAD",
                                 problem=self.ctx.problem_replies(self.req))
        self.body_sent = len(answer) - answer.index(b"\r\n\r\n") - 4
        self._record(cluster, status, self.ctx.clock(), reason)
        self.conn.write(answer)
        self._end()
        self.conn.exchange_done(keep)

    def _record(self, cluster: str, status: int, now: float, reason: str = "") -> None:
        """The request's answer in the metrics and, when configured, the access log."""
        req, ctx = self.req, self.ctx
        route = self.route.name if self.route is not None else "-"
        ctx.metrics.count_request(cluster, status, now - req.t0, route)
        if ctx.access_log is not None:
            if not reason and self.decision is not None:
                reason = self.decision.reason  # how the cluster was chosen
            ctx.access_log.request(self.conn.client_ip, req, status, cluster, now - req.t0, reason, route, self.tries,
                                   self.body_sent, self.head_at - self.sent_at if self.head_at else None,
                                   self.conn.http2)

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
            self._record(cluster, 499, self.ctx.clock(), "client closed the connection")
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
        timer = self.conn.upstream_timer  # only exchanges set it, with their _on_header_timeout
        if timer.deadline and timer.callback.__self__ is self:
            timer.deadline = 0.0
