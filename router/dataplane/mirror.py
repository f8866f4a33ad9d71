"""Request mirroring (a route's `mirror` or `mirrors`, HTTPRoute's RequestMirror filters): once a request has
been read whole and sent to its cluster, a copy goes to each mirror cluster and its answer is read and dropped.

The copy never delays, changes or fails the client's exchange: it has its own upstream connection (from
the same pool), and a copy that cannot connect, breaks, or is not answered within `upstreamHeader` is
dropped. What happened to each is counted in router_mirrored_requests_total{cluster,result}: `answered`,
`failed`, or `skipped` (its body was over limits.maxBuffered, what the router keeps of a mirrored request's
body, or MAX_IN_FLIGHT copies were already out). The mirror cluster's health and RTT are not fed by copies.
"""
from __future__ import annotations

from .side import SideRequest

MAX_IN_FLIGHT = 256  # copies out at once per process


class MirrorCopy(SideRequest):
    """A copy on its way to the mirror cluster; its answer is read and dropped."""
    __slots__ = ()

    def finished(self, result: str) -> None:
        self.ctx.metrics.mirrored.labels(self.cluster, result).inc()


def keep_for_mirrors(ex, chunks) -> None:
    """Body bytes of exchange `ex` as they first arrive (a retry's replay is not new), kept for its route's
    mirror copies up to limits.maxBuffered: a larger body is not copied."""
    for data in chunks:
        ex.mirror_len += len(data)
    if ex.mirror_len > ex.ctx.settings.limits.max_buffered_bytes:
        ex.mirror_body = None
    else:
        ex.mirror_body.extend(chunks)


def mirror_request(ex) -> None:
    """Copy the request of exchange `ex` (read whole, and sent to its cluster) to each of its route's
    mirror clusters, for that mirror's percent of requests (a draw each): the head as the cluster got it
    with the route's changes, the body re-framed with a Content-Length."""
    ctx, req = ex.ctx, ex.req
    copy_bytes = None
    for backend, percent in ex.route.mirrors:
        if percent < 100.0 and ctx.rng.random() * 100.0 >= percent:
            continue
        if ex.mirror_body is None or len(ctx.mirrors) >= MAX_IN_FLIGHT:  # the body was too big; too many out
            ctx.metrics.mirrored.labels(backend.cluster, "skipped").inc()
            continue
        if copy_bytes is None:  # made once for all the mirrors
            body = b"".join(ex.mirror_body)
            parts = ex.changed_request_lines(own=False)  # the route's changes, not those of the cluster it chose
            parts.append(ex.forwarding_lines())
            if body or req.facts["content_length"] is not None or req.facts["chunked"]:
                parts.append(b"Content-Length: %d\r\n" % len(body))
            parts += (b"\r\n", body)
            copy_bytes = b"".join(parts)
        copy = MirrorCopy(ctx, backend.cluster, req.method == b"HEAD", ctx.mirrors)
        copy.send(backend, copy_bytes, ctx.settings.timeouts.upstream_header_s)
