"""The proxy on real sockets: split, failover, headers, framing, streaming, upgrades, timeouts."""
import asyncio
import socket

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import (Backend, cluster_docs, keepalive_get, raw_request, raw_upstream, read_response,
                            read_until_close, response_of, router_doc, split_doc, statuses_of, wait_for)


def free_port_refusing() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


async def test_split_over_10000_requests_within_two_points(backends, router):
    bs = await backends("us-west", "eu-central", "ap-east")
    app = await router(cluster_docs({b.name: b.port for b in bs}) +
                       split_doc({"us-west": 45, "eu-central": 35, "ap-east": 20}))
    results = await asyncio.gather(*[keepalive_get(app.port, 1250) for _ in range(8)])
    counts = {}
    for status, headers, _ in (r for rs in results for r in rs):
        assert status == 200
        counts[headers["x-router-cluster"]] = counts.get(headers["x-router-cluster"], 0) + 1
    assert sum(counts.values()) == 10_000
    print("observed split over 10,000:", {k: v / 100 for k, v in counts.items()})
    for name, want in {"us-west": 45, "eu-central": 35, "ap-east": 20}.items():
        assert abs(counts[name] / 100 - want) <= 2, counts
    assert {b.name: len(b.seen) for b in bs} == counts


async def test_refused_cluster_is_retried_then_gets_no_traffic(backends, router):
    (good,) = await backends("eu-central")
    dead = free_port_refusing()
    app = await router(cluster_docs({"us-west": dead, "eu-central": good.port}) +
                       split_doc({"us-west": 90, "eu-central": 10}))
    results = await keepalive_get(app.port, 200)
    assert all(s == 200 and h["x-router-cluster"] == "eu-central" for s, h, _ in results)
    failures = app.metrics.connect_failures.labels("us-west")._value.get()
    assert failures == 1, "the refusing cluster must be ejected after its first failure"
    assert not app.ctx.health.is_healthy("us-west", app.ctx.clock())


async def test_every_cluster_down_is_a_prompt_502(router):
    app = await router(cluster_docs({"a": free_port_refusing(), "b": free_port_refusing()}) +
                       split_doc({"a": 1, "b": 1}))
    loop = asyncio.get_running_loop()
    t = loop.time()
    for _ in range(3):
        (status, headers, body), = await keepalive_get(app.port, 1)
        assert status == 502 and b"no healthy cluster" in body
    assert loop.time() - t < 2.0


async def test_cluster_request_limit_sends_the_rest_elsewhere_then_503(backends, router):
    a, b = await backends("a", "b")
    a.delay_s = b.delay_s = 0.5
    docs = cluster_docs({"a": a.port, "b": b.port}).replace(
        f"endpoint: http://127.0.0.1:{a.port}\n", f"endpoint: http://127.0.0.1:{a.port}\n  maxRequests: 2\n")
    app = await router(docs + split_doc({"a": 100, "b": 1}) + split_doc({"a": 1}, "only-a", hosts=["only-a"]))
    results = await asyncio.gather(*[keepalive_get(app.port, 1) for _ in range(6)])
    assert all(status == 200 for (status, _, _), in results), results
    assert len(a.seen) <= 2 and len(a.seen) + len(b.seen) == 6  # a held to 2 at once, b took the rest
    app.metrics.flush()
    assert app.metrics.decisions.labels("overflow")._value.get() >= 3

    async def get_only_a():
        return await raw_request(app.port, b"GET / HTTP/1.1\r\nHost: only-a\r\nConnection: close\r\n\r\n")
    answers = await asyncio.gather(*[get_only_a() for _ in range(4)])
    refused = [r for r in answers if r.startswith(b"HTTP/1.1 503")]
    assert len(refused) == 2 and all(b"route only-a is at its request limit" in r and b"Retry-After: 1" in r
                                     for r in refused), answers
    assert app.state()["clusters"]["a"]["max_requests"] == 2 and app.ctx.health.is_healthy("a", app.ctx.clock())


@pytest.mark.parametrize("streaming", [False, True], ids=["buffered", "streaming"])
async def test_tiny_request_chunks_are_coalesced_per_read(router, streaming):
    """A body sent as 4,096 one-byte chunks in one write reaches the cluster as a few chunks (one per
    read of the client's bytes), not 4,096 chunks and as many small packets across the WAN: whether
    it arrives before the upstream connection is ready (buffered) or after (streamed)."""
    got, head_seen = {}, asyncio.Event()

    async def handle(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        head_seen.set()
        chunks, body = 0, b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            data = await reader.readexactly(size + 2)
            if size == 0:
                break
            chunks, body = chunks + 1, body + data[:-2]
        got.update(chunks=chunks, body=body)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()
    async with raw_upstream(handle) as port:
        app = await router(cluster_docs({"a": port}) + split_doc({"a": 1}))
        body = bytes(range(256)) * 16
        head = b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        chunked = b"".join(b"1\r\n%c\r\n" % c for c in body) + b"0\r\n\r\n"
        reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
        try:
            if streaming:
                writer.write(head)
                await asyncio.wait_for(head_seen.wait(), 5)
                writer.write(chunked)
            else:
                writer.write(head + chunked)
            raw = await read_until_close(reader, 5)
        finally:
            writer.close()
        assert raw.startswith(b"HTTP/1.1 200"), raw
        assert got["body"] == body and got["chunks"] <= 10, got["chunks"]


async def test_forwarding_loop_is_stopped_at_the_second_pass(backends, router):
    """A Cluster whose endpoint is the router itself: the request comes back carrying this router's
    Via entry and is answered 508, instead of looping until connections or descriptors run out."""
    (b,) = await backends("a")
    app = await router(cluster_docs({"a": b.port}) + split_doc({"a": 1}))
    raw = await raw_request(app.port, b"GET / HTTP/1.1\r\nHost: h\r\nVia: 1.0 cdn, 1.1 other-proxy (x)\r\n"
                                      b"Connection: close\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 200") and b.seen[-1].headers.getall("Via") == [
        "1.0 cdn, 1.1 other-proxy (x)", "1.1 edge-router"], raw  # other proxies' entries pass
    await raw_request(app.port, b"GET / HTTP/1.0\r\nHost: h\r\n\r\n")
    assert b.seen[-1].headers.getall("Via") == ["1.0 edge-router"]  # the protocol it was received in
    (app.config_dir / "router.yaml").write_text(cluster_docs({"a": app.port}) + split_doc({"a": 1}))
    assert (await app.reloader.reload("test"))["ok"]
    loop = asyncio.get_running_loop()
    t = loop.time()
    raw = await raw_request(app.port, b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 508 Loop Detected") and b"forwarding loop" in raw, raw
    assert loop.time() - t < 2.0 and len(b.seen) == 2  # (the two above)


async def test_headers_hop_by_hop_forwarding_and_via(backends, router):
    (b,) = await backends("a")
    app = await router(cluster_docs({"a": b.port}) + split_doc({"a": 1}))
    req = (b"GET /p?q=1 HTTP/1.1\r\nHost: Api.Example.com\r\nConnection: keep-alive, X-Secret\r\n"
           b"X-Secret: drop-me\r\nKeep-Alive: timeout=5\r\nProxy-Connection: x\r\nTE: trailers\r\n"
           b"X-Forwarded-For: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\nX-Forwarded-Host: evil\r\n"
           b"X-Keep: yes\r\n\r\n")
    reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
    writer.write(req)
    status, headers, body = await read_response(reader)
    writer.close()
    assert status == 200 and headers["x-router-cluster"] == "a" and "edge-router" in headers["via"]
    seen = b.seen[-1].headers
    for gone in ("X-Secret", "Keep-Alive", "Proxy-Connection", "TE"):
        assert gone not in seen, gone
    assert seen["X-Keep"] == "yes" and b.seen[-1].path_qs == "/p?q=1"
    assert seen["X-Forwarded-For"] == "127.0.0.1"  # untrusted client: replaced, not appended
    assert seen["X-Forwarded-Host"] == "Api.Example.com" and seen["X-Forwarded-Proto"] == "http"
    assert seen["Forwarded"].startswith("for=127.0.0.1;proto=http")
    assert "edge-router" in seen["Via"]


def prefix_split(name: str, cluster: str, prefix: str) -> str:
    return (f"---\napiVersion: edge.router/v1alpha1\nkind: TrafficSplit\nmetadata: {{name: {name}}}\n"
            f"spec:\n  pathPrefix: {prefix}\n  clusters: [{{name: {cluster}, weight: 1}}]\n")


async def test_path_is_routed_and_forwarded_as_the_cluster_resolves_it(backends, router):
    """/public/../admin must not reach the /public split's cluster as a path its server resolves to
    /admin: dot segments (also as %2e) are removed and slashes merged before routing, and the cluster
    gets that path; with normalizePath: false the path goes as sent."""
    main, public = await backends("main", "public")
    docs = cluster_docs({"main": main.port, "public": public.port}) + split_doc({"main": 1}, "default") + \
        prefix_split("public", "public", "/public")
    app = await router(docs)
    cases = [(b"/public/../admin", b"main", "/admin"), (b"/public/%2e%2E/admin?x=1", b"main", "/admin?x=1"),
             (b"/public/./x/.././../admin/", b"main", "/admin/"), (b"/../public/x", b"public", "/public/x"),
             (b"//public//x/./y?q=/../z", b"public", "/public/x/y?q=/../z"), (b"/public/x/..", b"public", "/public/"),
             (b"/public/..%2Fadmin", b"public", "/public/..%2Fadmin"), (b"/public/.well-known/x", b"public",
                                                                       "/public/.well-known/x"),
             (b"/public/x?q=%00", b"public", "/public/x?q=%00")]  # (an encoded NUL in the query is the app's)
    for target, cluster, seen_path in cases:
        raw = await raw_request(app.port, b"GET " + target + b" HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        assert raw.startswith(b"HTTP/1.1 200") and b"x-router-cluster: " + cluster in raw, (target, raw)
        backend = main if cluster == b"main" else public
        assert backend.seen[-1].raw_path == seen_path, target
    (app.config_dir / "router.yaml").write_text(docs + router_doc(normalizePath=False))
    assert (await app.reloader.reload("test"))["ok"]
    raw = await raw_request(app.port, b"GET /public/../admin HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert b"x-router-cluster: public" in raw and public.seen[-1].raw_path == "/public/../admin", raw
    # escaped slashes: kept by default (above), refused, or decoded before normalizing and routing
    escaped = b"GET /public/..%2Fadmin?q=%2F HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
    (app.config_dir / "router.yaml").write_text(docs + router_doc(escapedSlashes="reject"))
    assert (await app.reloader.reload("test"))["ok"]
    raw = await raw_request(app.port, escaped)
    assert raw.startswith(b"HTTP/1.1 400") and b"escaped slash" in raw, raw
    (app.config_dir / "router.yaml").write_text(docs + router_doc(escapedSlashes="unescape"))
    assert (await app.reloader.reload("test"))["ok"]
    raw = await raw_request(app.port, escaped)
    assert b"x-router-cluster: main" in raw and main.seen[-1].raw_path == "/admin?q=%2F", raw
    raw = await raw_request(app.port, escaped.replace(b"%2F", b"%20", 1))  # other escapes: no change
    assert b"x-router-cluster: public" in raw and public.seen[-1].raw_path == "/public/..%20admin?q=%2F", raw


async def test_route_header_changes_reach_the_cluster_and_the_client(backends, router):
    """requestHeaders / responseHeaders (and HTTPRoute's header filters): set replaces every field of
    the name, add appends, remove drops; a route without them passes headers untouched."""
    a, b = await backends("a", "b")
    app = await router(cluster_docs({"a": a.port, "b": b.port}) + split_doc({"b": 1}, "plain") + (
        "---\napiVersion: edge.router/v1alpha1\nkind: TrafficSplit\nmetadata: {name: changed}\nspec:\n"
        "  hosts: [changed.example.com]\n  clusters: [{name: a, weight: 1}]\n"
        "  requestHeaders: {set: [{name: X-Env, value: prod}], add: [{name: X-Tag, value: edge}], remove: [cookie]}\n"
        "  responseHeaders: {set: [{name: Content-Type, value: text/x-set}], add: [{name: X-Served-By, value: edge}],"
        " remove: [Server]}\n"))
    req = (b"GET / HTTP/1.1\r\nHost: changed.example.com\r\nX-Env: dev\r\nx-env: test\r\nX-Tag: client\r\n"
           b"Cookie: secret=1\r\nX-Keep: yes\r\nConnection: close\r\n\r\n")
    raw = await raw_request(app.port, req)
    head = raw.partition(b"\r\n\r\n")[0].lower()
    assert raw.startswith(b"HTTP/1.1 200") and b"x-router-cluster: a" in head, raw
    assert b"server:" not in head and head.count(b"content-type:") == 1 and b"content-type: text/x-set" in head
    assert b"x-served-by: edge" in head
    seen = a.seen[-1].headers
    assert seen.getall("X-Env") == ["prod"] and seen.getall("X-Tag") == ["client", "edge"]
    assert "Cookie" not in seen and seen["X-Keep"] == "yes"
    raw = await raw_request(app.port, req.replace(b"changed.example.com", b"other.example.com"))
    head = raw.partition(b"\r\n\r\n")[0].lower()
    assert b"x-router-cluster: b" in head and b"server:" in head and b"x-served-by" not in head, raw
    assert b.seen[-1].headers.getall("X-Env") == ["dev", "test"] and "Cookie" in b.seen[-1].headers


async def test_url_rewrite_changes_what_the_cluster_is_asked_for(backends, router):
    """rewrite.pathPrefix replaces the split's prefix, fullPath the whole path, hostname the Host;
    X-Forwarded-Host and the route keep the client's."""
    a, b = await backends("a", "b")
    app = await router(cluster_docs({"a": a.port, "b": b.port}) + (
        "---\napiVersion: edge.router/v1alpha1\nkind: TrafficSplit\nmetadata: {name: shop}\nspec:\n"
        "  pathPrefix: /shop\n  clusters: [{name: a, weight: 1}]\n"
        "  rewrite: {pathPrefix: /, hostname: shop.internal}\n"
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec:\n"
        "  rules:\n  - matches: [{path: {value: /old}}]\n    filters:\n    - type: URLRewrite\n"
        "      urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /new/place}}\n"
        "    backendRefs: [{name: b}]\n"))
    for target, backend, seen_path in [(b"/shop/cart?x=1", a, "/cart?x=1"), (b"/shop", a, "/"),
                                       (b"/shop/", a, "/"), (b"/old/a/b?q=2", b, "/new/place?q=2")]:
        raw = await raw_request(app.port, b"GET " + target + b" HTTP/1.1\r\nHost: Edge.Example\r\n"
                                                            b"Connection: close\r\n\r\n")
        assert raw.startswith(b"HTTP/1.1 200"), (target, raw)
        assert backend.seen[-1].raw_path == seen_path, target
    seen = a.seen[-1].headers
    assert seen.getall("Host") == ["shop.internal"] and seen["X-Forwarded-Host"] == "Edge.Example"
    assert b.seen[-1].headers["Host"] == "Edge.Example"


async def test_requests_pipelined_behind_a_final_answer_are_not_started(backends, router, caplog):
    """A request the router answers from its head (404 here) and then closes on: requests pipelined
    behind it in the same read are not started (they were: sent to a cluster, whose answer then hit
    the closed client connection). A bodiless one answered so keeps the connection."""
    (a,) = await backends("a")
    app = await router(cluster_docs({"a": a.port}) + split_doc({"a": 1}, "known", hosts=["x"]))
    nxt = b"GET /q HTTP/1.1\r\nHost: x\r\n\r\n"
    raw = await raw_request(app.port, b"GET /p HTTP/1.1\r\nHost: unknown\r\nConnection: close\r\n\r\n" + nxt)
    assert statuses_of(raw) == [404], raw
    raw = await raw_request(app.port, b"POST /p HTTP/1.1\r\nHost: unknown\r\nContent-Length: 5\r\n\r\nhello" + nxt)
    assert statuses_of(raw) == [404] and b"Connection: close" in raw, raw  # its body was still due
    assert not a.seen
    raw = await raw_request(app.port, b"GET /p HTTP/1.1\r\nHost: unknown\r\n\r\n" +
                            nxt.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
    assert statuses_of(raw) == [404, 200] and len(a.seen) == 1, raw
    # a proxied Connection: close request with bytes behind it stands (it was refused 400 as malformed)
    raw = await raw_request(app.port, b"GET /p HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" + nxt)
    assert statuses_of(raw) == [200] and [r.path for r in a.seen] == ["/q", "/p"], raw
    raw = await raw_request(app.port, b"POST /form HTTP/1.0\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc\r\n")
    assert statuses_of(raw) == [200] and a.bodies[-1] == b"abc", raw  # the CRLF some clients add after a body
    assert "Fatal error" not in caplog.text and "write_eof" not in caplog.text


async def test_redirect_routes_are_answered_by_the_router(backends, router):
    (a,) = await backends("a")
    app = await router(cluster_docs({"a": a.port}) + split_doc({"a": 1}, "default") + (
        "---\napiVersion: edge.router/v1alpha1\nkind: TrafficSplit\nmetadata: {name: moved}\nspec:\n"
        "  hosts: [old.example.com]\n  redirect: {hostname: new.example.com, statusCode: 301}\n"
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec:\n"
        "  rules:\n  - matches: [{path: {value: /docs}}]\n    filters:\n    - type: RequestRedirect\n"
        "      requestRedirect: {scheme: https, path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2/docs}}\n"))
    cases = [(b"/p?q=1", b"old.example.com:8080", 301, b"http://new.example.com:8080/p?q=1"),
             (b"/docs/intro?x", b"Edge.Example:8080", 302, b"https://edge.example/v2/docs/intro?x")]
    for target, host, status, location in cases:
        reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
        writer.write(b"GET " + target + b" HTTP/1.1\r\nHost: " + host + b"\r\n\r\n"
                     b"GET /other HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")  # kept alive after it
        got, headers, _ = await read_response(reader)
        assert got == status and headers["location"] == location.decode(), (target, headers)
        got, headers, _ = await read_response(reader)
        assert got == 200 and headers["x-router-cluster"] == "a"
        writer.close()
    assert [r.path for r in a.seen] == ["/other", "/other"]  # no redirect reached a cluster


async def test_request_ids_are_made_sent_returned_or_kept_from_trusted_proxies(backends, router):
    (b,) = await backends("a")
    docs = cluster_docs({"a": b.port}) + split_doc({"a": 1}, "default")
    app = await router(docs)
    req = b"GET / HTTP/1.1\r\nHost: h\r\nX-Request-Id: client-chosen\r\nConnection: close\r\n\r\n"
    raw = await raw_request(app.port, req)  # off (the default): the client's header passes as it came
    assert b"x-request-id" not in raw.lower() and b.seen[-1].headers.getall("X-Request-Id") == ["client-chosen"]

    (app.config_dir / "router.yaml").write_text(docs + router_doc(requestId=True))
    assert (await app.reloader.reload("test"))["ok"]
    ids = []
    for _ in range(2):
        raw = await raw_request(app.port, req)
        status, headers, _ = response_of(raw)
        sent = b.seen[-1].headers.getall("X-Request-Id")
        assert status == 200 and len(sent) == 1 and sent[0] == headers["x-request-id"], (sent, raw)
        assert len(sent[0]) == 32 and int(sent[0], 16) >= 0  # the router's, not the untrusted client's
        ids.append(sent[0])
    assert ids[0] != ids[1]
    free = free_port_refusing()
    (app.config_dir / "router.yaml").write_text(cluster_docs({"gone": free}) + split_doc({"gone": 1}, "default")
                                                + router_doc(requestId=True))
    assert (await app.reloader.reload("test"))["ok"]
    raw = await raw_request(app.port, req)  # the router's own answers carry it too
    assert raw.startswith(b"HTTP/1.1 502") and len(response_of(raw)[1]["x-request-id"]) == 32, raw

    (app.config_dir / "router.yaml").write_text(docs + router_doc(requestId=True, trustedProxies=["127.0.0.0/8"]))
    assert (await app.reloader.reload("test"))["ok"]
    raw = await raw_request(app.port, req)  # a trusted proxy's id names the request end to end
    assert response_of(raw)[1]["x-request-id"] == "client-chosen", raw
    assert b.seen[-1].headers.getall("X-Request-Id") == ["client-chosen"]


async def test_header_names_with_underscores_are_dropped_rejected_or_allowed(backends, router):
    """X_Forwarded_For reads as X-Forwarded-For to CGI-style servers (HTTP_X_FORWARDED_FOR) and would
    pass a spoofed client address around the router's own header: dropped by default, as nginx does."""
    (b,) = await backends("a")
    docs = cluster_docs({"a": b.port}) + split_doc({"a": 1})
    app = await router(docs)
    req = (b"GET / HTTP/1.1\r\nHost: h\r\nX_Forwarded_For: 6.6.6.6\r\nX_Custom: 1\r\nX-Keep: yes\r\n"
           b"Connection: close\r\n\r\n")
    raw = await raw_request(app.port, req)
    seen = b.seen[-1].headers
    assert raw.startswith(b"HTTP/1.1 200") and seen["X-Keep"] == "yes", raw
    assert "X_Forwarded_For" not in seen and "X_Custom" not in seen
    assert seen.getall("X-Forwarded-For") == ["127.0.0.1"]
    assert app.metrics.dropped_headers.labels("underscore")._value.get() == 2
    (app.config_dir / "router.yaml").write_text(docs + router_doc(underscoreHeaders="reject"))
    assert (await app.reloader.reload("test"))["ok"]
    raw = await raw_request(app.port, req)
    assert raw.startswith(b"HTTP/1.1 400") and b"X_Forwarded_For" in raw and b"Connection: close" in raw, raw
    assert len(b.seen) == 1
    (app.config_dir / "router.yaml").write_text(docs + router_doc(underscoreHeaders="allow"))
    assert (await app.reloader.reload("test"))["ok"]
    raw = await raw_request(app.port, req)
    assert raw.startswith(b"HTTP/1.1 200") and b.seen[-1].headers["X_Custom"] == "1", raw


async def test_trusted_proxy_headers_are_appended(backends, router):
    (b,) = await backends("a")
    app = await router(cluster_docs({"a": b.port}) + split_doc({"a": 1}) +
                       router_doc(trustedProxies=["127.0.0.0/8"]))
    raw = await raw_request(app.port, b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 203.0.113.9\r\n"
                                      b"X-Forwarded-Proto: https\r\nConnection: close\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 200")
    seen = b.seen[-1].headers
    assert seen["X-Forwarded-For"] == "203.0.113.9, 127.0.0.1" and seen["X-Forwarded-Proto"] == "https"


async def test_chunked_upload_and_streamed_download(backends, router):
    async def stream(request):
        data = await request.read()
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i in range(5):
            await resp.write(data[:3] + str(i).encode())
        await resp.write_eof()
        return resp
    wa = web.Application()
    wa.router.add_post("/s", stream)
    b = await Backend("a").start(wa)
    try:
        app = await router(cluster_docs({"a": b.port}) + split_doc({"a": 1}))
        async def gen():
            for part in (b"abc", b"def", b"ghi"):
                yield part
        async with aiohttp.ClientSession() as s:
            async with s.post(f"http://127.0.0.1:{app.port}/s", data=gen()) as r:
                assert r.status == 200 and r.headers["Transfer-Encoding"] == "chunked"
                assert await r.read() == b"abc0abc1abc2abc3abc4"
    finally:
        await b.stop()


async def test_expect_100_continue(backends, router):
    (b,) = await backends("a")
    app = await router(cluster_docs({"a": b.port}) + split_doc({"a": 1}))
    reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
    writer.write(b"POST /u HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert interim.startswith(b"HTTP/1.1 100 Continue")
    writer.write(b"hello")
    status, headers, body = await asyncio.wait_for(read_response(reader), 5)
    writer.close()
    assert status == 200 and body == b"a:5"


async def test_websocket_upgrade_relays_both_ways(router):
    async def ws_handler(request):
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            await ws.send_str("echo:" + msg.data)
        return ws
    wa = web.Application()
    wa.router.add_get("/ws", ws_handler)
    b = await Backend("a").start(wa)
    try:
        app = await router(cluster_docs({"a": b.port}) + split_doc({"a": 1}))
        async with aiohttp.ClientSession() as s:
            async with s.ws_connect(f"http://127.0.0.1:{app.port}/ws") as ws:
                assert ws._response.headers["x-router-cluster"] == "a"
                for i in range(3):
                    await ws.send_str(f"m{i}")
                    assert (await ws.receive(timeout=5)).data == f"echo:m{i}"
    finally:
        await b.stop()


async def test_idle_tunnel_is_closed_both_ways_after_tunnel_idle(router):
    """Bytes either way keep an upgraded connection open; none for tunnelIdle close both sides."""
    upstream_eof = asyncio.Event()

    async def handle(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: x-echo\r\n\r\n")
        while data := await reader.read(100):
            writer.write(data)
        upstream_eof.set()
        writer.close()
    async with raw_upstream(handle) as port:
        app = await router(cluster_docs({"a": port}) + split_doc({"a": 1}) + router_doc(timeouts={"tunnelIdle": "300ms"}))
        reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
        try:
            writer.write(b"GET /t HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: x-echo\r\n\r\n")
            assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).startswith(b"HTTP/1.1 101")
            loop = asyncio.get_running_loop()
            t = loop.time()
            for i in range(4):  # 0.8 s of traffic every 0.2 s: longer than tunnelIdle, never idle that long
                writer.write(b"ping%d" % i)
                assert await asyncio.wait_for(reader.readexactly(5), 5) == b"ping%d" % i
                last = loop.time()
                await asyncio.sleep(0.2)  # the client's pace, not a wait on a condition
            assert not upstream_eof.is_set()
            assert await asyncio.wait_for(reader.read(), 5) == b""  # then idle: closed
            await asyncio.wait_for(upstream_eof.wait(), 5)
            # Closed tunnelIdle after the last bytes (less the echo's way back), not before; and not late.
            assert loop.time() - last > 0.29 and loop.time() - t < 3.0
        finally:
            writer.close()


async def test_head_and_204_keep_the_connection_usable(router):
    async def head(request):
        return web.Response(body=b"x" * 100)
    async def empty(request):
        return web.Response(status=204)
    wa = web.Application()
    wa.router.add_get("/h", head)
    wa.router.add_get("/e", empty)
    b = await Backend("a").start(wa)
    try:
        app = await router(cluster_docs({"a": b.port}) + split_doc({"a": 1}))
        reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
        writer.write(b"HEAD /h HTTP/1.1\r\nHost: h\r\n\r\n")
        head_bytes = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert b"Content-Length: 100" in head_bytes
        writer.write(b"GET /e HTTP/1.1\r\nHost: h\r\n\r\nGET /h HTTP/1.1\r\nHost: h\r\n\r\n")
        assert (await asyncio.wait_for(read_response(reader), 5))[0] == 204
        status, _, body = await asyncio.wait_for(read_response(reader), 5)
        assert status == 200 and body == b"x" * 100
        writer.close()
    finally:
        await b.stop()


async def test_the_routers_own_answers_to_head_have_no_body(router):
    # a 404 (no route) and a 502 (nothing listens): each head says the length a GET's body would have, and
    # no body follows, so the next response on the connection is read as itself
    app = await router(cluster_docs({"gone": 1}) + split_doc({"gone": 1}, "s", ["h"]))
    reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
    try:
        writer.write(b"HEAD / HTTP/1.1\r\nHost: nope\r\n\r\nHEAD / HTTP/1.1\r\nHost: h\r\n\r\n"
                     b"GET / HTTP/1.1\r\nHost: nope\r\n\r\n")
        for status in (404, 502):
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 %d " % status) and b"Content-Length: " in head, head
        status, _, body = await asyncio.wait_for(read_response(reader), 5)
        assert status == 404 and body == b"no route for host 'nope'\n"
    finally:
        writer.close()


async def test_upstream_header_timeout_is_504(backends, router):
    (b,) = await backends("a")
    b.delay_s = 3
    app = await router(cluster_docs({"a": b.port}) + split_doc({"a": 1}) +
                       router_doc(timeouts={"upstreamHeader": "300ms"}))
    (status, headers, body), = await keepalive_get(app.port, 1)
    assert status == 504 and b"did not answer within 0.3s" in body


async def test_unknown_host_without_default_route_is_404(backends, router):
    (b,) = await backends("a")
    app = await router(cluster_docs({"a": b.port}) + split_doc({"a": 1}, hosts=["api.example.com"]))
    (status, _, body), = await keepalive_get(app.port, 1, host="other.org")
    assert status == 404 and b"no route" in body
    (status, headers, _), = await keepalive_get(app.port, 1, host="API.example.com:8080")
    assert status == 200 and headers["x-router-cluster"] == "a"


async def test_stale_pooled_connection_is_retried(router):
    """An upstream that closes each keep-alive connection after one response."""
    count = 0

    async def handle(reader, writer):
        nonlocal count
        await reader.readuntil(b"\r\n\r\n")
        count += 1
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.close()
    async with raw_upstream(handle) as port:
        app = await router(cluster_docs({"a": port}) + split_doc({"a": 1}))
        for _ in range(5):
            (status, _, body), = await keepalive_get(app.port, 1)
            assert status == 200 and body == b"ok"
            await wait_for(lambda: all(c.closed for q in app.ctx.pool.idle.values() for c in q), what="close")
        assert count == 5


async def test_upstream_body_cut_short_aborts_the_client(router):
    async def handle(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly-part")
        await writer.drain()
        writer.close()
    async with raw_upstream(handle) as port:
        app = await router(cluster_docs({"a": port}) + split_doc({"a": 1}))
        raw = await raw_request(app.port, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        head, _, body = raw.partition(b"\r\n\r\n")
        assert b"Content-Length: 100" in head and len(body) < 100  # the client can tell it is short


@pytest.mark.parametrize("response", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"HTTP/1.1 2000 OK\r\n\r\n",
    b"garbage\r\n\r\n",
])
async def test_upstream_broken_framing_is_502(router, response):
    async def handle(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(response)
        await writer.drain()
        await asyncio.sleep(1)
        writer.close()
    async with raw_upstream(handle) as port:
        app = await router(cluster_docs({"a": port}) + split_doc({"a": 1}))
        raw = await raw_request(app.port, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", timeout_s=3)
        # Either a 502, or (framing broke after the head went out) a response the client can see is cut short.
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 502") or (
            head.startswith(b"HTTP/1.1 200") and b"Transfer-Encoding: chunked" in head
            and not body.endswith(b"0\r\n\r\n")), raw


async def test_response_hop_by_hop_headers_are_removed(router):
    async def handle(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: X-Internal\r\nX-Internal: secret\r\nKeep-Alive: timeout=5\r\n"
                     b"Trailer: X-T\r\nX-Router-Cluster: spoofed\r\nX-App: kept\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
    async with raw_upstream(handle) as port:
        app = await router(cluster_docs({"a": port}) + split_doc({"a": 1}))
        reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        status, headers, body = await asyncio.wait_for(read_response(reader), 5)
        writer.close()
        assert status == 200 and body == b"ok" and headers["x-app"] == "kept"
        assert headers["x-router-cluster"] == "a"
        for gone in ("x-internal", "keep-alive", "trailer"):
            assert gone not in headers, gone


async def test_immediate_error_on_a_closing_connection_closes_promptly(backends, router):
    (b,) = await backends("a")
    app = await router(cluster_docs({"a": b.port}) + split_doc({"a": 1}, hosts=["api.example.com"]))
    loop = asyncio.get_running_loop()
    t = loop.time()
    raw = await raw_request(app.port, b"GET / HTTP/1.1\r\nHost: other.org\r\nConnection: close\r\n\r\n", timeout_s=5)
    assert raw.startswith(b"HTTP/1.1 404") and loop.time() - t < 1
    await wait_for(lambda: not app.ctx.connections, timeout_s=1, what="router side closed")


@pytest.mark.parametrize("head, reason", [
    (b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(101)) + b"Content-Length: 2\r\n\r\nok",
     b"more than 100 header fields"),
    (b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (80 * 1024) + b"\r\nContent-Length: 2\r\n\r\nok",
     b"header section too large"),
    (b"HTTP/1.1 200 OK\r\nX-Endless: " + b"a" * (100 * 1024), b"header section too large"),  # never completes
])
async def test_oversized_upstream_response_head_is_502(router, head, reason):
    """An upstream's response head is held to the request limits: 502, the client connection stays usable."""
    async def handle(reader, writer):
        while True:
            try:
                await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            for i in range(0, len(head), 16 * 1024):  # in pieces: the limit holds across reads too
                writer.write(head[i:i + 16 * 1024])
                await writer.drain()
    async with raw_upstream(handle) as port:
        app = await router(cluster_docs({"a": port}) + split_doc({"a": 1}))
        (status, headers, body), = await asyncio.wait_for(keepalive_get(app.port, 1), 5)
        assert status == 502 and reason in body, body
        assert headers["x-router-cluster"] == "a" and headers.get("connection") != "close"


async def test_upstream_head_in_small_pieces_within_the_limits_passes(router):
    head = (b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 600) for i in range(99))
            + b"Content-Length: 2\r\n\r\nok")

    async def handle(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        for i in range(0, len(head), 7):
            writer.write(head[i:i + 7])
            if i % 700 == 0:
                await writer.drain()
        await writer.drain()
    async with raw_upstream(handle) as port:
        app = await router(cluster_docs({"a": port}) + split_doc({"a": 1}))
        (status, headers, body), = await asyncio.wait_for(keepalive_get(app.port, 1), 5)
        assert status == 200 and body == b"ok" and headers["x-98"] == "v" * 600


# A 204 followed by the start of another response: bytes past the end of what the upstream framed.
OVERRUN = b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsm"


async def test_upstream_bytes_past_its_response_are_not_read_as_the_next_answer(router):
    """An upstream that sends more than it framed (here a 204 followed by the start of another response)
    loses that connection: the next request gets a fresh connection and its own answer."""
    connections = 0

    async def handle(reader, writer):
        nonlocal connections
        connections += 1
        first = connections == 1
        while True:
            try:
                await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            if first:
                writer.write(OVERRUN)
                first = False
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nreal")
            await writer.drain()
    async with raw_upstream(handle) as port:
        app = await router(cluster_docs({"a": port}) + split_doc({"a": 1}))
        (s1, _, b1), (s2, _, b2) = await asyncio.wait_for(keepalive_get(app.port, 2), 5)
        assert (s1, b1) == (204, b"") and (s2, b2) == (200, b"real")
        assert connections == 2


async def test_response_end_without_a_head_is_a_502_not_silence(router, monkeypatch):
    """Should a message end ever reach an exchange before a head did (the case above, without the
    connection check), the client gets a prompt 502 instead of waiting for an answer that never comes."""
    from router.dataplane.upstream import UpstreamConnection
    monkeypatch.delattr(UpstreamConnection, "on_message_begin")

    async def handle(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(OVERRUN)
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nreal")
        await writer.drain()
        await reader.read()
    async with raw_upstream(handle) as port:  # (the Python path's parser: the fast lane off)
        app = await router(cluster_docs({"a": port}) + split_doc({"a": 1}) + router_doc(fastPath=False))
        (s1, _, _), (s2, _, b2) = await asyncio.wait_for(keepalive_get(app.port, 2), 5)
        assert s1 == 204 and s2 == 502 and b"ended before its head" in b2


async def test_stalled_request_body_is_408(backends, router):
    (b,) = await backends("a")
    app = await router(cluster_docs({"a": b.port}) + split_doc({"a": 1}) +
                       router_doc(timeouts={"bodyIdle": "300ms"}))
    loop = asyncio.get_running_loop()
    t = loop.time()
    raw = await raw_request(app.port, b"POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\nonly-ten..",
                            timeout_s=5)
    assert raw.startswith(b"HTTP/1.1 408") and b"request body not received in time" in raw, raw
    assert loop.time() - t < 3
    await wait_for(lambda: not app.ctx.connections, what="client connection closed")


async def test_stalled_upstream_body_aborts_the_client(router):
    upstream_closed = asyncio.Event()

    async def handle(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly-part")
        await writer.drain()
        await reader.read()  # until the router gives up on this connection
        upstream_closed.set()
    async with raw_upstream(handle) as port:
        app = await router(cluster_docs({"a": port}) + split_doc({"a": 1}) +
                           router_doc(timeouts={"bodyIdle": "300ms"}))
        loop = asyncio.get_running_loop()
        t = loop.time()
        raw = await raw_request(app.port, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", timeout_s=5)
        assert loop.time() - t < 3, "the client connection was not aborted"
        head, _, body = raw.partition(b"\r\n\r\n")
        assert b"Content-Length: 100" in head and body == b"only-part"  # cut short, so visibly incomplete
        await asyncio.wait_for(upstream_closed.wait(), 3)


async def test_client_that_stops_reading_is_let_go(router):
    upstream_closed = asyncio.Event()

    async def handle(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (64 << 20))
        try:
            for _ in range(1024):
                writer.write(b"x" * (64 << 10))
                await writer.drain()
        except ConnectionError:
            pass
        upstream_closed.set()
    async with raw_upstream(handle) as port:
        app = await router(cluster_docs({"a": port}) + split_doc({"a": 1}) +
                           router_doc(timeouts={"bodyIdle": "300ms"}))
        reader, writer = await asyncio.open_connection("127.0.0.1", app.port, limit=1 << 16)
        writer.write(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        try:
            # Never read: buffers fill, the router pauses the upstream, then gives up on the client.
            await asyncio.wait_for(upstream_closed.wait(), 5)
            await wait_for(lambda: not app.ctx.connections, what="client connection aborted")
        finally:
            writer.close()


async def test_absolute_form_target_is_sent_as_path_and_query_and_its_authority_as_host(backends, router):
    a, b = await backends("a", "b")
    app = await router(cluster_docs({"a": a.port, "b": b.port}) + split_doc({"a": 1}, "default")
                       + split_doc({"b": 1}, "api", hosts=["api.example.com"]))
    raw = await raw_request(app.port, b"GET HTTP://Api.Example.com:8080/p?q=1 HTTP/1.1\r\nHost: other.example\r\n"
                                      b"Connection: close\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 200") and b"x-router-cluster: b" in raw, raw
    seen = b.seen[-1]
    assert seen.path_qs == "/p?q=1" and seen.headers.getall("Host") == ["Api.Example.com:8080"]
    assert seen.headers["X-Forwarded-Host"] == "Api.Example.com:8080"
    raw = await raw_request(app.port, b"GET http://api.example.com/old HTTP/1.0\r\n\r\n")  # 1.0: no Host needed
    assert raw.startswith(b"HTTP/1.1 200") and b.seen[-1].path_qs == "/old", raw
    assert b.seen[-1].headers.getall("Host") == ["api.example.com"]
    raw = await raw_request(app.port, b"GET http://api.example.com/ HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 400") and b"without Host" in raw, raw  # HTTP/1.1 still needs Host
    assert not a.seen and len(b.seen) == 2


async def test_internal_fault_is_500_and_logged_not_blamed_on_the_client(backends, router, monkeypatch, caplog):
    from router.dataplane import exchange
    (b,) = await backends("a")
    app = await router(cluster_docs({"a": b.port}) + split_doc({"a": 1}) + router_doc(fastPath=False))

    def broken(*args, **kwargs):
        raise RuntimeError("policy fault")
    monkeypatch.setattr(exchange, "choose_backend", broken)
    raw = await raw_request(app.port, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 500") and b"internal error" in raw and b"policy fault" not in raw, raw
    assert any(r.exc_info and "policy fault" in str(r.exc_info[1]) for r in caplog.records)
    monkeypatch.undo()
    (status, _, _), = await keepalive_get(app.port, 1)
    assert status == 200 and b.seen


async def test_fault_while_connecting_is_a_prompt_502(backends, router, monkeypatch):
    (b,) = await backends("a")
    app = await router(cluster_docs({"a": b.port}) + split_doc({"a": 1}) + router_doc(fastPath=False))

    async def broken(*args, **kwargs):
        raise ValueError("pool fault")
    monkeypatch.setattr(app.ctx.pool, "connect", broken)
    (status, _, body), = await asyncio.wait_for(keepalive_get(app.port, 1), 5)
    assert status == 502 and b"internal error while connecting upstream" in body


async def test_upgrade_answered_with_an_error_closes_the_connection(router):
    """The client's connection stopped at its Upgrade request: after a 502 nothing more can be read
    from it as HTTP, so the router closes it instead of keeping it idle."""
    async def handle(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 204 No Content\r\nBad Header : x\r\n\r\n")
        await writer.drain()
        await reader.read()
    async with raw_upstream(handle) as port:
        app = await router(cluster_docs({"a": port}) + split_doc({"a": 1}))
        reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
        try:
            writer.write(b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
            raw = await asyncio.wait_for(reader.read(), 5)  # until the router closes
            assert raw.startswith(b"HTTP/1.1 502"), raw
            await wait_for(lambda: not app.ctx.connections, what="connection closed")
        finally:
            writer.close()


async def test_connections_are_reused_up_to_their_request_limit_and_age(backends, router):
    """maxRequestsPerConnection and maxConnectionAge (nginx's keepalive_requests and keepalive_time): the
    response that reaches either says Connection: close and the connection ends after it, so clients
    reconnect, and a replica added behind a load balancer gets its share of long-lived clients."""
    (b,) = await backends("a")
    app = await router(cluster_docs({"a": b.port}) + split_doc({"a": 1}) +
                       router_doc(limits={"maxRequestsPerConnection": 3}))
    reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
    answers = []
    for _ in range(3):
        writer.write(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        status, headers, _ = await read_response(reader)
        answers.append((status, headers.get("connection")))
    assert answers == [(200, None), (200, None), (200, "close")]
    assert await read_until_close(reader, 3) == b""  # closed after the third response
    writer.close()
    # by age: requests keep the connection until it is 300 ms old, then the next response closes it
    aged = await router(cluster_docs({"a": b.port}) + split_doc({"a": 1}) +
                        router_doc(timeouts={"maxConnectionAge": "300ms"}))
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", aged.port)
    t0, kept = loop.time(), 0

    async def closed_by_age() -> bool:
        nonlocal kept
        writer.write(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        status, headers, _ = await read_response(reader)
        assert status == 200
        if headers.get("connection") == "close":
            return True
        kept += 1
        return False

    await wait_for(closed_by_age, timeout_s=3, interval_s=0.1, what="a response closing the connection")
    assert loop.time() - t0 >= 0.3 and kept >= 2
    assert await read_until_close(reader, 3) == b""
    writer.close()


async def test_an_h2c_upgrade_is_served_as_http11_without_it(backends, router):
    """`Upgrade: h2c` (curl --http2 on http://) would turn the connection into HTTP/2 straight to the cluster,
    past everything the router checks per request; it is served as HTTP/1.1 without the upgrade headers, and
    the connection closes after the answer. Other upgrades (WebSocket) are relayed as before."""
    (b,) = await backends("a")
    app = await router(cluster_docs({"a": b.port}) + split_doc({"a": 1}))
    raw = await raw_request(app.port, b"GET /h2c HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                                      b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n")
    status, headers, body = response_of(raw)
    assert status == 200 and body == b"a:0" and headers["connection"] == "close"
    seen = b.seen[-1].headers
    assert "Upgrade" not in seen and "HTTP2-Settings" not in seen and "upgrade" not in seen.get("Connection", "")
    assert app.metrics.registry.get_sample_value("router_dropped_headers_total", {"reason": "h2c upgrade"}) == 1


@pytest.mark.parametrize("answer", [b"HTTP/1.1 204 No Content\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"])
async def test_pipelined_heads_answered_without_a_body_each_get_their_own_answer(router, answer):
    """A HEAD answered by a response the parser ends by itself (204, 304, Content-Length: 0) must not end the
    request pipelined behind it, which the same upstream connection carries next."""
    async def handle(reader, writer):
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(answer)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
    async with raw_upstream(handle) as port:
        app = await router(cluster_docs({"a": port}) + split_doc({"a": 1}) + router_doc(fastPath=False))
        head = b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\n"
        raw = await raw_request(app.port, head + head + head.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
        assert raw.count(b"HTTP/1.1 ") == 3 and raw.count(answer.split(b"\r\n")[0][:12]) == 3, raw
