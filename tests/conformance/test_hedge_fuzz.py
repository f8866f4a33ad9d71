"""Hedged tries against three misbehaving clusters: whatever each does and whenever (answer, 503, reset,
broken or cut-short answer, silence), the client gets an answer or a closed connection promptly, never an
error of the router's own, and no try stays counted in flight or holding the retry budget."""
import asyncio
import contextlib
import random

import pytest
from hypothesis import given, strategies as st

from tests.conftest import cluster_docs, fuzz_settings, loop_errors, raw_request, router_doc, split_doc, wait_for
from tests.integration.test_hedge import idle

ANSWERS = {
    "answer": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    "interim": b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    "503": b"HTTP/1.1 503 Busy\r\nContent-Length: 4\r\n\r\nbusy",
    "broken": b"HTTP/1.1 200 OK\r\nContent-Length: zz\r\n\r\n",
    "cut": b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
}
BEHAVIOUR = st.tuples(st.sampled_from([0.0, 0.03, 0.08, 0.2]),
                      st.sampled_from(sorted(ANSWERS) + ["reset", "silent"]))


@contextlib.asynccontextmanager
async def scripted_cluster(script: dict, answers: dict = ANSWERS):
    """Each request gets what script["now"] says: (delay, what): one of `answers`, "reset" or "silent"."""
    async def handle(reader, writer):
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                delay, what = script["now"]
                await asyncio.sleep(delay)
                if what == "reset":
                    writer.transport.abort()
                    return
                if what == "silent":
                    await reader.read()
                    return
                writer.write(answers[what])
                await writer.drain()
                if what == "cut":
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


@pytest.fixture(params=["", ", backoff: 30ms"], ids=["at-once", "backoff"])
async def hedged(router, request):
    """Three scripted clusters behind a hedged route retrying 503s (at once, or after a backoff)."""
    scripts = {name: {"now": (0.0, "answer")} for name in "abc"}
    async with scripted_cluster(scripts["a"]) as a, scripted_cluster(scripts["b"]) as b, \
            scripted_cluster(scripts["c"]) as c:
        split = (split_doc({"a": 1, "b": 1, "c": 1}, "s", ["h"])
                 + "  timeouts: {perTry: 50ms, request: 1s, hedge: true}\n"
                 + f"  retry: {{codes: [503], attempts: 2{request.param}}}\n")
        app = await router(cluster_docs({"a": a, "b": b, "c": c}) + split
                           + router_doc(timeouts={"upstreamHeader": "600ms", "bodyIdle": "400ms"}))
        app.scripts = scripts
        yield app


@fuzz_settings
@given(a=BEHAVIOUR, b=BEHAVIOUR, c=BEHAVIOUR, seed=st.integers(0, 10_000))
async def test_hedged_tries_end_promptly_and_leave_nothing_in_flight(hedged, a, b, c, seed, caplog):
    caplog.clear()  # (one fixture for every example)
    app = hedged
    app.scripts["a"]["now"], app.scripts["b"]["now"], app.scripts["c"]["now"] = a, b, c
    whats = (a[1], b[1], c[1])
    app.ctx.rng = random.Random(seed)
    app.ctx.health.clusters.clear()  # each example starts with both clusters healthy
    loop = asyncio.get_running_loop()
    t = loop.time()
    raw = await raw_request(app.port, b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", timeout_s=4)
    assert loop.time() - t < 2.5, f"no answer and no close: {raw[:200]!r}"
    assert b"internal error" not in raw, raw
    assert raw.startswith(b"HTTP/1.1 ") or (not raw and "cut" in whats), raw
    if raw.startswith(b"HTTP/1.1 200") and raw.endswith(b"ok"):
        assert "answer" in whats or "interim" in whats
    await wait_for(lambda: not app.ctx.connections and idle(app), timeout_s=2,
                   what="the request over, no try in flight, no retry held")
    assert not loop_errors(caplog), (a, b, c, caplog.text[-2000:])
