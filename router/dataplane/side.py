"""A request of the router's own to a cluster, beside a client's exchange: a mirror copy (mirror.py), an
authorization check (authz.py). It takes a connection from the same pool (or opens one), has its own
deadline, and stands in for an Exchange toward that upstream connection: the protocol calls the same
methods on it. Subclasses say what the answer is for (`on_response_head`, `on_response_body`) and what
its end means (`finished`).
"""
from __future__ import annotations

import asyncio


class SideRequest:
    __slots__ = ("ctx", "cluster", "head", "upstream", "timer", "task", "done", "conn", "resp_started", "registry")

    def __init__(self, ctx, cluster: str, head_only: bool, registry: set):
        self.ctx, self.cluster = ctx, cluster
        self.registry = registry  # the context's set of such requests out, which a stopping router aborts
        self.head = head_only  # a HEAD request: the answer ends with its head
        self.upstream = None
        self.timer: asyncio.TimerHandle | None = None
        self.task: asyncio.Task | None = None
        self.done = False
        self.conn = self  # cork/uncork are asked of the exchange's `conn`
        self.resp_started = False  # the client exchanges' body-stall timer is not ours

    def send(self, backend, data: bytes, timeout_s: float) -> None:
        """Send `data` (a whole request) to the cluster; `finished` is called once, within `timeout_s`."""
        ctx = self.ctx
        self.registry.add(self)
        self.timer = ctx.loop.call_later(timeout_s, self._finish, "failed")
        conn = ctx.pool.take_idle(backend.pool_key)
        if conn is not None:
            self._attach(conn, data)
        else:
            self.task = ctx.loop.create_task(self._connect(backend, data))

    async def _connect(self, backend, data: bytes) -> None:
        ctx = self.ctx
        try:
            conn = await ctx.pool.connect(backend.endpoint, backend.pool_key, ctx.settings.timeouts.connect_s,
                                          ctx.settings.limits)
        except (OSError, asyncio.TimeoutError):
            self._finish("failed")
            return
        finally:
            self.task = None
        if self.done:
            ctx.pool.release(conn)
            return
        self._attach(conn, data)

    def _attach(self, conn, data: bytes) -> None:
        conn.exchange = self
        self.upstream = conn
        conn.write(data)

    def abort(self) -> None:
        """The router is stopping: drop the request now."""
        if self.task is not None:
            self.task.cancel()
        self._finish("failed")

    def _finish(self, result: str) -> None:
        if self.done:
            return
        self.done = True
        if self.timer is not None:
            self.timer.cancel()
        up, self.upstream = self.upstream, None
        if up is not None:
            if result == "answered":
                self.ctx.pool.release(up)  # (one more request served on it)
            else:
                up.exchange = None
                up.abort()
        self.registry.discard(self)
        self.finished(result)

    def finished(self, result: str) -> None:
        """`answered` (the whole answer was read) or `failed` (no connection, broken, or out of time)."""

    # --- what the upstream connection calls ----------------------------------------------
    def cork(self) -> None:
        return None

    def uncork(self) -> None:
        pass

    def on_response_head(self, status: int, headers: list, upgrade: bool) -> None:
        if upgrade:
            self._finish("failed")  # the router's own requests never ask to upgrade
        elif self.head and not 100 <= status < 200:
            self.upstream.reset_parser()  # the parser cannot know a HEAD answer has no body
            self._finish("answered")

    def on_response_body(self, data: bytes) -> None:
        pass

    def on_response_end(self) -> None:
        self._finish("answered")

    def on_upstream_lost(self, exc) -> None:
        self.upstream = None
        self._finish("failed")

    def on_upstream_error(self, reason: str) -> None:
        self.upstream = None
        self._finish("failed")

    def on_upstream_pause_writing(self) -> None:
        pass

    def on_upstream_resume_writing(self) -> None:
        pass

    def on_upgraded(self, rest: bytes) -> None:
        self._finish("failed")

    def on_tunnel_data(self, data: bytes) -> None:
        pass
