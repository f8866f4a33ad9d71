"""HTTPRoute header, query parameter and method matches on real sockets, with the Gateway API's
precedence between rules that share a path."""
import asyncio

from tests.conftest import cluster_docs, httproute_doc, keepalive_answers, read_response, split_doc


async def test_requests_go_by_their_headers_query_and_method(backends, router):
    a, b, c = await backends("a", "b", "c")
    route = httproute_doc("""\
        - matches: [{headers: [{name: X-Canary, value: "yes"}]}]
          backendRefs: [{name: b}]
        - matches: [{method: POST}]
          backendRefs: [{name: c}]
        - matches: [{path: {value: /api}, queryParams: [{name: v, value: "2"}]}]
          backendRefs: [{name: b}]
        - matches: [{path: {value: /ws}, headers: [{name: Upgrade, value: websocket}]}]
          backendRefs: [{name: c}]
        - backendRefs: [{name: a}]
        """, ["web"])
    app = await router(cluster_docs({"a": a.port, "b": b.port, "c": c.port}) + route)
    assert app.ctx.snapshot.by_host is None  # the route depends on more than the Host

    cases = [(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n", "a"),
             (b"GET / HTTP/1.1\r\nHost: web\r\nX-Canary: yes\r\n\r\n", "b"),
             (b"GET /x HTTP/1.1\r\nHost: web\r\nx-canary: yes\r\n\r\n", "b"),  # names without case
             (b"GET / HTTP/1.1\r\nHost: web\r\nX-Canary: Yes\r\n\r\n", "a"),  # values exactly
             (b"POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 0\r\n\r\n", "c"),
             # a method condition ranks above header conditions
             (b"POST / HTTP/1.1\r\nHost: web\r\nX-Canary: yes\r\nContent-Length: 0\r\n\r\n", "c"),
             (b"GET /api?v=2 HTTP/1.1\r\nHost: web\r\n\r\n", "b"),
             (b"GET /api/x?x=1&v=2 HTTP/1.1\r\nHost: web\r\n\r\n", "b"),
             (b"GET /api?v=2&v=3 HTTP/1.1\r\nHost: web\r\n\r\n", "b"),  # the first of a name counts
             (b"GET /api?v=3&v=2 HTTP/1.1\r\nHost: web\r\n\r\n", "a"),
             (b"GET /api?v=%32 HTTP/1.1\r\nHost: web\r\n\r\n", "b"),  # decoded
             (b"GET /apix?v=2 HTTP/1.1\r\nHost: web\r\n\r\n", "a"),
             (b"GET /ws HTTP/1.1\r\nHost: web\r\nUpgrade: h2c\r\nConnection: upgrade\r\n\r\n", "a")]
    reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
    try:
        for request, expected in cases:  # one keep-alive connection: each request routed on its own
            writer.write(request)
            status, headers, _ = await read_response(reader)
            assert (status, headers["x-router-cluster"]) == (200, expected), request
    finally:
        writer.close()
    # a header the router reads itself (Upgrade) can be matched on too
    reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
    try:
        writer.write(b"GET /ws HTTP/1.1\r\nHost: web\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n")
        status, headers, _ = await read_response(reader)
        assert (status, headers["x-router-cluster"]) == (200, "c")
    finally:
        writer.close()


async def test_trafficsplit_match_sends_a_canary_by_header(backends, router):
    a, b = await backends("a", "b")
    canary = split_doc({"b": 1}, "canary", ["shop"]) + '  match: {headers: [{name: X-Canary, value: "1"}]}\n'
    app = await router(cluster_docs({"a": a.port, "b": b.port}) + split_doc({"a": 1}, "main", ["shop"]) + canary)
    reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
    try:
        for extra, expected in ((b"", "a"), (b"X-Canary: 1\r\n", "b"), (b"X-Canary: 0\r\n", "a")):
            writer.write(b"GET / HTTP/1.1\r\nHost: shop\r\n" + extra + b"\r\n")
            status, headers, _ = await read_response(reader)
            assert (status, headers["x-router-cluster"]) == (200, expected), extra
    finally:
        writer.close()
    assert [r["match"] for r in app.state()["routes"]] == [
        None, {"headers": (("x-canary", "1"),), "query": (), "method": None, "header_patterns": (),
               "query_patterns": ()}]


async def test_regular_expression_matches_route_in_linear_time(backends, router):
    a, b, c = await backends("a", "b", "c")
    rules = """\
        - matches: [{path: {type: RegularExpression, value: "/v[0-9]+/items/[^/]+"}}]
          backendRefs: [{name: a}]
        - matches: [{headers: [{name: X-Client, type: RegularExpression, value: "(a+)+b"}]},
                    {queryParams: [{name: tag, type: RegularExpression, value: "beta-[0-9]{2}"}]}]
          backendRefs: [{name: b}]
        - backendRefs: [{name: c}]
        """
    app = await router(cluster_docs({"a": a.port, "b": b.port, "c": c.port}) + httproute_doc(rules, ["shop"]))

    async def cluster_for(path: str, extra: str = "") -> str:
        return (await keepalive_answers(app.port, 1, "shop", path, extra))[0][0]
    assert await cluster_for("/v2/items/7") == "a"
    assert await cluster_for("/v2/items/7/reviews") == "c"  # the whole path must match
    assert await cluster_for("/vx/items/7") == "c"
    assert await cluster_for("/", "X-Client: aaab\r\n") == "b"
    assert await cluster_for("/?tag=beta-12") == "b" and await cluster_for("/?tag=beta-123") == "c"
    # a value that makes a backtracking engine take exponential time ((a+)+b over a run of a's without the b)
    loop = asyncio.get_running_loop()
    t = loop.time()
    assert await cluster_for("/", "X-Client: " + "a" * 4000 + "\r\n") == "c"
    assert loop.time() - t < 1.0
    (state,) = [r for r in app.state()["routes"] if r["name"] == "web/rule0"]
    assert state["pathRegex"] == "/v[0-9]+/items/[^/]+"


async def test_smi_route_group_matches_send_a_segment_to_its_split(backends, router):
    """An SMI A/B test: Firefox users, and insiders reading under /api, go to b; everyone else to the root
    split's a (SMI's root service)."""
    a, b = await backends("a", "b")
    docs = cluster_docs({"a": a.port, "b": b.port}) + """---
apiVersion: specs.smi-spec.io/v1alpha4
kind: HTTPRouteGroup
metadata: {name: ab-test}
spec:
  matches:
  - name: firefox-users
    headers: {user-agent: ".*Firefox.*"}
  - name: insiders
    pathRegex: /api
    methods: [GET]
    headers: {cookie: "(.*; )?type=insider(;.*)?"}
---
apiVersion: split.smi-spec.io/v1alpha4
kind: TrafficSplit
metadata: {name: ab}
spec:
  service: shop
  matches: [{kind: HTTPRouteGroup, name: ab-test}]
  backends: [{service: b, weight: 1}]
""" + split_doc({"a": 1}, "root", ["shop"])
    app = await router(docs)
    insider = b"Cookie: lang=en; type=insider\r\n"
    cases = [(b"GET / HTTP/1.1\r\nHost: shop\r\n\r\n", "a"),
             (b"GET / HTTP/1.1\r\nHost: shop\r\nUser-Agent: Mozilla/5.0 Firefox/133.0\r\n\r\n", "b"),
             (b"GET / HTTP/1.1\r\nHost: shop\r\nUser-Agent: Mozilla/5.0 Chrome/131.0\r\n\r\n", "a"),
             (b"GET /api/cart HTTP/1.1\r\nHost: shop\r\n" + insider + b"\r\n", "b"),  # anchored at the start only
             (b"GET /api HTTP/1.1\r\nHost: shop\r\n" + insider + b"\r\n", "b"),
             (b"GET /v2/api HTTP/1.1\r\nHost: shop\r\n" + insider + b"\r\n", "a"),
             (b"POST /api HTTP/1.1\r\nHost: shop\r\nContent-Length: 0\r\n" + insider + b"\r\n", "a"),
             (b"GET /api HTTP/1.1\r\nHost: shop\r\nCookie: type=outsider\r\n\r\n", "a")]
    reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
    try:
        for request, expected in cases:
            writer.write(request)
            status, headers, _ = await read_response(reader)
            assert (status, headers["x-router-cluster"]) == (200, expected), request
    finally:
        writer.close()
