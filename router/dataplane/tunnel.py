"""Moving bytes between an exchange's two sockets: flow control (a side whose peer cannot take more
stops being read) and the tunnel after an upgrade (101), relayed as raw bytes both ways until either side
closes or nothing passes for tunnelIdle.

A mixin of Exchange (which owns the state, see exchange.py).
"""
from __future__ import annotations

from .pause import PAUSE_UPSTREAM


class Streaming:
    __slots__ = ()

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
        self._record(self.backend.cluster, 101, self.ctx.clock())

    def on_client_tunnel_data(self, data: bytes) -> None:
        if self.upstream is not None:
            self.upstream.write(data)
            self.conn.timer.set(self.ctx.settings.timeouts.tunnel_idle_s, self.on_tunnel_idle)

    def on_tunnel_data(self, data: bytes) -> None:
        self.conn.write(data)
        self.conn.timer.set(self.ctx.settings.timeouts.tunnel_idle_s, self.on_tunnel_idle)

    def on_tunnel_idle(self) -> None:
        """No bytes either way for tunnelIdle (Envoy's stream idle timeout): both sides are closed."""
        if self.conn.tunnel is not self:
            return
        self.finished = True
        up, self.upstream = self.upstream, None
        if up is not None:
            up.exchange = None
            up.close()
        self.conn.close()
