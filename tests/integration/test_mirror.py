"""Request mirroring on real sockets: a copy of each request goes to the mirror cluster and its answer is
dropped; the client's exchange is the primary cluster's alone, whatever the mirror does."""
import asyncio
import textwrap

from tests.conftest import (cluster_docs, httproute_doc, raw_request, read_until_close, response_of, router_doc,
                            split_doc, wait_for)


def mirrored_split(weights: dict, mirror: str) -> str:
    return split_doc(weights) + f"  mirror: {mirror}\n"


def mirrored(app, cluster: str, result: str) -> float:
    return app.ctx.metrics.mirrored.labels(cluster, result)._value.get()


async def test_copies_reach_the_mirror_and_the_client_gets_the_primary_answer(backends, router):
    a, m = await backends("a", "m")
    app = await router(cluster_docs({"a": a.port, "m": m.port}) + mirrored_split({"a": 1}, "{cluster: m}"))
    reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
    try:
        for sent in (b"GET /one?x=1 HTTP/1.1\r\nHost: h\r\nX-Trace: t1\r\n\r\n",
                     b"POST /two HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello",
                     b"POST /three HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
                     b"HEAD /four HTTP/1.1\r\nHost: h\r\n\r\n"):
            writer.write(sent)
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200") and b"x-router-cluster: a" in head, head
            if not sent.startswith(b"HEAD"):
                await reader.readexactly(int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0]))
    finally:
        writer.close()
    await wait_for(lambda: mirrored(app, "m", "answered") == 4, what="four copies answered")
    # copies travel on connections of their own: they may arrive in another order
    copies = {r.path_qs: (r, body) for r, body in zip(m.seen, m.bodies)}
    assert sorted(copies) == sorted(r.path_qs for r in a.seen) == ["/four", "/one?x=1", "/three", "/two"]
    assert [copies[p][1] for p in ("/one?x=1", "/two", "/three", "/four")] == [b"", b"hello", b"abcde", b""]
    first = copies["/one?x=1"][0].headers
    assert first["X-Trace"] == "t1" and first["X-Forwarded-For"] == "127.0.0.1" and first["Host"] == "h"
    assert app.ctx.mirrors == set()
    assert app.state()["routes"][0]["mirrors"] == [{"cluster": "m", "percent": 100.0}]


async def test_a_failing_or_slow_mirror_changes_nothing_for_the_client(backends, router):
    a, m = await backends("a", "m")
    m.delay_s = 1  # answers long after upstreamHeader: the copy is dropped
    app = await router(cluster_docs({"a": a.port, "m": m.port, "gone": 9}) + mirrored_split({"a": 1}, "{cluster: m}")
                       + "---\n" + textwrap.dedent("""\
                           apiVersion: edge.router/v1alpha1
                           kind: TrafficSplit
                           metadata: {name: g}
                           spec:
                             hosts: [g]
                             clusters: [{name: a, weight: 1}]
                             mirror: {cluster: gone}
                           ---
                           apiVersion: edge.router/v1alpha1
                           kind: Router
                           metadata: {name: edge}
                           spec: {timeouts: {upstreamHeader: 300ms}}
                           """))
    loop = asyncio.get_running_loop()
    for host in ("h", "g"):
        t = loop.time()
        raw = await raw_request(app.port, f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        status, headers, body = response_of(raw)
        assert (status, headers["x-router-cluster"], body) == (200, "a", b"a:0")
        assert loop.time() - t < 0.25  # the client does not wait for the copy
    await wait_for(lambda: mirrored(app, "m", "failed") == 1 and mirrored(app, "gone", "failed") == 1,
                   what="both copies dropped")
    assert app.ctx.mirrors == set()


async def test_percent_and_big_bodies(backends, router):
    a, m = await backends("a", "m")
    app = await router(cluster_docs({"a": a.port, "m": m.port}) + mirrored_split({"a": 1}, "{cluster: m, percent: 0}"))
    for _ in range(5):
        await raw_request(app.port, b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert len(a.seen) == 5 and m.seen == []
    docs = cluster_docs({"a": a.port, "m": m.port}) + mirrored_split({"a": 1}, "{cluster: m}")
    app = await router(docs + router_doc(limits={"maxBuffered": "256Ki"}))
    body = bytes(range(256)) * 400  # 100 KiB: past what a retry replays (64 KiB), within maxBuffered
    for chunks in ([body], [body[:1000], body[1000:70000], body[70000:]]):  # whole, and as it streams in
        reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
        try:
            writer.write(b"POST / HTTP/1.1\r\nHost: h\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(body))
            for chunk in chunks:
                writer.write(chunk)
                await writer.drain()
            assert (await read_until_close(reader, 5)).startswith(b"HTTP/1.1 200")
        finally:
            writer.close()
    await wait_for(lambda: len(m.bodies) == 2, what="two copies")
    assert m.bodies == [body, body] and a.bodies[-2:] == [body, body]
    over = b"x" * (300 * 1024)  # over maxBuffered: not copied
    raw = await raw_request(app.port, b"POST / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n"
                                      b"Content-Length: %d\r\n\r\n%s" % (len(over), over))
    assert raw.startswith(b"HTTP/1.1 200") and a.bodies[-1] == over
    assert mirrored(app, "m", "skipped") == 1 and len(m.seen) == 2


async def test_httproute_request_mirror(backends, router):
    a, m = await backends("a", "m")
    route = httproute_doc("""\
          - filters:
            - type: RequestMirror
              requestMirror: {backendRef: {name: m, port: 80}, fraction: {numerator: 1, denominator: 1}}
            backendRefs: [{name: a}]
        """)
    app = await router(cluster_docs({"a": a.port, "m": m.port}) + route)
    raw = await raw_request(app.port, b"GET /x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 200") and b"x-router-cluster: a" in raw
    await wait_for(lambda: [r.path for r in m.seen] == ["/x"], what="the copy")


async def test_each_of_several_mirrors_gets_its_own_copy(backends, router):
    """`mirrors` (HTTPRoute: RequestMirror more than once): a copy to each, each drawn at its own percent."""
    a, m1, m2, m3 = await backends("a", "m1", "m2", "m3")
    app = await router(cluster_docs({"a": a.port, "m1": m1.port, "m2": m2.port, "m3": m3.port}) + split_doc({"a": 1})
                       + "  mirrors: [{cluster: m3, percent: 0}, {cluster: m1}, {cluster: m2, percent: 100}]\n")
    for i in range(5):
        raw = await raw_request(app.port, f"POST /p{i} HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n"
                                          f"Connection: close\r\n\r\nhi".encode())
        assert response_of(raw)[0] == 200
    await wait_for(lambda: mirrored(app, "m1", "answered") == mirrored(app, "m2", "answered") == 5,
                   what="five copies to each mirror")
    for m in (m1, m2):
        assert sorted(r.path for r in m.seen) == [f"/p{i}" for i in range(5)] and m.bodies == [b"hi"] * 5
    assert not m3.seen and len(a.seen) == 5
    assert app.state()["routes"][0]["mirrors"] == [{"cluster": "m3", "percent": 0.0},
                                                    {"cluster": "m1", "percent": 100.0},
                                                    {"cluster": "m2", "percent": 100.0}]
