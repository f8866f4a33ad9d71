"""A Cluster's maxRequestsPerConnection and maxConnectionAge on real sockets: a pooled connection to the
cluster is closed once it has carried that many requests or grown that old, and the next request opens a
new one (which a load balancer in front of the cluster may send to a new ingress replica)."""
import asyncio
import time

from aiohttp import web

from tests.conftest import Backend, cluster_docs, keepalive_answers, router_doc, split_doc, wait_for


async def port_reporting_cluster() -> Backend:
    """A cluster whose answers name the router's source port: one port per upstream connection."""
    backend = Backend("a")

    async def handle(request: web.Request) -> web.Response:
        backend.seen.append(request)
        return web.Response(text="a", headers={"X-Peer-Port": str(request.transport.get_extra_info("peername")[1])})
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return await backend.start(app)


def config(port: int, spec: str = "", router: str = "") -> str:
    return cluster_docs({"a": port}).rstrip("\n") + spec + "\n" + split_doc({"a": 1}, "s") + router


async def peer_ports(port: int, n: int) -> list[str]:
    return [headers["x-peer-port"] for _, headers in await keepalive_answers(port, n)]


async def test_a_connection_carries_at_most_max_requests(router):
    a = await port_reporting_cluster()
    try:
        app = await router(config(a.port, "\n  maxRequestsPerConnection: 3"))
        ports = await peer_ports(app.port, 9)
        assert [ports.count(p) for p in dict.fromkeys(ports)] == [3, 3, 3]  # three connections, one after another
        assert app.metrics.upstream_recycled.labels("requests")._value.get() == 3
        assert app.state()["clusters"]["a"]["max_requests_per_connection"] == 3
        plain = await router(config(a.port))
        assert len(set(await peer_ports(plain.port, 9))) == 1  # without the limit: one pooled connection
    finally:
        await a.stop()


async def test_a_connection_is_closed_at_its_age_busy_or_idle(router):
    a = await port_reporting_cluster()
    try:
        app = await router(config(a.port, "\n  maxConnectionAge: 300ms", router_doc(timeouts={"upstreamIdle": "2s"})))
        reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
        try:
            async def ask() -> str:
                writer.write(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
                head = await reader.readuntil(b"\r\n\r\n")
                await reader.readexactly(1)  # the body, "a"
                return head.decode().lower().split("x-peer-port: ")[1].split("\r\n")[0]
            start, first = time.monotonic(), await ask()
            later = first
            while later == first and time.monotonic() - start < 5:  # busy: a request after another
                later = await ask()
            # changed, and not before its age (less the event loop's clock granularity: it caches the time)
            assert later != first and time.monotonic() - start >= 0.28
        finally:
            writer.close()
        # idle: the pool's sweep closes it at its age, well before upstreamIdle
        pool, key = app.ctx.pool, app.ctx.snapshot.named["s"].backends[0].pool_key
        assert pool.idle_count(key) == 1
        t = time.monotonic()
        await wait_for(lambda: pool.idle_count(key) == 0, timeout_s=2, what="the aged idle connection closed")
        assert time.monotonic() - t < 1.5
        assert app.metrics.upstream_recycled.labels("age")._value.get() >= 2
    finally:
        await a.stop()
