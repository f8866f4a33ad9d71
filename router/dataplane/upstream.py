"""Upstream side: one protocol per connection to a cluster endpoint, and a keep-alive pool.

An UpstreamConnection parses responses with httptools and hands events to the exchange
currently attached to it (`on_response_head`, `on_response_body`, `on_response_end`,
`on_upstream_lost`). Idle connections wait in the pool, closed after the idle timeout.
A response head is held to the same limits as a request's (maxHeaderBytes with maxRequestLine for the
status line, maxHeaders): an upstream that sends more gets a 502, not the router's memory.
"""
from __future__ import annotations

import asyncio
import socket
import ssl
from collections import deque

import httptools

from ..config.model import Endpoint, Limits
from ..core.snapshot import pool_key
from .dns import DnsCache

DEFAULT_LIMITS = Limits()
INF = float("inf")
HEAD_TOO_LARGE = "upstream response header section too large"


def connect_failure(exc: BaseException) -> str:
    """Why a connect to a cluster failed, as /debug/state and the logs give it."""
    if isinstance(exc, asyncio.TimeoutError):
        return "connect timeout"
    if isinstance(exc, ssl.SSLCertVerificationError):  # what an operator needs to mend Cluster spec.tls
        return f"TLS: certificate not accepted ({exc.verify_message})"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed ({exc.reason or exc})"
    return "name resolution failed" if isinstance(exc, socket.gaierror) else "connect refused"


class UpstreamConnection(asyncio.Protocol):
    __slots__ = ("pool_key", "transport", "parser", "exchange", "closed", "reused", "status", "headers",
                 "idle_since", "tunnel", "keep_alive", "interim", "limits", "head_bytes", "served", "reuse")

    def __init__(self, pool_key: tuple, limits: Limits = DEFAULT_LIMITS):
        self.pool_key = pool_key
        self.limits = limits
        self.head_bytes = 0  # read since the response began, while its head is incomplete; -1 once complete
        self.transport: asyncio.Transport | None = None
        self.exchange = None
        self.closed = False
        self.reused = False
        self.idle_since = 0.0
        self.tunnel = False
        self.interim = False
        self.keep_alive = True
        self.headers: list = []
        self.parser = httptools.HttpResponseParser(self)
        self.served = 0  # requests answered on it (counted only under a reuse limit)
        self.reuse: tuple[float, float] | None = None  # (its cluster's maxRequestsPerConnection, when it expires)

    # asyncio.Protocol
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.tunnel:
            if self.exchange is not None:
                self.exchange.on_tunnel_data(data)
            return
        if self.exchange is None:  # bytes on an idle connection: it is no longer usable
            self.close()
            return
        client = self.exchange.conn
        corked = client.cork()  # what this read produces (head, body, end) leaves in one send
        if self.head_bytes >= 0:
            self.head_bytes += len(data)
        try:
            self.parser.feed_data(data)
            if self.head_bytes > 0 or self.headers:  # a head (or trailers) still arriving
                self._check_head_size()
            ex = self.exchange
            if ex is not None and ex.resp_started:  # a body still arriving: its stall deadline moves on
                client.upstream_timer.set(ex.ctx.settings.timeouts.body_idle_s, ex.on_body_idle)
        except httptools.HttpParserUpgrade as exc:
            self.tunnel = True
            rest = data[exc.args[0]:] if exc.args else b""
            if self.exchange is not None:
                self.exchange.on_upgraded(rest)
            else:  # a 101 nobody asked for (the router's own request): dropped with its connection
                self.close()
        except httptools.HttpParserError as exc:
            self._fail(f"invalid response from upstream: {exc}")
        finally:
            if corked:
                client.uncork()

    def _check_head_size(self) -> None:
        """While a head (or trailers) is still arriving: its fields so far, and the bytes read for it."""
        limits = self.limits
        if not self._too_many_fields(self.headers) and \
                self.head_bytes > limits.max_header_bytes + limits.max_request_line_bytes:
            self._fail(HEAD_TOO_LARGE)

    def _too_many_fields(self, headers: list) -> bool:
        if len(headers) > self.limits.max_header_count:
            self._fail(f"upstream response has more than {self.limits.max_header_count} header fields")
            return True
        return False

    def _fail(self, reason: str) -> None:
        ex, self.exchange = self.exchange, None
        self.close()
        if ex is not None:
            ex.on_upstream_error(reason)

    def connection_lost(self, exc) -> None:
        self.closed = True
        ex, self.exchange = self.exchange, None
        if ex is not None:
            ex.on_upstream_lost(exc)

    def pause_writing(self):
        if self.exchange is not None:
            self.exchange.on_upstream_pause_writing()

    def resume_writing(self):
        if self.exchange is not None:
            self.exchange.on_upstream_resume_writing()

    # httptools callbacks
    def on_message_begin(self):
        if self.exchange is None:
            # Bytes after the response, in the read that ended it (later ones close it in data_received):
            # the upstream sent more than it framed, so this connection's next answer could belong to
            # nobody's request. It is not reused.
            self.close()

    def on_header(self, name: bytes, value: bytes):
        self.headers.append((name, value))

    def on_headers_complete(self):
        headers, self.headers = self.headers, []
        if self._too_many_fields(headers):  # a whole head in one read
            return
        # head_bytes counts whole reads (body bytes too): only when it is over the limit is the head
        # measured exactly, so a common response pays one comparison.
        limit = self.limits.max_header_bytes
        if self.head_bytes > limit and sum(len(name) + len(value) + 4 for name, value in headers) > limit:
            self._fail(HEAD_TOO_LARGE)
            return
        self.head_bytes = -1
        status = self.parser.get_status_code()
        # 100 Continue and 103 Early Hints: the real response follows; 101: the tunnel follows.
        self.interim = 100 <= status < 200
        self.keep_alive = self.parser.should_keep_alive()
        if self.exchange is not None:
            self.exchange.on_response_head(status, headers, status == 101 and self.parser.should_upgrade())

    def on_body(self, body: bytes):
        if self.exchange is not None:
            self.exchange.on_response_body(body)

    def on_message_complete(self):
        if self.headers:
            self.headers = []  # trailers, after the head was handed over
        self.head_bytes = 0  # the next response's head (after an interim one, the final one)
        if self.interim:
            self.interim = False
            return
        if self.exchange is not None:
            self.exchange.on_response_end()

    # used by the exchange
    def reset_parser(self) -> None:
        """After a response without a body that the parser cannot know about (HEAD)."""
        self.parser = httptools.HttpResponseParser(self)
        self.head_bytes = 0

    def write(self, data) -> None:
        self.transport.write(data)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class UpstreamPool:
    """Keep-alive connections per endpoint, LIFO so hot connections stay hot.

    Idle connections carry the time they were released; one sweep per pool closes those
    idle longer than the timeout, so releasing and reusing a connection arms no timer.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, idle_timeout_s: float, max_idle_per_endpoint: int = 256):
        self.loop = loop
        self.idle_timeout_s = idle_timeout_s
        self.max_idle = max_idle_per_endpoint
        self.idle: dict[tuple, deque[UpstreamConnection]] = {}
        self._sweep: asyncio.TimerHandle | None = None
        self.dns = DnsCache(loop)
        self.reuse: dict[tuple, tuple[float, float]] = {}  # pool key -> (requests, seconds) a connection serves
        self.recycled = None  # a Counter by reason ("requests", "age"), when the owner counts them

    def set_reuse(self, clusters) -> None:
        """The clusters' connection reuse limits (maxRequestsPerConnection, maxConnectionAge), by pool key; a key
        shared by clusters with different limits takes the stricter. Applies to connections opened from now."""
        reuse: dict[tuple, tuple[float, float]] = {}
        for c in clusters:
            if c.max_requests_per_connection or c.max_connection_age_s:
                key = pool_key(c.endpoint)
                served, age = reuse.get(key, (INF, INF))
                reuse[key] = (min(served, c.max_requests_per_connection or INF),
                              min(age, c.max_connection_age_s or INF))
        self.reuse = reuse

    def take_idle(self, key: tuple) -> UpstreamConnection | None:
        conns = self.idle.get(key)
        while conns:
            conn = conns.pop()
            if not conn.closed and not conn.transport.is_closing():
                conn.reused = True
                return conn
        return None

    def idle_count(self, key: tuple) -> int:
        """Idle pooled connections under `key` that are still open."""
        return sum(1 for conn in self.idle.get(key, ()) if not conn.closed)

    async def connect(self, endpoint: Endpoint, key: tuple, timeout_s: float,
                      limits: Limits = DEFAULT_LIMITS) -> UpstreamConnection:
        _, conn = await asyncio.wait_for(self._open(endpoint, key, limits, endpoint.connect_options()), timeout_s)
        conn.transport.set_write_buffer_limits(high=256 * 1024)
        return conn

    async def _open(self, endpoint: Endpoint, key: tuple, limits: Limits, kwargs: dict):
        reuse = self.reuse.get(key)

        def protocol():
            conn = UpstreamConnection(key, limits)
            if reuse is not None:
                conn.reuse = (reuse[0], self.loop.time() + reuse[1])
            return conn
        return await self.open(protocol, endpoint.host, endpoint.port, kwargs)

    async def open(self, protocol, host: str, port: int, kwargs: dict | None = None):
        """A connection to host:port with `protocol()` (the name through the DNS cache), as
        (transport, protocol); each address of the name in turn, as create_connection does."""
        error: OSError | None = None
        for address in await self.dns.resolve(host, port):
            try:
                return await self.loop.create_connection(protocol, address, port, **(kwargs or {}))
            except OSError as exc:  # the next address
                error = exc
        raise error

    def release(self, conn: UpstreamConnection) -> None:
        """Back to the pool, after an exchange that used it (its `exchange` still set: one more request
        served) or unused; closed instead when it cannot carry another request, or has reached its cluster's
        maxRequestsPerConnection or maxConnectionAge (a new one then goes to whatever the name or the load
        balancer in front of the cluster gives now)."""
        reuse = conn.reuse
        if reuse is not None and conn.exchange is not None:
            conn.served += 1
        conn.exchange = None
        if conn.closed or not conn.keep_alive or conn.tunnel:
            conn.close()
            return
        now = self.loop.time()
        if reuse is not None and (conn.served >= reuse[0] or now >= reuse[1]):
            self._recycle(conn, "requests" if conn.served >= reuse[0] else "age")
            return
        conns = self.idle.get(conn.pool_key)
        if conns is None:
            conns = self.idle[conn.pool_key] = deque()
        if len(conns) >= self.max_idle:
            conn.close()
            return
        conn.idle_since = now
        conns.append(conn)
        if self._sweep is None:
            self._sweep = self.loop.call_later(max(self.idle_timeout_s / 4, 0.05), self._expire)

    def _recycle(self, conn: UpstreamConnection, reason: str) -> None:
        if self.recycled is not None:
            self.recycled.labels(reason).inc()
        conn.close()

    def _expire(self) -> None:
        """Close connections idle past the timeout (the oldest sit at the left of each deque), and idle ones
        past their maxConnectionAge."""
        self._sweep = None
        now = self.loop.time()
        cutoff = now - self.idle_timeout_s
        left = 0
        for conns in self.idle.values():
            while conns and (conns[0].closed or conns[0].idle_since <= cutoff):
                conns.popleft().close()
            for conn in [c for c in conns if c.reuse is not None and c.reuse[1] <= now]:
                conns.remove(conn)
                self._recycle(conn, "age")
            left += len(conns)
        if left:
            self._sweep = self.loop.call_later(max(self.idle_timeout_s / 4, 0.05), self._expire)

    def close_all(self) -> None:
        self.dns.close()
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for conns in self.idle.values():
            while conns:
                conns.pop().close()
