"""A route's rate limit on real sockets: 429 with Retry-After past the burst, nothing of it sent to a
cluster, buckets per route, per client (believing trusted proxies only) and per header value, kept
across a reload that keeps the limit."""
from tests.conftest import cluster_docs, raw_request, response_of, router_doc, split_doc


def limited_split(name: str, hosts: list[str], limit: str) -> str:
    return split_doc({"a": 1}, name, hosts) + f"  rateLimit: {limit}\n"


async def get(port: int, host: str, *headers: str) -> tuple[int, dict, bytes]:
    extra = "".join(f"{h}\r\n" for h in headers)
    raw = await raw_request(port, f"GET / HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n".encode())
    return response_of(raw)


async def test_past_the_burst_429_with_retry_after_and_nothing_upstream(backends, router):
    a, = await backends("a")
    app = await router(cluster_docs({"a": a.port})
                       + limited_split("limited", ["limited"], "{requestsPerSecond: 0.5, burst: 3}")
                       + split_doc({"a": 1}, "open", ["open"]))
    statuses = [(await get(app.port, "limited"))[0] for _ in range(5)]
    assert statuses == [200, 200, 200, 429, 429]
    status, headers, body = await get(app.port, "limited")
    assert status == 429 and body == b"rate limit exceeded\n" and headers["retry-after"] == "2"  # 1 token / 2 s
    assert "x-router-cluster" not in headers
    assert len(a.seen) == 3
    assert [(await get(app.port, "open"))[0] for _ in range(5)] == [200] * 5  # another route, no limit
    assert app.ctx.metrics.rate_limited.labels("limited")._value.get() == 3
    (state,) = [r for r in app.state()["routes"] if r["name"] == "limited"]
    assert state["rate_limit"] == {"rate": 0.5, "burst": 3, "key": "route", "buckets": 1,
                                   "shared": False}
    # A reload that keeps the route's name and limit keeps its bucket (still empty) ...
    (app.config_dir / "router.yaml").write_text((app.config_dir / "router.yaml").read_text() + "\n")
    assert (await app.reloader.reload("test"))["ok"]
    assert (await get(app.port, "limited"))[0] == 429
    # ... a changed limit starts a new one.
    text = (app.config_dir / "router.yaml").read_text().replace("burst: 3", "burst: 2")
    (app.config_dir / "router.yaml").write_text(text)
    assert (await app.reloader.reload("test"))["ok"]
    assert [(await get(app.port, "limited"))[0] for _ in range(3)] == [200, 200, 429]


async def test_per_client_buckets_believe_only_trusted_proxies(backends, router):
    a, = await backends("a")
    limit = "{requestsPerSecond: 0.1, burst: 1, key: client}"
    app = await router(cluster_docs({"a": a.port}) + limited_split("s", ["h"], limit)
                       + router_doc(trustedProxies=["127.0.0.0/8"]))
    # The router's peer (127.0.0.1) is a trusted proxy: the client is what it appended to X-Forwarded-For.
    assert (await get(app.port, "h", "X-Forwarded-For: 203.0.113.1"))[0] == 200
    assert (await get(app.port, "h", "X-Forwarded-For: 203.0.113.2"))[0] == 200
    assert (await get(app.port, "h", "X-Forwarded-For: 203.0.113.1"))[0] == 429
    # A client cannot get a fresh bucket by writing its own X-Forwarded-For in front of the proxy's entry.
    assert (await get(app.port, "h", "X-Forwarded-For: 198.51.100.9, 203.0.113.2"))[0] == 429

    untrusted = await router(cluster_docs({"a": a.port}) + limited_split("s", ["h"], limit))
    assert (await get(untrusted.port, "h", "X-Forwarded-For: 203.0.113.1"))[0] == 200
    assert (await get(untrusted.port, "h", "X-Forwarded-For: 203.0.113.2"))[0] == 429  # both are 127.0.0.1


async def test_per_header_buckets(backends, router):
    a, = await backends("a")
    app = await router(cluster_docs({"a": a.port})
                       + limited_split("s", ["h"], "{requestsPerSecond: 0.1, burst: 1, key: 'header:X-Api-Key'}"))
    assert (await get(app.port, "h", "X-Api-Key: alpha"))[0] == 200
    assert (await get(app.port, "h", "x-api-key: beta"))[0] == 200
    assert (await get(app.port, "h", "X-Api-Key: alpha"))[0] == 429
    assert (await get(app.port, "h"))[0] == 200  # requests without the header share one bucket
    assert (await get(app.port, "h"))[0] == 429
