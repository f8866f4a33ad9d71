"""The PROXY protocol (HAProxy's, versions 1 and 2) on the client listeners (Router `proxyProtocol`).

An L4 load balancer in front (AWS NLB, HAProxy in TCP mode, ...) begins every connection with a
header naming the client's address, then relays the client's bytes: with TLS, its ClientHello.
ProxyHeaderReader reads the header exactly, never a byte past it, so what follows is intact for the
TLS handshake or the HTTP parser; then it hands the connection on with the client's address. A
connection that does not begin with a valid header, or not within the header deadline, is closed.
`next_read` and `client_address` are pure: the bytes so far in, a length or an address out.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import ssl
import struct
from typing import Callable

log = logging.getLogger("router.dataplane")

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_MAX = 107  # the longest version 1 line, CRLF included
_V1_MIN = {b"TCP4 ": 32, b"TCP6 ": 22}  # "PROXY TCP4 1.1.1.1 1.1.1.1 1 1\r\n"; else "PROXY UNKNOWN\r\n", 15
_V2_ADDRESS_BYTES = {0x11: 12, 0x21: 36}  # TCP over IPv4, over IPv6: source, destination, their ports


class ProxyHeaderError(ValueError):
    pass


def next_read(buf: bytes, max_v2: int) -> int:
    """How many bytes may be read next without reading past the header (0: `buf` is a whole header).
    Raises ProxyHeaderError as soon as `buf` cannot begin a header."""
    n = len(buf)
    if n < 15:  # the shortest header there is ("PROXY UNKNOWN\r\n"); version 2's is 16 bytes or more
        return 15 - n
    if buf[:12] == V2_SIGNATURE:
        if n < 16:
            return 16 - n
        length = struct.unpack_from("!H", buf, 14)[0]
        if length > max_v2:
            raise ProxyHeaderError(f"version 2 header of {length} bytes (more than {max_v2})")
        return 16 + length - n
    if buf[:6] != b"PROXY ":
        raise ProxyHeaderError("the connection does not begin with a PROXY protocol header")
    if buf.endswith(b"\r\n"):
        return 0
    if n >= V1_MAX:
        raise ProxyHeaderError(f"version 1 header longer than {V1_MAX} bytes")
    least = _V1_MIN.get(buf[6:11], 15)
    if n < least:
        return least - n
    return 1 if buf.endswith(b"\r") else 2  # two bytes at least are left ("\r\n") unless "\r" was read


def client_address(header: bytes) -> str | None:
    """The client's address in a whole header, or None when it names none (version 1 UNKNOWN, version 2
    LOCAL or an unspecified family: a load balancer's own health check), then the peer's address stands."""
    if header[:12] == V2_SIGNATURE:
        return _v2_address(header)
    fields = header[6:-2].split(b" ")
    if fields[0] == b"UNKNOWN":
        return None
    if fields[0] not in (b"TCP4", b"TCP6") or len(fields) != 5:
        raise ProxyHeaderError(f"malformed version 1 header: {header[:V1_MAX]!r}")
    kind = ipaddress.IPv4Address if fields[0] == b"TCP4" else ipaddress.IPv6Address
    try:
        source, _ = kind(fields[1].decode("ascii")), kind(fields[2].decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        raise ProxyHeaderError(f"bad address in version 1 header: {header[:V1_MAX]!r}") from None
    for port in fields[3:]:
        if not port.isdigit() or (port[:1] == b"0" and port != b"0") or int(port) > 65535:
            raise ProxyHeaderError(f"bad port in version 1 header: {port[:8]!r}")
    return str(source)


def _v2_address(header: bytes) -> str | None:
    version, command = header[12] >> 4, header[12] & 0x0F
    if version != 2 or command > 1:
        raise ProxyHeaderError(f"version 2 header with version {version}, command {command}")
    family = header[13]
    if command == 0 or family == 0x00 or family >> 4 == 0x3:  # LOCAL, unspecified, or a UNIX socket
        return None
    need = _V2_ADDRESS_BYTES.get(family)
    if need is None:
        raise ProxyHeaderError(f"version 2 header for family/transport {family:#04x} (TCP over IPv4 or IPv6 only)")
    if len(header) - 16 < need:
        raise ProxyHeaderError(f"version 2 header too short for its addresses ({len(header) - 16} bytes)")
    raw = header[16:20] if family == 0x11 else header[16:32]
    return str(ipaddress.ip_address(raw))  # any TLVs after the addresses are skipped


class ProxyHeaderReader(asyncio.BufferedProtocol):
    """The first protocol of a connection on a `proxyProtocol` listener. Reads the header into buffers
    no larger than what is left of it, then pauses reading and hands the transport (after a TLS
    handshake, on a TLS listener) to `make_connection()`'s protocol with the client's address."""

    def __init__(self, ctx, make_connection: Callable, ssl_context: ssl.SSLContext | None = None):
        self.ctx = ctx
        self.make_connection = make_connection
        self.ssl_context = ssl_context
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.space = bytearray()
        self.timer: asyncio.TimerHandle | None = None
        self.counted = False  # in ctx.pending_connections until handed on or closed

    def connection_made(self, transport) -> None:
        self.transport = transport
        ctx = self.ctx
        if len(ctx.connections) + ctx.pending_connections >= ctx.max_connections:
            # (maxConnections counts these too, so slow headers cannot hold sockets past it; nothing is sent:
            # the peer has not said which protocol it speaks yet)
            ctx.metrics.rejected.labels("0", "too many connections").inc()
            transport.abort()
            return
        ctx.pending_connections += 1
        self.counted = True
        self.timer = ctx.loop.call_later(ctx.settings.timeouts.header_read_s, self._refuse,
                                         "no whole PROXY protocol header in time")

    def _uncount(self) -> None:
        if self.counted:
            self.counted = False
            self.ctx.pending_connections -= 1

    def get_buffer(self, sizehint: int):
        # buffer_updated checked these bytes and asked for more: next_read is positive here.
        self.space = bytearray(next_read(self.buf, self.ctx.settings.limits.max_header_bytes))
        return self.space

    def buffer_updated(self, nbytes: int) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.buf += self.space[:nbytes]
        try:
            if next_read(self.buf, self.ctx.settings.limits.max_header_bytes):
                return
            address = client_address(self.buf)
        except ProxyHeaderError as exc:
            self._refuse(str(exc))
            return
        self.timer.cancel()
        self.transport.pause_reading()  # what follows is the client's: not a byte of it read here
        peer = self.transport.get_extra_info("peername")
        address = address or (peer[0] if peer else "")
        if self.ssl_context is None:
            conn = self.make_connection()
            self.transport.set_protocol(conn)
            self._uncount()
            conn.accept(self.transport, address)
            self.transport.resume_reading()
        else:
            task = self.ctx.loop.create_task(self._handshake(address))
            self.ctx.handshakes.add(task)
            task.add_done_callback(self.ctx.handshakes.discard)

    async def _handshake(self, address: str) -> None:
        conn = self.make_connection()
        timeout_s = self.ctx.settings.timeouts.header_read_s
        try:
            tls = await self.ctx.loop.start_tls(self.transport, conn, self.ssl_context, server_side=True,
                                                ssl_handshake_timeout=timeout_s)
        except asyncio.CancelledError:  # the router stops
            self.transport.abort()
            raise
        except (OSError, asyncio.TimeoutError) as exc:  # as a failed handshake on a TLS listener: closed
            log.debug("TLS handshake after the PROXY header failed: %s", exc)
            self.transport.abort()
            return
        finally:
            self._uncount()
        conn.accept(tls, address)

    def _refuse(self, reason: str) -> None:
        """Close, with nothing sent (the peer may not speak HTTP). A connection that sent nothing at all
        (a load balancer's TCP health check) is not counted."""
        self._uncount()
        if self.timer is not None:
            self.timer.cancel()
        if self.transport is not None and not self.transport.is_closing():
            if self.buf:
                self.ctx.metrics.rejected.labels("0", "proxy protocol").inc()
                log.debug("connection closed: %s", reason)
            self.transport.abort()

    def eof_received(self) -> bool:
        self._refuse("closed before its PROXY protocol header ended")
        return False

    def connection_lost(self, exc) -> None:
        self._uncount()
        if self.timer is not None:
            self.timer.cancel()
