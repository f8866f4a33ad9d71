"""Outlier ejections shared by the workers of `serve --workers`: what one worker decides is published and
taken up by the others for as long, without counting as their own; a worker's own probes end it early."""
from types import SimpleNamespace

from router.config.model import ClusterConfig, Endpoint
from router.control.ejections import EjectionSharing
from router.core.health import HealthState
from router.dataplane.sharedvalues import SharedValues, create_table
from tests.unit.test_sharedclients import worker_views

CLUSTERS = SimpleNamespace(config=SimpleNamespace(clusters=[ClusterConfig(n, (), Endpoint("http", "10.0.0.1", 80))
                                                            for n in ("a", "b")]))


def worker(table, now):
    ctx = SimpleNamespace(clock=lambda: now[0], health=HealthState(), snapshot=CLUSTERS)
    return ctx, EjectionSharing(ctx, table)


def test_an_ejection_elsewhere_takes_the_cluster_out_here_for_as_long():
    h = HealthState()
    h.on_connect_failure("a", 100.0)
    assert h.own_ejections(100.0) == {"a": 130.0}
    h.on_ejected_elsewhere("b", 150.0, 100.0)
    assert not h.is_healthy("b", 149.0) and h.is_healthy("b", 150.0)
    assert h.describe("b", 120.0)["last_reason"] == "ejected by another worker"
    assert h.own_ejections(100.0) == {"a": 130.0} and h.clusters["b"].ejections == 0  # not this worker's own
    h.on_ejected_elsewhere("a", 120.0, 100.0)  # shorter than its own: nothing changes
    assert h.clusters["a"].ejected_until == 130.0
    h.on_ejected_elsewhere("a", 140.0, 100.0)  # longer: out until then, still its own until 130 to the others
    assert not h.is_healthy("a", 135.0) and h.own_ejections(100.0) == {"a": 130.0}
    for ok in (False, True, True):  # its probes saw it fail, then pass twice: the ejection ends early
        h.on_probe("a", ok, 110.0)
    assert h.is_healthy("a", 110.0) and h.own_ejections(110.0) == {}


def test_workers_publish_their_ejections_and_take_up_the_others():
    now = [100.0]
    with worker_views(create_table, SharedValues, 2) as (_, (table1, table2)):
        (ctx1, share1), (ctx2, share2) = worker(table1, now), worker(table2, now)
        ctx1.health.on_connect_failure("a", now[0])  # worker 1 ejects a for 30 s
        assert share2.tick() == {}  # not published yet
        assert share1.tick() == {}
        assert share2.tick() == {"a": 130.0}
        assert not ctx2.health.is_healthy("a", 110.0) and ctx2.health.own_ejections(110.0) == {}
        assert share1.tick() == {}  # worker 2 does not tell it back
        now[0] = 131.0  # over: withdrawn at the next tick
        share1.tick()
        assert table2.most("a") == 0 and share2.tick() == {}
        assert ctx2.health.is_healthy("a", now[0])


def test_an_ejection_probes_ended_is_not_taken_up_again_from_a_stale_copy():
    """With shared probes every worker sees the passing probes that end an ejection at about the same time;
    the deciding worker withdraws it only at its next tick, and the others must not copy it back meanwhile."""
    now = [100.0]
    with worker_views(create_table, SharedValues, 2) as (_, (table1, table2)):
        (ctx1, share1), (ctx2, share2) = worker(table1, now), worker(table2, now)
        ctx1.health.on_connect_failure("a", now[0])
        share1.tick()
        assert share2.tick() == {"a": 130.0}
        for ok in (False, True, True):  # the same probes applied at both
            for ctx in (ctx1, ctx2):
                ctx.health.on_probe("a", ok, 105.0)
        now[0] = 105.1
        share2.tick()  # worker 1 still publishes 130
        assert ctx2.health.is_healthy("a", now[0]) and ctx2.health.is_healthy("a", 120.0)
        share1.tick()
        assert table2.most("a") == 0
        ctx1.health.on_connect_failure("a", 200.0)  # a new ejection later is taken up as before
        now[0] = 200.0
        share1.tick()
        assert share2.tick() == {"a": 260.0}  # (its second: 60 s)
