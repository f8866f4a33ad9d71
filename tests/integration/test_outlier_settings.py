"""The Router's outlier detection and probe thresholds on real sockets: a cluster answering 5xx is
ejected after consecutive5xx of them, for baseEjectionTime × n, and the thresholds apply from the
next answer after a reload."""
import random

from tests.conftest import cluster_docs, router_doc, split_doc, wait_for
from tests.integration.test_policy_sockets import clusters_hit


async def test_consecutive_5xx_and_the_ejection_time_come_from_the_config(backends, router):
    a, b = await backends("a", "b")
    a.status = 500
    docs = cluster_docs({"a": a.port, "b": b.port}) + split_doc({"a": 1, "b": 1})
    app = await router(docs + router_doc(outlierDetection={"consecutive5xx": 2, "baseEjectionTime": "500ms"},
                                         probes={"unhealthyThreshold": 1, "healthyThreshold": 4}))
    app.ctx.rng = random.Random(5)
    hits = await clusters_hit(app.port, 30, any_status=True)
    assert len(a.seen) == 2 and hits["b"] == 28  # two 500s, then a is out
    assert app.state()["clusters"]["a"]["health"]["ejected"]
    assert app.state()["outlier_detection"] == {"consecutive_5xx": 2, "base_ejection_s": 0.5,
                                                "max_ejection_s": 300.0, "probe_unhealthy": 1,
                                                "probe_healthy": 4, "panic_below": 0.5}
    await wait_for(lambda: app.ctx.health.is_healthy("a", app.ctx.clock()), timeout_s=2, what="a back after 0.5 s")
    await clusters_hit(app.port, 30, any_status=True)
    assert len(a.seen) == 4  # two more, then out again (for 1 s now)

    (app.config_dir / "router.yaml").write_text(docs + router_doc(outlierDetection={"consecutive5xx": 4}))
    assert (await app.reloader.reload("test"))["ok"]
    app.ctx.health.clusters.clear()
    await clusters_hit(app.port, 40, any_status=True)
    assert len(a.seen) == 8  # the reloaded threshold: four in a row

