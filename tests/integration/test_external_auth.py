"""External authorization on real sockets: the route's authorization cluster is asked first (method,
prefixed path, Host, Authorization and the allowed headers, no body unless forwardBody asks for it); its
200 lets the request through with the granted fields, any other answer is the client's, and no answer is
a 503."""
import asyncio
import time

from aiohttp import web

from tests.conftest import Backend, cluster_docs, httproute_doc, read_response, router_doc, split_doc, wait_for
from tests.h2client import H2Client


async def auth_service() -> Backend:
    """Decides by the Authorization header, and records what it was asked."""
    backend = Backend("auth")

    async def handle(request: web.Request) -> web.Response:
        backend.seen.append(request)
        backend.bodies.append(await request.read())
        token = request.headers.get("Authorization", "")
        if token == "Bearer good":
            return web.Response(text="ok", headers={"X-User": "alice", "X-Extra": "1"})
        if token == "Bearer login":
            return web.Response(status=302, headers={"Location": "/login", "Set-Cookie": "next=/items"})
        if token == "Bearer boom":
            return web.Response(status=500, text="auth broke")
        if token == "Bearer slow":
            await asyncio.sleep(3)
        return web.Response(status=401, text="who are you", headers={"WWW-Authenticate": 'Bearer realm="edge"'})
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return await backend.start(app)


async def ask(port: int, request: bytes) -> tuple[int, dict, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        return await asyncio.wait_for(read_response(reader), 5)
    finally:
        writer.close()


def get(token: str, extra: str = "", path: str = "/items?q=1") -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: shop\r\nAuthorization: Bearer {token}\r\n{extra}\r\n").encode()


async def test_the_authorization_cluster_decides_before_the_request_is_routed(backends, router):
    app_cluster, = await backends("a")
    auth = await auth_service()
    try:
        app = await router(cluster_docs({"a": app_cluster.port, "auth": auth.port})
                           + split_doc({"a": 1}, "shop", ["shop"])
                           + "  externalAuth: {cluster: auth, path: /check, allowedHeaders: [Cookie], "
                             "allowedResponseHeaders: [X-User], timeout: 500ms}\n")
        status, headers, body = await ask(app.port, get("good", "Cookie: sid=1\r\nX-Secret: s\r\nX-User: mallory\r\n"))
        assert (status, headers["x-router-cluster"], body) == (200, "a", b"a:0")
        (check,) = auth.seen
        assert (check.method, check.path_qs) == ("GET", "/check/items?q=1")
        assert check.headers["Authorization"] == "Bearer good" and check.headers["Cookie"] == "sid=1"
        assert check.headers["Host"] == "shop" and "X-Forwarded-For" in check.headers
        assert "X-Secret" not in check.headers and "X-User" not in check.headers  # only what is allowed
        (seen,) = app_cluster.seen
        assert seen.headers.getall("X-User") == ["alice"]  # the client's own X-User is replaced
        assert "X-Extra" not in seen.headers and seen.headers["X-Secret"] == "s"

        status, headers, body = await ask(app.port, get("nope"))
        assert (status, body) == (401, b"who are you") and headers["www-authenticate"] == 'Bearer realm="edge"'
        status, headers, _ = await ask(app.port, get("login"))
        assert status == 302 and headers["location"] == "/login" and headers["set-cookie"] == "next=/items"
        status, _, body = await ask(app.port, get("boom"))
        assert status == 503 and body == b"authorization service unavailable (it answered 500)\n"
        t = time.monotonic()
        status, _, body = await ask(app.port, get("slow"))
        assert status == 503 and body == b"authorization service unavailable\n" and time.monotonic() - t < 2
        assert len(app_cluster.seen) == 1  # nothing denied or unanswered reached the cluster
        counted = app.metrics.external_auth
        assert [counted.labels("shop", r)._value.get() for r in ("allowed", "denied", "error")] == [1, 2, 2]
        (state,) = [r for r in app.state()["routes"] if r["name"] == "shop"]
        assert state["external_auth"]["cluster"] == "auth" and state["external_auth"]["timeout_s"] == 0.5
    finally:
        await auth.stop()


async def test_an_httproute_filter_takes_every_granted_field_and_the_body_waits(backends, router):
    app_cluster, = await backends("a")
    auth = await auth_service()
    try:
        rules = """\
            - filters: [{type: ExternalAuth, externalAuth: {protocol: HTTP, backendRef: {name: auth}}}]
              backendRefs: [{name: a}]
            """
        app = await router(cluster_docs({"a": app_cluster.port, "auth": auth.port}) + httproute_doc(rules, ["shop"]))
        body = b'{"item": 7}'
        status, _, answer = await ask(app.port, b"POST /cart HTTP/1.1\r\nHost: shop\r\nAuthorization: Bearer good\r\n"
                                                b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                                      % (len(body), body))
        assert (status, answer) == (200, b"a:11")
        (check,) = auth.seen
        assert (check.method, check.path, auth.bodies[0]) == ("POST", "/cart", b"")  # no body to the check
        (seen,) = app_cluster.seen
        assert seen.headers["X-User"] == "alice" and seen.headers["X-Extra"] == "1"
        # the check's own Content-Type (text/plain) describes its answer, not the request: not taken
        assert seen.headers["Content-Type"] == "application/json" and app_cluster.bodies == [body]
    finally:
        await auth.stop()


async def test_forward_body_sends_the_whole_body_with_the_check_and_on_to_the_cluster(backends, router):
    app_cluster, = await backends("a")
    auth = await auth_service()
    try:
        app = await router(cluster_docs({"a": app_cluster.port, "auth": auth.port})
                           + split_doc({"a": 1}, "shop", ["shop"])
                           + "  externalAuth: {cluster: auth, forwardBody: {maxSize: 1Ki}}\n")
        head = b"POST /cart HTTP/1.1\r\nHost: shop\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\n"
        body = b'{"item": 7, "signed": "abc"}'
        status, _, answer = await ask(app.port, head % b"good" + b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        assert (status, answer) == (200, b"a:%d" % len(body))
        assert auth.bodies == [body] and auth.seen[0].headers["Content-Type"] == "application/json"
        assert auth.seen[0].headers["Content-Length"] == str(len(body)) and app_cluster.bodies == [body]

        # chunked, arriving in pieces after the head: the check waits for all of it
        reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
        writer.write(head % b"good" + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await wait_for(lambda: any(c.active is not None and c.active.req.body_len == 5 for c in app.ctx.connections),
                       what="the first piece read")
        (waiting,) = [c.active for c in app.ctx.connections if c.active is not None]
        assert waiting.auth_waiting and len(auth.seen) == 1  # not asked yet: the body is not whole
        writer.write(b"6\r\n world\r\n0\r\n\r\n")
        status, _, answer = await asyncio.wait_for(read_response(reader), 5)
        writer.close()
        assert (status, auth.bodies[-1], app_cluster.bodies[-1]) == (200, b"hello world", b"hello world")

        # Expect: 100-continue: the router says continue itself, once, and the client's body follows
        reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
        writer.write(head % b"good" + b"Content-Length: 4\r\nExpect: 100-continue\r\n\r\n")
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"ping")
        status, _, answer = await asyncio.wait_for(read_response(reader), 5)
        writer.close()
        assert (status, auth.bodies[-1], app_cluster.bodies[-1]) == (200, b"ping", b"ping")

        # a body over maxSize is refused before anyone is asked; a denied one reaches no cluster
        asked, sent = len(auth.seen), len(app_cluster.seen)
        status, _, answer = await ask(app.port, head % b"good" + b"Content-Length: 2000\r\n\r\n" + b"x" * 2000)
        assert status == 413 and len(auth.seen) == asked
        status, _, answer = await ask(app.port, head % b"good" + b"Transfer-Encoding: chunked\r\n\r\n"
                                      + b"400\r\n" + b"x" * 1024 + b"\r\n1\r\nx\r\n0\r\n\r\n")
        assert status == 413 and len(auth.seen) == asked
        status, _, answer = await ask(app.port, head % b"nope" + b"Content-Length: 4\r\n\r\nping")
        assert status == 401 and auth.bodies[-1] == b"ping" and len(app_cluster.seen) == sent
    finally:
        await auth.stop()


async def test_forward_body_over_http2(backends, router):
    app_cluster, = await backends("a")
    auth = await auth_service()
    client = None
    try:
        app = await router(cluster_docs({"a": app_cluster.port, "auth": auth.port})
                           + split_doc({"a": 1}, "shop", ["shop"])
                           + "  externalAuth: {cluster: auth, forwardBody: {maxSize: 64Ki}}\n"
                           + router_doc(http2={"cleartext": True}))
        client = await H2Client.open(app.port)
        body = bytes(range(256)) * 200  # 51,200 bytes: four DATA frames
        got = await client.post("/upload", body, authority="shop", headers=[("authorization", "Bearer good")])
        assert got.status == 200 and bytes(got.data) == b"a:%d" % len(body)
        assert auth.bodies == [body] and app_cluster.bodies == [body]
        got = await client.post("/upload", b"x" * 70_000, authority="shop", headers=[("authorization", "Bearer good")])
        assert got.status == 413 and len(auth.seen) == 1
    finally:
        if client is not None:
            client.close()
        await auth.stop()


async def test_an_authorization_cluster_nobody_answers_fails_closed(backends, router):
    app_cluster, = await backends("a")
    app = await router(cluster_docs({"a": app_cluster.port, "auth": 1}) + split_doc({"a": 1}, "shop", ["shop"])
                       + "  externalAuth: {cluster: auth}\n")
    status, _, body = await ask(app.port, get("good"))
    assert (status, body) == (503, b"authorization service unavailable\n") and app_cluster.seen == []
