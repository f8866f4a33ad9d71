"""A route's own timeouts on real sockets: the whole-request deadline before and after the response
head, the per-try timeout of one route, and an HTTPRoute's 0s turning the Router's per-try timeout off."""
import asyncio
import socket

from aiohttp import web

from tests.conftest import (cluster_docs, httproute_doc, raw_request, read_until_close, response_of, router_doc,
                            serve_app, split_doc, wait_for)


def timed_split(weights: dict, name: str, hosts: list[str], **timeouts: str) -> str:
    lines = "".join(f"    {k}: {v}\n" for k, v in timeouts.items())
    return split_doc(weights, name, hosts) + "  timeouts:\n" + lines


async def timed_get(port: int, host: str, path: str = "/x") -> tuple[float, bytes]:
    loop = asyncio.get_running_loop()
    t = loop.time()
    raw = await raw_request(port, f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    return loop.time() - t, raw


async def test_request_timeout_answers_504_at_the_deadline_and_replaces_upstream_header(backends, router):
    slow, = await backends("a")
    slow.delay_s = 0.5
    docs = cluster_docs({"a": slow.port})
    app = await router(docs + timed_split({"a": 1}, "short", ["short"], request="200ms")
                       + timed_split({"a": 1}, "long", ["long"], request="3s")
                       + split_doc({"a": 1}, "plain", ["plain"])
                       + router_doc(timeouts={"upstreamHeader": "300ms"}))
    took, raw = await timed_get(app.port, "short")
    status, headers, body = response_of(raw)
    assert status == 504 and b"request timeout (0.2s)" in body, raw
    assert 0.18 <= took < 0.45  # at the route's 200 ms, not the Router's 300 ms, nor the answer's 500 ms
    # A longer route timeout replaces upstreamHeader for that route: the 500 ms answer arrives.
    took, raw = await timed_get(app.port, "long")
    assert raw.startswith(b"HTTP/1.1 200") and raw.endswith(b"a:0"), raw
    # A route without timeouts keeps the Router's upstreamHeader.
    took, raw = await timed_get(app.port, "plain")
    assert raw.startswith(b"HTTP/1.1 504") and b"within 0.3s" in raw, raw
    assert 0.28 <= took < 0.5
    timeouts = {r["name"]: r["timeouts"] for r in app.state()["routes"]}
    assert timeouts == {"short": {"request_s": 0.2, "per_try_s": None, "hedge": False},
                        "long": {"request_s": 3.0, "per_try_s": None, "hedge": False}, "plain": None}


async def test_request_timeout_mid_body_aborts_the_client_connection(router):
    async def stalling(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Length": "100"})
        await resp.prepare(request)
        await resp.write(b"x" * 10)
        await asyncio.sleep(2)  # the rest would come long after the route's deadline
        try:
            await resp.write(b"x" * 90)
        except ConnectionError:  # the router has let go of this connection
            pass
        return resp

    app_ = web.Application()
    app_.router.add_get("/{tail:.*}", stalling)
    runner, port = await serve_app(app_)
    try:
        app = await router(cluster_docs({"a": port}) + timed_split({"a": 1}, "s", ["h"], request="300ms"))
        loop = asyncio.get_running_loop()
        reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
        t = loop.time()
        writer.write(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n")
        raw = await read_until_close(reader, 3)
        took = loop.time() - t
        writer.close()
        status, headers, body = response_of(raw)
        assert status == 200 and headers["content-length"] == "100"
        assert body == b"x" * 10  # cut short, and the connection closed: never a complete-looking answer
        assert 0.28 <= took < 1.5
        app.ctx.metrics.flush()
        assert app.ctx.metrics.requests.labels("a", "504", "s")._value.get() == 1
    finally:
        await runner.cleanup()


async def test_route_per_try_timeout_retries_elsewhere_only_on_its_route(backends, router):
    slow, fast = await backends("a", "b")
    slow.delay_s = 0.6
    docs = cluster_docs({"a": slow.port, "b": fast.port})
    weights = {"a": 1, "b": 0.0001}  # a is chosen first
    app = await router(docs + timed_split(weights, "retried", ["retried"], perTry="150ms", request="2s")
                       + split_doc(weights, "plain", ["plain"]))
    took, raw = await timed_get(app.port, "retried")
    assert raw.startswith(b"HTTP/1.1 200") and b"x-router-cluster: b" in raw, raw
    assert took < 0.5
    took, raw = await timed_get(app.port, "plain")  # no perTry here: a's slow answer
    assert raw.startswith(b"HTTP/1.1 200") and b"x-router-cluster: a" in raw, raw


async def test_httproute_zero_backend_request_turns_the_routers_per_try_off(backends, router):
    slow, fast = await backends("a", "b")
    slow.delay_s = 0.5
    route = httproute_doc("""\
          - matches: [{path: {value: /patient}}]
            timeouts: {request: 0s, backendRequest: 0s}
            backendRefs: [{name: a, weight: 1000000}, {name: b, weight: 1}]
          - matches: [{path: {value: /}}]
            timeouts: {request: 2s, backendRequest: 150ms}
            backendRefs: [{name: a, weight: 1000000}, {name: b, weight: 1}]
        """, ["web"])
    app = await router(cluster_docs({"a": slow.port, "b": fast.port}) + route
                       + router_doc(timeouts={"perTry": "150ms"}))
    took, raw = await timed_get(app.port, "web", "/patient")
    assert raw.startswith(b"HTTP/1.1 200") and b"x-router-cluster: a" in raw, raw  # waited for a's answer
    assert took >= 0.45
    took, raw = await timed_get(app.port, "web", "/other")
    assert raw.startswith(b"HTTP/1.1 200") and b"x-router-cluster: b" in raw, raw
    await wait_for(lambda: len(slow.seen) == 2, what="a saw both first tries")


async def test_request_timeout_runs_while_connecting(router):
    # A listener whose accept queue is full drops further SYNs: the router's connect hangs (its connect
    # timeout is 2 s), and the route's 300 ms deadline answers first.
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(0)
    fillers = []
    try:
        for _ in range(3):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(srv.getsockname())
            fillers.append(s)
        app = await router(cluster_docs({"a": srv.getsockname()[1]})
                           + timed_split({"a": 1}, "s", ["h"], request="300ms"))
        took, raw = await timed_get(app.port, "h")
        assert raw.startswith(b"HTTP/1.1 504") and b"request timeout (0.3s)" in raw, raw
        assert 0.28 <= took < 1.5
    finally:
        for s in fillers:
            s.close()
        srv.close()
