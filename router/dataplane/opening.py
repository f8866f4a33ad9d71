"""How a connection opens on a listener with the PROXY protocol or TLS, before its first request.

Each such connection is an Opening from its accept until it is handed to its HTTP protocol: it
counts toward maxConnections (ctx.openings) and has one header deadline (timeouts.headerRead) for
the whole of it, so neither slow PROXY headers nor stalled TLS handshakes hold sockets past the
limit or the deadline. Its steps:

1. With the PROXY protocol, the header, read in buffers no larger than what is left of it
   (proxyproto.next_read), never a byte past it.
2. On a TLS listener, the connection's first byte, looked at without reading it (MSG_PEEK on a
   copy of the descriptor the transport gives up): a TLS handshake record (0x16) begins the
   handshake; anything else is plain HTTP sent to the TLS port, handed to `make_plain()`'s
   protocol, which answers it 400 (as nginx does) instead of closing in silence.
3. On a plain listener offering HTTP/2 with prior knowledge (Router `http2.cleartext`), the client's
   first bytes, read while they match the HTTP/2 connection preface: the whole preface hands the
   connection to HTTP/2 (h2.py); the first byte that differs (the first, for any HTTP/1.x method but
   PRI) hands it, with the bytes read, to HTTP/1.1.
4. The connection is handed on with the client's address: the header's, else the peer's.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
from typing import Callable

from .h2head import PREFACE
from .proxyproto import ProxyHeaderError, client_address, next_read

log = logging.getLogger("router.dataplane")

TLS_HANDSHAKE_RECORD = 0x16  # the content type of a TLS record that begins a handshake (a ClientHello)


class Opening(asyncio.BufferedProtocol):
    """The first protocol of a connection on a PROXY protocol or TLS listener (see the module)."""

    def __init__(self, ctx, make_connection: Callable, tls_context: Callable[[], ssl.SSLContext] | None,
                 proxy_header: bool, make_plain: Callable | None = None, preface: bool = False):
        self.ctx = ctx
        self.make_connection = make_connection
        self.make_plain = make_plain  # for plain HTTP on a TLS listener
        self.tls_context = tls_context  # the listener's context as it is now (certificates are replaced live)
        self.proxy_header = proxy_header
        self.preface = preface  # the HTTP/2 preface is looked for (a plain listener with http2.cleartext)
        self.reading_preface = False
        self.pre = b""  # the client's first bytes, while they match the preface
        self.transport: asyncio.Transport | None = None
        self.sock: socket.socket | None = None  # the descriptor's copy, while its first byte is awaited
        self.task: asyncio.Task | None = None  # the hand-over through a new transport (a TLS handshake)
        self.address = ""
        self.buf = b""
        self.space = bytearray()
        self.timer: asyncio.TimerHandle | None = None
        self.deadline = 0.0
        self.detached = False  # the transport gave up its descriptor (a TLS listener)
        self.client_counted = False  # holds a place in ctx.per_client, handed on with the connection
        self.done = False

    # --- asyncio.BufferedProtocol: the accepted transport -------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        ctx = self.ctx
        if len(ctx.connections) + len(ctx.openings) >= ctx.max_connections:
            # Nothing is sent: the peer has not said which protocol it speaks yet.
            ctx.metrics.rejected.labels("0", "too many connections").inc()
            self.done = True
            transport.abort()
            return
        ctx.openings.add(self)
        peer = transport.get_extra_info("peername")
        self.address = peer[0] if peer else ""
        if not self.proxy_header and not self._count_client():  # (behind a PROXY header: its address counts)
            return
        header_read_s = ctx.settings.timeouts.header_read_s
        self.deadline = ctx.loop.time() + header_read_s
        self.timer = ctx.loop.call_later(header_read_s, self._expire)
        if not self.proxy_header:
            self._opened()  # (a TLS listener: the transport gives up its descriptor before its first read)

    def get_buffer(self, sizehint: int):
        if self.reading_preface:
            self.space = bytearray(len(PREFACE) - len(self.pre))
            return self.space
        # buffer_updated checked these bytes and asked for more: next_read is positive here.
        self.space = bytearray(next_read(self.buf, self.ctx.settings.limits.max_header_bytes))
        return self.space

    def buffer_updated(self, nbytes: int) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        if self.reading_preface:
            self._preface_read(bytes(self.space[:nbytes]))
            return
        self.buf += self.space[:nbytes]
        try:
            if next_read(self.buf, self.ctx.settings.limits.max_header_bytes):
                return
            address = client_address(self.buf)
        except ProxyHeaderError as exc:
            self._refuse("proxy protocol", str(exc))
            return
        self.transport.pause_reading()  # what follows is the client's: not a byte of it read here
        self.address = address or self.address
        if self._count_client():
            self._opened()

    def eof_received(self) -> bool:
        if self.reading_preface:
            self._refuse("http2 preface", "closed before its first request")
            return False
        self._refuse("proxy protocol", "closed before its PROXY protocol header ended")
        return False

    def connection_lost(self, exc) -> None:
        if not self.detached:  # (the connection lives on without that transport)
            self._finish()

    # --- the steps after the header ----------------------------------------------------------
    def _opened(self) -> None:
        transport = self.transport
        if self.tls_context is None:  # a plain listener: HTTP from here, or the HTTP/2 preface first
            if self.preface:
                self.preface, self.reading_preface = False, True
                transport.resume_reading()
                return
            self._hand_plain(b"")
            return
        # The descriptor is copied and the transport closed before it reads: the connection stays
        # open on the copy, its bytes unread, until the first one is known.
        try:
            copy = os.dup(transport.get_extra_info("socket").fileno())
        except OSError as exc:  # out of descriptors (EMFILE): closed with nothing sent, safe to retry
            self.ctx.metrics.rejected.labels("0", "local resources exhausted").inc()
            log.debug("TLS connection from %s closed before its handshake: %s", self.address, exc)  # counted
            transport.abort()
            self._finish()
            return
        self.sock = socket.socket(fileno=copy)
        self.sock.setblocking(False)
        self.transport, self.detached = None, True
        transport.abort()
        self.ctx.loop.add_reader(self.sock.fileno(), self._first_byte)

    def _hand_plain(self, first: bytes) -> None:
        """HTTP/1.x from here, beginning with `first` (bytes already read)."""
        transport = self.transport
        conn = self.make_connection()
        self._hand_count(conn)
        transport.set_protocol(conn)
        self._finish()
        conn.accept(transport, self.address)
        if first:  # (to the fast lane, when accept handed the connection to it)
            transport.get_protocol().data_received(first)
        transport.resume_reading()

    def _preface_read(self, data: bytes) -> None:
        self.pre += data
        if PREFACE.startswith(self.pre) and len(self.pre) < len(PREFACE):
            return  # (a read is never longer than what is left of the preface)
        self.transport.pause_reading()
        self.reading_preface = False
        if self.pre != PREFACE:
            self._hand_plain(self.pre)
            return
        from .h2 import take_over  # (the h2 library is loaded by the first HTTP/2 connection)
        counted, self.client_counted = self.client_counted, False  # the HTTP/2 connection holds the place now
        self._finish()
        take_over(self.ctx, self.transport, self.address, counted, PREFACE)
        self.transport.resume_reading()

    def _first_byte(self) -> None:
        try:
            first = self.sock.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # reset by the peer
            first = b""
        self.ctx.loop.remove_reader(self.sock.fileno())
        if not first:  # closed before a byte (a TCP health check): nothing to answer, nothing counted
            self._close_socket()
            return
        sock, self.sock = self.sock, None
        if first[0] == TLS_HANDSHAKE_RECORD:
            self.task = self.ctx.loop.create_task(self._handshake(sock))
        else:
            self.task = self.ctx.loop.create_task(self._plain(sock))

    async def _handshake(self, sock: socket.socket) -> None:
        self.timer.cancel()  # the handshake has the rest of the deadline as its own timeout
        conn = self.make_connection()
        self._hand_count(conn)
        try:
            await self.ctx.loop.connect_accepted_socket(
                lambda: conn, sock, ssl=self.tls_context(),
                ssl_handshake_timeout=max(self.deadline - self.ctx.loop.time(), 0.001))
        except (OSError, asyncio.TimeoutError) as exc:  # closed by the TLS layer: counted, nothing sent
            self.ctx.metrics.rejected.labels("0", "tls handshake").inc()
            log.debug("TLS handshake with %s failed: %s", self.address, exc)
        finally:  # (cancelled when the router stops: the TLS layer closes the connection)
            self._never_accepted(conn)
            self._finish()

    async def _plain(self, sock: socket.socket) -> None:
        conn = self.make_plain()
        self._hand_count(conn)
        try:
            await self.ctx.loop.connect_accepted_socket(lambda: conn, sock)
        finally:
            self._never_accepted(conn)
            self._finish()

    # --- the client's place under maxConnectionsPerClient ----------------------------------
    def _count_client(self) -> bool:
        """Counted (or not limited); else refused, closed with nothing sent."""
        counted = self.ctx.count_client(self.address)
        if counted is False:
            self.ctx.metrics.rejected.labels("0", "too many connections from one address").inc()
            self._finish()
            self.transport.abort()
            return False
        self.client_counted = bool(counted)
        return True

    def _hand_count(self, conn) -> None:
        """The connection takes over the client's place (and its address)."""
        conn.client_ip = self.address
        conn.client_counted, self.client_counted = self.client_counted, False

    def _never_accepted(self, conn) -> None:
        """A handed-on connection that never became HTTP (its handshake failed) gives its place back."""
        if conn.transport is None and conn.client_counted:
            conn.client_counted = False
            self.ctx.release_client(self.address)

    # --- ends --------------------------------------------------------------------------------
    def _expire(self) -> None:
        if self.reading_preface:
            self._refuse("http2 preface", "no request in time")
            return
        reason = ("no whole PROXY protocol header in time" if self.proxy_header and self.transport is not None
                  else "no TLS handshake in time")
        self._refuse("proxy protocol" if self.transport is not None else "tls handshake", reason)

    def _refuse(self, kind: str, reason: str) -> None:
        """Close, with nothing sent (the peer may not speak HTTP). A connection that sent nothing at all
        (a load balancer's TCP health check) is not counted."""
        sent = bool(self.buf or self.pre) if self.transport is not None else self._has_input()
        if sent and not self.done:
            self.ctx.metrics.rejected.labels("0", kind).inc()
            log.debug("connection from %s closed: %s", self.address, reason)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()
        self._close_socket()

    def _has_input(self) -> bool:
        try:
            return bool(self.sock is not None and self.sock.recv(1, socket.MSG_PEEK))
        except OSError:
            return False

    def _close_socket(self) -> None:
        if self.sock is not None:
            sock, self.sock = self.sock, None
            self.ctx.loop.remove_reader(sock.fileno())
            sock.close()
        self._finish()

    def _finish(self) -> None:
        """Out of the openings: handed on, or closed."""
        if self.client_counted:
            self.client_counted = False
            self.ctx.release_client(self.address)
        if not self.done:
            self.done = True
            self.ctx.openings.discard(self)
            if self.timer is not None:
                self.timer.cancel()

    def abort(self) -> None:
        """The router stops: whatever step this connection is at ends, and the connection with it."""
        if self.task is not None:
            self.task.cancel()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()
        self._close_socket()
