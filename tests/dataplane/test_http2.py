"""HTTP/2 from clients (Router `http2`): requests served as their HTTP/1.1 equivalents over TLS (ALPN) and in
clear text (prior knowledge), flow control both ways, and hostile clients refused without reaching a cluster."""
import asyncio
import contextlib
import json

import pytest
from aiohttp import web
from h2.config import H2Configuration
from h2.errors import ErrorCodes
from hpack import Encoder
from hyperframe.frame import (ContinuationFrame, DataFrame, Frame, GoAwayFrame, HeadersFrame, PriorityFrame,
                              RstStreamFrame, SettingsFrame, WindowUpdateFrame)
from hypothesis import given, strategies as st

from router.config.errors import ConfigError
from router.config.loader import load_config
from router.dataplane.h2head import PREFACE
from tests.conftest import (cluster_docs, fuzz_settings, loop_errors, raw_request, read_until_close, response_of,
                            router_doc, serve_app, split_doc, wait_for)
from tests.dataplane.test_tls import ca, client_context, write_pair  # noqa: F401 - ca is a fixture
from tests.h2client import H2Client
from tests.integration.test_hedge import idle

H2C = {"http2": {"cleartext": True}}


def rejected(app, reason: str) -> float:
    return app.metrics.registry.get_sample_value("router_rejected_requests_total",
                                                 {"code": "0", "reason": reason}) or 0.0


@pytest.fixture
async def h2c_router(backends, router):
    (b,) = await backends("a")
    app = await router(cluster_docs({"a": b.port}) + split_doc({"a": 1}) + router_doc(**H2C))
    app.backend = b
    return app


async def test_requests_over_cleartext_http2_reach_the_cluster_as_http11(h2c_router):
    app, b = h2c_router, h2c_router.backend
    client = await H2Client.open(app.port)
    try:
        got = await client.get("/x?q=1", headers=[("cookie", "a=1"), ("cookie", "b=2"), ("accept", "text/plain")])
        assert got.status == 200 and bytes(got.data) == b"a:0" and got.headers[b"x-router-cluster"] == b"a"
        assert b"connection" not in got.headers and b"transfer-encoding" not in got.headers
        seen = b.seen[-1]
        assert seen.path_qs == "/x?q=1" and seen.version == (1, 1) and seen.headers["Host"] == "h"
        assert seen.headers["Cookie"] == "a=1; b=2" and seen.headers["X-Forwarded-Proto"] == "http"
        assert seen.headers["Via"] == "2 edge-router"  # received over HTTP/2 (RFC 9110 7.6.3)
        # a body of unknown length goes on chunked; one with content-length as it is
        got = await client.post("/up", b"x" * 100_000)
        assert got.status == 200 and bytes(got.data) == b"a:100000" and b.bodies[-1] == b"x" * 100_000
        assert b.seen[-1].headers.get("Transfer-Encoding") == "chunked"
        got = await client.response(client.request("PUT", "/up", headers=[("content-length", "5")], body=b"hello"))
        assert got.status == 200 and b.bodies[-1] == b"hello" and b.seen[-1].headers["Content-Length"] == "5"
        # HEAD: the head only, its length kept
        got = await client.response(client.request("HEAD", "/h"))
        assert got.status == 200 and got.data == b"" and got.headers[b"content-length"] == b"3"
        assert got.ended and got.reset is None  # ended with END_STREAM, not a reset
        # many streams at once on one connection, each answered as itself
        sids = {client.request("GET", f"/p{i}"): i for i in range(40)}
        for sid in sids:
            assert (await client.response(sid)).status == 200
        assert sorted(r.path for r in b.seen[-40:]) == sorted(f"/p{i}" for i in range(40))
    finally:
        client.close()
    await wait_for(lambda: not app.ctx.connections, what="the connection and its streams closed")


async def test_expect_100_continue_is_an_informational_response(h2c_router):
    app, b = h2c_router, h2c_router.backend
    client = await H2Client.open(app.port)
    sid = client.request("POST", "/up", headers=[("expect", "100-continue"), ("content-length", "5")], end=False)
    await client.pump(lambda: client.streams[sid].informational, 3)  # the cluster's 100, before any body
    assert client.streams[sid].informational[0][b":status"] == b"100" and b":status" not in client.streams[sid].headers
    await client.send_body(sid, b"hello")
    got = await client.response(sid)
    assert got.status == 200 and bytes(got.data) == b"a:5" and b.bodies[-1] == b"hello"
    client.close()


async def test_http2_stays_on_until_the_next_start_when_a_reload_removes_it(h2c_router):
    app = h2c_router
    (app.config_dir / "router.yaml").write_text(cluster_docs({"a": app.backend.port}) + split_doc({"a": 1}))
    result = await app.reloader.reload("test")
    assert result["ok"] and result["next_start"] == ["Router spec.http2"]
    client = await H2Client.open(app.port)  # the listener still takes HTTP/2, with the default settings
    got = await client.get("/after")
    assert got.status == 200 and bytes(got.data) == b"a:0"
    client.close()


async def test_the_access_log_names_the_protocol(backends, router, tmp_path):
    (b,) = await backends("a")
    log_path = tmp_path / "access.log"
    app = await router(cluster_docs({"a": b.port}) + split_doc({"a": 1}) +
                       router_doc(accessLog={"path": str(log_path)}, **H2C))
    client = await H2Client.open(app.port)
    assert (await client.get("/over-h2")).status == 200
    assert (await client.get("/", headers=[(f"x-{i}", "v") for i in range(120)])).status == 431  # refused: logged too
    client.close()
    await raw_request(app.port, b"GET /over-h1 HTTP/1.0\r\nHost: h\r\n\r\n")
    lines = await wait_for(lambda: log_path.exists() and len(log_path.read_text().splitlines()) == 3
                           and [json.loads(line) for line in log_path.read_text().splitlines()], what="3 lines")
    assert [(line["path"], line["status"], line["protocol"]) for line in lines] == [
        ("/over-h2", 200, "HTTP/2"), ("/", 431, "HTTP/2"), ("/over-h1", 200, "HTTP/1.0")]


async def test_http11_clients_are_served_beside_http2_on_the_cleartext_listener(h2c_router):
    app = h2c_router
    status, headers, body = response_of(await raw_request(app.port, b"GET / HTTP/1.1\r\nHost: h\r\n"
                                                                    b"Connection: close\r\n\r\n"))
    assert status == 200 and body == b"a:0"
    # one byte at a time: the listener reads no further than the first byte that is not the preface's
    reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
    for byte in b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n":
        writer.write(bytes([byte]))
        await writer.drain()
    assert response_of(await reader.read())[0] == 200
    writer.close()
    # a request that begins as the preface does and then differs is HTTP/1.x, refused as such
    raw = await raw_request(app.port, b"PRI * HTTP/1.1\r\nHost: h\r\n\r\n")
    assert response_of(raw)[0] == 400 and len(app.backend.seen) == 2


async def test_http2_is_negotiated_by_alpn_on_the_tls_listener(backends, router, ca, tmp_path):  # noqa: F811
    (b,) = await backends("a")
    cert, key, _ = write_pair(tmp_path, ca)
    app = await router(cluster_docs({"a": b.port}) + split_doc({"a": 1}) +
                       router_doc(tls={"certFile": cert, "keyFile": key}, http2={}))
    client = await H2Client.open(app.port, client_context(ca))
    assert client.writer.get_extra_info("ssl_object").selected_alpn_protocol() == "h2"
    got = await client.get("/secure")
    assert got.status == 200 and bytes(got.data) == b"a:0" and b.seen[-1].headers["X-Forwarded-Proto"] == "https"
    client.close()
    # a client offering only HTTP/1.1 gets it
    only11 = client_context(ca)
    only11.set_alpn_protocols(["http/1.1"])
    reader, writer = await asyncio.open_connection("127.0.0.1", app.port, ssl=only11, server_hostname="localhost")
    assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == "http/1.1"
    writer.write(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert response_of(await reader.read())[0] == 200
    writer.close()
    await wait_for(lambda: not app.ctx.connections, what="connections closed")


async def test_http2_behind_the_proxy_protocol_keeps_the_headers_client(backends, router, ca, tmp_path):  # noqa: F811
    (b,) = await backends("a")
    cert, key, _ = write_pair(tmp_path, ca)
    app = await router(cluster_docs({"a": b.port}) + split_doc({"a": 1}) +
                       router_doc(proxyProtocol=True, tls={"certFile": cert, "keyFile": key}, http2={},
                                  limits={"maxConnectionsPerClient": 1}))
    reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
    writer.write(b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 443\r\n")
    await writer.start_tls(client_context(ca), server_hostname="localhost")
    assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == "h2"
    client = H2Client(reader, writer)
    client.h2.initiate_connection()
    client.flush()
    sids = [client.request("GET", f"/{i}") for i in range(3)]  # streams hold no place of their own
    assert [(await client.response(sid)).status for sid in sids] == [200] * 3
    assert {r.headers["X-Forwarded-For"] for r in b.seen} == {"203.0.113.7"}
    assert app.ctx.per_client == {"203.0.113.7": 1}
    client.close()
    await wait_for(lambda: not app.ctx.connections and not app.ctx.per_client, what="its place given back")


async def test_the_routers_own_answers_and_limits_apply_per_stream(backends, router):
    (b,) = await backends("a")
    app = await router(cluster_docs({"a": b.port, "down": 1}) + split_doc({"a": 1}) +
                       split_doc({"down": 1}, name="gone", hosts=["gone"]) +
                       router_doc(limits={"maxBody": "1Ki", "maxHeaders": 20}, **H2C))
    client = await H2Client.open(app.port)
    try:
        got = await client.get("/", authority="gone")  # its only cluster refuses connections
        assert got.status == 502 and bytes(got.data).startswith(b"no healthy cluster left for route gone")
        got = await client.post("/", b"x" * 5000)
        assert got.status == 413 and got.ended
        got = await client.get("/", headers=[(f"x-h{i}", "v") for i in range(30)])
        assert got.status == 431
        got = await client.get("/", headers=[("x-big", "v" * 70_000)])  # over maxHeaderBytes (64 KiB): 431 too
        assert got.status == 431
        got = await client.response(client.request("CONNECT", "/", authority="example.com:443"))
        assert got.status == 405 and bytes(got.data).startswith(b"CONNECT is not supported")  # as over HTTP/1.1
        sid = client.request("CONNECT", "/", authority="example.com:443", end=False)  # a tunnel's opening
        client.h2.send_data(sid, b"tunnel bytes")
        client.flush()
        got = await client.response(sid)
        assert got.status == 405 and got.ended
        assert app.metrics.registry.get_sample_value("router_rejected_requests_total",
                                                     {"code": "405", "reason": "CONNECT is not supported"}) == 2
        assert (await client.get("/fine")).status == 200  # the connection serves on
    finally:
        client.close()
    assert [r.path for r in b.seen] == ["/fine"]


def lax_client_config() -> H2Configuration:
    """A client that sends what h2 would refuse to: header validation off."""
    return H2Configuration(client_side=True, header_encoding=None, validate_outbound_headers=False,
                           normalize_outbound_headers=False)


@pytest.mark.parametrize("bad", [
    [("x-evil", "a\r\nx-injected: 1")],  # a line break would add a header to the HTTP/1.1 request
    [("x-nul", "a\x00b")],
    [("host", "other")],  # differs from :authority
])
async def test_malformed_requests_are_reset_and_reach_no_cluster(h2c_router, bad):
    app, b = h2c_router, h2c_router.backend
    client = await H2Client.open(app.port)
    client.h2.config = lax_client_config()
    sid = client.request("GET", "/bad", headers=bad)
    try:
        await client.pump(lambda: client.streams[sid].done or client.goaway is not None)
    except ConnectionError:
        pass
    stream = client.streams[sid]
    assert (stream.reset == ErrorCodes.PROTOCOL_ERROR
            or (client.goaway is not None and client.goaway.error_code == ErrorCodes.PROTOCOL_ERROR))
    assert b.seen == [] and b":status" not in stream.headers
    client.close()
    await wait_for(lambda: not app.ctx.connections, what="nothing left open")


REQUEST = [(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"http"), (b":authority", b"h")]


def header_flood(kind: str) -> list[Frame]:
    if kind == "continuation":  # a header block that never ends (CVE-2024-27316's shape): 100 CONTINUATIONs
        block = Encoder().encode(REQUEST + [(b"x-pad%d" % i, b"v" * 100) for i in range(100)])  # (none empty)
        return [HeadersFrame(1, data=block[:16], flags=["END_STREAM"])] + [
            ContinuationFrame(1, data=block[16 * i:16 * (i + 1)]) for i in range(1, 101)]
    if kind == "hpack bomb":  # 4 KB indexed once, then named 40 times by one byte each: 160 KB decoded
        return [HeadersFrame(1, data=Encoder().encode(REQUEST + [(b"x-big", b"v" * 4000)] * 40),
                             flags=["END_HEADERS", "END_STREAM"])]
    return [HeadersFrame(1, data=Encoder().encode(REQUEST)[:8], flags=["END_STREAM"])]  # then nothing more


async def raw_h2(port: int, frames: list[Frame] | None = None, streams: int = 0):
    """A connection that sent the preface, an empty SETTINGS, `frames` and `streams` GET requests (streams 1,
    3, ...) without reading anything; (reader, writer, encoder) for more of its own."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    encoder = Encoder()
    frames = list(frames or ()) + [HeadersFrame(1 + 2 * i, data=encoder.encode(REQUEST),
                                                flags=["END_HEADERS", "END_STREAM"]) for i in range(streams)]
    writer.write(PREFACE + SettingsFrame(0).serialize() + b"".join(frame.serialize() for frame in frames))
    return reader, writer, encoder


async def more(reader: asyncio.StreamReader) -> bytes:
    """The next bytes the router sends; its closing the connection fails the test (rather than spinning on EOF
    past the test's own deadline)."""
    chunk = await reader.read(65536)
    assert chunk, "the router closed the connection"
    return chunk


def frames_of(data: bytes) -> list[Frame]:
    """The whole frames in `data` (a frame still arriving at its end is left out)."""
    frames = []
    while len(data) >= 9:
        frame, length = Frame.parse_frame_header(memoryview(data[:9]))
        if len(data) < 9 + length:
            break
        frame.parse_body(memoryview(data[9:9 + length]))
        frames.append(frame)
        data = data[9 + length:]
    return frames


@pytest.mark.parametrize("kind,code", [("continuation", ErrorCodes.PROTOCOL_ERROR),
                                       ("hpack bomb", ErrorCodes.ENHANCE_YOUR_CALM),
                                       ("unfinished", ErrorCodes.NO_ERROR)])
async def test_header_blocks_that_flood_or_never_end_close_the_connection(backends, router, kind, code):
    (b,) = await backends("a")
    app = await router(cluster_docs({"a": b.port}) + split_doc({"a": 1}) +
                       router_doc(timeouts={"headerRead": "300ms"}, **H2C))
    reader, writer, _ = await raw_h2(app.port, header_flood(kind))
    got = frames_of(await read_until_close(reader, 5))  # (the router closes: read_until_close returns at once)
    writer.close()
    assert isinstance(got[-1], GoAwayFrame) and got[-1].error_code == code
    assert not any(isinstance(frame, HeadersFrame) for frame in got) and b.seen == []
    assert rejected(app, "http2 protocol error") == (0 if kind == "unfinished" else 1)
    await wait_for(lambda: not app.ctx.connections, what="nothing left open")
    client = await H2Client.open(app.port)
    assert (await client.get("/")).status == 200
    client.close()


async def test_streams_over_the_limit_are_refused_and_the_connection_serves_on(h2c_router):
    """150 requests sent before the router's SETTINGS (limit 100) could be read: the 50 over the limit are
    refused with REFUSED_STREAM (safe to send again, RFC 9113 5.1.2), not the connection ended."""
    app, b = h2c_router, h2c_router.backend
    reader, writer, encoder = await raw_h2(app.port, streams=150)
    data = b""
    async with asyncio.timeout(5):
        while True:
            data += await more(reader)
            got = frames_of(data)
            if sum(isinstance(f, DataFrame) and "END_STREAM" in f.flags or isinstance(f, RstStreamFrame)
                   for f in got) >= 150:
                break
    refused = [f.stream_id for f in got if isinstance(f, RstStreamFrame)]
    answered = [f.stream_id for f in got if isinstance(f, DataFrame) and "END_STREAM" in f.flags]
    assert len(answered) == 100 and len(refused) == 50 and set(refused).isdisjoint(answered)
    assert all(f.error_code == ErrorCodes.REFUSED_STREAM for f in got if isinstance(f, RstStreamFrame))
    assert not any(isinstance(f, GoAwayFrame) for f in got) and len(b.seen) == 100
    assert rejected(app, "http2 refused stream") == 50
    writer.write(HeadersFrame(301, data=encoder.encode(REQUEST), flags=["END_HEADERS", "END_STREAM"]).serialize())
    async with asyncio.timeout(5):  # the connection serves on: the next stream is answered
        while not any(isinstance(f, DataFrame) and f.stream_id == 301 for f in frames_of(data)):
            data += await more(reader)
    writer.close()
    # refused streams count toward the rapid-reset bound: 250 at once is 150 refused, over it
    reader, writer, _ = await raw_h2(app.port, streams=250)
    got = frames_of(await read_until_close(reader, 5))
    writer.close()
    assert isinstance(got[-1], GoAwayFrame) and got[-1].error_code == ErrorCodes.ENHANCE_YOUR_CALM
    await wait_for(lambda: not app.ctx.connections, what="nothing left open")


def flood(kind: str) -> list[Frame]:
    if kind == "empty DATA":  # a request that stays open, then DATA frames of nothing (CVE-2019-9518)
        return [HeadersFrame(1, data=Encoder().encode(REQUEST), flags=["END_HEADERS"]), DataFrame(1), DataFrame(1)]
    if kind == "PRIORITY":  # (CVE-2019-9513)
        return [PriorityFrame(1 + 2 * i, depends_on=0, stream_weight=16) for i in range(101)]
    return [WindowUpdateFrame(0, window_increment=1) for _ in range(6)]


@pytest.mark.parametrize("kind", ["empty DATA", "PRIORITY", "WINDOW_UPDATE"])
async def test_frames_that_carry_nothing_are_a_flood(h2c_router, kind):
    app, b = h2c_router, h2c_router.backend
    reader, writer, _ = await raw_h2(app.port, flood(kind))
    got = frames_of(await read_until_close(reader, 5))
    writer.close()
    assert isinstance(got[-1], GoAwayFrame) and got[-1].error_code == ErrorCodes.ENHANCE_YOUR_CALM
    assert rejected(app, "http2 flood") == 1
    await wait_for(lambda: not app.ctx.connections and idle(app), what="nothing left open")
    # within the limits: one empty DATA, then the body; a few PRIORITY and WINDOW_UPDATE frames
    body = [HeadersFrame(1, data=Encoder().encode([(b":method", b"POST")] + REQUEST[1:]), flags=["END_HEADERS"]),
            DataFrame(1), DataFrame(1, data=b"hello", flags=["END_STREAM"]),
            PriorityFrame(3, depends_on=0, stream_weight=16), WindowUpdateFrame(0, window_increment=1000)]
    reader, writer, _ = await raw_h2(app.port, body)
    async with asyncio.timeout(5):
        data = b""
        while not any(isinstance(f, DataFrame) and "END_STREAM" in f.flags for f in frames_of(data)):
            data += await more(reader)
    writer.close()
    assert b"".join(f.data for f in frames_of(data) if isinstance(f, DataFrame)) == b"a:5"
    assert rejected(app, "http2 flood") == 1 and b.bodies[-1] == b"hello"


async def test_a_client_acknowledging_every_data_frame_is_no_flood(router):
    """WINDOW_UPDATEs grow with the DATA frames the router sends: a client that opens both windows after each
    frame (two updates a frame, 32 for a 256 KiB answer) downloads the whole response."""
    big = b"z" * (256 * 1024)
    async with body_cluster(big) as port:
        app = await router(cluster_docs({"a": port}) + split_doc({"a": 1}) + router_doc(**H2C))
        reader, writer, _ = await raw_h2(app.port, streams=1)
        received, data, acked = 0, b"", 0
        async with asyncio.timeout(5):
            while received < len(big):
                data += await more(reader)
                frames = [f for f in frames_of(data) if isinstance(f, DataFrame)]
                for f in frames[acked:]:
                    received += len(f.data)
                    writer.write(WindowUpdateFrame(0, window_increment=len(f.data)).serialize()
                                 + WindowUpdateFrame(1, window_increment=len(f.data)).serialize())
                acked = len(frames)
        writer.close()
        assert received == len(big) and rejected(app, "http2 flood") == 0 and acked >= 16


async def test_rapid_reset_ends_the_connection(h2c_router):
    app = h2c_router
    client = await H2Client.open(app.port)
    for _ in range(150):  # open and cancel at once, never waiting for an answer
        sid = client.request("GET", "/slow")
        client.h2.reset_stream(sid, ErrorCodes.CANCEL)
    client.flush()
    await client.pump(lambda: client.goaway is not None, 5)
    assert client.goaway.error_code == ErrorCodes.ENHANCE_YOUR_CALM
    assert rejected(app, "http2 rapid reset") == 1
    client.close()
    await wait_for(lambda: not app.ctx.connections and not app.ctx.inflight.get("a"), what="all let go")


async def test_streams_that_finish_are_not_counted_as_resets(h2c_router):
    app = h2c_router
    client = await H2Client.open(app.port)
    for _ in range(3):  # 3 x 60 requests answered, then reset after their answer: never a rapid reset
        sids = [client.request("GET", "/") for _ in range(60)]
        for sid in sids:
            await client.response(sid)
    assert client.goaway is None and rejected(app, "http2 rapid reset") == 0
    client.close()


@contextlib.asynccontextmanager
async def body_cluster(body: bytes):
    """A cluster answering every GET with `body`; yields its port."""
    async def handle(request):
        return web.Response(body=body)

    cluster = web.Application()
    cluster.router.add_get("/{tail:.*}", handle)
    runner, port = await serve_app(cluster)
    try:
        yield port
    finally:
        await runner.cleanup()


async def test_flow_control_holds_a_response_until_the_client_opens_its_window(backends, router):
    big = b"z" * (1 << 20)
    async with body_cluster(big) as port:
        app = await router(cluster_docs({"a": port}) + split_doc({"a": 1}) + router_doc(**H2C))
        client = await H2Client.open(app.port, ack_data=False)  # the window is never reopened
        sid = client.request("GET", "/big")
        with pytest.raises(TimeoutError):
            await client.pump(lambda: client.streams[sid].done, 1.0)
        stream = client.streams[sid]
        assert stream.status == 200 and len(stream.data) == 65535  # the default window, no byte more
        client.ack_data = True
        client.h2.acknowledge_received_data(len(stream.data), sid)  # now the rest flows
        client.h2.increment_flow_control_window(1 << 20)
        client.h2.increment_flow_control_window(1 << 20, sid)
        client.flush()
        await client.response(sid, 5)
        assert bytes(stream.data) == big and stream.ended
        client.close()
        await wait_for(lambda: not app.ctx.connections, what="closed")


async def test_a_response_the_client_never_lets_through_is_reset_after_body_idle(backends, router):
    # a whole response the router holds (under its 256 KiB write limit): its exchange is over
    async with body_cluster(b"z" * 200_000) as port:
        app = await router(cluster_docs({"a": port}) + split_doc({"a": 1}) +
                           router_doc(timeouts={"bodyIdle": "300ms"}, **H2C))
        client = await H2Client.open(app.port, ack_data=False)  # takes 65,535 bytes, then never opens its window
        sid = client.request("GET", "/big")
        await client.pump(lambda: client.streams[sid].done, 3)
        stream = client.streams[sid]
        assert stream.reset == ErrorCodes.CANCEL and len(stream.data) == 65535 and not stream.ended
        h2conn = next(c for c in app.ctx.connections if hasattr(c, "streams"))
        await wait_for(lambda: not h2conn.streams and len(app.ctx.connections) == 1, what="only the connection left")
        client.close()
        await wait_for(lambda: not app.ctx.connections, what="closed")


async def test_an_upload_larger_than_the_window_passes_as_the_cluster_reads_it(h2c_router):
    app, b = h2c_router, h2c_router.backend
    client = await H2Client.open(app.port)
    body = bytes(range(256)) * (16 * 1024)  # 4 MiB: the connection's window four times, many stream windows
    sid = client.request("POST", "/up", end=False)
    await client.send_body(sid, body)
    got = await client.response(sid, 10)
    assert got.status == 200 and bytes(got.data) == b"a:%d" % len(body) and b.bodies[-1] == body
    client.close()


async def test_an_idle_connection_gets_goaway_and_is_closed(backends, router):
    (b,) = await backends("a")
    app = await router(cluster_docs({"a": b.port}) + split_doc({"a": 1}) +
                       router_doc(timeouts={"idle": "300ms"}, **H2C))
    client = await H2Client.open(app.port)
    assert (await client.get("/")).status == 200
    await client.pump(lambda: client.closed, 3)
    assert client.goaway is not None and client.goaway.error_code == ErrorCodes.NO_ERROR
    await wait_for(lambda: not app.ctx.connections, what="closed")


async def test_drain_lets_open_streams_finish_and_refuses_new_ones(backends, router):
    (b,) = await backends("a")
    b.delay_s = 0.3
    app = await router(cluster_docs({"a": b.port}) + split_doc({"a": 1}) + router_doc(**H2C))
    client = await H2Client.open(app.port)
    first = client.request("GET", "/in-flight")
    await wait_for(lambda: len(b.seen) == 1, what="the request reached the cluster")
    app.ctx.start_drain()
    await client.pump(lambda: client.goaway is not None, 3)
    assert client.goaway.last_stream_id == first
    got = await client.response(first, 3)
    assert got.status == 200 and bytes(got.data) == b"a:0"
    await client.pump(lambda: client.closed, 3)
    await wait_for(lambda: not app.ctx.connections, what="closed")


async def test_streams_hold_no_place_under_max_connections_per_client(backends, router):
    (b,) = await backends("a")
    b.delay_s = 0.1
    app = await router(cluster_docs({"a": b.port}) + split_doc({"a": 1}) +
                       router_doc(limits={"maxConnectionsPerClient": 2}, **H2C))
    client = await H2Client.open(app.port)
    sids = [client.request("GET", f"/{i}") for i in range(10)]  # ten at once on the client's one connection
    assert [(await client.response(sid)).status for sid in sids] == [200] * 10
    assert app.ctx.per_client == {"127.0.0.1": 1}
    client.close()
    await wait_for(lambda: not app.ctx.connections and not app.ctx.per_client, what="its place given back")


async def test_a_clients_goaway_lets_its_open_streams_finish(backends, router, caplog):
    """A client (a load balancer draining its connection) sends GOAWAY with a request in flight: the request
    is answered, then the router sends its own GOAWAY and closes (RFC 9113 6.8). With an error code, the
    client wants nothing more: its streams end at once."""
    (b,) = await backends("a")
    b.delay_s = 0.2
    app = await router(cluster_docs({"a": b.port}) + split_doc({"a": 1}) + router_doc(**H2C))
    reader, writer, _ = await raw_h2(app.port, streams=1)
    await wait_for(lambda: len(b.seen) == 1, what="the request reached the cluster")
    bye = GoAwayFrame(0)
    bye.last_stream_id, bye.error_code = 0, ErrorCodes.NO_ERROR
    writer.write(bye.serialize())
    got = frames_of(await read_until_close(reader, 5))
    writer.close()
    answer = [f for f in got if isinstance(f, DataFrame) and f.stream_id == 1]
    assert answer and "END_STREAM" in answer[-1].flags and b"".join(f.data for f in answer) == b"a:0"
    assert isinstance(got[-1], GoAwayFrame) and got[-1].error_code == ErrorCodes.NO_ERROR
    assert got[-1].last_stream_id == 1 and not any(isinstance(f, RstStreamFrame) for f in got)
    await wait_for(lambda: not app.ctx.connections and idle(app), what="all let go")

    reader, writer, _ = await raw_h2(app.port, streams=1)  # with an error code: ended at once
    await wait_for(lambda: len(b.seen) == 2, what="the request reached the cluster")
    bye.error_code = ErrorCodes.INTERNAL_ERROR
    writer.write(bye.serialize())
    got = frames_of(await read_until_close(reader, 5))
    writer.close()
    assert not any(isinstance(f, DataFrame) for f in got)
    await wait_for(lambda: not app.ctx.connections and idle(app), what="the stream and its try let go")
    assert loop_errors(caplog) == []


async def test_max_requests_per_connection_sends_goaway_after_the_last(backends, router):
    (b,) = await backends("a")
    app = await router(cluster_docs({"a": b.port}) + split_doc({"a": 1}) +
                       router_doc(limits={"maxRequestsPerConnection": 3}, **H2C))
    client = await H2Client.open(app.port)
    sids = [client.request("GET", f"/{i}") for i in range(3)]
    for sid in sids:
        assert (await client.response(sid)).status == 200
    assert client.goaway is not None and client.goaway.last_stream_id == sids[-1]
    await client.pump(lambda: client.closed, 3)


def test_http2_config_is_checked(tmp_path):
    path = tmp_path / "r.yaml"
    cases = [
        (router_doc(http2={}), "spec.http2: HTTP/2 is offered by ALPN on the TLS listener"),
        (router_doc(http2={"maxConcurrentStreams": 0, "cleartext": True}), "expected a number of streams"),
        (router_doc(http2={"cleartext": "yes"}), "spec.http2.cleartext"),
        (router_doc(http2={"push": True, "cleartext": True}), "unknown field"),
    ]
    for text, message in cases:
        path.write_text(cluster_docs({"a": 1}) + split_doc({"a": 1}) + text)
        with pytest.raises(ConfigError) as err:
            load_config(str(path))
        assert message in str(err.value), str(err.value)
    path.write_text(cluster_docs({"a": 1}) + split_doc({"a": 1}) + router_doc(**H2C))
    assert load_config(str(path)).router.http2.max_concurrent_streams == 100


@pytest.fixture
async def quick_h2c_router(backends, router):
    (b,) = await backends("a")
    return await router(cluster_docs({"a": b.port}) + split_doc({"a": 1}) +
                        router_doc(timeouts={"headerRead": "300ms", "idle": "300ms"}, **H2C))


@fuzz_settings
@given(st.lists(st.binary(min_size=1, max_size=64), min_size=1, max_size=6))
async def test_random_frames_never_crash_the_listener_or_leak(quick_h2c_router, pieces):
    app = quick_h2c_router
    reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
    try:
        writer.write(PREFACE + b"".join(pieces))
        async with asyncio.timeout(2):
            while await reader.read(65536):
                pass
    except (ConnectionError, TimeoutError):
        pass
    finally:
        writer.close()
    await wait_for(lambda: not app.ctx.connections, timeout_s=5, what="no connection left")
    client = await H2Client.open(app.port)
    assert (await client.get("/")).status == 200
    client.close()
