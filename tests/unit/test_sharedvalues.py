"""The table in which the workers of `serve --workers` publish their requests in flight per cluster with a
request limit: each worker reads the others' counts; a dead worker's region is cleared; slots are claimed
from the cluster's hash on; the choice holds maxRequests over the sum."""
import os
import random

import pytest

from router.config.model import Backend, ClusterConfig, Config, Endpoint, RouterSettings, SplitConfig
from router.core.choice import PolicyInputs, choose_backend
from router.core.decisions import Reject
from router.core.snapshot import build_snapshot
from router.dataplane import sharedvalues
from router.dataplane.sharedvalues import SharedValues, clear_region, create_table
from tests.unit.test_sharedclients import worker_views


@pytest.fixture
def workers():
    with worker_views(create_table, SharedValues) as table:
        yield table


def test_each_worker_reads_what_the_others_have_in_flight(workers):
    fd, (one, two, three) = workers
    one.publish("us-west", 3)
    two.publish("us-west", 2)
    two.publish("eu-central", 7)
    assert (one.get("us-west"), two.get("us-west"), three.get("us-west")) == (2, 3, 5)  # never its own
    assert three.get("eu-central") == 7 and three.get("ap-east") == 0
    one.publish("us-west", 0)
    assert three.get("us-west") == 2
    clear_region(fd, 1)  # the second worker died with its requests
    assert three.get("us-west") == 0 and three.get("eu-central") == 0


def test_slots_are_claimed_past_a_collision_and_a_full_region_counts_alone(workers, monkeypatch):
    monkeypatch.setattr(sharedvalues, "SLOTS", 2)  # two slots a region: clusters share their start
    _, (one, two, _) = workers
    full = []
    one.on_full = lambda: full.append(1)
    one.publish("a", 1)
    one.publish("b", 2)
    assert full == []
    one.publish("c", 4)  # no slot left: counted by this worker alone
    assert full == [1]
    assert [two.get(name) for name in "abc"] == [1, 2, 0]
    two.publish("c", 5)
    assert one.get("c") == 5 and one.get("a") == 0


def test_the_choice_holds_a_limit_over_every_workers_requests():
    clusters = (ClusterConfig("near", (), Endpoint("http", "127.0.0.1", 1), max_requests=2),
                ClusterConfig("far", (), Endpoint("http", "127.0.0.1", 2)))
    split = SplitConfig("s", "t", (), "/", (Backend("near", 1000), Backend("far", 1)), "weighted")
    route = build_snapshot(Config(RouterSettings(), clusters, (split,)), 1).route_for("h", "/")
    inputs, rng = PolicyInputs(), random.Random(1)
    inputs.start("", "near")
    elsewhere = {"near": 0}
    inputs.elsewhere = elsewhere
    assert choose_backend(route, inputs, 0.0, rng).backend.cluster == "near"
    elsewhere["near"] = 1  # one here and one at another worker: the limit of 2 is reached
    decision = choose_backend(route, inputs, 0.0, rng)
    assert decision.backend.cluster == "far" and decision.reason == "overflow"
    only = build_snapshot(Config(RouterSettings(), clusters, (SplitConfig("s", "t", (), "/", (Backend("near", 1),),
                                                                           "weighted"),)), 1).route_for("h", "/")
    assert isinstance(choose_backend(only, inputs, 0.0, rng), Reject)
    inputs.elsewhere = None  # this process alone: one of two places taken
    assert choose_backend(only, inputs, 0.0, rng).backend.cluster == "near"


def test_a_descriptor_without_that_region_is_refused():
    fd = create_table(1)
    try:
        with pytest.raises(ValueError, match="no region 1"):
            SharedValues(fd, 1)
    finally:
        os.close(fd)


async def test_a_key_left_out_of_a_full_table_is_counted(backends, router):
    """A worker's tables report a key that found no place to router_shared_table_full_total{table}."""
    from tests.conftest import cluster_docs, split_doc
    (a,) = await backends("a")
    app = await router(cluster_docs({"a": a.port}) + split_doc({"a": 1}))
    with worker_views(create_table, SharedValues, 2) as (_, (mine, _)):
        app.ctx.use_shared({"shared_inflight": mine})
        mine.on_full()
        assert app.metrics.registry.get_sample_value("router_shared_table_full_total", {"table": "inflight"}) == 1
