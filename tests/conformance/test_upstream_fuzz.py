"""A misbehaving upstream: response-shaped input with broken or odd framing, interim responses, stalls
and early closes. Whatever it sends, the client gets a response or a closed connection within the
router's timeouts (never a hang), nothing of the router's own faults, and the worker keeps serving."""
import asyncio

import httptools
import pytest
from hypothesis import given, strategies as st

from tests.conftest import (cluster_docs, cut, fuzz_settings, loop_errors, raw_request, raw_upstream, read_until_close,
                            router_doc, silent_cluster, split_doc, upstream_in_flight, wait_for)

_STATUS = st.sampled_from([b"HTTP/1.1 200 OK", b"HTTP/1.0 200 OK", b"HTTP/1.1 204 No Content", b"HTTP/1.1 304 N",
                           b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK", b"HTTP/1.1 103 Early\r\nLink: x\r\n\r\n"
                           b"HTTP/1.1 200 OK", b"HTTP/1.1 103 E\r\nConnection: x\r\nX: 1\r\nContent-Length: 5\r\n\r\n"
                           b"HTTP/1.1 103 E\r\n\r\nHTTP/1.1 503 Busy", b"HTTP/1.1 103 E\r\nLink: \x01\r\n\r\nHTTP/1.1 200 OK", b"HTTP/1.1 101 Switching Protocols", b"HTTP/1.1 999 X",
                           b"HTTP/1.1 2000 OK", b"HTTP/2 200", b"HTTP/1.1 200", b"HTTP/1.1 503 Busy", b"garbage", b""])
_NAME = st.sampled_from([b"Content-Length", b"content-length", b"Transfer-Encoding", b"Connection", b"Upgrade",
                         b"Keep-Alive", b"X-Router-Cluster", b"Trailer", b"X-App", b"Content-Length ", b"X\x01",
                         b"Content-Type", b"Content-Encoding", b"ETag", b"Vary"])
_VALUE = st.one_of(st.sampled_from([b"0", b"5", b"10", b"-1", b"5, 5", b"abc", b"chunked", b"gzip", b"chunked, chunked",
                                    b"close", b"keep-alive", b"X-App", b"upgrade", b"websocket", b"",
                                    b"text/plain", b'"v1"', b"*"]),
                   st.binary(max_size=8))
_BODY = st.sampled_from([b"", b"hello", b"hellohello!", b"5\r\nhello\r\n0\r\n\r\n", b"5\r\nhello\r\n",
                         b"zz\r\n", b"0\r\nX-T: 1\r\n\r\n", b"5\r\nhel"])


@st.composite
def _responses(draw):
    eol = draw(st.sampled_from([b"\r\n"] * 8 + [b"\n"]))
    head = draw(_STATUS) + eol
    for name, value in draw(st.lists(st.tuples(_NAME, _VALUE), max_size=4)):
        head += name + b": " + value + eol
    return head + eol + draw(_BODY), draw(st.booleans())  # (bytes, close after sending)


@pytest.fixture
async def fuzz_upstream(router):
    current = {"response": b"", "close": True}

    async def handle(reader, writer):
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(current["response"])
                await writer.drain()
                if current["close"]:
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()
    async with raw_upstream(handle) as port:
        # Host t has a route request timeout, shorter than the Router's: its deadline fires before a head,
        # mid-body, or never, whatever the upstream does; and a 503 is retried on b (the same upstream),
        # after a backoff, whatever follows the dropped head; and a copy of each request goes to b, whose
        # answer is dropped. Early Hints are passed on.
        timed = split_doc({"a": 1, "b": 1}, "timed", ["t"]) + "  timeouts: {request: 250ms}\n" + \
            "  retry: {codes: [503], backoff: 20ms}\n  mirror: {cluster: b}\n"
        app = await router(cluster_docs({"a": port, "b": port}) + split_doc({"a": 1}) + timed +
                           router_doc(timeouts={"upstreamHeader": "400ms", "bodyIdle": "400ms"},
                                      compression={"minLength": 1}, earlyHints=True))
        app.current = current
        yield app


@fuzz_settings
@given(response=_responses(), sent=st.sampled_from([
    b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    b"HEAD / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nConnection: close\r\nContent-Length: 11\r\n\r\nhello world",
    b"POST / HTTP/1.1\r\nHost: h\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"GET / HTTP/1.0\r\nHost: h\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n",
    b"GET / HTTP/1.0\r\nHost: h\r\nAccept-Encoding: gzip\r\n\r\n",
    b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nearly bytes"]),
    host=st.sampled_from([b"h", b"t"]))
async def test_any_upstream_answer_ends_promptly_and_cleanly(fuzz_upstream, response, sent, host, caplog):
    caplog.clear()  # (one fixture for every example)
    sent = sent.replace(b"Host: h", b"Host: " + host)
    app = fuzz_upstream
    app.current["response"], app.current["close"] = response
    loop = asyncio.get_running_loop()
    t = loop.time()
    raw = await raw_request(app.port, sent, timeout_s=4 if b"Upgrade" not in sent else 1.5)
    if not raw.startswith(b"HTTP/1.1 101"):  # a tunnel may stay open; anything else ends promptly
        assert loop.time() - t < 3, f"no answer and no close: {raw[:200]!r}"
    assert b"\r\n\r\ninternal error\n" not in raw, raw  # a fault of the router's own
    if raw:
        assert raw.startswith(b"HTTP/1.1 "), raw
    await wait_for(lambda: not app.ctx.connections and not app.ctx.mirrors, timeout_s=3,
                   what="client connection closed, request copy done")
    assert not loop_errors(caplog), (response, sent, caplog.text[-2000:])


@pytest.fixture
async def silent_upstream(router):
    """An upstream that reads requests and never answers: the test hands the router's Python path (the fast
    lane off) its answer."""
    async with silent_cluster() as port:
        app = await router(cluster_docs({"a": port}) + split_doc({"a": 1}) +
                           router_doc(timeouts={"upstreamHeader": "2s", "bodyIdle": "2s"}, fastPath=False))
        yield app


async def _client_sees(app, pieces: list[bytes]) -> bytes:
    """What the client receives when the upstream's answer reaches the router as these reads."""
    reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        upstream = await upstream_in_flight(app)
        for piece in pieces:
            if upstream.closed:
                break
            upstream.data_received(piece)
        return await read_until_close(reader, 0.2)
    finally:
        writer.close()
        await wait_for(lambda: not app.ctx.connections, timeout_s=3, what="client connection closed")


@fuzz_settings
@given(response=_responses(), cuts=st.lists(st.integers(1, 30), min_size=1, max_size=10))
async def test_upstream_answer_split_across_reads_reaches_the_client_the_same(silent_upstream, response, cuts):
    data = response[0]
    whole = await _client_sees(silent_upstream, [data])
    split = await _client_sees(silent_upstream, cut(data, cuts))
    assert _meaning(split) == _meaning(whole), (split, whole)


def _meaning(raw: bytes) -> tuple:
    """A response as the client understands it: status, headers, body, and whether it ended properly
    (chunk boundaries, which follow the reads, left out)."""
    class Seen:
        def __init__(self):
            self.headers, self.body, self.complete = [], b"", False

        def on_header(self, name, value):
            self.headers.append((name.lower(), value))

        def on_body(self, body):
            self.body += body

        def on_message_complete(self):
            self.complete = True
    seen = Seen()
    parser = httptools.HttpResponseParser(seen)
    try:
        parser.feed_data(raw)
        status = parser.get_status_code() if raw else None
    except httptools.HttpParserError as exc:
        return ("unparseable", str(exc), raw)
    return status, seen.headers, seen.body, seen.complete
