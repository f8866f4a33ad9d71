"""External authorization (a route's externalAuth, the HTTPRoute ExternalAuth filter over HTTP; Envoy's
ext_authz HTTP service, nginx's auth_request): before a request is routed, the router asks the route's
authorization cluster whether it may pass.

The check is a request of its own (a SideRequest): the client's method and the route's `path` prefix +
the request's path and query, its Host, Authorization and the route's `allowedHeaders`, the router's
forwarding headers, and no body; with `forwardBody`, the request's body (waited for whole; the route's
maxBody is held to its maxSize) with its Content-Type, while the body stays buffered for the cluster.

A 200 lets the request through: the fields of that answer named in `allowedResponseHeaders` replace the
request's own of those names (a client cannot send its own X-User past a service that did not set one),
or, when that list is empty, every field of the answer but framing, forwarding and the answer's own
representation is set on the request. Any other answer is the client's: its status, headers and body (a
401 with WWW-Authenticate, a 302 to a login page). No answer (refused, broken, over its timeout or 64
KiB) is a 503: the route fails closed.
"""
from __future__ import annotations

from ..core.cors import OWNED as CORS_OWNED
from .headers import CONTINUE
from .side import SideRequest

MAX_ANSWER = 64 * 1024
_FRAMING = (b"content-length", b"transfer-encoding", b"connection", b"keep-alive", b"proxy-connection", b"te",
            b"trailer", b"upgrade")
# Not relayed to the client from a denial: the router frames its answer itself, and writes its own request id
# and Retry-After.
NOT_RELAYED = frozenset(_FRAMING + (b"x-request-id", b"retry-after"))
# Never set on the request from a 200 whose fields are all taken: framing, what the router writes, and what
# describes the authorization service's own answer rather than the request.
NOT_COPIED = frozenset(_FRAMING + (
    b"host", b"via", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"forwarded",
    b"x-forwarded-client-cert", b"x-request-id", b"x-router-cluster", b"x-router-decision", b"server-timing",
    b"expect", b"content-type", b"content-encoding", b"content-language", b"content-location", b"content-range",
    b"etag", b"last-modified", b"expires", b"cache-control", b"age", b"vary", b"date", b"server", b"set-cookie",
    b"www-authenticate", b"location", b"retry-after", b"alt-svc"))


class AuthCheck(SideRequest):
    """One request's check; its answer (read whole, up to MAX_ANSWER) goes back to the exchange."""
    __slots__ = ("exchange", "status", "headers", "body", "size")

    def __init__(self, exchange, cluster: str):
        super().__init__(exchange.ctx, cluster, exchange.req.method == b"HEAD", exchange.ctx.auth_checks)
        self.exchange = exchange
        self.status = 0
        self.headers: list = []
        self.body: list[bytes] = []
        self.size = 0

    def on_response_head(self, status: int, headers: list, upgrade: bool) -> None:
        if not 100 <= status < 200:
            self.status, self.headers = status, headers
        super().on_response_head(status, headers, upgrade)

    def on_response_body(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > MAX_ANSWER:
            self._finish("failed")
        else:
            self.body.append(data)

    def finished(self, result: str) -> None:
        ex = self.exchange
        if ex.finished:  # the client left, or its request was refused meanwhile
            return
        if result == "answered":
            ex.on_auth_answer(self.status, self.headers, b"".join(self.body))
        else:
            ex.on_auth_failed()


class ExternalAuthorization:
    """The exchange's side of a check (a mixin of Exchange, like RouteGuards)."""
    __slots__ = ()

    def _authorize(self) -> None:
        """Ask the route's authorization cluster; the request goes on in on_auth_answer / on_auth_failed.
        A check sent with the body waits for the rest of it (the exchange's on_request_end asks then); a
        client waiting for `100 Continue` before it sends the body gets it from the router."""
        req = self.req
        facts = req.facts
        if self.route.auth[1].body and not req.complete and (facts["chunked"] or facts["content_length"]):
            self.auth_waiting = True
            if facts["expect_continue"]:
                self.conn.write(CONTINUE)
                self.sent_continue = True  # (a cluster's own 100 is not passed on after it)
            return
        self.ask_authorization()

    def ask_authorization(self) -> None:
        self.auth_waiting = False
        backend, auth = self.route.auth
        AuthCheck(self, backend.cluster).send(backend, self._auth_request(auth), auth.timeout_s)

    def _auth_request(self, auth) -> bytes:
        req = self.req
        sent = auth.sent
        body = b"".join(req.body) if auth.body and req.body else b""  # (left in place: the cluster's too)
        parts = [req.method, b" ", auth.path + req.url if req.url[:1] == b"/" else auth.path + b"/", b" HTTP/1.1\r\n"]
        for name, value in req.headers:
            lname = name.lower()
            if lname in sent or (body and lname == b"content-type"):
                parts += (name, b": ", value, b"\r\n")
        parts.append(self.forwarding_lines())
        parts += (b"Content-Length: %d\r\n\r\n" % len(body), body)
        return b"".join(parts)

    def on_auth_answer(self, status: int, headers: list, body: bytes) -> None:
        route, req = self.route, self.req
        auth = route.auth[1]
        if status >= 500:  # the service failed, it did not decide: the route fails closed
            self.on_auth_failed(f" (it answered {status})")
            return
        if status == 200:
            self.ctx.metrics.external_auth.labels(route.name, "allowed").inc()
            if auth.copied:
                granted = [(n, v) for n, v in headers if n.lower() in auth.copied]
                replaced = auth.copied
            else:
                granted = [(n, v) for n, v in headers if n.lower() not in NOT_COPIED]
                replaced = frozenset(n.lower() for n, _ in granted)
            if granted or auth.copied:
                req.headers = [(n, v) for n, v in req.headers if n.lower() not in replaced] + granted
            self._keyed_choose()
            return
        self.ctx.metrics.external_auth.labels(route.name, "denied").inc()
        skip = NOT_RELAYED | CORS_OWNED if route.cors is not None else NOT_RELAYED
        lines = b"".join(b"%s: %s\r\n" % (n, v) for n, v in headers if n.lower() not in skip)
        wait = next((v for n, v in headers if n.lower() == b"retry-after"), b"")  # (a 429's is written below)
        self.respond_error(status, f"denied by the authorization service ({status})", cluster="-", lines=lines,
                           body=body, retry_after_s=int(wait) if wait.isdigit() else None)

    def on_auth_failed(self, why: str = "") -> None:
        self.ctx.metrics.external_auth.labels(self.route.name, "error").inc()
        self.respond_error(503, "authorization service unavailable" + why, cluster="-")
