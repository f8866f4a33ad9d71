"""The choice under random conditions (weights, algorithm, maxRTT, health, request limits, RTTs,
warm/cold states, slow start, clusters already tried, affinity keys, sticky sessions): what it decides always keeps
the routing semantics' promises."""
import random

from hypothesis import given, strategies as st

from router.config.model import Backend, ClusterConfig, Config, Endpoint, RouterSettings, SlowStart, SplitConfig
from router.core.choice import PolicyInputs, Reject, choose_backend, draw_plan
from router.core.snapshot import build_snapshot
from tests.conftest import fuzz_settings

NAMES = ("a", "b", "c")
NOW = 100.0

cluster_case = st.fixed_dictionaries({
    "weight": st.sampled_from([0, 0, 1, 2, 5]),
    "max_requests": st.none() | st.integers(1, 3),
    "inflight": st.integers(0, 4),
    "health": st.sampled_from(["ok", "ok", "ejected", "probe_down", "back"]),
    "rtt": st.none() | st.floats(0.001, 0.5),
    "replicas": st.none() | st.integers(0, 3),
    "cached": st.booleans(),
    "capacity": st.none() | st.integers(1, 4),
})


def build(clusters: list[dict], algorithm: str, max_rtt: float | None, slow: bool):
    configs = tuple(ClusterConfig(n, (), Endpoint("http", "127.0.0.1", 1000 + i), max_requests=c["max_requests"])
                    for i, (n, c) in enumerate(zip(NAMES, clusters)))
    split = SplitConfig("s", "t", (), "/", tuple(Backend(n, c["weight"]) for n, c in zip(NAMES, clusters)),
                        algorithm, max_rtt)
    route = build_snapshot(Config(RouterSettings(), configs, (split,)), 1).route_for("h", "/")
    p = PolicyInputs()
    p.health.slow_start = SlowStart(60.0) if slow else None
    for n, c in zip(NAMES, clusters):
        for _ in range(c["inflight"]):
            p.start("svc", n)
        if c["health"] == "ejected":
            p.health.on_connect_failure(n, NOW - 1)
        elif c["health"] == "probe_down":
            for _ in range(3):
                p.health.on_probe(n, False, NOW - 1)
        elif c["health"] == "back":
            p.health.on_connect_failure(n, NOW - 40)  # its 30 s ejection ended 10 s ago
        if c["rtt"] is not None:
            p.rtt.on_connect(n, c["rtt"], NOW - 1)
        if c["replicas"] is not None:
            p.warmth.on_discovery("svc", n, c["replicas"], c["cached"], NOW - 1, c["capacity"])
    return route, p


@fuzz_settings
@given(clusters=st.lists(cluster_case, min_size=3, max_size=3).filter(lambda cs: any(c["weight"] for c in cs)),
       algorithm=st.sampled_from(["weighted", "latency-aware"]), max_rtt=st.none() | st.floats(0.01, 0.3),
       slow=st.booleans(), tried=st.sets(st.sampled_from(NAMES), max_size=3),
       affinity=st.none() | st.text(min_size=1, max_size=8), session=st.none() | st.sampled_from(NAMES + ("x",)),
       seed=st.integers(0, 1000))
def test_the_choice_keeps_its_promises(clusters, algorithm, max_rtt, slow, tried, affinity, session, seed):
    route, p = build(clusters, algorithm, max_rtt, slow)
    by_name = dict(zip(NAMES, clusters))
    live = [b.cluster for b in route.live]
    candidates = [n for n in live if n not in tried]
    panic = p.health.in_panic(live, NOW)
    healthy = [n for n in candidates if panic or p.health.is_healthy(n, NOW)]
    room = [n for n in healthy if by_name[n]["max_requests"] is None
            or by_name[n]["inflight"] < by_name[n]["max_requests"]]

    d = choose_backend(route, p, NOW, random.Random(seed), frozenset(tried), "svc", affinity, session)
    if isinstance(d, Reject):
        # Refused only when nothing could take it: 502 with no healthy candidate, 503 when all are full.
        assert (d.status, bool(healthy), bool(room)) in ((502, False, False), (503, True, False)), d
        return
    chosen = d.backend.cluster
    assert chosen in room, (chosen, room, d)  # weighted, not tried, healthy (unless panic), below its limit
    if session in room:  # a sticky session keeps its cluster while that cluster can take the request
        assert chosen == session and (d.reason == "session" or len(live) == 1), d
        return
    if algorithm == "latency-aware" and max_rtt is not None:
        within = [n for n in room if by_name[n]["rtt"] is None or by_name[n]["rtt"] <= max_rtt]
        if within:  # maxRTT holds while some cluster meets it
            assert chosen in within, (chosen, within, d)
    if affinity is not None or d.reason == "cold":  # no draw was made: the rng has no say
        again = choose_backend(route, p, NOW, random.Random(seed + 1), frozenset(tried), "svc", affinity, session)
        assert again.backend.cluster == chosen, (d, again)


@fuzz_settings
@given(clusters=st.lists(cluster_case, min_size=3, max_size=3).filter(lambda cs: any(c["weight"] for c in cs)),
       algorithm=st.sampled_from(["weighted", "latency-aware"]), max_rtt=st.none() | st.floats(0.01, 0.3),
       slow=st.booleans(), seed=st.integers(0, 1000))
def test_the_fast_lanes_draw_is_the_choice_made_ahead(clusters, algorithm, max_rtt, slow, seed):
    """draw_plan (what the fast lane draws from) gives the clusters choose_backend draws from, with their
    weights and reason, whenever it gives a draw at all; and it gives none when the choice depends on the
    request or on counts each request moves."""
    route, p = build(clusters, algorithm, max_rtt, slow)
    plan = draw_plan(route, p, NOW, "svc")
    if plan is None:
        return
    assert not route.limited  # request limits read in-flight counts: never drawn ahead
    backends, reason = plan
    assert len(backends) == 1 or all(p.health.ramp(b.cluster, NOW) == 1.0 for b in backends)  # (weights as set)
    rng = random.Random(seed)
    seen = {}
    for _ in range(300):
        d = choose_backend(route, p, NOW, rng, service="svc")
        assert not isinstance(d, Reject) and d.reason == reason, (d, reason)
        seen[d.backend.cluster] = seen.get(d.backend.cluster, 0) + 1
    drawn = {b.cluster for b in backends}
    assert set(seen) <= drawn, (seen, drawn)
    total = sum(b.weight for b in backends)
    for b in backends:  # each cluster's share is its weight's (300 draws: within 0.2)
        assert abs(seen.get(b.cluster, 0) / 300 - b.weight / total) < 0.2, (seen, [x.cluster for x in backends])
