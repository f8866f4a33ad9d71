"""Header changes of one cluster of a route (a TrafficSplit entry's requestHeaders/responseHeaders, an HTTPRoute
backendRef's header filters): made after the route's, for requests sent to that cluster and its answers only;
a retry to another cluster carries that one's; a mirror copy carries the route's."""
from tests.conftest import cluster_docs, raw_request, wait_for

ROUTE = """\
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web}
spec:
  rules:
  - filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: X-Env, value: prod}], add: [{name: X-Tag, value: route}]}
    - type: ResponseHeaderModifier
      responseHeaderModifier: {add: [{name: X-Route, value: web}]}
    backendRefs:
    - name: a
      weight: 1
      filters:
      - type: RequestHeaderModifier
        requestHeaderModifier: {set: [{name: X-Env, value: a-env}], add: [{name: X-Region, value: a}]}
      - type: ResponseHeaderModifier
        responseHeaderModifier: {set: [{name: X-Served, value: a}], remove: [X-Route]}
    - name: b
      weight: 1
"""


async def heads(port: int, n: int) -> list[bytes]:
    out = []
    for _ in range(n):
        raw = await raw_request(port, b"GET / HTTP/1.1\r\nHost: h\r\nX-Env: client\r\nConnection: close\r\n\r\n")
        out.append(raw.partition(b"\r\n\r\n")[0].lower())
    return out


async def test_each_cluster_gets_its_own_changes_after_the_routes(backends, router):
    a, b = await backends("a", "b")
    app = await router(cluster_docs({"a": a.port, "b": b.port}) + ROUTE)
    got = await heads(app.port, 40)
    from_a = [h for h in got if b"x-router-cluster: a" in h]
    from_b = [h for h in got if b"x-router-cluster: b" in h]
    assert from_a and from_b and len(from_a) + len(from_b) == 40
    assert all(b"x-served: a" in h and b"x-route:" not in h for h in from_a)  # a's own, then the route's gone
    assert all(b"x-served" not in h and b"x-route: web" in h for h in from_b)
    for seen in a.seen:
        assert seen.headers.getall("X-Env") == ["a-env"] and seen.headers.getall("X-Region") == ["a"]
        assert seen.headers.getall("X-Tag") == ["route"]
    for seen in b.seen:
        assert seen.headers.getall("X-Env") == ["prod"] and "X-Region" not in seen.headers
        assert seen.headers.getall("X-Tag") == ["route"]


async def test_a_retry_carries_the_next_clusters_changes_and_a_mirror_the_routes(backends, router):
    b, m = await backends("b", "m")
    split = """\
---
apiVersion: edge.router/v1alpha1
kind: TrafficSplit
metadata: {name: s}
spec:
  clusters:
  - {name: down, weight: 1000, requestHeaders: {add: [{name: X-Region, value: down}]}}
  - {name: b, weight: 1, requestHeaders: {add: [{name: X-Region, value: b}]}}
  requestHeaders: {add: [{name: X-Tag, value: route}]}
  mirror: {cluster: m, percent: 100}
"""
    app = await router(cluster_docs({"down": 1, "b": b.port, "m": m.port}) + split)
    got = await heads(app.port, 3)  # the first goes to `down` (refused), is retried on b; then b alone
    assert all(h.startswith(b"http/1.1 200") and b"x-router-cluster: b" in h for h in got)
    assert [s.headers.getall("X-Region") for s in b.seen] == [["b"]] * 3
    await wait_for(lambda: len(m.seen) == 3, what="three mirror copies")
    assert all("X-Region" not in s.headers and s.headers.getall("X-Tag") == ["route"] for s in m.seen)
