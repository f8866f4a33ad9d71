"""One HTTP/2 stream, served as the HTTP/1.1 request it stands for (see h2.py for the connection).

The stream's request is handed to its own ClientConnection (a StreamConnection) as the HTTP/1.1 head
h2head.py makes of it, through an Http2Stream standing in for that connection's transport: the request
is parsed, checked, routed and relayed exactly as one that came over HTTP/1.1, and the response the
connection writes is parsed back (httptools) into HEADERS and DATA frames.

Flow control ties the two ends: the stream's received DATA is acknowledged (its window reopened) only
as its connection reads it, so a cluster that reads slowly slows the client's upload instead of
filling memory; the response waits for the client's window, and the connection is told to pause
writing (which pauses reading from the cluster) while more than its write limit waits; a response the
client lets nothing of through for `bodyIdle` is reset.
"""
from __future__ import annotations

import asyncio
import logging
import typing

import httptools
from h2.errors import ErrorCodes
from h2.exceptions import ProtocolError

from .h2head import response_headers
from .server import ClientConnection

if typing.TYPE_CHECKING:
    from .h2 import Http2Connection

log = logging.getLogger("router.dataplane")


class StreamConnection(ClientConnection):
    """One HTTP/2 stream's request, as a connection that carries one request. It counts toward
    maxConnections (each may need a connection to a cluster) but not toward maxConnectionsPerClient:
    the HTTP/2 connection holds the client's place."""
    __slots__ = ()
    counted_per_client = False
    http2 = True


class Http2Stream:
    """The transport of one stream's StreamConnection (see the module)."""

    def __init__(self, owner: "Http2Connection", sid: int, head_only: bool, chunked: bool, ended: bool):
        self.owner = owner
        self.sid = sid
        self.head_only = head_only  # a HEAD request: its response ends with its head
        self.chunked = chunked  # the request's body is passed on chunked (no content-length)
        self.request_done = ended
        self.conn: StreamConnection | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.fields: list[tuple[bytes, bytes]] = []
        self.pending = bytearray()  # response body waiting for the client's window
        self.fin = False  # the whole response has been written (END_STREAM once `pending` is sent)
        self.sent_fin = False  # END_STREAM or RST_STREAM sent: nothing more goes out on this stream
        self.closing = False
        self.lost = False  # the connection was told it is gone
        self.reading_paused = False
        self.inbox: list[tuple[bytes, int]] = []  # request body (and its flow-controlled size) while paused
        self.high, self.low = 256 * 1024, 64 * 1024
        self.writing_paused = False
        self.sent_at = 0.0  # when the client's window last let body bytes go
        self.stall: asyncio.TimerHandle | None = None  # armed while body bytes wait for the client's window

    # --- from the HTTP/2 connection --------------------------------------------------------------
    def start(self, head: bytes) -> None:
        conn = self.conn = StreamConnection(self.owner.ctx)
        conn.retiring = True  # one request: the connection closes after its response
        conn.accept(self, self.owner.client_ip)
        if not conn.closed:
            conn.data_received(head)

    def body(self, data: bytes, flow: int) -> None:
        if self.conn is None or self.lost or self.closing:
            self.owner.h2.acknowledge_received_data(flow, self.sid)  # read and dropped
        elif self.reading_paused:
            self.inbox.append((data, flow))
        else:
            self._feed(data, flow)

    def end_request(self) -> None:
        self.request_done = True
        if self.chunked:
            self.body(b"0\r\n\r\n", 0)  # (already framed: see _feed)

    def gone(self) -> None:
        """The client reset the stream, or the connection ended: nothing more may be sent on it."""
        self.sent_fin = True
        self._lose()

    # --- the asyncio transport a ClientConnection uses ---------------------------------------------
    def get_extra_info(self, name, default=None):
        return self.owner.transport.get_extra_info(name, default)

    def set_write_buffer_limits(self, high=None, low=None) -> None:
        self.high = high if high is not None else self.high
        self.low = low if low is not None else self.high // 4

    def get_write_buffer_size(self) -> int:
        return len(self.pending)

    def write(self, data: bytes) -> None:
        if self.fin or self.sent_fin:
            return  # a HEAD response's body, or the stream is gone
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:  # the router's own output: a fault, never the client's
            log.error("HTTP/2 stream %d: response not understood: %s", self.sid, exc)
            self.abort()
            return
        self.flush()
        self.owner.send()

    def writelines(self, parts) -> None:
        self.write(b"".join(parts))

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        self.close()

    def is_closing(self) -> bool:
        return self.closing

    def pause_reading(self) -> None:
        self.reading_paused = True

    def resume_reading(self) -> None:
        self.reading_paused = False
        while self.inbox and not self.reading_paused and not self.lost:
            data, flow = self.inbox.pop(0)
            self._feed(data, flow)
        self.owner.send()

    def is_reading(self) -> bool:
        return not self.reading_paused

    def close(self) -> None:
        """The connection is done with the stream: the response, if whole, still goes out as the
        client's window allows; if not whole, the stream is reset."""
        if self.closing:
            return
        self.closing = True
        if not self.fin:
            self._reset(ErrorCodes.INTERNAL_ERROR)
        self.owner.ctx.loop.call_soon(self._lose)

    def abort(self) -> None:
        if not self.sent_fin:
            self._reset(ErrorCodes.INTERNAL_ERROR)
        self.closing = True
        self.owner.ctx.loop.call_soon(self._lose)

    # --- httptools.HttpResponseParser callbacks: the response the connection writes ---------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        fields, self.fields = self.fields, []
        if status == 101:  # cannot happen (HTTP/2 requests carry no Upgrade): never an upgrade here
            self.abort()
            return
        head_only = self.head_only and status >= 200  # a HEAD's final answer: its head ends the stream
        try:
            self.owner.h2.send_headers(self.sid, response_headers(status, fields), end_stream=head_only)
        except ProtocolError:  # (StreamClosedError among them)
            self._closed_by_client()
            return
        if head_only:
            self.fin = True
            self._ended()

    def on_body(self, data: bytes) -> None:
        self.pending += data

    def on_message_complete(self) -> None:
        if self.parser.get_status_code() >= 200:
            self.fin = True

    # --- internals ------------------------------------------------------------------------------
    def flush(self) -> None:
        """Send what the client's window allows of the body, and END_STREAM after the last of it."""
        if self.sent_fin:
            return
        owner = self.owner
        h2 = owner.h2
        try:
            while self.pending and not owner.write_blocked:
                n = min(len(self.pending), h2.local_flow_control_window(self.sid), h2.max_outbound_frame_size)
                if n <= 0:
                    break
                last = self.fin and n == len(self.pending)  # END_STREAM on the last of the body, not a frame more
                h2.send_data(self.sid, bytes(self.pending[:n]), end_stream=last)
                owner.data_frames += 1
                del self.pending[:n]
                self.sent_at = owner.ctx.loop.time()
                if last:
                    self._ended()
            if self.fin and not self.pending and not self.sent_fin:
                h2.end_stream(self.sid)
                self._ended()
        except ProtocolError:
            self._closed_by_client()
            return
        size = len(self.pending)
        if size and self.stall is None:
            if not self.sent_at:
                self.sent_at = owner.ctx.loop.time()
            self.stall = owner.ctx.loop.call_later(owner.ctx.settings.timeouts.body_idle_s, self._on_stall)
        if self.conn is not None and not self.lost:
            if not self.writing_paused and size > self.high:
                self.writing_paused = True
                self.conn.pause_writing()
            elif self.writing_paused and size <= self.low:
                self.writing_paused = False
                self.conn.resume_writing()

    def _on_stall(self) -> None:
        """A response the client has not let through (no window, or not reading the socket) for
        timeouts.bodyIdle: the stream is reset, as an HTTP/1.1 response whose client stopped reading ends."""
        self.stall = None
        if self.sent_fin or not self.pending:
            return
        idle_s = self.owner.ctx.settings.timeouts.body_idle_s
        waited = self.owner.ctx.loop.time() - self.sent_at
        if waited < idle_s:  # it moved meanwhile: the rest of the time from its last move
            self.stall = self.owner.ctx.loop.call_later(idle_s - waited, self._on_stall)
            return
        self.pending.clear()
        self._reset(ErrorCodes.CANCEL)
        self.closing = True
        self._lose()

    def _no_stall(self) -> None:
        if self.stall is not None:
            self.stall.cancel()
            self.stall = None

    def _ended(self) -> None:
        """END_STREAM has been sent: the response is whole."""
        self.sent_fin = True
        self._no_stall()
        owner = self.owner
        owner.completed += 1
        stream = owner.h2.streams.get(self.sid)
        if stream is not None and not stream.closed:  # the rest of the request is not wanted
            owner.h2.reset_stream(self.sid, ErrorCodes.NO_ERROR)
        owner.stream_done(self)

    def _feed(self, data: bytes, flow: int) -> None:
        if data and self.chunked and flow:  # (the last-chunk marker comes with no flow-controlled size)
            data = b"%x\r\n%b\r\n" % (len(data), data)
        if data:
            self.conn.data_received(data)
        if flow:
            self.owner.h2.acknowledge_received_data(flow, self.sid)

    def _reset(self, code: ErrorCodes) -> None:
        if not self.sent_fin:
            self.sent_fin = True
            self._no_stall()
            try:
                self.owner.h2.reset_stream(self.sid, code)
            except ProtocolError:  # already closed by the client, in frames not yet handled
                pass
            self.owner.send()
            self.owner.stream_done(self)

    def _closed_by_client(self) -> None:
        """h2 has closed the stream, or the whole connection, on frames from the client this connection
        has not handled yet (its RST_STREAM, its GOAWAY, a protocol error): nothing more is sent, and the
        connection learns it is gone."""
        self.sent_fin = True
        self._no_stall()
        self.pending.clear()
        if not self.closing:
            self.closing = True
            self.owner.ctx.loop.call_soon(self._lose)

    def _lose(self) -> None:
        if self.sent_fin:
            self._no_stall()
        if not self.lost:
            self.lost = True
            self.inbox.clear()
            if self.conn is not None:
                self.conn.connection_lost(None)
            if self.sent_fin:
                self.owner.stream_done(self)
