"""Cluster spec.preconnect: idle connections opened ahead of requests, taken by the first requests,
replaced when the cluster closes them, and none opened to a cluster out of rotation."""
import asyncio

from tests.conftest import raw_request, response_of, router_doc, split_doc, wait_for


class CountingUpstream:
    """A keep-alive HTTP/1.1 server that numbers its connections and says which one served a request."""

    def __init__(self):
        self.accepted = 0
        self.open: set = set()
        self.server = None
        self.port = 0

    async def start(self) -> "CountingUpstream":
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        number = self.accepted
        self.open.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if not head:
                    return
                body = f"conn {number}".encode()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.open.discard(writer)
            writer.close()

    def close_all(self) -> None:
        for writer in list(self.open):
            writer.close()

    async def stop(self) -> None:
        self.close_all()
        self.server.close()
        await self.server.wait_closed()


def cluster_doc(name: str, port: int, preconnect: int) -> str:
    return (f"---\napiVersion: edge.router/v1alpha1\nkind: Cluster\n"
            f"metadata: {{name: {name}, labels: {{region: {name}}}}}\n"
            f"spec: {{endpoint: 'http://127.0.0.1:{port}', preconnect: {preconnect}}}\n")


async def test_connections_wait_for_the_first_requests_and_are_replaced(router):
    up = await CountingUpstream().start()
    try:
        app = await router(cluster_doc("a", up.port, 2) + split_doc({"a": 1}) +
                           router_doc(timeouts={"upstreamIdle": "60s"}))
        app.preconnector.tick_s = 0.05
        await wait_for(lambda: up.accepted == 2 and len(up.open) == 2, what="two connections before any request")
        state = app.state()["clusters"]["a"]
        assert state["preconnect"] == 2 and state["idle_connections"] == 2
        raw = await raw_request(app.port, b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        status, _, body = response_of(raw)
        assert status == 200 and body in (b"conn 1", b"conn 2")  # a connection opened before the request came
        assert up.accepted == 2  # and none opened for it
        # the cluster closes its idle connections (a restart of its ingress): the router opens new ones
        up.close_all()
        await wait_for(lambda: up.accepted == 4 and len(up.open) == 2, what="two new connections")

        def counts():  # (the upstream sees a connection a moment before the router's connect returns and counts it)
            return {s.labels["result"]: s.value for m in app.metrics.registry.collect()
                    if m.name == "router_upstream_preconnects" for s in m.samples if s.name.endswith("_total")}
        await wait_for(lambda: counts() == {"ok": 4.0}, timeout_s=2, what="four preconnects counted")
        assert counts() == {"ok": 4.0}
    finally:
        await up.stop()


async def test_no_connections_to_a_cluster_out_of_rotation(router):
    up = await CountingUpstream().start()
    try:
        app = await router(cluster_doc("a", up.port, 3) + split_doc({"a": 1}))
        # ejected for 30 s before the loop's first tick (the router's start returned without yielding)
        app.ctx.health.on_connect_failure("a", app.ctx.clock(), "connect refused")
        for _ in range(3):
            assert app.preconnector.tick() == {}
        assert not app.preconnector.tasks and up.accepted == 0
        for ok in (False, True, True):  # the probes saw it down, then pass twice: back in rotation
            app.ctx.health.on_probe("a", ok, app.ctx.clock())
        assert app.preconnector.tick() == {"a": 3}
        await wait_for(lambda: up.accepted == 3, what="three connections once it is back")
    finally:
        await up.stop()
