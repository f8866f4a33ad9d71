"""Latency- and warmth-aware policy driven with a fake clock (numbers are seconds)."""
import errno
import os
import random
import time
from collections import Counter

import pytest

from router.config.model import Backend, ClusterConfig, Config, Endpoint, RouterSettings, SplitConfig
from router.core.affinity import affinity_key, pick_by_key
from router.core.choice import PolicyInputs, Reject, choose_backend
from router.core.ewma import PeakEwma
from router.core.health import HealthState
from router.core.retry import RetryBudget
from router.core.snapshot import build_snapshot
from router.core.warmth import Warmth, WarmthState

NAMES = ["us-west", "eu-central", "ap-east"]


def route(weights=(45, 35, 20), max_rtt=0.2, algorithm="latency-aware", max_requests=(None, None, None)):
    clusters = tuple(ClusterConfig(n, (), Endpoint("http", "127.0.0.1", 1000 + i), max_requests=m)
                     for i, (n, m) in enumerate(zip(NAMES, max_requests)))
    split = SplitConfig("seed", "t", (), "/", tuple(Backend(n, w) for n, w in zip(NAMES, weights)), algorithm, max_rtt)
    return build_snapshot(Config(RouterSettings(), clusters, (split,)), 1).route_for("h", "/")


def inputs_with_rtt(rtts: dict, now=0.0) -> PolicyInputs:
    p = PolicyInputs()
    for name, rtt in rtts.items():
        p.rtt.on_connect(name, rtt, now)
    return p


def shares(r, p, now, n=4000, **kw):
    rng = random.Random(7)
    c = Counter(choose_backend(r, p, now, rng, **kw).backend.cluster for _ in range(n))
    return {k: v / n for k, v in c.items()}


def test_peak_ewma_jumps_up_and_decays_down():
    e = PeakEwma(decay_s=10)
    e.observe(0.010, 0.0)
    assert e.observe(0.100, 1.0) == pytest.approx(0.100)  # a slower sample is taken at once
    v = e.observe(0.010, 11.0)  # ten seconds later: weight e^-1 on the old value
    assert v == pytest.approx(0.100 * 0.3679 + 0.010 * 0.6321, rel=1e-3)
    assert PeakEwma(prior=6.0).value_at(0) == 6.0


def test_equal_conditions_follow_the_weights():
    p = inputs_with_rtt({"us-west": 0.03, "eu-central": 0.03, "ap-east": 0.03})
    got = shares(route(), p, 1.0)
    for name, want in zip(NAMES, (0.45, 0.35, 0.20)):
        assert abs(got[name] - want) < 0.03, got


def test_cluster_beyond_max_rtt_is_not_eligible_then_returns():
    p = inputs_with_rtt({"us-west": 0.01, "eu-central": 0.12, "ap-east": 0.25})
    got = shares(route(), p, 1.0)
    assert "ap-east" not in got and abs(got["us-west"] - 45 / 80) < 0.03
    for t in range(2, 40):  # ap-east recovers: the peak decays with fresh samples
        p.rtt.on_connect("ap-east", 0.05, float(t))
    assert "ap-east" in shares(route(), p, 40.0)


def test_when_none_within_max_rtt_the_nearest_are_eligible():
    p = inputs_with_rtt({"us-west": 0.30, "eu-central": 0.25, "ap-east": 0.40})
    d = choose_backend(route(), p, 1.0, random.Random(1))
    assert d.backend.cluster == "eu-central" and d.reason == "spillover"


def test_active_probe_thresholds():
    h = HealthState()
    for _ in range(2):
        h.on_probe("a", False, 0.0)
    assert h.is_healthy("a", 0.0)
    h.on_probe("a", False, 0.0)
    assert not h.is_healthy("a", 0.0)
    h.on_probe("a", True, 1.0)
    assert not h.is_healthy("a", 1.0)
    h.on_probe("a", True, 2.0)
    assert h.is_healthy("a", 2.0) and "a" not in h.clusters  # recovered and forgotten


def test_passing_probes_end_an_ejection_only_when_the_probes_saw_the_outage():
    h = HealthState()
    for _ in range(5):  # a silent cluster: requests time out and probes fail
        h.on_response("a", 502, 0.0)
    h.on_probe("a", False, 0.5)
    assert not h.is_healthy("a", 1.0)
    h.on_probe("a", True, 2.0)
    assert not h.is_healthy("a", 2.0)  # one passing probe is not enough
    h.on_probe("a", True, 3.0)
    assert h.is_healthy("a", 3.0)  # the outage the probes saw has ended: no 30 s wait
    assert "passing probes" in h.describe("a", 3.0)["last_reason"] or h.describe("a", 3.0)["healthy"]
    for _ in range(5):  # 5xx behind a probe path that keeps passing: the ejection lasts its time
        h.on_response("b", 500, 10.0)
    for t in (11.0, 12.0, 13.0):
        h.on_probe("b", True, t)
    assert not h.is_healthy("b", 13.0) and h.is_healthy("b", 40.1)


def test_answers_eject_while_under_max_ejection_percent_and_refused_connects_always():
    """Envoy's max_ejection_percent: with one of three Clusters out (33%, above the default 10%) a second
    one's 5xx do not eject it; each further failure tries again, and does once the first is back."""
    from router.core.health import OutlierPolicy
    h = HealthState(OutlierPolicy(consecutive_5xx=2))
    h.cluster_count = 3
    for cluster in ("a", "b"):
        for _ in range(2):
            h.on_response(cluster, 503, 1.0)
    assert not h.is_healthy("a", 1.0) and h.is_healthy("b", 1.0)
    b = h.describe("b", 1.0)
    assert b["ejections_skipped"] == 1 and b["ejections"] == 0
    assert b["last_reason"] == "2 consecutive 5xx, not ejected: 1 of 3 Clusters out (maxEjectionPercent 10)"
    h.on_response("b", 503, 2.0)
    assert h.describe("b", 2.0)["ejections_skipped"] == 2 and h.is_healthy("b", 2.0)
    h.on_response("b", 503, 31.5)  # a's 30 s are over: the next failure ejects b
    assert h.is_healthy("a", 31.5) and not h.is_healthy("b", 31.5)
    assert h.describe("b", 31.5)["last_reason"] == "4 consecutive 5xx"
    h.on_connect_failure("c", 32.0)  # refused: out at once, however many are out
    assert not h.is_healthy("c", 32.0)

    wide = HealthState(OutlierPolicy(consecutive_5xx=1, max_ejection_percent=50))
    wide.cluster_count = 4
    for cluster in ("a", "b", "c"):
        wide.on_response(cluster, 500, 1.0)
    assert [wide.is_healthy(c, 1.0) for c in "abc"] == [False, False, True]  # 1 of 4 < 50%; 2 of 4 is not
    none = HealthState(OutlierPolicy(consecutive_5xx=1, max_ejection_percent=0))
    none.cluster_count = 4
    for cluster in ("a", "b"):
        none.on_response(cluster, 500, 1.0)
    assert [none.is_healthy(c, 1.0) for c in "ab"] == [False, True]  # 0%: one at a time (none out: always)


def test_unhealthy_cluster_is_skipped():
    p = inputs_with_rtt({n: 0.02 for n in NAMES})
    for _ in range(3):
        p.health.on_probe("us-west", False, 0.0)
    assert "us-west" not in shares(route(), p, 1.0)


def test_warm_preferred_and_cold_cluster_woken_in_background():
    p = inputs_with_rtt({n: 0.02 for n in NAMES})
    w = p.warmth
    w.on_discovery("svc", "us-west", 2, True, 0.0)
    w.on_discovery("svc", "eu-central", 0, True, 0.0)   # cached image: 1 s prior
    w.on_discovery("svc", "ap-east", 0, False, 0.0)     # uncached: 6 s prior
    ds = [choose_backend(route(), p, 1.0, random.Random(i), service="svc") for i in range(200)]
    assert {d.backend.cluster for d in ds} == {"us-west"}
    assert all(d.reason == "warm-preferred" for d in ds)
    assert set(ds[0].wake) == {"eu-central", "ap-east"}


def test_cold_cluster_still_chosen_when_faster_than_the_warm_one():
    # No maxRTT: the warm copy is 1.5 s away, a cached cold copy next door starts in 1 s.
    p = inputs_with_rtt({"us-west": 1.5, "eu-central": 0.01, "ap-east": 0.01})
    p.warmth.on_discovery("svc", "us-west", 1, True, 0.0, capacity=10)
    p.warmth.on_discovery("svc", "eu-central", 0, True, 0.0)  # 0.01 + 1 s beats 1.5 s
    p.warmth.on_discovery("svc", "ap-east", 0, False, 0.0)    # 0.01 + 6 s does not
    got = shares(route(max_rtt=None), p, 1.0, service="svc")
    assert set(got) == {"us-west", "eu-central"}


def test_saturated_warm_copy_counts_as_cold():
    p = inputs_with_rtt({n: 0.02 for n in NAMES})
    p.warmth.on_discovery("svc", "us-west", 1, True, 0.0, capacity=10)
    p.warmth.on_discovery("svc", "eu-central", 1, True, 0.0, capacity=10)
    p.warmth.on_discovery("svc", "ap-east", 0, False, 0.0)
    for _ in range(10):
        p.start("svc", "us-west")  # every replica in us-west busy
    assert p.saturated("svc", "us-west")
    assert set(shares(route(), p, 1.0, service="svc")) == {"eu-central"}
    p.finish("svc", "us-west")
    assert set(shares(route(), p, 1.0, service="svc")) == {"us-west", "eu-central"}


def test_nothing_warm_picks_the_soonest_ready_and_wakes_it():
    p = inputs_with_rtt({n: 0.02 for n in NAMES})
    p.warmth.on_discovery("svc", "us-west", 0, False, 0.0)
    p.warmth.on_discovery("svc", "eu-central", 0, True, 0.0)
    p.warmth.on_discovery("svc", "ap-east", 0, False, 0.0)
    d = choose_backend(route(), p, 1.0, random.Random(0), service="svc")
    assert d.backend.cluster == "eu-central" and d.reason == "cold" and d.wake == ("eu-central",)
    assert d.expected_s == pytest.approx(0.02 + 1.0)


def test_cold_start_times_are_learned_separately():
    w = WarmthState()
    w.on_discovery("svc", "a", 0, True, 0.0)
    assert w.expected_cold_s("svc", "a", 0.0) == 1.0 and w.warmth("svc", "a", 0.0) == Warmth.CACHED
    w.on_wake("svc", "a", 10.0)
    assert w.warmth("svc", "a", 10.5) == Warmth.WAKING
    assert w.expected_cold_s("svc", "a", 10.5) == pytest.approx(0.5)
    w.on_discovery("svc", "a", 1, True, 13.0)  # ready after 3 s
    assert w.warmth("svc", "a", 13.0) == Warmth.WARM
    assert w.model("svc", "a").estimate(True) == pytest.approx(3.0)
    assert w.model("svc", "a").estimate(False) == 6.0  # the uncached prior is untouched


def test_stale_discovery_turns_unknown():
    w = WarmthState(stale_after_s=30)
    w.on_discovery("svc", "a", 0, False, 0.0)
    assert w.warmth("svc", "a", 29.0) == Warmth.COLD
    assert w.warmth("svc", "a", 31.0) == Warmth.UNKNOWN  # provider silent for 31 s
    w.on_heartbeat("a", 40.0)  # provider back and current: unchanged state is valid again
    assert w.warmth("svc", "a", 60.0) == Warmth.COLD


def test_affinity_is_stable_and_weighted():
    r = route()
    backends = r.live
    first = {k: pick_by_key(backends, k, {}).cluster for k in (f"user{i}" for i in range(3000))}
    again = {k: pick_by_key(backends, k, {}).cluster for k in first}
    assert first == again
    c = Counter(first.values())
    assert c["us-west"] > c["eu-central"] > c["ap-east"]
    p = inputs_with_rtt({n: 0.02 for n in NAMES})
    d = choose_backend(r, p, 1.0, random.Random(0), affinity="user1")
    assert d.reason == "affinity" and d.backend.cluster == first["user1"]


def test_affinity_holds_with_the_weighted_algorithm_too():
    r, p, rng = route(algorithm="weighted", max_rtt=None), PolicyInputs(), random.Random(3)
    keys = [f"user{i}" for i in range(300)]
    want = {k: pick_by_key(r.live, k, {}).cluster for k in keys}
    for _ in range(3):  # the same key lands on the same cluster every time, as with latency-aware
        got = {k: choose_backend(r, p, 1.0, rng, affinity=k) for k in keys}
        assert {k: d.backend.cluster for k, d in got.items()} == want
        assert {d.reason for d in got.values()} == {"affinity"}


def test_affinity_bounded_load_skips_an_overloaded_cluster():
    backends = route().live
    key = next(k for k in (f"k{i}" for i in range(100)) if pick_by_key(backends, k, {}).cluster == "us-west")
    busy = {"us-west": 50, "eu-central": 5, "ap-east": 5}  # average 20: bound ceil(1.25 × 61/3) = 26
    assert pick_by_key(backends, key, busy).cluster != "us-west"


def test_affinity_key_extraction():
    headers = [(b"X-User", b"alice"), (b"Cookie", b"a=1; session=xyz")]
    assert affinity_key(("header", "x-user"), headers, "/") == "alice"
    assert affinity_key(("cookie", "session"), headers, "/") == "xyz"
    assert affinity_key(("path", "2"), headers, "/t/acme/items/9") == "/t/acme"
    assert affinity_key(("cookie", "missing"), headers, "/") is None


def test_retry_budget():
    b = RetryBudget()
    assert [b.start_retry() for _ in range(4)] == [True, True, True, False]  # minimum 3
    for _ in range(100):
        b.start_request()
    assert b.allows()  # 20% of 100 in flight
    for _ in range(17):
        b.start_retry()
    assert not b.allows()


def test_weighted_algorithm_ignores_rtt():
    p = inputs_with_rtt({"us-west": 0.5, "eu-central": 0.5, "ap-east": 0.5})
    got = shares(route(algorithm="weighted"), p, 1.0)
    assert abs(got["us-west"] - 0.45) < 0.03


def test_unmeasured_server_time_borrows_the_service_time_elsewhere():
    p = inputs_with_rtt({n: 0.01 for n in NAMES})
    p.rtt.on_first_byte("svc", "us-west", 0.01 + 3.0, 0.0)  # a 3 s handler, measured in us-west
    assert p.rtt.server_time("svc", "eu-central") == pytest.approx(3.0)
    assert p.rtt.server_time("other", "eu-central") == 0.0
    # so a cold copy elsewhere is not mistaken for a faster one: 1 s cold start + 3 s handler
    p.warmth.on_discovery("svc", "us-west", 1, True, 0.0)
    p.warmth.on_discovery("svc", "eu-central", 0, True, 0.0)
    p.warmth.on_discovery("svc", "ap-east", 0, True, 0.0)
    assert {choose_backend(route(), p, 1.0, random.Random(i), service="svc").backend.cluster
            for i in range(50)} == {"us-west"}


async def test_a_cluster_back_from_an_outage_is_measured_afresh(monkeypatch):
    """A probe held by a silent link until it came back measures the outage: once probes make the
    cluster healthy again its RTT restarts from the latest sample instead of decaying from the peak."""
    import types

    from router.control import probes

    p = inputs_with_rtt({"a": 0.143})
    for _ in range(3):
        p.health.on_probe("a", False, 1.0)
    p.rtt.on_probe("a", 0.001, 0.45, 2.0)  # the straddling probe: 450 ms
    p.rtt.on_first_byte("svc", "a", 6.0, 2.0)  # a response held for 6 s
    answers = iter([(0.001, 0.45), (0.001, 0.143)])

    async def fake_probe(cluster, timeout_s, dns=None):
        return next(answers)
    monkeypatch.setattr(probes, "probe_once", fake_probe)
    prober = probes.Prober(p, lambda: (), lambda: 1.0, lambda: 0.5)
    cluster = types.SimpleNamespace(name="a")
    await prober.probe(cluster)
    assert p.rtt.rtt("a") == pytest.approx(0.45)  # one good probe: still down, estimate unchanged
    await prober.probe(cluster)
    assert p.health.is_healthy("a", 1e9) and p.rtt.rtt("a") == pytest.approx(0.143)
    assert p.rtt.server_time("svc", "a") == 0.0  # the held response's 6 s is forgotten too


@pytest.mark.parametrize("err,healthy", [(errno.EMFILE, True), (errno.ENFILE, True), (errno.EADDRNOTAVAIL, True),
                                         (errno.ECONNREFUSED, False)])
async def test_a_probe_the_router_could_not_open_says_nothing_of_the_cluster(monkeypatch, err, healthy):
    """Out of descriptors (or local ports) the probe never reached the cluster: no verdict either way."""
    import types

    from router.control import probes

    p = PolicyInputs()

    async def failing_probe(cluster, timeout_s, dns=None):
        raise OSError(err, os.strerror(err))
    monkeypatch.setattr(probes, "probe_once", failing_probe)
    prober = probes.Prober(p, lambda: (), lambda: 1.0, lambda: 0.5)
    cluster = types.SimpleNamespace(name="a")
    for _ in range(5):
        assert await prober.probe(cluster) is False
    assert p.health.is_healthy("a", time.monotonic()) is healthy
    assert (prober.last["a"]["ok"] is None) is healthy


@pytest.mark.parametrize("algorithm,max_rtt", [("weighted", None), ("latency-aware", 0.2)])
def test_a_cluster_at_its_request_limit_is_passed_over_and_all_full_is_503(algorithm, max_rtt):
    r = route(algorithm=algorithm, max_rtt=max_rtt, max_requests=(2, None, 1))
    p = PolicyInputs()
    assert set(shares(r, p, 1.0)) == set(NAMES)  # below their limits: the weights as usual
    p.start("", "us-west")
    p.start("", "us-west")
    got = shares(r, p, 1.0)
    assert set(got) == {"eu-central", "ap-east"} and abs(got["eu-central"] - 35 / 55) < 0.03, got
    assert choose_backend(r, p, 1.0, random.Random(1)).reason == "overflow"
    p.start("", "ap-east")
    assert set(shares(r, p, 1.0)) == {"eu-central"}  # no limit: takes what the others cannot
    one = route(weights=(1, 0, 0), algorithm=algorithm, max_rtt=max_rtt, max_requests=(2, None, None))
    d = choose_backend(one, p, 1.0, random.Random(1))
    assert isinstance(d, Reject) and d.status == 503 and "request limit" in d.reason
    p.finish("", "us-west")
    assert choose_backend(one, p, 1.0, random.Random(1)).backend.cluster == "us-west"


def test_preconnect_opens_what_is_missing_for_healthy_clusters_only():
    from router.core.preconnect import connections_to_open
    wanted = {"near": 2, "far": 4, "broken": 2}
    healthy = lambda name: name != "broken"  # noqa: E731
    assert connections_to_open(wanted, {}, {}, healthy) == {"near": 2, "far": 4}
    assert connections_to_open(wanted, {"near": 1, "far": 1}, {"far": 2}, healthy) == {"near": 1, "far": 1}
    assert connections_to_open(wanted, {"near": 3, "far": 4}, {}, healthy) == {}  # more idle than asked: none closed
