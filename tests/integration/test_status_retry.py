"""Retry on response status on real sockets: a route's retry codes send an idempotent request to the
next cluster, at most `attempts` times; a POST, or a request with nowhere else to go, gets the answer."""

from tests.conftest import cluster_docs, httproute_doc, raw_request, response_of, split_doc


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
    assert app.state()["routes"][0]["retry"] == {"codes": [503], "attempts": 1}
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
