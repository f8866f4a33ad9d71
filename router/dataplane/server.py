"""Downstream side: one ClientConnection per accepted socket.

Feeds what the client sends to httptools (llhttp, strict), whose callbacks (reader.py) build and
check each request; enforces the header deadline, body stall and idle timeouts, queues pipelined
requests, and runs one Exchange at a time so responses leave in request order. Reading pauses
while the upstream cannot take more body, too much is buffered, or PIPELINE_WINDOW requests wait.
"""
from __future__ import annotations

import asyncio
import logging

import httptools

from .context import ProxyContext
from .exchange import Exchange
from .h2head import ALPN
from .headers import HttpReject, forwarded_node, is_trusted, simple_response
from .pause import PAUSE_BUFFER, PAUSE_PIPELINE, PAUSE_STOPPED, PAUSE_UPSTREAM
from .reader import PIPELINE_WINDOW, RequestReader, PastLastRequest
from .request import Request
from .timers import LazyTimer
from .tls import client_certificate_element

log = logging.getLogger("router.dataplane")

LINGER_S = 2.0  # after a final response, keep draining what the client still sends (like nginx)
LINGER_MAX_BYTES = 4 * 1024 * 1024
# A chunked request body may carry this much besides its data (chunk sizes, extensions, line ends),
# plus CHUNK_OVERHEAD_PER_BYTE bytes per data byte: one-byte chunks pass, a body of chunk extensions
# does not (chunk extensions are discarded, so they would otherwise cost reads without end).
CHUNK_OVERHEAD_BYTES = 16 * 1024
CHUNK_OVERHEAD_PER_BYTE = 16


class ClientConnection(RequestReader, asyncio.Protocol):
    # Slots: a held request costs a connection each, and 10,000 may wait at once.
    __slots__ = ("ctx", "transport", "parser", "client_ip", "client_ip_bytes", "forwarded_node", "trusted_key",
                 "req", "queue", "active", "tunnel", "timer", "upstream_timer", "head_bytes", "buffered", "paused",
                 "stopped", "closed", "timer_kind", "lingering", "corked", "discarded", "last_special",
                 "last_facts", "fwd_cache", "body_out", "served", "born", "retiring", "client_cert", "wire_req",
                 "wire_bytes", "client_counted", "fast")
    exchange_class = Exchange  # what answers each request (the HTTPS redirect listener has its own)
    counted_per_client = True  # holds a place under maxConnectionsPerClient (an HTTP/2 stream does not)
    http2 = False  # an HTTP/2 stream's request, as the access log shows

    def __init__(self, ctx: ProxyContext):
        self.ctx = ctx
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.client_ip = ""
        self.req: Request | None = None  # the request being parsed
        self.queue: list[Request] = []  # pipelined requests waiting their turn (a list: deques cost 600 B)
        self.active: Exchange | None = None
        self.tunnel: Exchange | None = None
        self.timer = LazyTimer(ctx.loop)  # header deadline, idle timeout or linger, one at a time
        self.upstream_timer = LazyTimer(ctx.loop)  # the active exchange's wait for a response head
        self.head_bytes = 0
        self.buffered = 0
        self.paused = 0
        self.stopped = False  # no more requests are parsed on this connection
        self.closed = False
        self.timer_kind = ""
        self.lingering = 0  # bytes discarded since the final response, or 0 when not lingering
        self.discarded = 0  # bytes after a Connection: close request
        self.corked: list[bytes] | None = None
        # Keep-alive clients repeat their headers: the last request's checked facts (read-only) and
        # forwarding headers are reused when the next one carries the same interpreted headers.
        self.last_special: tuple | None = None
        self.last_facts: dict | None = None
        self.fwd_cache: tuple | None = None  # (facts, via, trusted, forwarding header bytes)
        # Body pieces of the active request parsed from the current read: sent upstream as one write
        # (one chunk) when the read is parsed, not one per piece (a body in 1-byte chunks is not a
        # system call and a chunk upstream per byte).
        self.body_out: list[bytes] = []
        self.served = 0  # requests whose head was read
        self.born = 0.0  # when the connection was accepted
        self.retiring = False  # past maxRequestsPerConnection or maxConnectionAge: the next response closes it
        self.wire_req: Request | None = None  # the chunked request whose body bytes on the wire are counted
        self.wire_bytes = 0
        self.client_counted = False  # holds a place in ctx.per_client (maxConnectionsPerClient), maybe an Opening's
        self.fast = None  # the fast lane's FastClient while it serves this connection (fastpath.py)

    # --- asyncio.Protocol -------------------------------------------------------------
    def connection_made(self, transport):
        if not self.client_ip:  # (set already when the connection opened with a PROXY header or TLS)
            peer = transport.get_extra_info("peername")
            self.client_ip = peer[0] if peer else ""
        if self.ctx.http2_alpn and self._negotiated_http2(transport):
            return
        self.accept(transport, self.client_ip)

    def _negotiated_http2(self, transport) -> bool:
        """A TLS client that chose HTTP/2 by ALPN: the connection is handed to HTTP/2 (h2.py)."""
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is None or ssl_object.selected_alpn_protocol() != ALPN:
            return False
        from .h2 import take_over  # (h2.py builds on this module; h2 is loaded by the first HTTP/2 client)
        take_over(self.ctx, transport, self.client_ip, self.client_counted)
        self.client_counted = False  # the HTTP/2 connection holds the client's place now
        return True

    def accept(self, transport, client_ip: str) -> None:
        """A client connection from `client_ip`: the peer's, or the one a PROXY protocol header gave."""
        self.transport = transport
        self.client_ip = client_ip
        self.born = self.ctx.clock()
        self.client_ip_bytes = self.client_ip.encode()
        self.forwarded_node = forwarded_node(self.client_ip)
        self.trusted_key: tuple | None = None  # (trusted proxies config, is this client trusted)
        self.client_cert = b""  # X-Forwarded-Client-Cert's element for the certificate the client showed
        tls = self.ctx.settings.tls
        if tls is not None and tls.client_certificates is not None:
            ssl_object = transport.get_extra_info("ssl_object")
            if ssl_object is not None:
                self.client_cert = client_certificate_element(ssl_object, tls.client_certificates.forward_cert)
        transport.set_write_buffer_limits(high=256 * 1024)
        self.ctx.connections.add(self)
        self.ctx.metrics.open_connections.inc()
        if len(self.ctx.connections) > self.ctx.max_connections:  # answered at once, before reading a request
            self._fail(HttpReject(503, "too many connections"))
            return
        if not self.client_counted and self.counted_per_client:
            counted = self.ctx.count_client(client_ip)
            if counted is False:
                self._fail(HttpReject(503, "too many connections from one address"))
                return
            self.client_counted = bool(counted)
        self._set_timer(self.ctx.settings.timeouts.header_read_s, self._on_header_deadline)
        fast = self.ctx.fast
        if fast is not None and type(self) is ClientConnection:  # plain requests go the compiled way
            fast.take(self, transport)

    def connection_lost(self, exc):
        if self.transport is None:  # never accepted (its opening ended before it was handed on)
            return
        self.closed = True
        self.ctx.connections.discard(self)
        self.ctx.metrics.open_connections.dec()
        if self.client_counted:
            self.client_counted = False
            self.ctx.release_client(self.client_ip)
        self.timer.cancel()
        self.upstream_timer.cancel()
        for ex in (self.active, self.tunnel):
            if ex is not None:
                ex.on_client_lost()
        self.active = self.tunnel = None
        self.queue.clear()

    def data_received(self, data: bytes):
        if self.lingering:
            self.lingering += len(data)
            if self.lingering > LINGER_MAX_BYTES:
                self.abort()
            return
        if self.tunnel is not None:
            self.tunnel.on_client_tunnel_data(data)
            return
        if self.stopped:
            # Past the last request (Connection: close): input is discarded, but still read so a
            # client that leaves is noticed at once (and its request not sent or not finished).
            self.discarded += len(data)
            if self.discarded > LINGER_MAX_BYTES:
                self.abort()
            return
        req = self.req
        if req is None or not req.head_done:
            self.head_bytes += len(data)
            mid_body = None
        else:
            mid_body = None if req.complete else req  # this read begins inside its body
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._stop()
            if self.req is not None and self.req.head_done:
                self.req.tunnel_bytes = data[exc.args[0]:] if exc.args else b""
        except httptools.HttpParserCallbackError as exc:
            reject = exc.__context__  # what the callback raised
            if isinstance(reject, PastLastRequest):
                return
            if not isinstance(reject, HttpReject):  # a fault in the router's own code, never the client's
                log.error("internal error while handling a request", exc_info=reject)
                reject = HttpReject(500, "internal error")
            self._fail(reject)
        except httptools.HttpParserError as exc:
            if self.stopped or self.lingering or self.closed:
                # Bytes after the connection's last request (llhttp: "Data after `Connection: close`"): that
                # request stands, as with nginx; what follows is not a request of this connection.
                return
            self._fail(HttpReject(400, f"malformed request: {exc}"))
        else:
            req = self.req
            if req is not None and not req.head_done:  # a head arrives in pieces
                limits = self.ctx.settings.limits
                if self.head_bytes > limits.max_header_bytes + limits.max_request_line_bytes:
                    self._fail(HttpReject(431, "request header section too large"))
                elif self.timer.deadline == 0.0 or self.timer_kind != "header":
                    # From the read that began the head: a client gets header_read_s for all of it.
                    self._set_timer(self.ctx.settings.timeouts.header_read_s, self._on_header_deadline)
            elif req is not None and not req.complete and not self.stopped:  # a body still arriving
                self._set_timer(self.ctx.settings.timeouts.body_idle_s, self._on_body_deadline, "body")
                if req is mid_body and req.facts["chunked"]:  # the whole read was its body
                    self._count_chunked(req, len(data))
        if self.body_out:
            self._flush_body()

    def _count_chunked(self, req: Request, n: int) -> None:
        """Bytes on the wire of a chunked body against its data: refused (400) past the allowance."""
        if self.wire_req is not req:
            self.wire_req, self.wire_bytes = req, 0
        self.wire_bytes += n
        if self.wire_bytes - req.body_len > CHUNK_OVERHEAD_BYTES + CHUNK_OVERHEAD_PER_BYTE * req.body_len:
            self._fail(HttpReject(400, "chunked body with too much besides data (chunk extensions)"))

    def pause_writing(self):
        ex = self.active or self.tunnel
        if ex is not None:
            ex.on_client_pause_writing()

    def resume_writing(self):
        ex = self.active or self.tunnel
        if ex is not None:
            ex.on_client_resume_writing()

    # --- used by the exchange -----------------------------------------------------------
    def trusted(self) -> bool:
        proxies = self.ctx.settings.trusted_proxies
        key = self.trusted_key
        if key is None or key[0] is not proxies:
            key = self.trusted_key = (proxies, is_trusted(self.client_ip, proxies))
        return key[1]

    def take_buffered(self, req: Request) -> list[bytes]:
        if not req.body:
            return []
        chunks = list(req.body)
        req.body.clear()
        self.buffered -= sum(len(c) for c in chunks)
        if self.buffered <= self.ctx.settings.limits.max_buffered_bytes:
            self.resume(PAUSE_BUFFER)
        return chunks

    def exchange_done(self, keep_alive: bool) -> None:
        self.active = None
        if self.paused:
            self.resume(PAUSE_UPSTREAM)
        if self.closed:
            return
        # Stopped: nothing more will be parsed here (an upgrade that did not happen, a refused request),
        # so once what is queued has been answered there is nothing to keep the connection for.
        if not keep_alive or ((self.ctx.draining or self.stopped) and not self.queue):
            self.close()
            return
        if self.queue:
            self._start_next()
        elif self.req is None or self.req.complete:
            self.timer.set(self.ctx.settings.timeouts.idle_s, self._on_idle)
            self.timer_kind = "idle"

    def start_tunnel(self, ex: Exchange) -> None:
        self.tunnel, self.active = ex, None
        self._set_timer(self.ctx.settings.timeouts.tunnel_idle_s, ex.on_tunnel_idle, "tunnel")  # moved by data
        self.paused = 0
        self.transport.resume_reading()

    def pause(self, reason: int) -> None:
        if not self.paused and not self.closed:
            self.transport.pause_reading()
        self.paused |= reason

    def resume(self, reason: int) -> None:
        was = self.paused
        self.paused &= ~reason
        if was and not self.paused and not self.closed:
            self.transport.resume_reading()

    def write(self, data: bytes) -> None:
        if self.closed or self.lingering:  # (lingering: half-closed, nothing more can be sent)
            return
        if self.corked is not None:
            self.corked.append(data)
        else:
            self.transport.write(data)

    def cork(self) -> bool:
        """Collect writes until uncork(): head and body of a response leave in one send."""
        if self.corked is None:
            self.corked = []
            return True
        return False

    def uncork(self) -> None:
        out, self.corked = self.corked, None
        if out and not self.closed:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def close(self) -> None:
        """Send what is buffered, half-close, and discard further input for a while.

        Closing with unread input makes the kernel send RST, which can destroy the final
        response before the client reads it (a 413 sent while the client is still uploading).
        """
        if self.closed or self.lingering:
            return
        if self.corked:
            self.uncork()
        if self.transport.can_write_eof() and not self.transport.is_closing():
            self.lingering = 1
            self.tunnel = self.active = None
            self.transport.write_eof()
            self.paused = 0
            self.transport.resume_reading()
            self._set_timer(LINGER_S, self._close_now, "linger")
            return
        self._close_now()

    def _close_now(self) -> None:
        if self.corked:
            self.uncork()
        if not self.closed:
            self.closed = True
            self.transport.close()

    def abort(self) -> None:
        if not self.closed:
            self.closed = True
            self.transport.abort()

    def on_drain(self) -> None:
        if self.fast is not None and not self.fast.handed:
            self.fast.drain()
            return
        if self.active is None and self.tunnel is None and not self.queue and (self.req is None or self.req.complete):
            self.close()

    # --- internals ----------------------------------------------------------------------
    def _start_next(self) -> None:
        req = self.queue.pop(0)
        if self.paused & PAUSE_PIPELINE and len(self.queue) < PIPELINE_WINDOW:
            self.resume(PAUSE_PIPELINE)
        if req.reject is not None:
            self._answer_reject(req)
            return
        self.active = self.exchange_class(self, req)
        self.active.start()

    def _fail(self, reject: HttpReject) -> None:
        """Stop parsing; answer `reject` after any response still owed, then close."""
        self._stop()
        req = self.req
        ex = self.active
        if ex is not None and ex.req is req:
            ex.on_request_rejected(reject)
            return
        if req is not None and req in self.queue:
            self.queue.remove(req)
        marker = req or Request()
        marker.reject = reject
        self.queue.append(marker)
        if self.active is None:
            self._start_next()

    def _answer_reject(self, req: Request) -> None:
        reject = req.reject
        self.ctx.metrics.rejected.labels(str(reject.status), reject.reason.split(":")[0][:40]).inc()
        if self.ctx.access_log is not None:  # as much of the request as was read
            self.ctx.access_log.request(self.client_ip, req, reject.status, "-",
                                        self.ctx.clock() - req.t0 if req.t0 else 0.0, reject.reason, http2=self.http2)
        extra = [("Retry-After", "1")] if reject.status == 503 else []  # as the router's other 503s
        self.write(simple_response(reject.status, reject.reason, close=True, extra=extra,
                                   head_only=req.method == b"HEAD", problem=self.ctx.problem_replies(req)))
        self.close()

    def _stop(self, pause: bool = True) -> None:
        self.stopped = True
        if self.lingering or self.closed:
            return  # already answered and draining the client's input: keep the linger timer and reading
        self._cancel_timer()
        if pause:
            self.pause(PAUSE_STOPPED)

    def _set_timer(self, delay: float, cb, kind: str = "header") -> None:
        self.timer.set(delay, cb)
        self.timer_kind = kind

    def _cancel_timer(self) -> None:
        self.timer.deadline = 0.0

    def _on_header_deadline(self) -> None:
        if self.req is not None and not self.req.head_done:
            self._fail(HttpReject(408, "request headers not received in time"))
        elif self.active is None and not self.queue:
            self.close()  # a connection that never sent a byte is closed silently

    def _on_body_deadline(self) -> None:
        req = self.req
        if req is None or req.complete or self.stopped or self.closed:
            return
        if self.paused:  # the router stopped reading (held, buffer full, upstream busy): not a client stall
            self._set_timer(self.ctx.settings.timeouts.body_idle_s, self._on_body_deadline, "body")
            return
        self._fail(HttpReject(408, "request body not received in time"))

    def _on_idle(self) -> None:
        if self.active is None and not self.queue:
            self.close()
