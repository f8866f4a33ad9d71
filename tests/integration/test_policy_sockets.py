"""The policy on real sockets: maxRTT eligibility through a delaying relay, and failover when a
cluster is killed mid-traffic."""
import asyncio

from chaos.relay import DelayRelay
from tests.conftest import cluster_docs, raw_request, read_response, router_doc, split_doc, wait_for

FAST = dict(probes={"interval": "100ms", "timeout": "1s"}, rttDecay="500ms", decisionHeader=True)


async def clusters_hit(port: int, n: int, any_status: bool = False) -> dict[str, int]:
    """n GETs on one connection: how many each cluster answered (all 200, unless `any_status`)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    seen: dict[str, int] = {}
    try:
        for _ in range(n):
            writer.write(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
            status, headers, _ = await read_response(reader)
            assert status == 200 or any_status
            seen[headers["x-router-cluster"]] = seen.get(headers["x-router-cluster"], 0) + 1
    finally:
        writer.close()
    return seen


def split_with_max_rtt(weights: dict, max_rtt: str) -> str:
    return split_doc(weights) + f"  strategy:\n    algorithm: latency-aware\n    params:\n      maxRTT: {max_rtt}\n"


async def test_cluster_slower_than_max_rtt_loses_traffic_and_gets_it_back(backends, router):
    bs = await backends("a", "b", "c")
    relays = [DelayRelay(("127.0.0.1", b.port), delay_s=0.002) for b in bs]
    ports = {b.name: await r.start() for b, r in zip(bs, relays)}
    try:
        app = await router(cluster_docs(ports) + split_with_max_rtt({"a": 1, "b": 1, "c": 1}, "100ms") +
                           router_doc(**FAST), probes=True)
        rtt = app.ctx.policy.rtt
        await wait_for(lambda: all(rtt.rtt(n) is not None for n in ports), timeout_s=5, what="first probes")
        assert set(await clusters_hit(app.port, 60)) == {"a", "b", "c"}

        relays[2].delay_s = 0.08  # c: 160 ms round trip, beyond maxRTT
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await wait_for(lambda: (rtt.rtt("c") or 0) > 0.1, timeout_s=5, what="c measured slow")
        assert loop.time() - t0 < 5
        assert "c" not in await clusters_hit(app.port, 60)

        relays[2].delay_s = 0.002
        await wait_for(lambda: (rtt.rtt("c") or 1) < 0.1, timeout_s=10, what="c measured fast again")
        assert "c" in await clusters_hit(app.port, 60)
    finally:
        for r in relays:
            await r.stop()


class KillableBackend:
    """Answers after a short delay, so requests are in flight when it is killed."""

    def __init__(self, name: str):
        self.name, self.writers, self.server, self.port = name, set(), None, 0

    async def start(self):
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def handle(self, reader, writer):
        self.writers.add(writer)
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                await asyncio.sleep(0.02)
                body = self.name.encode()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.writers.discard(writer)

    def kill(self):
        self.server.close()
        for w in list(self.writers):
            w.transport.abort()


async def test_killed_cluster_costs_no_failed_idempotent_request(router):
    bs = [await KillableBackend(n).start() for n in ("a", "b", "c")]
    try:
        app = await router(cluster_docs({b.name: b.port for b in bs}) + split_doc({"a": 1, "b": 1, "c": 1}))
        statuses: list[int] = []
        stop = asyncio.Event()

        async def client():
            reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
            try:
                while not stop.is_set():
                    writer.write(b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n")
                    status, _, _ = await read_response(reader)
                    statuses.append(status)
            finally:
                writer.close()

        tasks = [asyncio.create_task(client()) for _ in range(8)]
        await wait_for(lambda: len(statuses) > 100, timeout_s=5, what="traffic")
        bs[0].kill()
        before = len(statuses)
        await wait_for(lambda: len(statuses) > before + 300, timeout_s=10, what="traffic after the kill")
        stop.set()
        await asyncio.gather(*tasks)
        assert statuses and all(s == 200 for s in statuses), sorted(set(statuses))
        _, metrics = None, app.metrics
        retried = sum(metrics.retries.labels(r)._value.get() for r in ("reset", "connect", "stale_connection"))
        assert retried >= 1  # the kill was felt, and absorbed
    finally:
        for b in bs:
            b.server.close()


async def test_static_warm_state_prefers_the_warm_cluster_and_explains_itself(backends, router):
    import aiohttp
    a, b = await backends("a", "b")
    service = ("---\napiVersion: edge.router/v1alpha1\nkind: Service\nmetadata: {name: shop}\nspec:\n"
               "  hosts: [shop.example.com]\n  state: {a: warm, b: cold}\n")
    split = split_with_max_rtt({"a": 1, "b": 1}, "200ms").replace("spec:\n", "spec:\n  service: shop\n", 1)
    app = await router(cluster_docs({"a": a.port, "b": b.port}) + service + split + router_doc(decisionHeader=True))
    await wait_for(lambda: app.ctx.policy.warmth.states, timeout_s=3, what="static discovery")
    reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
    for _ in range(20):
        writer.write(b"GET / HTTP/1.1\r\nHost: shop.example.com\r\n\r\n")
        status, headers, _ = await read_response(reader)
        assert status == 200 and headers["x-router-cluster"] == "a"
        assert headers["x-router-decision"].startswith("warm-preferred; expected-ms=")
    writer.close()
    assert app.metrics.wake_hints.labels("b")._value.get() >= 1
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://127.0.0.1:{app.admin_port}/debug/state") as r:
            state = await r.json()
    assert state["services"]["shop"]["b"]["warmth"] == "cold"
    assert state["services"]["shop"]["b"]["cold_s"] == 6.0
    assert state["services"]["shop"]["a"]["warmth"] == "warm"


async def test_per_try_timeout_retries_a_get_elsewhere_and_waits_on_when_nowhere_else(backends, router):
    slow, fast = await backends("a", "b")
    slow.delay_s = 0.6
    docs = cluster_docs({"a": slow.port, "b": fast.port})
    app = await router(docs + split_doc({"a": 1, "b": 0.0001}) + router_doc(timeouts={"perTry": "200ms"}))
    raw = await raw_request(app.port, b"GET /x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 200") and b"x-router-cluster: b" in raw  # a's try timed out at 200 ms
    # With b gone the slow try is the only one: it gets the rest of the overall timeout, not a 504.
    await fast.stop()
    app.ctx.health.on_connect_failure("b", app.ctx.clock())
    raw = await raw_request(app.port, b"GET /y HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 200") and b"x-router-cluster: a" in raw
