"""The compiled fast lane (fastlane.pyx, fastpath.py): it serves plain requests exactly as the Python path
would, hands everything else to it on the same connection, and keeps the router's counts and timeouts."""
import asyncio
import os

import aiohttp
import pytest
from hypothesis import given, strategies as st

from router.dataplane import fastpath
from tests.conftest import (cluster_docs, fuzz_settings, keepalive_get, loop_errors, raw_request, raw_upstream,
                            read_response, read_until_close, router_doc, split_doc, wait_for)

pytestmark = pytest.mark.skipif(fastpath.fastlane is None and not os.environ.get("ROUTER_REQUIRE_FAST_LANE"),
                                reason="the fast lane is not compiled")


def served_fast(app) -> int:
    return app.ctx.fast.lane.requests


async def test_plain_requests_take_the_fast_lane_and_others_the_python_path_on_one_connection(backends, router):
    (b,) = await backends("a")
    app = await router(cluster_docs({"a": b.port}) + split_doc({"a": 1}))
    reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
    try:
        writer.write(b"GET /one?q=1 HTTP/1.1\r\nHost: h\r\nX-App: 1\r\n\r\n")
        status, headers, body = await read_response(reader)
        assert status == 200 and headers["x-router-cluster"] == "a" and served_fast(app) == 1
        writer.write(b"GET /two HTTP/1.1\r\nHost: h\r\n\r\n" b"GET /three HTTP/1.1\r\nHost: h\r\n\r\n")  # pipelined
        assert (await read_response(reader))[0] == 200 and (await read_response(reader))[0] == 200
        writer.write(b"POST /four HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello")  # a body: Python's
        status, _, body = await read_response(reader)
        assert status == 200 and app.ctx.fast.lane.handoffs == 1
        writer.write(b"GET /five HTTP/1.1\r\nHost: h\r\n\r\n")  # the Python path keeps the connection
        assert (await read_response(reader))[0] == 200
    finally:
        writer.close()
    assert [r.path for r in b.seen] == ["/one", "/two", "/three", "/four", "/five"] and served_fast(app) == 3
    assert b.seen[0].query_string == "q=1" and b.seen[0].headers["X-App"] == "1"


async def test_the_fast_lane_forwards_and_answers_byte_for_byte_as_the_python_path(router):
    seen: list[bytes] = []
    answer = (b"HTTP/1.1 200 OK\r\nX-App: kept\r\nKeep-Alive: timeout=5\r\nX-Router-Cluster: forged\r\n"
              b"Transfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n")

    async def handle(reader, writer):
        try:
            while True:
                seen.append(await reader.readuntil(b"\r\n\r\n"))
                writer.write(answer)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
    sent = b"GET /p?x=1 HTTP/1.1\r\nHost: Api.Example.com:8080\r\nAccept:  */*  \r\nConnection: keep-alive\r\n\r\n"
    async with raw_upstream(handle) as port:
        out = {}
        for fast in (True, False):
            app = await router(cluster_docs({"a": port}) + split_doc({"a": 1}) + router_doc(fastPath=fast))
            before = served_fast(app)
            out[fast] = await raw_request(app.port, sent + sent.replace(b"keep-alive", b"close"), timeout_s=3)
            assert served_fast(app) - before == (2 if fast else 0)
            await app.stop()
    assert out[True] == out[False] and out[True].count(b"HTTP/1.1 200 OK") == 2, out
    assert b"Transfer-Encoding: chunked\r\n" in out[True] and b"hello" in out[True] and b"forged" not in out[True]
    assert seen[0] == seen[2] and seen[1] == seen[3], seen
    assert b"X-Forwarded-For: 127.0.0.1\r\n" in seen[0] and b"Connection" not in seen[0]


_STATUS = st.sampled_from([b"HTTP/1.1 200 OK", b"HTTP/1.0 200 OK", b"HTTP/1.1 204 No Content", b"HTTP/1.1 304 N",
                           b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK", b"HTTP/1.1 404 Nope", b"HTTP/1.1 503 Busy",
                           b"HTTP/1.1 200", b"HTTP/1.1 299 Odd"])
_HEADER = st.sampled_from([b"Content-Length: 5", b"Content-Length: 0", b"Transfer-Encoding: chunked",
                           b"Connection: close", b"Connection: keep-alive", b"Connection: X-Drop", b"X-Drop: 1",
                           b"Keep-Alive: timeout=1", b"Trailer: X", b"X-App: v", b"Content-Type: text/plain",
                           b"X-Request-Id: up", b"Via: 1.1 other", b"X-Obs: caf\xc3\xa9"])
_BODY = st.sampled_from([b"", b"hello", b"5\r\nhello\r\n0\r\n\r\n", b"3\r\nabc\r\n2\r\nde\r\n0\r\nT: 1\r\n\r\n"])
_REQUEST = st.sampled_from([b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\n",
                            b"GET /a/b HTTP/1.1\r\nHost: h\r\nAccept: x\r\nConnection: close\r\n\r\n"])


def _well_framed(status: bytes, headers: list[bytes], body: bytes, request: bytes) -> bool:
    """Whether the upstream's answer is framed as HTTP/1.1 says (no bytes beyond its end): then both paths
    must give the client the same bytes. (Beyond it, each may differ in which request gets the 502.)"""
    if b"100 Continue" in status:
        status = status.rsplit(b"\r\n", 1)[1]
    lengths = [h for h in headers if h.startswith(b"Content-Length")]
    chunked = b"Transfer-Encoding: chunked" in headers
    if len(lengths) > 1 or lengths and chunked:
        return False
    if request.startswith(b"HEAD") or b" 204 " in status or b" 304 " in status:
        return body == b"" and not chunked
    if chunked:
        return body.endswith(b"\r\n\r\n")
    if lengths:
        return body == (b"hello" if lengths[0].endswith(b"5") else b"")
    return True  # close-delimited


@pytest.fixture
async def twin_routers(router):
    """One upstream answering what the test sets; the same config served with the fast lane and without."""
    current = {"response": b""}

    async def handle(reader, writer):
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(current["response"])
                await writer.drain()
                if b"Content-Length" not in current["response"] and b"chunked" not in current["response"]:
                    break  # (close-delimited: the close ends it)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
    async with raw_upstream(handle) as port:
        docs = cluster_docs({"a": port}) + split_doc({"a": 1})
        timeouts = {"upstreamHeader": "1s", "bodyIdle": "1s", "idle": "1s"}
        fast = await router(docs + router_doc(timeouts=timeouts))
        slow = await router(docs + router_doc(timeouts=timeouts, fastPath=False))
        yield fast, slow, current


@fuzz_settings
@given(status=_STATUS, headers=st.lists(_HEADER, max_size=4, unique=True), body=_BODY, request=_REQUEST)
async def test_any_upstream_answer_reaches_the_client_as_the_python_path_gives_it(twin_routers, status, headers, body,
                                                                                   request, caplog):
    fast, slow, current = twin_routers
    caplog.clear()
    for app in (fast, slow):  # no pooled connection from an earlier example (whose bytes may still come)
        for conns in app.ctx.pool.idle.values():
            while conns:
                conns.pop().close()
        for pool in app.ctx.fast.pools.values():
            pool.close_all()
    current["response"] = status + b"\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + body
    two = request + request.replace(b"/ ", b"/again ")  # a second request on the same connection
    got = [await raw_request(app.port, two, timeout_s=1.5) for app in (fast, slow)]
    if _well_framed(status, headers, body, request):
        assert got[0] == got[1], got
    else:
        assert all(not raw or raw.startswith(b"HTTP/1.1 ") for raw in got), got
    await wait_for(lambda: not fast.ctx.connections and not slow.ctx.connections, timeout_s=3, what="closed")
    assert not loop_errors(caplog), caplog.text[-2000:]


async def test_requests_counted_in_the_metrics_and_the_decisions(backends, router):
    (a, b) = await backends("a", "b")
    app = await router(cluster_docs({"a": a.port, "b": b.port}) + split_doc({"a": 3, "b": 1}))
    answers = await keepalive_get(app.port, 400, host="h")
    assert all(status == 200 for status, _, _ in answers) and served_fast(app) == 400
    share = sum(1 for _, headers, _ in answers if headers["x-router-cluster"] == "a") / 400
    assert 0.65 < share < 0.85, share  # 3:1
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{app.admin_port}/metrics") as resp:
            text = await resp.text()
        async with session.get(f"http://127.0.0.1:{app.admin_port}/debug/state") as resp:
            state = await resp.json()
    counted = {line.split("{")[1].split("}")[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("router_requests_total{")}
    assert sum(counted.values()) == 400 and sum(n for k, n in counted.items() if 'cluster="a"' in k) == share * 400
    assert 'router_decisions_total{reason="weighted"} 400.0' in text
    assert 'router_request_duration_seconds_count{cluster="a",route="split"}' in text
    lane = state["fast_lane"]
    assert lane["enabled"] and lane["requests"] == 400 and lane["routes"][0]["draw"] == "weighted"


async def test_a_refused_cluster_gets_no_more_traffic_and_its_request_is_retried(backends, router):
    (a,) = await backends("a")
    dead = socket_port_refusing()
    app = await router(cluster_docs({"a": a.port, "gone": dead}) + split_doc({"a": 1, "gone": 1}))
    answers = await keepalive_get(app.port, 60, host="h")
    assert all(status == 200 and headers["x-router-cluster"] == "a" for status, headers, _ in answers)
    assert len(a.seen) == 60  # each one answered by the live cluster, the refused connect retried there
    assert app.ctx.health.clusters["gone"].ejections == 1


def socket_port_refusing() -> int:
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


async def test_no_response_head_in_time_is_504_and_a_stalled_body_aborts(router):
    async def handle(reader, writer):
        try:
            line = await reader.readuntil(b"\r\n\r\n")
            if line.startswith(b"GET /stall"):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf")
            elif line.startswith(b"GET /partial"):
                writer.write(b"HTTP/1.1 200 OK\r\nX-Begun: ")
            await reader.read()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
    async with raw_upstream(handle) as port:
        app = await router(cluster_docs({"a": port}) + split_doc({"a": 1}) +
                           router_doc(timeouts={"upstreamHeader": "300ms", "bodyIdle": "300ms"}))
        loop = asyncio.get_running_loop()
        t = loop.time()
        raw = await raw_request(app.port, b"GET /silent HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        assert raw.startswith(b"HTTP/1.1 504") and b"x-router-cluster: a" in raw and loop.time() - t < 1.5, raw
        t = loop.time()
        raw = await raw_request(app.port, b"GET /partial HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        assert raw.startswith(b"HTTP/1.1 504") and 0.25 < loop.time() - t < 1.5, raw  # a head begun, never whole
        t = loop.time()
        raw = await raw_request(app.port, b"GET /stall HTTP/1.1\r\nHost: h\r\n\r\n")
        assert raw.endswith(b"half") and b"Content-Length: 10" in raw and loop.time() - t < 1.5, raw
        assert served_fast(app) == 3
        assert app.ctx.health.clusters["a"].consecutive_5xx == 3  # two 504s and the cut-short answer


async def test_idle_and_silent_connections_close_at_their_timeouts(backends, router):
    (b,) = await backends("a")
    app = await router(cluster_docs({"a": b.port}) + split_doc({"a": 1}) +
                       router_doc(timeouts={"idle": "300ms", "headerRead": "300ms"}))
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert (await read_response(reader))[0] == 200
    t = loop.time()
    assert await read_until_close(reader, 3) == b"" and 0.25 < loop.time() - t < 1.5  # idle keep-alive
    writer.close()
    reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
    t = loop.time()
    assert await read_until_close(reader, 3) == b"" and 0.25 < loop.time() - t < 1.5  # never sent a byte
    writer.close()
    await wait_for(lambda: not app.ctx.connections, what="closed")


async def test_a_fault_of_the_lanes_own_is_500_and_logged(backends, router, monkeypatch, caplog):
    (b,) = await backends("a")
    app = await router(cluster_docs({"a": b.port}) + split_doc({"a": 1}))

    def broken(*args, **kwargs):
        raise RuntimeError("draw fault")
    monkeypatch.setattr(fastpath, "draw_plan", broken)
    raw = await raw_request(app.port, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 500") and b"internal error" in raw and b"draw fault" not in raw, raw
    assert any(r.exc_info and "draw fault" in str(r.exc_info[1]) for r in caplog.records)
    monkeypatch.undo()
    (status, _, _), = await keepalive_get(app.port, 1)
    assert status == 200 and len(b.seen) == 1


async def test_a_reload_that_turns_it_off_moves_open_connections_to_the_python_path(backends, router):
    (b,) = await backends("a")
    docs = cluster_docs({"a": b.port}) + split_doc({"a": 1})
    app = await router(docs)
    reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        assert (await read_response(reader))[0] == 200 and served_fast(app) == 1
        (app.config_dir / "router.yaml").write_text(docs + router_doc(fastPath=False))
        assert (await app.reloader.reload("test"))["ok"]
        writer.write(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        assert (await read_response(reader))[0] == 200 and served_fast(app) == 1 and len(b.seen) == 2
    finally:
        writer.close()
    assert app.ctx.fast.describe()["off_reason"] == "Router fastPath is false"


@pytest.mark.parametrize("extra", [{"requestId": True}, {"accessLog": {"path": "-"}}, {"decisionHeader": True}])
async def test_settings_that_need_the_python_path_for_every_request_turn_it_off(backends, router, extra):
    (b,) = await backends("a")
    app = await router(cluster_docs({"a": b.port}) + split_doc({"a": 1}) + router_doc(**extra))
    (status, _, _), = await keepalive_get(app.port, 1)
    assert status == 200 and served_fast(app) == 0


async def test_routes_with_features_of_their_own_take_the_python_path(backends, router):
    (a, b) = await backends("a", "b")
    mirrored = split_doc({"a": 1}, "mirrored", ["m"]) + "  mirror: {cluster: b}\n"
    app = await router(cluster_docs({"a": a.port, "b": b.port}) + split_doc({"a": 1}) + mirrored)
    await keepalive_get(app.port, 1, host="m")
    assert served_fast(app) == 0
    await wait_for(lambda: len(b.seen) == 1, what="the mirror copy")
    await keepalive_get(app.port, 1, host="plain")
    assert served_fast(app) == 1
