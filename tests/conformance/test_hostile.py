"""Hostile HTTP/1.1 input on raw sockets: the right 4xx, a closed connection, nothing upstream."""
import asyncio

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from tests.conftest import (cluster_docs, cut, fuzz_settings, httproute_doc, loop_errors, raw_request,
                            read_until_close, router_doc, split_doc, statuses_of, wait_for)

H = b"Host: h\r\n"


@pytest.fixture
async def proxy(backends, router):
    (b,) = await backends("a")
    app = await router(cluster_docs({"a": b.port}) + split_doc({"a": 1}) + MOVED + MATCHED +
                       router_doc(timeouts={"headerRead": "1s"}, limits={"maxBody": "1Mi"},
                                  httpsRedirect={"listen": "127.0.0.1:0"}))
    app.backend = b
    return app


# A route the router answers itself (a redirect, from the request head alone), beside the proxied one.
MOVED = ("---\napiVersion: edge.router/v1alpha1\nkind: TrafficSplit\nmetadata: {name: moved}\nspec:\n"
         "  pathPrefix: /moved\n  redirect: {hostname: new.example, statusCode: 301}\n")


# Routes for Host h that look at headers, the query and the method (the rest of h's requests fall to the
# default route): every request has its headers and query read for routing.
MATCHED = httproute_doc("""\
    - matches: [{headers: [{name: X-Canary, value: "1"}]}, {queryParams: [{name: v, value: "2"}], method: GET}]
      backendRefs: [{name: a}]
    """, ["h"], "matched")


CASES = {
    "cl-and-te": (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    "te-and-cl": (b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", 400),
    "duplicate-cl-identical": (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello", 400),
    "duplicate-cl-different": (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", 400),
    "cl-list": (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 5, 5\r\n\r\nhello", 400),
    "cl-plus": (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: +5\r\n\r\nhello", 400),
    "cl-minus": (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: -1\r\n\r\n", 400),
    "cl-hex": (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 0x5\r\n\r\nhello", 400),
    "cl-underscore": (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 1_0\r\n\r\n0123456789", 400),
    "te-gzip": (b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip\r\n\r\n", (400, 501)),
    "te-chunked-then-gzip": (b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked, gzip\r\n\r\n", (400, 501)),
    "te-on-http10": (b"POST / HTTP/1.0\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    "bad-chunk-size": (b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n", 400),
    "chunk-size-overflow": (b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n", 400),
    "bad-chunk-ext": (b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n5;a=\"b\r\nhello\r\n0\r\n\r\n", 400),
    "obs-fold": (b"GET / HTTP/1.1\r\n" + H + b"X-A: a\r\n  folded\r\n\r\n", 400),
    "space-before-colon": (b"GET / HTTP/1.1\r\nHost : h\r\n\r\n", 400),
    "control-char": (b"GET / HTTP/1.1\r\n" + H + b"X-A: a\x01b\r\n\r\n", 400),
    "nul": (b"GET / HTTP/1.1\r\n" + H + b"X-A: a\x00b\r\n\r\n", 400),
    "bare-cr": (b"GET / HTTP/1.1\r\n" + H + b"X-A: a\rb\r\n\r\n", 400),
    "bare-lf": (b"GET / HTTP/1.1\nHost: h\n\n", 400),
    "bare-lf-header": (b"GET / HTTP/1.1\r\nHost: h\nX-A: b\r\n\r\n", 400),
    "no-host-11": (b"GET / HTTP/1.1\r\n\r\n", 400),
    "two-hosts": (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    "host-bad-port": (b"GET / HTTP/1.1\r\nHost: h:abc\r\n\r\n", 400),
    "host-userinfo": (b"GET / HTTP/1.1\r\nHost: user@h\r\n\r\n", 400),
    "host-broken-ipv6": (b"GET / HTTP/1.1\r\nHost: [::1\r\n\r\n", 400),
    "host-two-ports": (b"GET / HTTP/1.1\r\nHost: h:80:81\r\n\r\n", 400),
    "host-list": (b"GET / HTTP/1.1\r\nHost: a, b\r\n\r\n", 400),
    "host-path": (b"GET / HTTP/1.1\r\nHost: h/x\r\n\r\n", 400),
    "host-quote": (b"GET / HTTP/1.1\r\nHost: h\"x\r\n\r\n", 400),
    "connection-names-host": (b"GET / HTTP/1.1\r\n" + H + b"Connection: host\r\n\r\n", 400),
    "connection-names-cl": (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 1\r\nConnection: Content-Length\r\n\r\nx", 400),
    "connection-names-xff": (b"GET / HTTP/1.1\r\n" + H + b"Connection: keep-alive, X-Forwarded-For\r\n\r\n", 400),
    "too-many-headers": (b"GET / HTTP/1.1\r\n" + H + b"".join(b"X-%d: v\r\n" % i for i in range(101)) + b"\r\n", 431),
    "header-section-too-large": (b"GET / HTTP/1.1\r\n" + H + b"X-Big: " + b"a" * (65 * 1024) + b"\r\n\r\n", 431),
    "request-line-too-long": (b"GET /" + b"a" * (9 * 1024) + b" HTTP/1.1\r\n" + H + b"\r\n", 414),
    "body-over-limit-cl": (b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 2000000\r\n\r\n", 413),
    "connect-method": (b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 405),
    "garbage": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400),
    "bad-version": (b"GET / HTTP/9.9\r\n" + H + b"\r\n", 400),
    "asterisk-not-options": (b"GET * HTTP/1.1\r\n" + H + b"\r\n", 400),
    "absolute-other-scheme": (b"GET ftp://h/ HTTP/1.1\r\n" + H + b"\r\n", 400),
    "absolute-userinfo": (b"GET http://user@h/ HTTP/1.1\r\n" + H + b"\r\n", 400),
    "fragment": (b"GET /admin#x HTTP/1.1\r\n" + H + b"\r\n", 400),
    "fragment-absolute": (b"GET http://h/a#/../admin HTTP/1.1\r\n" + H + b"\r\n", 400),
    "encoded-nul-in-path": (b"GET /file%00.png HTTP/1.1\r\n" + H + b"\r\n", 400),
    "absolute-broken-ipv6": (b"GET http://[::1/x HTTP/1.1\r\n" + H + b"\r\n", 400),
    "absolute-bad-port": (b"GET http://h:port/ HTTP/1.1\r\n" + H + b"\r\n", 400),
    "absolute-empty-host": (b"GET http:///x HTTP/1.1\r\n" + H + b"\r\n", 400),
}


BROKEN_BODY = {"bad-chunk-size", "chunk-size-overflow", "bad-chunk-ext"}  # a valid head, its body malformed


@pytest.mark.parametrize("host", [b"h", b"h:80", b"H.Example.COM.", b"[::1]:8080", b"127.0.0.1:1", b"my_svc~1",
                                  b"xn--bcher-kva.example", b"h:", b"", b"%41"])
async def test_valid_host_values_are_served(proxy, host):
    raw = await raw_request(proxy.port, b"GET / HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 200"), raw
    assert proxy.backend.seen[-1].headers.get("Host", "") == host.decode()


@pytest.mark.parametrize("listener", ["main", "https-redirect"])
@pytest.mark.parametrize("name", sorted(CASES))
async def test_hostile_request_is_refused_and_closed(proxy, name, listener):
    data, expected = CASES[name]
    expected = expected if isinstance(expected, tuple) else (expected,)
    if listener != "main" and name in BROKEN_BODY:  # the redirect is answered from the valid head, then closed
        expected += (301,)
    raw = await raw_request(proxy.port if listener == "main" else proxy.redirect_port, data, timeout_s=5)
    status = int(raw.split(b" ", 2)[1]) if raw.startswith(b"HTTP/1.1 ") else None
    assert status in expected, raw[:200]
    assert b"Connection: close" in raw.partition(b"\r\n\r\n")[0]
    assert proxy.backend.seen == [], "a hostile request reached the upstream"


async def test_chunked_body_over_limit_while_streaming(proxy):
    chunk = b"%x\r\n%s\r\n" % (64 * 1024, b"x" * 64 * 1024)
    raw = await raw_request(proxy.port, b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n" + chunk * 20)
    head = raw.partition(b"\r\n\r\n")[0]
    assert head.startswith(b"HTTP/1.1 413") or raw == b"", raw[:200]
    assert all(len(body) <= 1 << 20 for body in proxy.backend.bodies)


async def test_slow_headers_get_408_at_the_deadline(proxy):
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    try:
        for byte in b"GET / HTTP/1.1\r\nHost: h\r\nX-Slow: " + b"a" * 100:
            writer.write(bytes([byte]))
            await writer.drain()
            try:
                got = await asyncio.wait_for(reader.read(1024), 0.25)  # one byte per 250 ms
            except asyncio.TimeoutError:
                continue
            break
        rest = await asyncio.wait_for(reader.read(), 5)
        raw = got + rest
    finally:
        writer.close()
    assert raw.startswith(b"HTTP/1.1 408"), raw
    assert 0.9 <= loop.time() - t0 <= 2.5
    assert proxy.backend.seen == []


async def test_idle_connection_without_bytes_is_closed_silently(proxy):
    raw = await raw_request(proxy.port, b"", timeout_s=3)
    assert raw == b""


def te_variants() -> list[bytes]:
    """At least 50 ways of spelling Transfer-Encoding: chunked that parsers disagree on."""
    values = [b"chunked", b"Chunked", b"CHUNKED", b" chunked", b"chunked ", b"\tchunked", b"chunked\t",
              b"chunked,", b", chunked", b"identity, chunked", b"chunked, identity", b"chunked;q=1",
              b"\x0bchunked", b"\x0cchunked", b"chunked\x0b", b"chunk", b"chunkedx", b"xchunked", b"chu nked",
              b'"chunked"', b"chunked\x00", b"\x00chunked", b"chunked\r", b"ch\x85unked", b"cHuNkEd",
              b"chunked, chunked", b"gzip, chunked", b"deflate", b"chunked\x01", b"\x7fchunked",
              b" chunked ", b"\tchunked\t", b"CHUNKED ", b"chunked;", b"chunked , chunked", b"chunked\x1f"]
    names = [b"Transfer-Encoding", b"transfer-encoding", b"TRANSFER-ENCODING", b"Transfer-Encoding ",
             b"Transfer_Encoding", b" Transfer-Encoding", b"Transfer-Encoding\t", b"X-Transfer-Encoding"]
    out = [b"%s: %s" % (b"Transfer-Encoding", v) for v in values]
    out += [b"%s: chunked" % n for n in names]
    out += [b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity",
            b"Transfer-Encoding: identity\r\nTransfer-Encoding: chunked",
            b"Transfer-Encoding:\r\n chunked", b"Transfer-Encoding: \r\n\tchunked",
            b"Transfer-Encoding: chunked\r\nContent-Length: 4", b"Content-Length: 4\r\nTransfer-Encoding: chunked",
            b"Transfer-Encoding: chunked\r\nContent-Length: 0", b"Content-Length: 4\r\nTransfer-Encoding: xchunked",
            b"Transfer-Encoding: chunked\r\nConnection: Transfer-Encoding",
            b"Transfer-Encoding: chunked \r\nContent-Length: 4"]
    return out


@pytest.mark.parametrize("mode", ["with-content-length", "te-only"])
@pytest.mark.parametrize("te", te_variants(), ids=lambda b: b.decode("latin-1").encode("unicode_escape").decode())
async def test_te_obfuscation_never_desynchronises(proxy, te, mode):
    """Router and upstream always agree on where each request ends.

    The body hides a second request after a chunked terminator. If it reaches the upstream
    as a request of its own, the router must have seen (and answered) it as one too.
    """
    smuggled = b"GET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n"
    body = b"0\r\n\r\n" + smuggled
    head = b"POST /first HTTP/1.1\r\nHost: h\r\n" + te + b"\r\n"
    if mode == "with-content-length" and b"Content-Length" not in te:
        head += b"Content-Length: %d\r\n" % len(body)
    second = b"GET /second HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
    raw = await raw_request(proxy.port, head + b"\r\n" + body + second, timeout_s=3)
    statuses = statuses_of(raw)
    assert statuses, raw
    paths = [r.path for r in proxy.backend.seen]
    answered = [s for s in statuses if s < 400]
    assert len(paths) == len(answered), (paths, statuses)  # nothing upstream the router did not answer
    if mode == "with-content-length":
        assert "/smuggled" not in paths, (paths, raw[:300])
    if paths:
        assert paths[0] == "/first"
    if statuses[0] >= 400:
        assert paths == []


async def test_pipelined_requests_answered_in_order(proxy):
    reqs = b"".join(b"GET /%d HTTP/1.1\r\nHost: h\r\n\r\n" % i for i in range(5))
    raw = await raw_request(proxy.port, reqs + b"GET /last HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert statuses_of(raw) == [200] * 6
    assert [r.path for r in proxy.backend.seen] == ["/0", "/1", "/2", "/3", "/4", "/last"]


async def _server_side(app):
    """The router's protocol object for the one client connection open."""
    await wait_for(lambda: len(app.ctx.connections) == 1, what="connection accepted")
    (conn,) = app.ctx.connections
    return conn


async def test_pipelined_requests_pause_reading_until_answered(proxy):
    """A client that pipelines without reading answers cannot make the router queue without bound."""
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        conn = await _server_side(proxy)
        # One read holding 30 requests (fed as the transport would): the first is sent upstream, the rest wait.
        conn.data_received(b"".join(b"GET /%d HTTP/1.1\r\nHost: h\r\n\r\n" % i for i in range(30)))
        assert len(conn.queue) == 29 and not conn.transport.is_reading()
        raw = b""
        while raw.count(b"HTTP/1.1 200") < 30:
            raw += await asyncio.wait_for(reader.read(65536), 5)
        await wait_for(lambda: conn.transport.is_reading(), what="reading resumed")
        writer.write(b"GET /after HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        rest = await asyncio.wait_for(reader.read(), 5)
        assert statuses_of(raw + rest) == [200] * 31
        assert [r.path for r in proxy.backend.seen] == [f"/{i}" for i in range(30)] + ["/after"]
    finally:
        writer.close()


async def test_too_many_pipelined_requests_in_one_read_get_429(proxy):
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        conn = await _server_side(proxy)
        conn.data_received(b"GET /p HTTP/1.1\r\nHost: h\r\n\r\n" * 1200)
        assert len(conn.queue) == 1001  # 1000 waiting and the refusal, answered in order after them
        raw = b""
        while True:
            chunk = await asyncio.wait_for(reader.read(65536), 10)
            if not chunk:
                break
            raw += chunk
        statuses = statuses_of(raw)
        assert statuses == [200] * 1001 + [429], statuses[-3:]
        assert b"too many pipelined requests" in raw and len(proxy.backend.seen) == 1001
    finally:
        writer.close()


TRAILED = (b"POST /trailed HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n"
           b"Host: evil\r\nX-Injected: yes\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n")


@pytest.mark.parametrize("before", [b"", b"GET /first HTTP/1.1\r\nHost: h\r\n\r\n"], ids=["alone", "pipelined"])
async def test_request_trailers_never_become_upstream_headers(proxy, before):
    """Trailer fields arrive after the head, but before the head goes upstream when the request waits
    (for a connection, or its turn in a pipeline): they must not join it. They are dropped."""
    raw = await raw_request(proxy.port, before + TRAILED + b"GET /after HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert statuses_of(raw) == [200] * (3 if before else 2), raw
    seen = {r.path: r for r in proxy.backend.seen}
    trailed = seen["/trailed"]
    assert trailed.headers.getall("Host") == ["h"] and "X-Injected" not in trailed.headers
    assert trailed.headers.getall("X-Forwarded-For") == ["127.0.0.1"]
    assert proxy.backend.bodies[list(seen).index("/trailed")] == b"abc"
    assert "/after" in seen


async def test_bad_request_after_good_one_gets_both_answers(proxy):
    raw = await raw_request(proxy.port, b"GET /ok HTTP/1.1\r\nHost: h\r\n\r\nGET / HTTP/1.1\r\nHost : h\r\n\r\n")
    assert statuses_of(raw) == [200, 400], raw


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(min_size=1, max_size=600))
async def test_random_bytes_never_kill_the_worker_or_leak(proxy, data, caplog):
    caplog.clear()  # (one fixture for every example)
    raw = await raw_request(proxy.port, data, timeout_s=0.3)
    assert not raw.startswith(b"HTTP/1.1 500"), raw  # a fault of the router's own, not a refusal
    await wait_for(lambda: not proxy.ctx.connections, timeout_s=3, what="connection cleanup")
    ok = await raw_request(proxy.port, b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert ok.startswith(b"HTTP/1.1 200")
    assert not loop_errors(caplog), (data, caplog.text[-2000:])


# Request-shaped input: real methods, targets, versions and the headers the router interprets, with
# the spellings parsers disagree on, so the fuzzing reaches past the request line into the router's
# own checks, routing and framing.
_TOKENS = st.sampled_from
_METHOD = _TOKENS([b"GET", b"POST", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"CONNECT", b"get", b"PATCH", b"G\x00T"])
_TARGET = _TOKENS([b"/", b"/a?b=1", b"*", b"http://h/x", b"HTTPS://h:1/", b"http://[::1]/", b"http://u@h/",
                   b"//x", b"/%00", b"http://h?q", b"ftp://h/", b"/\xff", b"http://[::1/", b"/moved/x",
                   b"/a/../moved", b"/moved/%2e%2e/x"])
_VERSION = _TOKENS([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.10", b"http/1.1"])
_NAME = _TOKENS([b"Host", b"host", b"Transfer-Encoding", b"Content-Length", b"Connection", b"Expect", b"Upgrade",
                 b"X-Forwarded-For", b"Forwarded", b"Keep-Alive", b"TE", b"Trailer", b"X-Any", b"Host ", b"X\x01"])
_VALUE = st.one_of(_TOKENS([b"h", b"chunked", b" chunked", b"chunked, gzip", b"0", b"5", b"-1", b"10, 10", b"close",
                            b"keep-alive, Upgrade", b"upgrade", b"websocket", b"100-continue", b"Host", b"h:80",
                            b"[::1]:80", b"a/b", b"1.2.3.4", b""]), st.binary(max_size=12))
_BODY = _TOKENS([b"", b"hello", b"5\r\nhello\r\n0\r\n\r\n", b"0\r\n\r\n", b"zz\r\n", b"5;x=y\r\nhello\r\n0\r\n\r\n",
                 b"2\r\nhi\r\n0\r\nX-Trailer-Only: t\r\n\r\n", b"0\r\nHost: evil\r\n\r\n"])  # trailers: dropped


@st.composite
def _requests(draw):
    out = b""
    for _ in range(draw(st.integers(1, 3))):  # sometimes pipelined
        eol = draw(_TOKENS([b"\r\n"] * 12 + [b"\n", b"\r"]))
        plain = draw(st.integers(0, 3)) > 0  # mostly well-formed, so the input gets past the parser
        line = draw(_TOKENS([b"GET / HTTP/1.1", b"POST /c HTTP/1.1" + eol + b"Transfer-Encoding: chunked",
                             b"GET /moved HTTP/1.1", b"POST /moved/x HTTP/1.1" + eol + b"Content-Length: 5",
                             b"GET / HTTP/1.1" + eol + b"Connection: close"]))
        head = (line if plain else draw(_METHOD) + b" " + draw(_TARGET) + b" " + draw(_VERSION)) + eol
        if draw(st.integers(0, 4)) > 0:
            head += b"Host: h" + eol
        for name, value in draw(st.lists(st.tuples(_NAME, _VALUE), max_size=4)):
            head += name + b": " + value + eol
        out += head + eol + draw(_BODY)
    return out


@fuzz_settings
@given(data=_requests())
async def test_request_shaped_input_is_answered_never_faulted(proxy, data, caplog):
    caplog.clear()  # (one fixture for every example)
    raw = await raw_request(proxy.port, data, timeout_s=0.3)
    assert b"\r\n\r\ninternal error\n" not in raw, raw  # the router's own fault, not a refusal
    if raw:
        assert raw.startswith(b"HTTP/1.1 "), raw
    # Nothing from a trailer section reached a cluster as a header (the backend refuses a second Host).
    assert b"Duplicate 'Host'" not in raw, (data, raw)
    assert not any("X-Trailer-Only" in seen.headers for seen in proxy.backend.seen), data
    await wait_for(lambda: not proxy.ctx.connections, timeout_s=3, what="connection cleanup")
    ok = await raw_request(proxy.port, b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert ok.startswith(b"HTTP/1.1 200")
    assert not loop_errors(caplog), (data, caplog.text[-2000:])


async def _answers(port: int, pieces: list[bytes], proxy) -> list[int]:
    """Statuses of the answers to `pieces`, handed to the router as separate reads."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        conn = await _server_side(proxy)
        for piece in pieces:
            if conn.closed or conn.lingering or conn.transport.is_closing():
                break
            conn.data_received(piece)
        return statuses_of(await read_until_close(reader, 0.3))
    finally:
        writer.close()
        await wait_for(lambda: not proxy.ctx.connections, timeout_s=3, what="connection cleanup")


@fuzz_settings
@given(data=_requests(), cuts=st.lists(st.integers(1, 40), min_size=1, max_size=12))
async def test_request_split_across_reads_is_answered_the_same(proxy, data, cuts):
    """However the bytes are cut into reads, the router answers as it does to one read."""
    whole = await _answers(proxy.port, [data], proxy)
    split = await _answers(proxy.port, cut(data, cuts), proxy)
    assert split == whole, (split, whole)


async def test_chunk_extensions_cannot_stand_in_for_a_body(proxy):
    """Chunk extensions are discarded, so without a bound a client could send reads without end for a body
    of a few bytes: past 16 KiB plus 16 bytes per data byte of non-data, 400, and the upstream never gets a
    whole request."""
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"POST /ext HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n1\r\nx\r\n")
    raw = b""
    for _ in range(200):  # up to 800 KB of extensions for 200 bytes of data
        writer.write(b"1;" + b"e" * 4000 + b"\r\nx\r\n")
        await writer.drain()
        try:
            raw = await asyncio.wait_for(reader.read(65536), 0.02)
            break
        except asyncio.TimeoutError:
            continue
    raw += await read_until_close(reader, 5)
    writer.close()
    assert raw.startswith(b"HTTP/1.1 400"), raw[:200]
    assert b"chunk extensions" in raw
    assert not any(seen.path == "/ext" for seen in proxy.backend.seen)  # never completed upstream


async def test_one_byte_chunks_pass(proxy):
    """A client that streams a byte per chunk (5 bytes of framing each) is within the allowance."""
    body = b"".join(b"1\r\n%c\r\n" % (97 + i % 26) for i in range(3000)) + b"0\r\n\r\n"
    raw = await raw_request(proxy.port, b"POST /bytes HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n"
                                        b"Connection: close\r\n\r\n" + body)
    assert raw.startswith(b"HTTP/1.1 200"), raw[:200]
    assert len(proxy.backend.bodies[-1]) == 3000
