"""Slow start on real sockets: a region that comes back from an outage, and one added by a reload,
get a small share of the traffic at first, not their full weight; clusters of the first config start
at full weight."""
import random

from chaos.relay import DelayRelay
from tests.conftest import cluster_docs, router_doc, split_doc, wait_for
from tests.integration.test_policy_sockets import clusters_hit

SLOW = {"window": "60s", "minWeightPercent": 10}
PROBES = {"interval": "100ms", "timeout": "1s"}


async def test_a_region_back_from_an_outage_ramps_up(backends, router):
    a, b = await backends("a", "b")
    relay = DelayRelay(("127.0.0.1", b.port))
    try:
        app = await router(cluster_docs({"a": a.port, "b": await relay.start()}) + split_doc({"a": 1, "b": 1})
                           + router_doc(slowStart=SLOW, probes=PROBES), probes=True)
        app.ctx.rng = random.Random(11)
        before = await clusters_hit(app.port, 200)
        assert 70 <= before["b"] <= 130, before  # the first config's clusters start at their full weight

        await relay.refuse()  # b's ingress is gone: probes fail, requests fail over to a
        await wait_for(lambda: not app.ctx.health.is_healthy("b", app.ctx.clock()), what="b marked down")
        assert "b" not in await clusters_hit(app.port, 20)
        await relay.accept_again()
        await wait_for(lambda: app.ctx.health.is_healthy("b", app.ctx.clock()), what="b healthy again")

        after = await clusters_hit(app.port, 200)
        assert 1 <= after.get("b", 0) <= 45, after  # about 10/110 of it while the ramp begins, not half
        assert 0.1 <= app.state()["clusters"]["b"]["health"]["slow_start_share"] < 0.2
        assert app.state()["slow_start"] == {"window_s": 60.0, "aggression": 1.0, "min_weight": 0.1}
    finally:
        await relay.stop()


async def share_after_adding_b(backends, router, extra: str) -> int:
    a, b = await backends("a", "b")
    app = await router(cluster_docs({"a": a.port}) + split_doc({"a": 1}) + extra)
    app.ctx.rng = random.Random(12)
    (app.config_dir / "router.yaml").write_text(cluster_docs({"a": a.port, "b": b.port})
                                                + split_doc({"a": 1, "b": 1}) + extra)
    assert (await app.reloader.reload("test"))["ok"]
    return (await clusters_hit(app.port, 200)).get("b", 0)


async def test_a_cluster_added_by_a_reload_ramps_up(backends, router):
    assert 1 <= await share_after_adding_b(backends, router, router_doc(slowStart=SLOW)) <= 45


async def test_without_slow_start_an_added_cluster_gets_its_weight_at_once(backends, router):
    assert 70 <= await share_after_adding_b(backends, router, "") <= 130
