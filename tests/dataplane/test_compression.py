"""gzip for responses (Router compression) on real sockets: what is compressed and what is left alone,
the headers that go with it, streamed bodies flushed as they come, and the pure rules."""
import asyncio
import gzip
import zlib

import pytest
from aiohttp import web
from hypothesis import given, strategies as st

from router.config.model import Compression
from router.dataplane.compress import accepts_gzip, plan
from tests.conftest import (cluster_docs, cut, fuzz_settings, read_response, router_doc, silent_cluster, split_doc,
                            start_site, upstream_in_flight, wait_for)

RELEASE = web.AppKey("release", asyncio.Event)
JSON = b'{"items": [' + b",".join(b'{"id": %d, "name": "item %d"}' % (i, i) for i in range(400)) + b"]}"


async def answer(request: web.Request) -> web.StreamResponse:
    """What the test cluster sends: picked by the path."""
    kind = request.path.strip("/")
    if kind == "stream":  # two events, the second one only after the client saw the first
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await resp.prepare(request)
        await resp.write(b"event one " * 50 + b"\n")
        await request.app[RELEASE].wait()
        await resp.write(b"event two\n")
        await resp.write_eof()
        return resp
    headers = {"Content-Type": "application/json; charset=utf-8", "ETag": '"v1"'}
    body = JSON
    if kind == "encoded":
        headers["Content-Encoding"] = "br"
    elif kind == "no-transform":
        headers["Cache-Control"] = "public, no-transform"
    elif kind == "png":
        headers["Content-Type"] = "image/png"
    elif kind == "small":
        body = b'{"ok": true}'
    elif kind == "vary":
        headers["Vary"] = "Cookie"
    elif kind == "partial":
        return web.Response(status=206, body=JSON[:100], headers=dict(headers, **{"Content-Range": "bytes 0-99/9"}))
    elif kind == "empty":
        return web.Response(status=204)
    return web.Response(body=body, headers=headers)


@pytest.fixture
async def compressing(router):
    app = web.Application()
    app[RELEASE] = asyncio.Event()
    app.router.add_get("/{kind}", answer)
    runner, port = await start_site(app, "127.0.0.1", 0)
    proxy = await router(cluster_docs({"a": port}) + split_doc({"a": 1}) +
                         router_doc(compression={"minLength": 256}))
    proxy.cluster_app = app
    yield proxy
    app[RELEASE].set()  # a streaming answer a failed test left waiting ends, so the cluster stops at once
    await runner.cleanup()


async def fetch(port: int, path: str, *headers: str, version: str = "1.1") -> tuple[int, dict, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    extra = "".join(f"{h}\r\n" for h in headers)
    writer.write(f"GET {path} HTTP/{version}\r\nHost: h\r\n{extra}\r\n".encode())
    try:
        if version == "1.0":
            head, _, body = (await asyncio.wait_for(reader.read(-1), 5)).partition(b"\r\n\r\n")
            lines = head.decode().split("\r\n")
            return (int(lines[0].split()[1]), {k.lower(): v for k, v in (l.split(": ", 1) for l in lines[1:])},
                    body)
        return await read_response(reader)
    finally:
        writer.close()


async def test_json_is_gzipped_for_clients_that_take_it(compressing):
    status, headers, body = await fetch(compressing.port, "/json", "Accept-Encoding: br, gzip;q=0.8")
    assert status == 200 and headers["content-encoding"] == "gzip" and headers["vary"] == "Accept-Encoding"
    assert headers["transfer-encoding"] == "chunked" and "content-length" not in headers
    assert headers["etag"] == 'W/"v1"'  # the compressed bytes are not the ones the strong validator named
    assert gzip.decompress(body) == JSON and len(body) < len(JSON) / 4
    # without gzip in Accept-Encoding: as the cluster sent it, with Vary for caches
    for accept in ((), ("Accept-Encoding: gzip;q=0, deflate",), ("Accept-Encoding: identity",)):
        status, headers, body = await fetch(compressing.port, "/json", *accept)
        assert body == JSON and "content-encoding" not in headers and headers["content-length"] == str(len(JSON))
        assert headers["vary"] == "Accept-Encoding" and headers["etag"] == '"v1"'
    # "*" takes gzip; an HTTP/1.0 client gets a close-delimited gzip body
    assert (await fetch(compressing.port, "/json", "Accept-Encoding: *"))[1]["content-encoding"] == "gzip"
    status, headers, body = await fetch(compressing.port, "/json", "Accept-Encoding: gzip", version="1.0")
    assert headers["content-encoding"] == "gzip" and gzip.decompress(body) == JSON
    assert compressing.state()["compression"]["min_length"] == 256
    compressing.metrics.flush()
    sample = compressing.metrics.registry.get_sample_value
    assert sample("router_compressed_responses_total") == 3
    assert sample("router_compression_bytes_total", {"stage": "in"}) == 3 * len(JSON)


@pytest.mark.parametrize("path", ["/encoded", "/no-transform", "/png", "/small", "/partial"])
async def test_responses_the_router_must_not_or_need_not_compress_pass_as_they_are(compressing, path):
    status, headers, body = await fetch(compressing.port, path, "Accept-Encoding: gzip")
    assert headers.get("content-encoding") in (None, "br") and headers["content-length"] == str(len(body))
    assert "vary" not in headers and headers["etag"] == '"v1"'


async def test_vary_is_merged_and_bodiless_answers_are_untouched(compressing):
    _, headers, body = await fetch(compressing.port, "/vary", "Accept-Encoding: gzip")
    assert headers["vary"] == "Cookie, Accept-Encoding" and gzip.decompress(body) == JSON
    status, headers, body = await fetch(compressing.port, "/empty", "Accept-Encoding: gzip")
    assert status == 204 and body == b"" and "content-encoding" not in headers
    # HEAD: the head its GET would get (RFC 9110 9.3.2), no body, then the next answer on the connection
    reader, writer = await asyncio.open_connection("127.0.0.1", compressing.port)
    writer.write(b"HEAD /json HTTP/1.1\r\nHost: h\r\nAccept-Encoding: gzip\r\n\r\n"
                 b"HEAD /json HTTP/1.1\r\nHost: h\r\n\r\n"
                 b"GET /small HTTP/1.1\r\nHost: h\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")  # would be gzipped: its fields, and no length (it is not known)
    assert b"Content-Encoding: gzip" in head and b"Vary: Accept-Encoding" in head and b'ETag: W/"v1"' in head
    assert b"Content-Length" not in head
    head = await reader.readuntil(b"\r\n\r\n")  # would not be: the cluster's length, Vary for caches
    assert b"Content-Encoding" not in head and b"Content-Length: %d" % len(JSON) in head
    assert b"Vary: Accept-Encoding" in head
    assert (await read_response(reader))[2] == b'{"ok": true}'
    writer.close()


async def test_a_streamed_body_is_flushed_as_it_comes(compressing):
    """Each piece the cluster sends is compressed and sent at once (a sync flush), so the client can read
    the first event while the cluster has not sent the second."""
    reader, writer = await asyncio.open_connection("127.0.0.1", compressing.port)
    writer.write(b"GET /stream HTTP/1.1\r\nHost: h\r\nAccept-Encoding: gzip\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    assert b"Content-Encoding: gzip" in head
    inflate, text = zlib.decompressobj(16 + zlib.MAX_WBITS), b""
    while b"\n" not in text:  # chunk by chunk, until the first event is whole
        size = int((await asyncio.wait_for(reader.readuntil(b"\r\n"), 5)).strip(), 16)
        text += inflate.decompress((await reader.readexactly(size + 2))[:-2])
    assert text == b"event one " * 50 + b"\n"
    compressing.cluster_app[RELEASE].set()
    while True:
        size = int((await asyncio.wait_for(reader.readuntil(b"\r\n"), 5)).strip(), 16)
        chunk = await reader.readexactly(size + 2)
        if size == 0:
            break
        text += inflate.decompress(chunk[:-2])
    assert text.endswith(b"event two\n") and inflate.eof
    writer.close()


def test_config_checks(tmp_path):
    from router.config.loader import ConfigError, load_config
    for spec, field, words in (({"level": 0}, "compression.level", "1 (fastest) to 9"),
                               ({"types": ["json"]}, "compression.types[0]", "media type"),
                               ({"minLength": "-1"}, "compression.minLength", ""),
                               ({"brotli": True}, "compression.brotli", "unknown field")):
        path = tmp_path / "c.yaml"
        path.write_text(cluster_docs({"a": 1}) + split_doc({"a": 1}) + router_doc(compression=spec))
        with pytest.raises(ConfigError) as err:
            load_config(str(path))
        assert field in str(err.value) and words in str(err.value), str(err.value)
    path.write_text(cluster_docs({"a": 1}) + split_doc({"a": 1}) + router_doc(compression={}))
    assert load_config(str(path)).router.compression == Compression()


def test_accept_encoding_rules():
    ae = lambda v: [(b"Accept-Encoding", v)]  # noqa: E731
    assert accepts_gzip(ae(b"gzip")) and accepts_gzip(ae(b"GZIP;Q=0.5")) and accepts_gzip(ae(b"x-gzip"))
    assert not accepts_gzip([]) and not accepts_gzip(ae(b"gzip;q=0")) and not accepts_gzip(ae(b"br"))
    assert accepts_gzip(ae(b"*")) and not accepts_gzip(ae(b"*, gzip;q=0")) and not accepts_gzip(ae(b"*;q=0"))
    assert not accepts_gzip(ae(b"gzip;q=abc")) and not accepts_gzip(ae(b"gzip;q=2"))
    assert accepts_gzip([(b"accept-encoding", b"br"), (b"Accept-Encoding", b"gzip")])  # two fields: one list
    settings = Compression()
    json_head = [(b"Content-Type", b"application/json"), (b"Content-Length", b"1000")]
    assert plan(settings, 200, json_head, ae(b"gzip")).gzip
    assert plan(settings, 404, json_head, ae(b"gzip")).gzip
    assert plan(settings, 206, json_head, ae(b"gzip")) is None and plan(settings, 304, json_head, ae(b"gzip")) is None
    assert plan(settings, 200, [(b"Content-Type", b"application/json"), (b"Vary", b"*")], ae(b"gzip")).vary == b"*"


@pytest.fixture
async def gzip_silent(router):
    """A router with compression in front of an upstream that never answers: the test feeds its answer."""
    async with silent_cluster() as port:
        yield await router(cluster_docs({"a": port}) + split_doc({"a": 1}) + router_doc(compression={"minLength": 1}))


@fuzz_settings
@given(body=st.binary(min_size=1, max_size=3000), chunked=st.booleans(),
       sizes=st.lists(st.integers(1, 700), min_size=1, max_size=8), cuts=st.lists(st.integers(1, 400), max_size=12))
async def test_gzip_never_changes_the_body(gzip_silent, body, chunked, sizes, cuts):
    """Whatever the cluster's framing and however its answer is split across reads, the client inflates the
    very body the cluster sent, and the response ends properly."""
    app = gzip_silent
    if chunked:
        pieces, rest = [], body
        for size in sizes * (len(body) // max(1, sum(sizes)) + 1):
            if not rest:
                break
            pieces.append(b"%x\r\n%b\r\n" % (len(rest[:size]), rest[:size]))
            rest = rest[size:]
        framed = b"Transfer-Encoding: chunked\r\n\r\n" + b"".join(pieces) + b"0\r\n\r\n"
    else:
        framed = b"Content-Length: %d\r\n\r\n" % len(body) + body
    answer = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n" + framed
    reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: h\r\nAccept-Encoding: gzip\r\n\r\n")
        upstream = await upstream_in_flight(app)
        for piece in cut(answer, cuts):
            upstream.data_received(piece)
        status, headers, got = await asyncio.wait_for(read_response(reader), 5)
    finally:
        writer.close()
        await wait_for(lambda: not app.ctx.connections, timeout_s=3, what="client connection closed")
    assert status == 200 and headers["content-encoding"] == "gzip"
    assert gzip.decompress(got) == body
