"""Router pinHeader on real sockets: a request from an allowed client naming one of its route's clusters
goes there, whatever the weights and health say, and nowhere else; from anyone else the header is
dropped and the request routed as usual."""
from tests.conftest import cluster_docs, keepalive_answers, raw_request, response_of, router_doc, split_doc


def pinned(ports: dict, allow: str, weights: dict) -> str:
    return (cluster_docs(ports) + split_doc(weights, "shop", ["shop"])
            + router_doc(pinHeader={"name": "X-Edge-Cluster", "allow": [allow]}, decisionHeader=True))


async def test_a_pinned_request_goes_to_the_named_cluster(backends, router):
    a, b = await backends("a", "b")
    app = await router(pinned({"a": a.port, "b": b.port}, "127.0.0.0/8", {"a": 1, "b": 0}))
    answers = await keepalive_answers(app.port, 5, "shop", "/", "X-Edge-Cluster: b\r\n")
    assert {c for c, _ in answers} == {"b"}  # b has weight 0: only a pin sends it anything
    assert all(h["x-router-decision"].startswith("pinned") for _, h in answers)
    assert all("X-Edge-Cluster" not in r.headers for r in b.seen)
    assert {c for c, _ in await keepalive_answers(app.port, 5, "shop")} == {"a"}
    status, _, body = response_of(await raw_request(app.port, b"GET / HTTP/1.1\r\nHost: shop\r\n"
                                                              b"X-Edge-Cluster: mars\r\nConnection: close\r\n\r\n"))
    assert status == 400 and b"'mars' named by x-edge-cluster is not one of route shop's" in body
    assert app.state()["pin_header"] == {"name": "x-edge-cluster", "allow": ["127.0.0.0/8"]}


async def test_a_pin_to_a_cluster_that_fails_is_not_sent_elsewhere(backends, router):
    a, = await backends("a")
    app = await router(pinned({"a": a.port, "gone": 1}, "127.0.0.0/8", {"a": 1, "gone": 1}))
    status, _, body = response_of(await raw_request(app.port, b"GET / HTTP/1.1\r\nHost: shop\r\n"
                                                              b"X-Edge-Cluster: gone\r\nConnection: close\r\n\r\n"))
    assert status == 502 and a.seen == []


async def test_from_other_clients_the_header_is_dropped_and_ignored(backends, router):
    a, b = await backends("a", "b")
    app = await router(pinned({"a": a.port, "b": b.port}, "10.0.0.0/8", {"a": 1, "b": 0}))
    answers = await keepalive_answers(app.port, 5, "shop", "/", "X-Edge-Cluster: b\r\n")
    assert {c for c, _ in answers} == {"a"} and b.seen == []
    assert all("X-Edge-Cluster" not in r.headers for r in a.seen)
