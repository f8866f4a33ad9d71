"""Hedging on real sockets (a route's `timeouts: {perTry, hedge: true}`): a try past its perTry is kept
and raced against the next choice; the first answer wins, the losing try is closed; a hedge that
cannot connect or breaks leaves the earlier try to answer; nothing stays counted in flight."""
import asyncio
import random

from chaos.relay import DelayRelay
from tests.conftest import cluster_docs, raw_request, response_of, wait_for
from tests.integration.test_route_timeouts import timed_get, timed_split

FIRST_PICK_A = 1  # random.Random(1).random() < 0.5: the first draw over {a: 1, b: 1} picks a


def idle(app) -> bool:
    """Every try of every request is over: no cluster counted in flight, no retry holding the budget."""
    budget = app.ctx.retry_budget
    return (not any(app.ctx.policy.inflight.values()) and budget.active_retries == 0
            and budget.active_requests == 0)


async def hedged_router(router, ports: dict, hedge: bool = True, seed: int = FIRST_PICK_A):
    app = await router(cluster_docs(ports) + timed_split({n: 1 for n in ports}, "s", ["h"], perTry="100ms",
                                                           request="5s", **({"hedge": "true"} if hedge else {})))
    app.ctx.rng = random.Random(seed)
    return app


async def test_the_first_answer_wins_and_the_slower_try_is_closed(backends, router):
    a, b = await backends("a", "b")
    a.delay_s, b.delay_s = 0.3, 1.5
    app = await hedged_router(router, {"a": a.port, "b": b.port})
    for _ in range(6):  # a first (kept past perTry, b raced beside it) or b first (a raced): a's answer wins
        took, raw = await timed_get(app.port, "h")
        status, headers, body = response_of(raw)
        assert status == 200 and headers["x-router-cluster"] == "a", raw
        assert took < 1.0
        # The losing try was closed when the winner answered, not left to run for b's 1.5 s.
        await wait_for(lambda: idle(app), timeout_s=0.5, what="the losing try closed")
    assert app.ctx.metrics.retries.labels("hedge")._value.get() == 6
    winners = app.ctx.metrics.hedge_winners
    assert winners.labels("earlier")._value.get() + winners.labels("latest")._value.get() == 6
    assert winners.labels("earlier")._value.get() >= 1 and winners.labels("latest")._value.get() >= 1

    plain = await hedged_router(router, {"a": a.port, "b": b.port}, hedge=False)
    took, raw = await timed_get(plain.port, "h")  # without hedging a is given up at perTry: b's slow answer
    assert response_of(raw)[1]["x-router-cluster"] == "b" and took >= 1.5


async def test_a_hedge_that_cannot_connect_leaves_the_first_try_to_answer(backends, router):
    a, b = await backends("a", "b")
    a.delay_s = 0.3
    relay = DelayRelay(("127.0.0.1", b.port))
    try:
        app = await hedged_router(router, {"a": a.port, "b": await relay.start()})
        await relay.refuse()
        status, headers, body = response_of((await timed_get(app.port, "h"))[1])
        assert status == 200 and headers["x-router-cluster"] == "a", body  # not 502 "no healthy cluster left"
        assert app.ctx.metrics.hedge_winners.labels("earlier")._value.get() == 1  # the first try, taken up again
        assert not app.ctx.health.is_healthy("b", app.ctx.clock())  # the refused connect counted
        await wait_for(lambda: idle(app), what="no try left in flight")
    finally:
        await relay.stop()


async def resetting_server() -> tuple[asyncio.AbstractServer, int]:
    """Reads a request head, then closes the connection without an answer."""
    async def handle(reader, writer):
        try:
            await reader.readuntil(b"\r\n\r\n")
        finally:
            writer.transport.abort()
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_a_hedge_that_breaks_leaves_the_first_try_to_answer(backends, router):
    a, = await backends("a")
    a.delay_s = 0.3
    server, port = await resetting_server()
    try:
        app = await hedged_router(router, {"a": a.port, "b": port})
        status, headers, body = response_of((await timed_get(app.port, "h"))[1])
        assert status == 200 and headers["x-router-cluster"] == "a", body
        await wait_for(lambda: idle(app), what="no try left in flight")
    finally:
        server.close()


async def test_an_earlier_try_that_breaks_leaves_the_hedge_to_answer(backends, router):
    b, = await backends("b")
    b.delay_s = 0.3
    loop = asyncio.get_running_loop()
    broke = loop.create_future()

    async def handle(reader, writer):  # a: breaks 200 ms after the request, while b's hedge runs
        await reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(0.2)
        writer.transport.abort()
        if not broke.done():
            broke.set_result(loop.time())
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        app = await hedged_router(router, {"a": server.sockets[0].getsockname()[1], "b": b.port})
        took, raw = await timed_get(app.port, "h")
        status, headers, body = response_of(raw)
        assert status == 200 and headers["x-router-cluster"] == "b", body
        assert broke.done() and took >= 0.4  # a broke first, and the client still got b's answer
        assert app.ctx.metrics.hedge_winners.labels("latest")._value.get() == 1
        await wait_for(lambda: idle(app), what="no try left in flight")
    finally:
        server.close()


async def test_requests_that_may_not_be_retried_are_not_hedged(backends, router):
    a, b = await backends("a", "b")
    a.delay_s = b.delay_s = 0.3
    app = await hedged_router(router, {"a": a.port, "b": b.port})
    raw = await raw_request(app.port, b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi")
    status, headers, body = response_of(raw)
    assert status == 200 and headers["x-router-cluster"] == "a" and body == b"a:2"
    assert len(a.seen) == 1 and not b.seen  # one try, waited for
    assert app.ctx.metrics.retries.labels("hedge")._value.get() == 0


async def test_a_client_that_leaves_takes_every_try_with_it(backends, router):
    a, b = await backends("a", "b")
    a.delay_s = b.delay_s = 2.0
    app = await hedged_router(router, {"a": a.port, "b": b.port})
    reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    await wait_for(lambda: len(a.seen) + len(b.seen) == 2, what="both tries sent")
    writer.close()
    await wait_for(lambda: idle(app), timeout_s=0.5, what="both tries dropped with the client")


async def test_the_losing_try_is_closed_when_the_winners_head_arrives(backends, router):
    b, = await backends("b")
    b.delay_s = 3.0
    body_go = asyncio.Event()

    async def handle(reader, writer):  # a: its head after 300 ms, its body when the test says
        await reader.readuntil(b"\r\n\r\n")
        await asyncio.sleep(0.3)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n")
        await body_go.wait()
        writer.write(b"done")
        await writer.drain()
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        # The first draw picks b; a is the hedge, and its head arrives while b's try still runs.
        app = await hedged_router(router, {"a": server.sockets[0].getsockname()[1], "b": b.port}, seed=0)
        reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2.0)
        assert b"x-router-cluster: a" in head and len(b.seen) == 1
        assert app.ctx.policy.inflight == {"a": 1, "b": 0}  # b's try ended with a's head, not a's body
        assert app.ctx.metrics.hedge_winners.labels("latest")._value.get() == 1  # a, the hedge, won
        body_go.set()
        assert await asyncio.wait_for(reader.readexactly(4), 2.0) == b"done"
        writer.close()
        await wait_for(lambda: idle(app), timeout_s=0.5, what="the request over")
    finally:
        server.close()
