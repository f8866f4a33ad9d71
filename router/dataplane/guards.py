"""A route's guards before anything is chosen: which client addresses it answers (sourceRanges, 403),
how fast (its rate limit, 429), a request body over the route's maxBody (413), a browser's CORS preflight
(answered from the route's policy), and the faults the route injects (delays, aborts). A mixin of Exchange
(exchange.py), like ResponseRelay: each check answers the request itself when it refuses it and says so.
"""
from __future__ import annotations

from ..core.cors import field, is_preflight
from ..core.decisions import Forward
from .headers import client_address, source_allowed


class RouteGuards:
    __slots__ = ()

    def _guard(self, route) -> bool:
        """What of the route comes before the choice, in order; True when it answered the request, or holds it
        (a fault's delay, an authorization check) and takes it on from there."""
        req = self.req
        if route.source_ranges is not None and not self._source_allowed(route):
            return True
        if route.rate_limit is not None and self._rate_limited(route):
            return True
        if route.cors is not None and req.method == b"OPTIONS" and is_preflight(req.method, req.headers):
            self._answer_preflight(route)  # a browser's question about the route: nothing goes to a cluster
            return True
        if route.redirect is not None:  # answered here, nothing goes to a cluster
            self.answer_redirect(route.redirect, self.ctx.scheme, route.path_prefix, "redirect")
            return True
        if route.direct is not None:  # answered here, nothing goes to a cluster
            status, body, content_type = route.direct
            self.respond_error(status, "direct response", cluster="-", lines=content_type, body=body)
            return True
        if route.fault is not None and self._inject_fault(route):  # answered, or it goes on after a delay
            return True
        if route.auth is not None:
            self._authorize()  # the request goes on from its answer
            return True
        return False

    def _client_address(self) -> str:
        """The client's address: the peer's (or the PROXY header's), or, behind a trusted proxy, the nearest
        X-Forwarded-For entry that is not one."""
        conn = self.conn
        return client_address(conn.client_ip, self.req.facts, self.ctx.settings.trusted_proxies, conn.trusted())

    def _source_allowed(self, route) -> bool:
        """The route's sourceRanges, for the client's address (as rate limits by client see it), or 403."""
        ranges = route.source_ranges
        if source_allowed(self._client_address(), ranges.allow, ranges.deny):
            return True
        self.respond_error(403, "client address not allowed on this route", cluster="-")
        return False

    def _rate_limited(self, route) -> bool:
        """Take a token from the route's bucket for this request's key, or answer 429."""
        ctx, req, kind = self.ctx, self.req, route.rate_limit.key
        if kind == "route":
            key = ""
        elif kind == "client":
            key = self._client_address()
        else:  # header:NAME; requests without it share one bucket
            name = kind[7:].encode()
            key = next((v.decode("latin-1") for n, v in req.headers if n.lower() == name), "")
        wait = ctx.rate_limiter(route).take(key, ctx.clock())
        if not wait:
            return False
        ctx.metrics.rate_limited.labels(route.name).inc()
        self.respond_error(429, "rate limit exceeded", cluster="-", retry_after_s=wait)
        return True

    def _body_over(self, route) -> bool:
        """The request is held to its route's maxBody from now; one already over it is answered 413."""
        req = self.req
        req.max_body = route.max_body
        if (req.facts["content_length"] or 0) > route.max_body or req.body_len > route.max_body:
            # (a body still coming closes the connection after the answer; one read whole keeps it)
            self.respond_error(413, "request body larger than the route's limit", cluster="-")
            return True
        return False

    def _inject_fault(self, route) -> bool:
        """The route's fault, drawn for this request: False when none applies; else the request is answered
        with the abort status now, or waits out the delay first (and is then aborted, or goes on)."""
        fault, rng, metrics = route.fault, self.ctx.rng, self.ctx.metrics
        delay = fault.delay_s if fault.delay_s and rng.random() * 100.0 < fault.delay_percent else 0.0
        abort = fault.abort_status if fault.abort_status and rng.random() * 100.0 < fault.abort_percent else 0
        if delay:
            metrics.faults.labels(route.name, "delay").inc()
            self.ctx.loop.call_later(delay, self._after_fault_delay, abort)
        elif abort:
            self._fault_abort(abort)
        return bool(delay or abort)

    def _after_fault_delay(self, abort: int) -> None:
        if self.finished:  # the client left meanwhile
            return
        if abort:
            self._fault_abort(abort)
        elif self.route.auth is not None:
            self._authorize()
        else:
            self._keyed_choose()

    def _fault_abort(self, status: int) -> None:
        self.ctx.metrics.faults.labels(self.route.name, "abort").inc()
        self.respond_error(status, "fault injected (abort)", cluster="-")

    def _pinned(self, pin) -> bool:
        """Router pinHeader: a request naming one of its route's clusters, from a client pinHeader allows, goes
        there (reason `pinned`) whatever its weight, health or RTT, and nowhere else (the other clusters count
        as tried: a failed try is answered 502). The header never reaches a cluster."""
        req, route = self.req, self.route
        name, allow = pin
        values = [v for n, v in req.headers if len(n) == len(name) and n.lower() == name]
        if not values:
            return False
        req.headers = [(n, v) for n, v in req.headers if n.lower() != name]
        if len(values) > 1 or not source_allowed(self._client_address(), allow, ()):
            return False  # not the operator's (or two of them): routed as usual
        cluster = values[0].decode("latin-1").strip()
        backend = next((b for b in route.backends if b.cluster == cluster), None)
        if backend is None:
            self.respond_error(400, f"cluster {cluster!r} named by {name.decode()} is not one of route "
                                    f"{route.name}'s", cluster="-")
            return True
        self.tried = frozenset(b.cluster for b in route.backends if b is not backend)
        self._choose(Forward(backend, "pinned"))
        return True

    def _answer_preflight(self, route) -> None:
        """A CORS preflight, answered from the route's policy (its method and headers as the policy lists
        them; a browser then judges the actual request), or refused 403 for an origin it does not allow."""
        cors, headers = route.cors, self.req.headers
        origin = field(headers, b"origin")
        allowed = cors.allows(origin)
        self.ctx.metrics.cors_preflights.labels(route.name, "allowed" if allowed else "refused").inc()
        if not allowed:
            self.respond_error(403, "CORS preflight from an origin the route does not allow", cluster="-")
            return
        lines = cors.preflight_lines(origin, field(headers, b"access-control-request-method") or b"",
                                     field(headers, b"access-control-request-headers"))
        self.respond_error(200, "cors preflight", cluster="-", lines=lines, body=b"", cors=False)
