"""Slow start: a cluster that comes back, or joins on a reload, has its weight ramped up over the
window (Envoy's formula), from the moment it is healthy again; without slowStart it gets its full
weight at once. Pure policy on a fake clock."""
import random
from collections import Counter

import pytest

from router.config.model import Backend, ClusterConfig, Config, Endpoint, RouterSettings, SlowStart, SplitConfig
from router.core.choice import PolicyInputs, choose_backend, effective_weights
from router.core.health import HealthState
from router.core.snapshot import build_snapshot

SLOW = SlowStart(window_s=60.0, aggression=1.0, min_weight=0.1)


def route(algorithm="weighted", max_rtt=None):
    clusters = tuple(ClusterConfig(n, (), Endpoint("http", "127.0.0.1", 1000 + i)) for i, n in enumerate("ab"))
    split = SplitConfig("s", "t", (), "/", (Backend("a", 1), Backend("b", 1)), algorithm, max_rtt)
    return build_snapshot(Config(RouterSettings(), clusters, (split,)), 1).route_for("h", "/")


def share_of_b(health: HealthState, now: float, n: int = 4000, **kw) -> float:
    rng, r, inputs = random.Random(5), route(**kw), PolicyInputs(health=health)
    return Counter(choose_backend(r, inputs, now, rng).backend.cluster for _ in range(n))["b"] / n


def ejected_until_30(slow=SLOW) -> HealthState:
    h = HealthState(slow_start=slow)
    h.on_connect_failure("b", 0.0)  # ejected for 30 s
    return h


def test_the_ramp_follows_envoys_formula():
    h = HealthState(slow_start=SLOW)
    h.on_joined("b", 100.0)
    assert h.ramp("b", 100.0) == 0.1  # max(10%, (1 s / 60 s)) : the floor
    assert h.ramp("b", 130.0) == pytest.approx(0.5)
    assert h.ramp("b", 159.0) == pytest.approx(59 / 60)
    assert h.ramp("b", 160.0) == 1.0 and h.ramp("a", 100.0) == 1.0
    faster = HealthState(slow_start=SlowStart(60.0, aggression=2.0, min_weight=0.0))
    faster.on_joined("b", 0.0)
    assert faster.ramp("b", 15.0) == pytest.approx(0.5)  # (15/60) ** (1/2)
    assert faster.ramp("b", 0.0) == pytest.approx((1 / 60) ** 0.5)  # t counts as at least 1 s


@pytest.mark.parametrize("algorithm,max_rtt", [("weighted", None), ("latency-aware", 0.2)])
def test_a_cluster_back_from_an_ejection_ramps_up_from_when_it_ended(algorithm, max_rtt):
    h = ejected_until_30()
    assert share_of_b(h, 10.0, algorithm=algorithm, max_rtt=max_rtt) == 0.0  # ejected
    assert share_of_b(h, 30.5, algorithm=algorithm, max_rtt=max_rtt) == pytest.approx(0.1 / 1.1, abs=0.02)
    assert share_of_b(h, 60.0, algorithm=algorithm, max_rtt=max_rtt) == pytest.approx(0.5 / 1.5, abs=0.03)
    assert share_of_b(h, 90.0, algorithm=algorithm, max_rtt=max_rtt) == pytest.approx(0.5, abs=0.03)


def test_without_slow_start_the_cluster_gets_its_full_weight_at_once():
    h = ejected_until_30(slow=None)
    assert share_of_b(h, 30.5) == pytest.approx(0.5, abs=0.03)


def test_passing_probes_that_end_an_ejection_start_the_ramp_then():
    h = ejected_until_30()
    for t in (1.0, 2.0, 3.0):  # the probes see the outage
        h.on_probe("b", False, t)
    h.on_probe("b", True, 10.0)
    h.on_probe("b", True, 11.0)  # healthy again at 11, not 30
    assert h.is_healthy("b", 11.0) and h.ramp("b", 11.0) == 0.1
    assert h.ramp("b", 41.0) == pytest.approx(0.5)


def test_failed_probes_alone_ramp_from_the_probe_that_made_it_healthy():
    h = HealthState(slow_start=SLOW)
    for t in (0.0, 1.0, 2.0):
        h.on_probe("b", False, t)
    assert not h.is_healthy("b", 3.0)
    h.on_probe("b", True, 3.0)
    h.on_probe("b", True, 4.0)
    assert h.ramp("b", 34.0) == pytest.approx(0.5)
    h.on_probe("b", True, 35.0)  # later passing probes do not start it again
    assert h.ramp("b", 35.0) == pytest.approx(31 / 60)


def test_probes_passing_during_an_ejection_they_did_not_see_wait_for_its_end():
    h = HealthState(slow_start=SLOW)
    for t in (0.0, 1.0, 2.0):
        h.on_probe("b", False, t)
    h.on_probe("b", True, 3.0)  # one passing probe: still down, failures reset
    h.on_connect_failure("b", 4.0)  # ejected until 34 (the probes had no failure in it)
    h.on_probe("b", True, 5.0)  # up by the probes, the ejection runs on
    assert not h.is_healthy("b", 20.0)
    assert h.ramp("b", 34.0) == 0.1 and h.ramp("b", 64.0) == pytest.approx(0.5)


def test_the_entry_lasts_the_window_then_the_fast_path_returns():
    h = HealthState(slow_start=SLOW)
    h.on_joined("b", 0.0)
    h.on_response("b", 200, 30.0)
    assert "b" in h.clusters  # still ramping: the choice must see it
    h.on_response("b", 200, 61.0)
    assert "b" not in h.clusters
    off = HealthState()
    off.on_joined("b", 0.0)
    assert not off.clusters  # nothing to remember without slowStart


def test_effective_weights_and_state_show_the_ramp():
    h = HealthState(slow_start=SLOW)
    h.on_joined("b", 0.0)
    eff = effective_weights(route(), h, 30.0)
    assert eff["b"] == pytest.approx(0.5 / 1.5 * 100) and eff["a"] == pytest.approx(100 / 1.5)
    assert h.describe("b", 30.0)["slow_start_share"] == 0.5 and h.describe("a", 30.0)["slow_start_share"] == 1.0


def test_affinity_keys_are_not_moved_by_the_ramp():
    h = HealthState(slow_start=SLOW)
    h.on_joined("b", 0.0)
    r, inputs, rng = route("latency-aware"), PolicyInputs(health=h), random.Random(1)
    keys = [f"user-{i}" for i in range(400)]
    during = [choose_backend(r, inputs, 1.0, rng, affinity=k).backend.cluster for k in keys]
    after = [choose_backend(r, inputs, 100.0, rng, affinity=k).backend.cluster for k in keys]
    assert during == after and 0.35 < during.count("b") / len(keys) < 0.65
