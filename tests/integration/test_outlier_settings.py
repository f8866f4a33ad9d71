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
                                                "probe_healthy": 4, "panic_below": 0.5,
                                                "max_ejection_percent": 10.0}
    await wait_for(lambda: app.ctx.health.is_healthy("a", app.ctx.clock()), timeout_s=2, what="a back after 0.5 s")
    await clusters_hit(app.port, 30, any_status=True)
    assert len(a.seen) == 4  # two more, then out again (for 1 s now)

    (app.config_dir / "router.yaml").write_text(docs + router_doc(outlierDetection={"consecutive5xx": 4}))
    assert (await app.reloader.reload("test"))["ok"]
    app.ctx.health.clusters.clear()
    await clusters_hit(app.port, 40, any_status=True)
    assert len(a.seen) == 8  # the reloaded threshold: four in a row



async def test_a_second_cluster_answering_5xx_stays_in_while_max_ejection_percent_are_out(backends, router):
    """One of three Clusters out is 33%, above the default maxEjectionPercent of 10: a second one answering
    5xx stays in rotation (counted as a skipped ejection) until the setting allows more."""
    a, b, c = await backends("a", "b", "c")
    a.status = b.status = 500
    docs = cluster_docs({"a": a.port, "b": b.port, "c": c.port}) + split_doc({"a": 1, "b": 1, "c": 1})
    app = await router(docs + router_doc(outlierDetection={"consecutive5xx": 2, "panicThreshold": 0}))
    app.ctx.rng = random.Random(3)
    await clusters_hit(app.port, 60, any_status=True)
    health = {n: app.state()["clusters"][n]["health"] for n in "ab"}
    (out,) = [n for n, h in health.items() if h["ejected"]]
    kept = "b" if out == "a" else "a"
    assert health[kept]["ejections_skipped"] >= 1 and "not ejected: 1 of 3 Clusters out" in health[kept]["last_reason"]

    (app.config_dir / "router.yaml").write_text(
        docs + router_doc(outlierDetection={"consecutive5xx": 2, "panicThreshold": 0, "maxEjectionPercent": 100}))
    assert (await app.reloader.reload("test"))["ok"]
    await clusters_hit(app.port, 20, any_status=True)
    assert all(app.state()["clusters"][n]["health"]["ejected"] for n in "ab")
    assert (await clusters_hit(app.port, 10, any_status=True)) == {"c": 10}
