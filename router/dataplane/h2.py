"""HTTP/2 from clients (Router `http2`): over TLS by ALPN, or in clear text with prior knowledge.

The framing, HPACK and the protocol's state and flow-control rules are the `h2` library's. Each
stream's request is served as the HTTP/1.1 request it stands for, by a ClientConnection of its own
(h2stream.py); clusters are reached over HTTP/1.1, as nginx's proxy_pass does. When the client stops
reading the socket, nothing more is read from it either (so acknowledgements of its PINGs and SETTINGS
cannot pile up).

A connection is closed after `timeouts.idle` without an open stream, sent GOAWAY (in-flight streams
finish) on drain and at maxRequestsPerConnection or maxConnectionAge, closed after its last stream when
the client sent GOAWAY (h2inbound.py), and ended with GOAWAY
ENHANCE_YOUR_CALM when its client resets more than RESET_ALLOWANCE more streams than it lets finish
(the "rapid reset" attack, CVE-2023-44487: each reset request may already have cost a cluster a
request) or floods it with frames that carry nothing (h2inbound.py).
"""
from __future__ import annotations

import logging

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (DataReceived, RemoteSettingsChanged, RequestReceived, StreamEnded,
                       StreamReset, WindowUpdated)
from h2.exceptions import ProtocolError
from h2.settings import SettingCodes, Settings
from hyperframe.frame import GoAwayFrame

from ..config.model import Http2
from .h2inbound import InboundFrames
from .h2head import PREFACE, Malformed, request_head
from .h2stream import Http2Stream
from .timers import LazyTimer

log = logging.getLogger("router.dataplane")

CONNECTION_WINDOW = 4 * 1024 * 1024  # bytes of request bodies in flight per connection, all streams together
RESET_ALLOWANCE = 100  # streams a client may reset beyond those it lets finish


def take_over(ctx, transport, client_ip: str, client_counted: bool, first: bytes = b"") -> None:
    """Hand an open connection that speaks HTTP/2 (by ALPN, or having sent `first`: the preface) to an
    Http2Connection, with the client's place under maxConnectionsPerClient (the caller gives it up)."""
    h2 = Http2Connection(ctx, client_ip, client_counted)
    transport.set_protocol(h2)
    h2.connection_made(transport, first)


class Http2Connection:
    """One client connection speaking HTTP/2 (an asyncio protocol; see the module)."""

    def __init__(self, ctx, client_ip: str, client_counted: bool):
        self.ctx = ctx
        self.client_ip = client_ip
        self.client_counted = client_counted  # the client's place under maxConnectionsPerClient, released here
        self.transport = None
        self.h2: H2Connection | None = None
        self.streams: dict[int, Http2Stream] = {}
        self.timer = LazyTimer(ctx.loop)
        self.write_blocked = False
        self.send_pending = False
        self.closed = False
        self.goaway_at: int | None = None  # the last stream served after a GOAWAY was sent
        self.started = 0
        self.completed = 0
        self.resets = 0
        self.max_streams = 0  # maxConcurrentStreams, as this connection's SETTINGS said it
        self.incoming = InboundFrames(len(PREFACE))  # the client's bytes, less its GOAWAY (see h2inbound.py)
        self.data_frames = 0  # DATA frames sent (WINDOW_UPDATEs the client may send grow with them)
        self.client_leaving = False  # the client sent GOAWAY: close once its streams are answered
        self.born = 0.0

    # --- asyncio.Protocol --------------------------------------------------------------------------
    def connection_made(self, transport, first: bytes = b"") -> None:
        ctx = self.ctx
        self.transport = transport
        self.born = ctx.clock()
        ctx.connections.add(self)
        ctx.metrics.open_connections.inc()
        settings = ctx.settings
        # Outbound headers are the router's own, from a response head llhttp has parsed and h2head has
        # filtered: h2's checks of them again cost a tenth of the request; inbound ones are all checked.
        config = H2Configuration(client_side=False, header_encoding=None, validate_outbound_headers=False,
                                 normalize_outbound_headers=False)
        h2 = self.h2 = H2Connection(config=config)
        # (a reload may have removed http2 since this listener began offering it: the defaults then)
        self.max_streams = (settings.http2 or Http2()).max_concurrent_streams
        values = {SettingCodes.MAX_CONCURRENT_STREAMS: self.max_streams,
                  SettingCodes.MAX_HEADER_LIST_SIZE: settings.limits.max_header_bytes,
                  SettingCodes.INITIAL_WINDOW_SIZE: min(settings.limits.max_buffered_bytes, 2 ** 31 - 1),
                  SettingCodes.ENABLE_PUSH: 0}
        h2.local_settings = Settings(client=False, initial_values=values)
        h2.initiate_connection()  # (the SETTINGS frame says the limit; then h2 is told there is none, see _request)
        h2.local_settings = Settings(client=False, initial_values={**values,
                                                                   SettingCodes.MAX_CONCURRENT_STREAMS: 2 ** 31 - 1})
        # HPACK's decoder ends the connection past its header-list limit, 64 KiB whatever was announced: twice
        # maxHeaderBytes (and HPACK's 32 bytes a field), so that a request over the limits is answered 431 on
        # its stream by the reader, as over HTTP/1.1, and only a list far past them ends the connection.
        limits = settings.limits
        h2.decoder.max_header_list_size = 2 * limits.max_header_bytes + 32 * limits.max_header_count
        h2.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        transport.set_write_buffer_limits(high=256 * 1024)
        self.send()
        if len(ctx.connections) > ctx.max_connections:
            ctx.metrics.rejected.labels("0", "too many connections").inc()
            self.goaway(ErrorCodes.REFUSED_STREAM)
            self.close()
            return
        self.timer.set(settings.timeouts.header_read_s, self._on_idle)  # the first request, within the deadline
        if first:
            self.data_received(first)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        data = self.incoming.feed(data)
        flood = self._flood()
        if flood:  # (before h2 spends its work on them)
            self._calm_down("http2 flood", f"a flood of {flood}")
            return
        try:
            events = self.h2.receive_data(data)
        except ProtocolError as exc:  # h2 has queued GOAWAY with the error's code
            self.ctx.metrics.rejected.labels("0", "http2 protocol error").inc()
            log.debug("HTTP/2 connection from %s: protocol error: %s", self.client_ip, exc)
            self.close()
            return
        for event in events:
            if self.closed:  # (ended by an event before this one)
                return
            kind = type(event)
            if kind is DataReceived:
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    stream.body(event.data, event.flow_controlled_length)
                else:
                    self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif kind is RequestReceived:
                self._request(event)
            elif kind is StreamEnded:
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    stream.end_request()
            elif kind is StreamReset:
                self._reset_by_client(event)
            elif kind is WindowUpdated or kind is RemoteSettingsChanged:
                for stream in list(self.streams.values()):
                    stream.flush()
        if self.incoming.goaway is not None:
            self._client_goaway()
            if self.closed:
                return
        self.send()

    def _flood(self) -> str | None:
        """What the client floods the connection with, held against what it asked for (see h2inbound.py)."""
        inbound = self.incoming
        opened = (self.h2.highest_inbound_stream_id + 1) // 2  # (client streams are 1, 3, 5, ...)
        if inbound.most_empty > 1:
            return "empty DATA/HEADERS/CONTINUATION frames"
        if inbound.priority > 100 * (1 + opened):
            return "PRIORITY frames"
        if inbound.window_updates > 5 + 2 * opened + 20 * self.data_frames:
            return "WINDOW_UPDATE frames"
        return None

    def _client_goaway(self) -> None:
        """The client's GOAWAY (kept from h2, see h2inbound.py): with NO_ERROR, the streams it opened are
        answered and the connection closes after the last (a load balancer draining its connection); with
        an error code, nothing more is wanted: they end here."""
        _, code = self.incoming.goaway
        self.incoming.goaway = None
        self.client_leaving = True
        if code != ErrorCodes.NO_ERROR:
            log.debug("HTTP/2 connection from %s: the client's GOAWAY says %s", self.client_ip, code)
            self.abort_streams()
            self.close()
        elif not self.streams:
            self.goaway()
            self.close()

    def eof_received(self) -> bool:
        return False  # the client is gone: close (its streams lose their connections)

    def connection_lost(self, exc) -> None:
        if self.transport is None:
            return
        self.closed = True
        self.timer.cancel()
        self.abort_streams()
        self.streams.clear()
        if self in self.ctx.connections:
            self.ctx.connections.discard(self)
            self.ctx.metrics.open_connections.dec()
        if self.client_counted:
            self.client_counted = False
            self.ctx.release_client(self.client_ip)

    def pause_writing(self) -> None:
        self.write_blocked = True  # streams keep their bodies (and pause their connections past their limit)
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_blocked = False
        if not self.closed:
            self.transport.resume_reading()
            for stream in list(self.streams.values()):
                stream.flush()
            self.send()

    # --- what the router's connection set asks of a connection ----------------------------------------
    def on_drain(self) -> None:
        self.goaway()
        if not self.streams:
            self.close()

    def abort(self) -> None:
        if not self.closed:
            self.closed = True
            self.transport.abort()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.send_now()
            self.transport.close()

    # --- internals ----------------------------------------------------------------------------------
    def send(self) -> None:
        """What h2 has ready goes out once this turn of the loop is over: the frames of every stream
        answered in it leave in one write (one system call), not one per stream or per event."""
        if not self.send_pending:
            self.send_pending = True
            self.ctx.loop.call_soon(self.send_now)

    def send_now(self) -> None:
        self.send_pending = False
        data = self.h2.data_to_send()
        if data and not self.transport.is_closing():
            self.transport.write(data)

    def goaway(self, code: ErrorCodes = ErrorCodes.NO_ERROR) -> None:
        """GOAWAY naming the last stream that will be served: streams open now finish, newer ones are
        refused (safe for the client to retry). Sent outside h2's state machine, which would refuse to
        send anything more once it had sent one."""
        if self.goaway_at is None and not self.closed:
            self.goaway_at = self.h2.highest_inbound_stream_id
            frame = GoAwayFrame(0)
            frame.last_stream_id, frame.error_code = self.goaway_at, code
            self.send_now()
            self.transport.write(frame.serialize())

    def stream_done(self, stream: Http2Stream) -> None:
        if stream.lost and stream.sent_fin and self.streams.get(stream.sid) is stream:
            del self.streams[stream.sid]
            if not self.streams:
                if self.client_leaving:
                    self.goaway()
                    self.close()
                elif self.goaway_at is not None:
                    self.close()
                elif not self.closed:
                    self.timer.set(self.ctx.settings.timeouts.idle_s, self._on_idle)

    def _request(self, event: RequestReceived) -> None:
        sid = event.stream_id
        if self.goaway_at is not None and sid > self.goaway_at:
            self.h2.reset_stream(sid, ErrorCodes.REFUSED_STREAM)
            return
        if len(self.streams) >= self.max_streams:
            # Over maxConcurrentStreams: that stream is refused, and the client may send it again (RFC 9113
            # 5.1.2; a client may open more before it has read the limit). h2 would end the whole connection.
            # Refused streams count as resets toward the rapid-reset bound.
            self.h2.reset_stream(sid, ErrorCodes.REFUSED_STREAM)
            self.ctx.metrics.rejected.labels("0", "http2 refused stream").inc()
            self._count_reset()
            return
        ended = event.stream_ended is not None
        try:
            method, head, chunked = request_head(event.headers, ended)
        except Malformed as exc:
            self.ctx.metrics.rejected.labels("0", "http2 malformed request").inc()
            log.debug("HTTP/2 stream %d from %s reset: %s", sid, self.client_ip, exc)
            self.h2.reset_stream(sid, ErrorCodes.PROTOCOL_ERROR)
            return
        self.timer.cancel()  # a stream is open: not idle
        self.started += 1
        stream = self.streams[sid] = Http2Stream(self, sid, method == b"HEAD", chunked, ended)
        stream.start(head)
        ctx = self.ctx
        if self.started >= ctx.max_requests_per_connection or ctx.clock() - self.born >= ctx.max_connection_age_s:
            self.goaway()

    def _reset_by_client(self, event: StreamReset) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is None:
            return
        if event.remote_reset and not stream.fin:
            self._count_reset()
        stream.gone()

    def _count_reset(self) -> None:
        """One more stream that cost the router without finishing (reset by the client, or refused)."""
        self.resets += 1
        if self.resets > self.completed + RESET_ALLOWANCE:
            self._calm_down("http2 rapid reset", f"{self.resets} streams reset by the client or refused")

    def _calm_down(self, reason: str, why: str) -> None:
        """A client that costs the router work for nothing (streams reset or refused, frames that carry
        nothing): GOAWAY ENHANCE_YOUR_CALM, counted under `reason`, and the connection ends."""
        self.ctx.metrics.rejected.labels("0", reason).inc()
        log.warning("HTTP/2 connection from %s closed: %s", self.client_ip, why)
        self.goaway(ErrorCodes.ENHANCE_YOUR_CALM)
        self.abort_streams()
        self.close()

    def abort_streams(self) -> None:
        for stream in list(self.streams.values()):
            stream.gone()

    def _on_idle(self) -> None:
        if not self.streams and not self.closed:
            self.goaway()
            self.close()
