"""Scale from zero on real sockets: hold, wake once, paced release, deadlines, client gone."""
import asyncio
import textwrap

import aiohttp
from aiohttp import web

from tests.conftest import (cluster_docs, raw_request, readiness_failed, router_doc, router_process, serve_app,
                            wait_for)


class ZeroScaledCluster:
    """An ingress whose service is at zero: 503 until woken and started (after `cold_start_s`)."""

    def __init__(self, cold_start_s: float, handler_s: float = 0.05):
        self.cold_start_s, self.handler_s = cold_start_s, handler_s
        self.ready = False
        self.starting = False
        self.wakes = 0
        self.served = []
        self.arrivals = []
        self.active = self.max_active = 0
        self.runner = None
        self.port = 0

    async def handle(self, request: web.Request) -> web.Response:
        if request.path == "/wake":
            self.wakes += 1
            if not self.ready and not self.starting:
                self.starting = True
                asyncio.get_running_loop().call_later(self.cold_start_s, self._up)
            return web.Response(status=202, text="waking")
        if request.path == "/healthz" or request.headers.get("User-Agent") == "edge-router-probe":
            return web.Response(status=200 if self.ready else 503)  # (probes are not traffic)
        if not self.ready:
            return web.Response(status=503, text="no endpoints")
        if request.path == "/ws":
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            async for msg in ws:
                await ws.send_str("echo:" + msg.data)
            return ws
        self.arrivals.append(asyncio.get_running_loop().time())
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            await asyncio.sleep(self.handler_s)
        finally:
            self.active -= 1
        self.served.append(request.path)
        return web.Response(text=f"ok {request.path}")

    def _up(self):
        self.ready, self.starting = True, False

    async def start(self):
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner, self.port = await serve_app(app)
        return self

    async def stop(self):
        await self.runner.cleanup()


def service_config(port: int, state: str = "cached", hold: str = "5s", split_timeouts: str = "{}",
                   **router_spec) -> str:
    return cluster_docs({"a": port}) + textwrap.dedent(f"""\
        ---
        apiVersion: edge.router/v1alpha1
        kind: Service
        metadata: {{name: svc}}
        spec:
          hosts: [svc.example.com]
          containerConcurrency: 10
          holdLimit: {hold}
          wake: {{http: {{path: /wake}}}}
          readinessPath: /healthz
          state: {{a: {state}}}
        ---
        apiVersion: edge.router/v1alpha1
        kind: TrafficSplit
        metadata: {{name: s}}
        spec:
          service: svc
          clusters: [{{name: a, weight: 1}}]
          strategy: {{params: {{maxRTT: 200ms}}}}
          timeouts: {split_timeouts}
        """) + router_doc(decisionHeader=True, **router_spec)


async def test_burst_onto_a_cold_service_is_held_woken_once_and_released_paced(router):
    cluster = await ZeroScaledCluster(cold_start_s=0.4).start()
    try:
        app = await router(service_config(cluster.port))
        await wait_for(lambda: app.ctx.policy.warmth.states, what="static state")
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
            async def get(i):
                async with s.get(f"http://127.0.0.1:{app.port}/r{i}", headers={"Host": "svc.example.com"}) as r:
                    return r.status, await r.text(), r.headers.get("Server-Timing", "")
            results = await asyncio.gather(*[get(i) for i in range(100)])
        assert [r[0] for r in results] == [200] * 100, [r for r in results if r[0] != 200][:3]
        assert sorted(cluster.served) == sorted(f"/r{i}" for i in range(100))  # nothing lost, nothing twice
        assert cluster.wakes == 1
        # Paced: the first wave is containerConcurrency x 1 ready pod; more only as those complete.
        first = cluster.arrivals[0]
        assert sum(1 for t in cluster.arrivals if t < first + cluster.handler_s * 0.8) <= 10
        assert cluster.max_active < 100
        assert all("queue;dur=" in r[2] and "cold;desc=a" in r[2] for r in results)
        assert app.ctx.activator.buffer.outcomes["forwarded"] == 100
        assert app.ctx.activator.buffer.total == 0
    finally:
        await cluster.stop()


async def test_upload_held_longer_than_body_idle_is_not_timed_out(router):
    """While held, the router stops reading the body: that pause is not the client's stall (bodyIdle)."""
    cluster = await ZeroScaledCluster(cold_start_s=0.8).start()
    try:
        app = await router(service_config(cluster.port, timeouts={"bodyIdle": "300ms"}))
        await wait_for(lambda: app.ctx.policy.warmth.states, what="static state")
        reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
        try:
            writer.write(b"POST /up HTTP/1.1\r\nHost: svc.example.com\r\nContent-Length: 10\r\n\r\nfirst")
            await wait_for(lambda: app.ctx.activator.buffer.total == 1, what="request held")
            writer.write(b"-last")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200"), head
            assert cluster.served == ["/up"]
        finally:
            writer.close()
    finally:
        await cluster.stop()


async def test_requests_held_behind_a_saturated_warm_copy_go_as_direct_ones_finish(router):
    cluster = await ZeroScaledCluster(cold_start_s=0.1, handler_s=0.3).start()
    cluster.ready = True
    try:
        app = await router(service_config(cluster.port, state="warm"))
        await wait_for(lambda: app.ctx.policy.warmth.states, what="static state")
        loop = asyncio.get_running_loop()
        t = loop.time()
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
            async def get(i):
                async with s.get(f"http://127.0.0.1:{app.port}/r{i}", headers={"Host": "svc.example.com"}) as r:
                    return r.status, r.headers.get("Server-Timing", "")
            results = await asyncio.gather(*[get(i) for i in range(25)])
        assert [r[0] for r in results] == [200] * 25
        assert sum(1 for r in results if "queue;dur=" in r[1]) >= 10  # beyond 10 in flight they waited...
        assert loop.time() - t < 2.0  # ...for slots freed by the direct ones, not for the 5 s hold limit
        assert cluster.max_active < 25  # paced, not all released at once
    finally:
        await cluster.stop()


async def test_deadline_shorter_than_predicted_start_is_refused_at_once(router):
    cluster = await ZeroScaledCluster(cold_start_s=5).start()
    try:
        app = await router(service_config(cluster.port, state="cold"))  # uncached: 6 s predicted
        await wait_for(lambda: app.ctx.policy.warmth.states, what="static state")
        loop = asyncio.get_running_loop()
        t = loop.time()
        raw = await raw_request(app.port, b"GET / HTTP/1.1\r\nHost: svc.example.com\r\nx-request-timeout: 2\r\n"
                                          b"Connection: close\r\n\r\n")
        assert raw.startswith(b"HTTP/1.1 503") and b"Retry-After: 6" in raw, raw
        assert loop.time() - t < 1
        assert cluster.served == []
    finally:
        await cluster.stop()


async def test_route_request_timeout_bounds_the_hold(router):
    cluster = await ZeroScaledCluster(cold_start_s=5).start()
    try:
        # A 2 s route timeout cannot wait out a 6 s predicted start: 503 at once, as for x-request-timeout.
        app = await router(service_config(cluster.port, state="cold", hold="10s",
                                          split_timeouts="{request: 2s}"))
        await wait_for(lambda: app.ctx.policy.warmth.states, what="static state")
        loop = asyncio.get_running_loop()
        t = loop.time()
        raw = await raw_request(app.port, b"GET / HTTP/1.1\r\nHost: svc.example.com\r\nConnection: close\r\n\r\n")
        assert raw.startswith(b"HTTP/1.1 503") and b"before the request's deadline" in raw, raw
        assert loop.time() - t < 1
        # 1 s predicted (cached): held, but until the route's 1.2 s rather than the 10 s holdLimit.
        app = await router(service_config(cluster.port, state="cached", hold="10s",
                                          split_timeouts="{request: 1200ms}"))
        await wait_for(lambda: app.ctx.policy.warmth.states, what="static state")
        t = loop.time()
        raw = await raw_request(app.port, b"GET / HTTP/1.1\r\nHost: svc.example.com\r\nConnection: close\r\n\r\n")
        assert raw.startswith(b"HTTP/1.1 504") and b"no copy of svc became ready" in raw, raw
        assert 1.1 <= loop.time() - t < 2.5
        assert app.ctx.activator.buffer.outcomes["expired"] == 1
    finally:
        await cluster.stop()


async def test_hold_expires_into_504(router):
    cluster = await ZeroScaledCluster(cold_start_s=5).start()
    try:
        app = await router(service_config(cluster.port, state="cached", hold="1500ms"))  # 1 s predicted
        await wait_for(lambda: app.ctx.policy.warmth.states, what="static state")
        loop = asyncio.get_running_loop()
        t = loop.time()
        raw = await raw_request(app.port, b"GET / HTTP/1.1\r\nHost: svc.example.com\r\nConnection: close\r\n\r\n",
                                timeout_s=5)
        assert raw.startswith(b"HTTP/1.1 504") and b"no copy of svc became ready" in raw, raw
        assert 1.4 <= loop.time() - t < 2.5
        assert app.ctx.activator.buffer.outcomes["expired"] == 1
    finally:
        await cluster.stop()


async def test_client_leaving_while_held_is_dropped_and_nothing_goes_upstream(router):
    cluster = await ZeroScaledCluster(cold_start_s=0.8).start()
    try:
        app = await router(service_config(cluster.port))
        await wait_for(lambda: app.ctx.policy.warmth.states, what="static state")
        reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
        writer.write(b"GET /gone HTTP/1.1\r\nHost: svc.example.com\r\n\r\n")
        await writer.drain()
        buffer = app.ctx.activator.buffer
        await wait_for(lambda: buffer.total == 1, what="request held")
        writer.close()
        await wait_for(lambda: buffer.total == 0, timeout_s=1, what="held request dropped")
        assert buffer.outcomes["gone"] == 1
        await wait_for(lambda: cluster.ready, timeout_s=3, what="cluster started")
        await asyncio.sleep(0.2)  # give a wrongly kept request the chance to be forwarded
        assert "/gone" not in cluster.served
    finally:
        await cluster.stop()


async def test_full_queue_spills_to_a_warm_cluster_beyond_max_rtt(backends, router):
    cold = await ZeroScaledCluster(cold_start_s=5).start()
    (far,) = await backends("far")
    try:
        text = service_config(cold.port).replace("  state: {a: cached}\n", "  state: {a: cached, far: warm}\n"
                                                 "  spillover: true\n")
        text = text.replace("clusters: [{name: a, weight: 1}]", "clusters: [{name: a, weight: 1}, {name: far, weight: 1}]")
        text += cluster_docs({"far": far.port}) + router_doc(buffer={"perService": 2}, decisionHeader=True)
        text = text.replace(router_doc(decisionHeader=True), "", 1)
        app = await router(text)
        await wait_for(lambda: len(app.ctx.policy.warmth.states) == 2, what="static state")
        app.ctx.policy.rtt.on_probe("far", 0.5, 0.5, app.ctx.clock())  # far: beyond maxRTT 200ms
        app.ctx.policy.rtt.on_probe("a", 0.001, 0.001, app.ctx.clock())
        held = [asyncio.create_task(raw_request(app.port, b"GET /h HTTP/1.1\r\nHost: svc.example.com\r\n"
                                                           b"Connection: close\r\n\r\n", timeout_s=3)) for _ in range(2)]
        await wait_for(lambda: app.ctx.activator.buffer.total == 2, what="two held")
        raw = await raw_request(app.port, b"GET /third HTTP/1.1\r\nHost: svc.example.com\r\nConnection: close\r\n\r\n")
        assert raw.startswith(b"HTTP/1.1 200") and b"x-router-cluster: far" in raw and b"spillover" in raw, raw
        for t in held:
            t.cancel()
        await asyncio.gather(*held, return_exceptions=True)
        await wait_for(lambda: app.ctx.activator.buffer.total == 0, timeout_s=1, what="held clients gone")
    finally:
        await cold.stop()


def two_cluster_service(cold_port: int, warm_port: int, wake_skipped: bool = True) -> str:
    text = service_config(cold_port).replace("  state: {a: cached}\n", "  state: {a: cached, w: warm}\n"
                                             + ("" if wake_skipped else "  wakeSkipped: false\n"))
    text = text.replace("clusters: [{name: a, weight: 1}]", "clusters: [{name: a, weight: 1}, {name: w, weight: 1}]")
    return text + cluster_docs({"w": warm_port})


async def test_skipped_cold_cluster_is_woken_in_the_background_and_gets_its_share(backends, router):
    cold = await ZeroScaledCluster(cold_start_s=0.3, handler_s=0.0).start()
    (warm,) = await backends("w")
    try:
        app = await router(two_cluster_service(cold.port, warm.port))
        await wait_for(lambda: len(app.ctx.policy.warmth.states) == 2, what="static state")
        clusters, decisions = [], []

        async def send(n):
            for _ in range(n):
                raw = await raw_request(app.port, b"GET /x HTTP/1.1\r\nHost: svc.example.com\r\nConnection: close\r\n\r\n")
                assert raw.startswith(b"HTTP/1.1 200"), raw
                head = dict(line.split(b": ", 1) for line in raw.split(b"\r\n\r\n")[0].split(b"\r\n")[1:])
                clusters.append(head[b"x-router-cluster"].decode())
                decisions.append(head[b"x-router-decision"].split(b";")[0].decode())

        await send(5)  # nobody waits for the cold copy: all go to the warm one, and a wakes in the background
        assert clusters == ["w"] * 5 and decisions == ["warm-preferred"] * 5
        await wait_for(lambda: cold.ready, timeout_s=3, what="background wake")
        assert cold.wakes == 1  # one wake, however many requests skipped the cluster
        assert app.metrics.background_wakes.labels("a", "skipped")._value.get() == 1
        await wait_for(lambda: app.ctx.policy.warmth.warmth("svc", "a", app.ctx.clock()).value == "warm",
                       timeout_s=3, what="a seen warm")
        clusters.clear(), decisions.clear()
        await send(40)  # back to the weights
        assert 8 <= clusters.count("a") <= 32 and set(decisions) == {"weighted"}, (clusters, decisions)
        assert app.ctx.activator.buffer.outcomes.get("forwarded", 0) == 0  # nothing was ever held
    finally:
        await cold.stop()


async def test_background_wake_can_be_turned_off_and_gives_up_without_a_ready_copy(backends, router):
    cold = await ZeroScaledCluster(cold_start_s=0.2).start()
    (warm,) = await backends("w")
    try:
        app = await router(two_cluster_service(cold.port, warm.port, wake_skipped=False))
        await wait_for(lambda: len(app.ctx.policy.warmth.states) == 2, what="static state")
        for _ in range(3):
            raw = await raw_request(app.port, b"GET / HTTP/1.1\r\nHost: svc.example.com\r\nConnection: close\r\n\r\n")
            assert b"x-router-cluster: w" in raw
        assert cold.wakes == 0 and app.metrics.wake_hints.labels("a")._value.get() >= 1
        # With wakes on, a copy that never becomes ready is given up after holdLimit and may be woken again.
        act, now = app.ctx.activator, app.ctx.clock()
        svc = act.service("svc")
        object.__setattr__(svc, "wake_skipped", True)
        cold.cold_start_s = 60.0
        assert act.wake_skipped("svc", "a")
        assert not act.wake_skipped("svc", "a")  # already waking
        act.background[("svc", "a")] = now + 0.3
        await wait_for(lambda: ("svc", "a") not in act.background, timeout_s=3, what="give up")
        assert app.ctx.policy.warmth.warmth("svc", "a", app.ctx.clock()).value == "cached"
        assert act.wake_skipped("svc", "a") and cold.wakes >= 1
    finally:
        await cold.stop()


async def test_websocket_upgrade_can_be_held_then_tunnels(router):
    cluster = await ZeroScaledCluster(cold_start_s=0.3).start()
    try:
        app = await router(service_config(cluster.port))
        await wait_for(lambda: app.ctx.policy.warmth.states, what="static state")
        async with aiohttp.ClientSession() as s:
            async with s.ws_connect(f"http://127.0.0.1:{app.port}/ws", headers={"Host": "svc.example.com"}) as ws:
                assert "queue;dur=" in ws._response.headers["Server-Timing"]
                await ws.send_str("hi")
                assert (await ws.receive(timeout=5)).data == "echo:hi"
        assert app.ctx.activator.buffer.outcomes["forwarded"] == 1
    finally:
        await cluster.stop()


async def test_sigterm_keeps_serving_held_requests(tmp_path):
    import signal
    cluster = await ZeroScaledCluster(cold_start_s=1.0).start()
    (tmp_path / "c.yaml").write_text(service_config(cluster.port, timeouts={"drain": "100ms"}))
    try:
        async with router_process(tmp_path) as rp:
            held = asyncio.create_task(raw_request(rp.port, b"GET /held HTTP/1.1\r\nHost: svc.example.com\r\n"
                                                            b"Connection: close\r\n\r\n", timeout_s=10))
            await wait_for(lambda: cluster.wakes == 1, timeout_s=5, what="wake")
            rp.send_signal(signal.SIGTERM)
            async with aiohttp.ClientSession() as s:
                await wait_for(lambda: readiness_failed(s, rp.admin_port), timeout_s=1, what="readiness to fail")
            raw = await held  # still served once the copy is ready, though drain is 100 ms
            assert raw.startswith(b"HTTP/1.1 200") and "/held" in cluster.served
            assert await rp.wait() == 0
    finally:
        await cluster.stop()
