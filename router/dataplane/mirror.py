"""Request mirroring (a route's `mirror`, HTTPRoute's RequestMirror filter): once a request has been read
whole and sent to its cluster, a copy goes to the mirror cluster and its answer is read and dropped.

The copy never delays, changes or fails the client's exchange: it has its own upstream connection (from
the same pool), and a copy that cannot connect, breaks, or is not answered within `upstreamHeader` is
dropped. What happened to each is counted in router_mirrored_requests_total{cluster,result}: `answered`,
`failed`, or `skipped` (its body was over the 64 KiB the router keeps of a request, or MAX_IN_FLIGHT
copies were already out). The mirror cluster's health and RTT are not fed by copies.
"""
from __future__ import annotations

import asyncio

from .headers import forwarding_headers

MAX_IN_FLIGHT = 256  # copies out at once per process


class MirrorCopy:
    """Stands in for an Exchange toward the mirror's upstream connection: the protocol calls the same
    methods on it (and cork/uncork on its `conn`, which is itself); the answer is dropped."""
    __slots__ = ("ctx", "cluster", "head", "upstream", "timer", "task", "done", "conn", "resp_started")

    def __init__(self, ctx, cluster: str, head_only: bool):
        self.ctx, self.cluster = ctx, cluster
        self.head = head_only  # a HEAD request: the answer ends with its head
        self.upstream = None
        self.timer: asyncio.TimerHandle | None = None
        self.task: asyncio.Task | None = None
        self.done = False
        self.conn = self
        self.resp_started = False  # the client exchanges' body-stall timer is not ours

    def send(self, backend, data: bytes) -> None:
        ctx = self.ctx
        ctx.mirrors.add(self)
        self.timer = ctx.loop.call_later(ctx.settings.timeouts.upstream_header_s, self._finish, "failed")
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
        """The router is stopping: drop the copy now."""
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
        self.ctx.mirrors.discard(self)
        self.ctx.metrics.mirrored.labels(self.cluster, result).inc()

    # --- what the upstream connection calls ----------------------------------------------
    def cork(self) -> None:
        return None

    def uncork(self) -> None:
        pass

    def on_response_head(self, status: int, headers: list, upgrade: bool) -> None:
        if upgrade:
            self._finish("failed")  # a copy never asks to upgrade
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


def mirror_request(ex) -> None:
    """Copy the request of exchange `ex` (read whole, and sent to its cluster) to its route's mirror
    cluster, for the route's percent of requests: the head as the cluster got it, the body re-framed
    with a Content-Length."""
    backend, percent = ex.route.mirror
    ctx, req, client = ex.ctx, ex.req, ex.conn
    if percent < 100.0 and ctx.rng.random() * 100.0 >= percent:
        return
    if ex.kept is None or len(ctx.mirrors) >= MAX_IN_FLIGHT:  # the body was not kept whole; too many out
        ctx.metrics.mirrored.labels(backend.cluster, "skipped").inc()
        return
    body = b"".join(ex.kept)
    parts = ex.changed_request_lines()
    parts.append(forwarding_headers(req.facts, client.client_ip_bytes, client.forwarded_node, client.trusted(),
                                    ctx.via, False, ctx.scheme, client.client_cert))
    if body or req.facts["content_length"] is not None or req.facts["chunked"]:
        parts.append(b"Content-Length: %d\r\n" % len(body))
    parts += (b"\r\n", body)
    MirrorCopy(ctx, backend.cluster, req.method == b"HEAD").send(backend, b"".join(parts))
