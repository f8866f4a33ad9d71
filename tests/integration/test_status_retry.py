"""Retry on response status on real sockets: a route's retry codes send an idempotent request to the
next cluster, at most `attempts` times; a POST, or a request with nowhere else to go, gets the answer."""

import asyncio
import time

from tests.conftest import cluster_docs, httproute_doc, raw_request, response_of, split_doc, wait_for


def retried_split(weights: dict, retry: str) -> str:
    return split_doc(weights) + f"  retry: {retry}\n"


async def call(port: int, method: str = "GET") -> tuple[int, dict, bytes]:
    body = "Content-Length: 2\r\n\r\nhi" if method == "POST" else "\r\n"
    raw = await raw_request(port, f"{method} /x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n{body}".encode())
    return response_of(raw)


async def test_a_retried_status_goes_to_the_next_cluster_once(backends, router):
    a, b, c = await backends("a", "b", "c")
    a.status = b.status = 503
    weights = {"a": 1000, "b": 10, "c": 0.001}  # a first, then (almost always) b, then c
    app = await router(cluster_docs({"a": a.port, "b": b.port, "c": c.port})
                       + retried_split(weights, "{codes: [503]}"))
    status, headers, _ = await call(app.port)
    assert (status, headers["x-router-cluster"]) == (503, "b")  # one retry (attempts: 1), then b's answer
    assert len(a.seen) == 1 and len(b.seen) == 1 and not c.seen
    assert app.ctx.metrics.retries.labels("status")._value.get() == 1
    assert app.state()["routes"][0]["retry"] == {"codes": [503], "attempts": 1, "backoff_s": None}
    status, headers, _ = await call(app.port, "POST")  # not idempotent: a's answer, as it is
    assert (status, headers["x-router-cluster"]) == (503, "a")
    assert len(a.seen) == 2 and len(b.seen) == 1


async def test_attempts_and_an_answer_from_the_last_cluster(backends, router):
    a, b, c = await backends("a", "b", "c")
    a.status = b.status = 503
    weights = {"a": 1000, "b": 10, "c": 0.001}
    app = await router(cluster_docs({"a": a.port, "b": b.port, "c": c.port})
                       + retried_split(weights, "{codes: [500, 503], attempts: 5}"))
    status, headers, body = await call(app.port)
    assert (status, headers["x-router-cluster"], body) == (200, "c", b"c:0")
    c.status = 500
    status, headers, _ = await call(app.port)  # every cluster tried: the last answer is the client's
    assert status in (500, 503)
    assert len(a.seen) + len(b.seen) + len(c.seen) == 6


async def test_httproute_retry(backends, router):
    a, b = await backends("a", "b")
    a.status = 502
    route = httproute_doc("""\
          - retry: {codes: [502], attempts: 1}
            backendRefs: [{name: a, weight: 1000000}, {name: b, weight: 1}]
        """)
    app = await router(cluster_docs({"a": a.port, "b": b.port}) + route)
    status, headers, _ = await call(app.port)
    assert (status, headers["x-router-cluster"]) == (200, "b")


async def test_backoff_waits_before_each_retry_doubling_up_to_ten_times(backends, router):
    """retry.backoff: 50 ms before the first retry, then 100, 200, 400 and 500 (ten times the first, at most)."""
    clusters = await backends(*"abcdefg")
    for cluster in clusters:
        cluster.status = 503  # every cluster is tried once, in whatever order: six retries, six waits
    app = await router(cluster_docs({c.name: c.port for c in clusters})
                       + retried_split({c.name: 1 for c in clusters}, "{codes: [503], attempts: 6, backoff: 50ms}"))
    assert app.state()["routes"][0]["retry"] == {"codes": [503], "attempts": 6, "backoff_s": 0.05}
    t0 = time.monotonic()
    status, headers, _ = await call(app.port)
    took = time.monotonic() - t0
    assert status == 503 and [len(c.seen) for c in clusters] == [1] * 7
    assert 1.75 <= took < 3.0, took  # 50+100+200+400+500+500 ms; without the cap 3.15 s


async def test_a_request_waiting_out_a_backoff_ends_with_its_deadline_or_its_client(backends, router):
    a, b = await backends("a", "b")
    a.status = 503
    clusters = cluster_docs({"a": a.port, "b": b.port})
    split = retried_split({"a": 1000000, "b": 1}, "{codes: [503], backoff: 1s}")
    app = await router(clusters + split + "  timeouts: {request: 300ms}\n")
    t0 = time.monotonic()
    status, _, body = await call(app.port)  # the wait ends at the route's deadline, not past it
    assert status == 504 and b"request timeout" in body and time.monotonic() - t0 < 0.9
    assert not b.seen and app.ctx.retry_budget.active_retries == 0

    app = await router(clusters + split)
    _, writer = await asyncio.open_connection("127.0.0.1", app.port)
    writer.write(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n")
    await wait_for(lambda: len(a.seen) == 2, what="the request's first try")
    writer.close()  # the client leaves during the backoff
    await wait_for(lambda: not app.ctx.connections, what="the client's connection closed")
    await asyncio.sleep(1.2)  # past the backoff: nothing may go to b (a wait on purpose, not for a condition)
    assert not b.seen
    assert app.ctx.retry_budget.active_retries == 0 and not app.ctx.policy.inflight.get("b")
