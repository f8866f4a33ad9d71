"""CORS on real sockets: the router answers a browser's preflight from the route's policy (nothing of it
reaches a cluster, so no cold start for a question), writes the Access-Control-* fields of actual
responses in place of a cluster's own, and gives them to its own answers too."""
import asyncio

from aiohttp import web

from tests.conftest import Backend, cluster_docs, httproute_doc, read_response, split_doc

ORIGIN = "https://app.example.com"


async def ask(port: int, request: str) -> tuple[int, list[tuple[str, str]], bytes]:
    """One request on its own connection: status, every header line (name lowercase, in order), body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request.encode())
        return await read_response_lines(reader)
    finally:
        writer.close()


async def read_response_lines(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    pairs = [(k.strip().lower(), v.strip()) for k, _, v in (line.partition(":") for line in lines[1:] if line)]
    length = int(dict(pairs).get("content-length", "0"))
    return int(lines[0].split()[1]), pairs, await reader.readexactly(length)


def values(pairs, name: str) -> list[str]:
    return [v for k, v in pairs if k == name]


def preflight(origin: str, method: str = "PUT", headers: str = "", host: str = "api", path: str = "/items") -> str:
    extra = f"Access-Control-Request-Headers: {headers}\r\n" if headers else ""
    return (f"OPTIONS {path} HTTP/1.1\r\nHost: {host}\r\nOrigin: {origin}\r\n"
            f"Access-Control-Request-Method: {method}\r\n{extra}\r\n")


def with_cors(ports: dict, cors: str) -> str:
    return cluster_docs(ports) + split_doc({n: 1 for n in ports}, "api", ["api"]) + f"  cors: {cors}\n"


async def own_cors_cluster() -> Backend:
    """A cluster that writes its own Access-Control-Allow-Origin and Vary (the route's policy replaces the first)."""
    backend = Backend("a")

    async def handle(request: web.Request) -> web.Response:
        backend.seen.append(request)
        return web.Response(text="a", headers={"Access-Control-Allow-Origin": "*", "Vary": "Accept-Encoding"})
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return await backend.start(app)


async def test_a_preflight_is_answered_by_the_router_and_never_reaches_a_cluster(router):
    a = await own_cors_cluster()
    try:
        app = await router(with_cors({"a": a.port}, f'{{allowOrigins: ["{ORIGIN}", "https://*.example.org"], '
                                     'allowMethods: [GET, PUT], allowHeaders: [X-A, X-B], exposeHeaders: [X-Trace], '
                                     'allowCredentials: true, maxAge: 600}'))
        status, pairs, body = await ask(app.port, preflight(ORIGIN, headers="x-a"))
        assert (status, body) == (200, b"")
        assert values(pairs, "access-control-allow-origin") == [ORIGIN]
        assert values(pairs, "access-control-allow-credentials") == ["true"]
        assert values(pairs, "access-control-allow-methods") == ["GET, PUT"]
        assert values(pairs, "access-control-allow-headers") == ["X-A, X-B"]
        assert values(pairs, "access-control-expose-headers") == ["X-Trace"]
        assert values(pairs, "access-control-max-age") == ["600"]
        assert values(pairs, "vary") == ["Origin"]
        for origin in ("https://a.b.example.org", "https://app.example.com:443"):
            status, pairs, _ = await ask(app.port, preflight(origin))
            assert status == 200 and values(pairs, "access-control-allow-origin") == [origin]
        for origin in ("https://example.org", "https://app.example.com:8443", "http://app.example.com", "null"):
            status, pairs, body = await ask(app.port, preflight(origin))
            assert status == 403 and not values(pairs, "access-control-allow-origin"), origin
            assert b"origin the route does not allow" in body
        assert a.seen == []  # not one of them reached the cluster
        # An OPTIONS that asks nothing of CORS (no Access-Control-Request-Method) is the cluster's to answer.
        status, pairs, _ = await ask(app.port, f"OPTIONS /items HTTP/1.1\r\nHost: api\r\nOrigin: {ORIGIN}\r\n\r\n")
        assert status == 200 and values(pairs, "x-router-cluster") == ["a"] and len(a.seen) == 1
        (state,) = app.state()["routes"]
        assert list(state["cors"]["origins"]) == [ORIGIN, "https://*.example.org"] and state["cors"]["max_age_s"] == 600
        counted = app.metrics.cors_preflights
        assert (counted.labels("api", "allowed")._value.get(), counted.labels("api", "refused")._value.get()) == (3, 4)
    finally:
        await a.stop()


async def test_actual_responses_carry_the_routes_fields_in_place_of_the_clusters(router):
    a = await own_cors_cluster()
    try:
        app = await router(with_cors({"a": a.port}, f'{{allowOrigins: ["{ORIGIN}"], exposeHeaders: [X-Trace]}}'))
        get = "GET /items HTTP/1.1\r\nHost: api\r\n{}\r\n"
        status, pairs, _ = await ask(app.port, get.format(f"Origin: {ORIGIN}\r\n"))
        assert status == 200 and values(pairs, "x-router-cluster") == ["a"]
        assert values(pairs, "access-control-allow-origin") == [ORIGIN]  # one: the cluster's "*" is dropped
        assert values(pairs, "access-control-expose-headers") == ["X-Trace"]
        assert not values(pairs, "access-control-allow-credentials")
        assert values(pairs, "vary") == ["Accept-Encoding", "Origin"]  # the cluster's Vary stays
        for origin_line in ("Origin: https://evil.example\r\n", ""):
            status, pairs, _ = await ask(app.port, get.format(origin_line))
            assert status == 200 and not values(pairs, "access-control-allow-origin")
            assert values(pairs, "vary") == ["Accept-Encoding", "Origin"]
        assert len(a.seen) == 3
    finally:
        await a.stop()


async def test_the_routers_own_answers_carry_them_too(backends, router):
    # a cluster nobody listens on: the router's 502 must be readable by the page that asked
    app = await router(cluster_docs({"gone": 1}) + split_doc({"gone": 1}, "api", ["api"])
                       + f'  cors: {{allowOrigins: ["{ORIGIN}"]}}\n')
    status, pairs, body = await ask(app.port, f"GET / HTTP/1.1\r\nHost: api\r\nOrigin: {ORIGIN}\r\n\r\n")
    assert status == 502 and values(pairs, "access-control-allow-origin") == [ORIGIN], (status, pairs, body)
    assert values(pairs, "vary") == ["Origin"]


async def test_every_origin_is_a_star_and_credentials_echo_the_request(backends, router):
    a, = await backends("a")
    app = await router(with_cors({"a": a.port}, '{allowOrigins: ["*"], allowMethods: ["*"], allowHeaders: ["*"]}'))
    status, pairs, _ = await ask(app.port, preflight("https://any.example:12345", "PATCH", "x-a"))
    assert status == 200
    assert [(k, v) for k, v in pairs if k.startswith("access-control")] == [
        ("access-control-allow-origin", "*"), ("access-control-allow-methods", "*"),
        ("access-control-allow-headers", "*"), ("access-control-max-age", "5")]
    status, pairs, _ = await ask(app.port, "GET / HTTP/1.1\r\nHost: api\r\n\r\n")  # no Origin: still "*"
    assert values(pairs, "access-control-allow-origin") == ["*"] and not values(pairs, "vary")

    creds = await router(with_cors({"a": a.port}, '{allowOrigins: ["*"], allowMethods: ["*"], allowHeaders: ["*"], '
                                                  'allowCredentials: true}'))
    status, pairs, _ = await ask(creds.port, preflight("https://any.example", "PATCH", "x-a, x-b"))
    assert values(pairs, "access-control-allow-origin") == ["https://any.example"]
    assert values(pairs, "access-control-allow-methods") == ["PATCH"]
    assert values(pairs, "access-control-allow-headers") == ["x-a, x-b"]
    assert values(pairs, "access-control-allow-credentials") == ["true"]
    assert a.seen == [a.seen[0]]  # only the GET went to the cluster


async def test_an_httproute_cors_filter_and_a_preflight_routed_as_the_request_it_asks_about(backends, router):
    a, b = await backends("a", "b")
    rules = f"""\
        - matches: [{{path: {{value: /items}}, method: PUT}}]
          filters: [{{type: CORS, cors: {{allowOrigins: ["{ORIGIN}"], allowMethods: [PUT]}}}}]
          backendRefs: [{{name: a}}]
        - matches: [{{path: {{value: /items}}}}]
          backendRefs: [{{name: b}}]
        """
    app = await router(cluster_docs({"a": a.port, "b": b.port}) + httproute_doc(rules, ["api"]))
    status, pairs, _ = await ask(app.port, preflight(ORIGIN, "PUT"))  # asks about a PUT: the PUT rule answers
    assert status == 200 and values(pairs, "access-control-allow-methods") == ["PUT"]
    status, pairs, _ = await ask(app.port, preflight(ORIGIN, "DELETE"))  # a DELETE goes to the other rule
    assert status == 200 and values(pairs, "x-router-cluster") == ["b"]
    assert not values(pairs, "access-control-allow-origin")
    reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
    try:
        writer.write(f"PUT /items HTTP/1.1\r\nHost: api\r\nOrigin: {ORIGIN}\r\nContent-Length: 0\r\n\r\n".encode())
        status, headers, _ = await read_response(reader)
    finally:
        writer.close()
    assert status == 200 and headers["x-router-cluster"] == "a" and headers["access-control-allow-origin"] == ORIGIN
    assert [r.method for r in a.seen] == ["PUT"] and [r.method for r in b.seen] == ["OPTIONS"]
