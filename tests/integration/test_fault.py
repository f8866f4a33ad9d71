"""A route's fault on real sockets: delays before the request goes on, aborts answered by the router in
place of the cluster, each for its share of requests; a client that leaves during a delay sends nothing."""
import asyncio
import time

from tests.conftest import cluster_docs, keepalive_get, split_doc, wait_for


def faulty(port: int, fault: str) -> str:
    return cluster_docs({"a": port}) + split_doc({"a": 1}, "shop") + f"  fault: {fault}\n"


async def test_an_abort_is_answered_by_the_router_for_its_share_of_requests(backends, router):
    a, = await backends("a")
    app = await router(faulty(a.port, "{abort: {httpStatus: 503, percent: 50}}"))
    answers = await keepalive_get(app.port, 200)
    aborted = [body for status, _, body in answers if status == 503]
    assert 60 <= len(aborted) <= 140 and set(aborted) == {b"fault injected (abort)\n"}
    assert len(a.seen) == 200 - len(aborted)  # an aborted request never reaches the cluster
    assert app.metrics.faults.labels("shop", "abort")._value.get() == len(aborted)
    (state,) = app.state()["routes"]
    assert state["fault"] == {"delay_s": 0.0, "delay_percent": 100.0, "abort_status": 503, "abort_percent": 50.0}


async def test_a_delay_holds_the_request_then_it_goes_on_or_is_aborted(backends, router):
    a, = await backends("a")
    app = await router(faulty(a.port, "{delay: {fixedDelay: 300ms}}"))
    t = time.monotonic()
    (status, headers, _), = await keepalive_get(app.port, 1)
    assert status == 200 and headers["x-router-cluster"] == "a" and time.monotonic() - t >= 0.29
    both = await router(faulty(a.port, "{delay: {fixedDelay: 200ms}, abort: {httpStatus: 429}}"))
    t = time.monotonic()
    (status, _, _), = await keepalive_get(both.port, 1)
    assert status == 429 and time.monotonic() - t >= 0.19 and len(a.seen) == 1


async def test_a_client_that_leaves_during_a_delay_sends_nothing(backends, router):
    a, = await backends("a")
    app = await router(faulty(a.port, "{delay: {fixedDelay: 200ms}}"))
    await keepalive_get(app.port, 1)  # (a pooled connection to the cluster is there from now on)
    reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    await wait_for(lambda: app.metrics.faults.labels("shop", "delay")._value.get() == 2, what="the delay began")
    writer.close()
    await keepalive_get(app.port, 1)  # a later request, delayed as long: the first one's delay has ended too
    assert len(a.seen) == 2 and app.ctx.inflight.get("a", 0) == 0
