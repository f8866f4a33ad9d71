"""Pure routing core with a fake clock: weighted choice, renormalisation, ejection, host routing."""
import random


from router.config.model import Backend, Config, ClusterConfig, Endpoint, RouterSettings, SplitConfig
from router.core.choice import Forward, Reject, choose_backend, effective_weights
from router.core.health import HealthState, OutlierPolicy
from router.core.snapshot import build_snapshot


def config(splits):
    clusters = tuple(ClusterConfig(n, (), Endpoint("http", "127.0.0.1", 1000 + i))
                     for i, n in enumerate(["us-west", "eu-central", "ap-east"]))
    return Config(RouterSettings(), clusters, tuple(splits))


SEED = SplitConfig("seed", "trafficsplit", (), "/", (Backend("us-west", 45), Backend("eu-central", 35),
                                                       Backend("ap-east", 20)))


def shares(route, health, now, n=10_000, seed=1):
    rng = random.Random(seed)
    counts = {}
    for _ in range(n):
        d = choose_backend(route, health, now, rng)
        counts[d.backend.cluster] = counts.get(d.backend.cluster, 0) + 1
    return {k: v / n * 100 for k, v in counts.items()}


def test_weighted_split_within_two_points():
    route = build_snapshot(config([SEED]), 1).route_for("any.host", "/")
    got = shares(route, HealthState(), 0.0)
    for name, want in {"us-west": 45, "eu-central": 35, "ap-east": 20}.items():
        assert abs(got[name] - want) <= 2, got


def test_ejected_cluster_gets_nothing_and_split_renormalises():
    route = build_snapshot(config([SEED]), 1).route_for("h", "/")
    health = HealthState()
    health.on_connect_failure("us-west", now=100.0)
    got = shares(route, health, 100.0)
    assert "us-west" not in got
    assert abs(got["eu-central"] - 35 / 55 * 100) <= 2
    assert effective_weights(route, health, 100.0)["us-west"] == 0


def test_tried_clusters_are_skipped_and_all_down_is_a_502():
    route = build_snapshot(config([SEED]), 1).route_for("h", "/")
    health = HealthState()
    rng = random.Random(0)
    d = choose_backend(route, health, 0.0, rng, frozenset({"us-west", "eu-central"}))
    assert isinstance(d, Forward) and d.backend.cluster == "ap-east" and d.reason == "failover"
    d = choose_backend(route, health, 0.0, rng, frozenset({"us-west", "eu-central", "ap-east"}))
    assert isinstance(d, Reject) and d.status == 502 and "no healthy cluster left" in d.reason


def test_panic_when_under_half_healthy_ignores_health():
    route = build_snapshot(config([SEED]), 1).route_for("h", "/")
    health = HealthState()
    health.on_connect_failure("us-west", 0.0)
    d = choose_backend(route, health, 1.0, random.Random(0))
    assert d.reason == "weighted" and d.backend.cluster != "us-west"  # 2 of 3 healthy: no panic
    health.on_connect_failure("eu-central", 0.0)
    got = {choose_backend(route, health, 1.0, random.Random(i)).backend.cluster for i in range(200)}
    assert got == {"us-west", "eu-central", "ap-east"}  # 1 of 3 healthy: spread over all
    assert choose_backend(route, health, 1.0, random.Random(0)).reason == "panic"


def test_ejection_grows_with_repeats_and_is_capped():
    health = HealthState(OutlierPolicy(base_ejection_s=30, max_ejection_s=300))
    now = 0.0
    durations = []
    for _ in range(12):
        health.on_connect_failure("a", now)
        st = health.clusters["a"]
        durations.append(st.ejected_until - now)
        assert not health.is_healthy("a", now + durations[-1] - 0.001)
        now = st.ejected_until
        assert health.is_healthy("a", now)
    assert durations[:3] == [30, 60, 90] and max(durations) == 300


def test_five_consecutive_5xx_eject_and_a_success_resets():
    health = HealthState()
    for _ in range(4):
        health.on_response("a", 503, 0.0)
    health.on_response("a", 200, 0.0)
    for _ in range(4):
        health.on_response("a", 502, 0.0)
    assert health.is_healthy("a", 0.0)
    health.on_response("a", 500, 0.0)
    assert not health.is_healthy("a", 0.0)


def test_host_and_path_routing():
    api = SplitConfig("api", "t", ("api.example.com",), "/", (Backend("us-west", 1),))
    api_v2 = SplitConfig("api-v2", "t", ("api.example.com",), "/v2", (Backend("eu-central", 1),))
    wild = SplitConfig("wild", "t", ("*.example.com",), "/", (Backend("ap-east", 1),))
    snap = build_snapshot(config([api, api_v2, wild, SEED]), 1)
    assert snap.route_for("api.example.com", "/v2/x").name == "api-v2"
    assert snap.route_for("api.example.com", "/v2").name == "api-v2"
    assert snap.route_for("api.example.com", "/v20").name == "api"
    assert snap.route_for("www.example.com", "/").name == "wild"
    assert snap.route_for("example.com", "/").name == "seed"
    assert snap.route_for("other.org", "/").name == "seed"


def test_no_default_route_means_none():
    api = SplitConfig("api", "t", ("api.example.com",), "/", (Backend("us-west", 1),))
    assert build_snapshot(config([api]), 1).route_for("other.org", "/") is None
