"""Keep-warm on real sockets: a service called at regular gaps longer than its cluster's idle
timeout is kept warm (pings through the ingress) in the window its histogram predicts, and a
copy at zero is woken ahead of it. Times are scaled down through the policy's settings."""
import asyncio

from router.core.keepwarm import KeepWarmSettings
from tests.conftest import raw_request, wait_for
from tests.integration.test_hold import ZeroScaledCluster, service_config

SCALED = KeepWarmSettings(bin_s=0.1, range_s=10.0, min_samples=3, lead_s=0.1, min_idle_s=0.1, ping_s=0.1)


class IdleScaledCluster(ZeroScaledCluster):
    """Also scales to zero after `idle_s` without any request (pings count, like Knative's)."""

    def __init__(self, idle_s: float | None):
        super().__init__(cold_start_s=0.1, handler_s=0.0)
        self.idle_s = idle_s
        self.scale_downs = 0
        self.pings = []
        self.timer = None

    async def handle(self, request):
        if request.path == "/healthz":
            self.pings.append((asyncio.get_running_loop().time(), request.headers.get("Host")))
        self._touch()
        return await super().handle(request)

    def _touch(self):
        if self.timer is not None:
            self.timer.cancel()
        if self.idle_s is not None:
            self.timer = asyncio.get_running_loop().call_later(self.idle_s, self._down)

    def _down(self):
        if self.ready:
            self.ready = False
            self.scale_downs += 1

    def _up(self):
        super()._up()
        self._touch()


async def get(app):
    return await raw_request(app.port, b"GET /x HTTP/1.1\r\nHost: svc.example.com\r\nConnection: close\r\n\r\n")


async def test_a_service_with_regular_gaps_is_kept_warm_through_its_window(router):
    cluster = await IdleScaledCluster(idle_s=None).start()
    try:
        text = service_config(cluster.port, state="warm").replace(
            "  containerConcurrency: 10\n", "  containerConcurrency: 10\n  keepWarm: true\n")
        app = await router(text)
        app.keepwarm.policy.settings = SCALED
        app.keepwarm.tick_s = 0.05
        await wait_for(lambda: app.ctx.policy.warmth.states, what="static state")
        cluster.ready = True
        gap = 0.6  # the service's traffic: a call every 0.6 s
        for i in range(5):  # learning (the copy stays up meanwhile)
            assert (await get(app)).startswith(b"HTTP/1.1 200")
            await asyncio.sleep(gap)
        head, tail = app.keepwarm.policy.window("svc")
        assert 0.5 <= head <= 0.6 and 0.6 <= tail <= 0.9
        # Now the cluster scales to zero after 0.52 s without requests: before the next call.
        cluster.idle_s = 0.52
        assert (await get(app)).startswith(b"HTTP/1.1 200")
        sent = asyncio.get_running_loop().time()
        await asyncio.sleep(gap)
        assert cluster.scale_downs == 0, "scaled to zero inside the keep-warm window"
        assert (await get(app)).startswith(b"HTTP/1.1 200")  # the next call finds it warm
        window_pings = [t - sent for t, _ in cluster.pings if t > sent]
        assert window_pings and min(window_pings) >= head - SCALED.lead_s - 0.06, window_pings
        assert all(host == "svc.example.com" for _, host in cluster.pings)
        assert app.metrics.keepwarm_pings.labels("a", "ok")._value.get() >= 1
        # The calls stop: after the window closes nothing more is sent and the copy is let go.
        await wait_for(lambda: cluster.scale_downs == 1, timeout_s=3, what="scaled to zero after the window")
        quiet_from = asyncio.get_running_loop().time()
        await asyncio.sleep(0.4)
        assert not [t for t, _ in cluster.pings if t > quiet_from]
    finally:
        await cluster.stop()


async def test_a_copy_at_zero_is_woken_ahead_of_the_expected_call(router):
    cluster = await IdleScaledCluster(idle_s=5.0).start()
    try:
        text = service_config(cluster.port).replace("  containerConcurrency: 10\n",
                                                    "  containerConcurrency: 10\n  keepWarm: true\n")
        app = await router(text)
        await wait_for(lambda: app.ctx.policy.warmth.states, what="static state")
        policy, now = app.keepwarm.policy, app.ctx.clock()
        for i in range(10):  # a call every 300 s, the last one 262 s ago: the window opens in ~2 s
            policy.on_served("svc", "a", now - 262 - 300 * (9 - i))
        assert app.keepwarm.tick() == []
        policy.cluster["svc"] = "a"
        for i in range(10):
            policy.on_served("svc", "a", now - 265 - 300 * (9 - i))
        assert app.keepwarm.tick() == [("wake", "svc", "a")]
        await wait_for(lambda: cluster.ready, timeout_s=3, what="woken ahead of the call")
        assert cluster.wakes == 1 and app.metrics.background_wakes.labels("a", "keepwarm")._value.get() == 1
        await wait_for(lambda: app.ctx.policy.warmth.warmth("svc", "a", app.ctx.clock()).value == "warm",
                       timeout_s=3, what="seen ready")
    finally:
        await cluster.stop()
