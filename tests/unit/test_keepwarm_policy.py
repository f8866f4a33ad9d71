"""Keep-warm policy (router.core.keepwarm): the idle-time histogram, its window and the actions."""
from router.core.keepwarm import KeepWarmPolicy, KeepWarmSettings


def fed(gaps, start=1000.0, **settings):
    p = KeepWarmPolicy(KeepWarmSettings(**settings))
    t = start
    p.on_served("svc", "a", t)
    for g in gaps:
        t += g
        p.on_served("svc", "a", t)
    return p, t


def test_no_window_until_enough_gaps():
    p, _ = fed([300.0] * 7)
    assert p.window("svc") is None
    p, _ = fed([300.0] * 8)
    head, tail = p.window("svc")
    assert abs(head - 270.0) < 1e-9 and abs(tail - 341.0) < 1e-9  # [300, 310) bin, 10% margin each way


def test_wanted_only_inside_the_window_with_the_lead():
    p, last = fed([300.0] * 10)
    assert not p.wanted("svc", last + 100)
    assert not p.wanted("svc", last + 263)  # 270 - 6 s lead = 264
    assert p.wanted("svc", last + 264.5) and p.wanted("svc", last + 340)
    assert not p.wanted("svc", last + 341.5)


def test_gaps_the_idle_timeout_covers_or_out_of_range_give_no_window():
    p, _ = fed([20.0] * 20)  # always back within 60 s: the cluster keeps it warm anyway
    assert p.window("svc") is None
    p, _ = fed([7200.0] * 20)  # beyond the histogram's 30 min range
    assert p.window("svc") is None
    p, _ = fed([300.0] * 18 + [7200.0] * 2)  # 10% out of range is tolerated
    assert p.window("svc") is not None


def test_requests_within_one_bin_are_one_busy_period():
    p, _ = fed([1.0, 2.0, 3.0] * 10)
    assert p.services["svc"].samples == 0


def test_a_spread_histogram_widens_the_window():
    p, _ = fed([100.0, 200.0, 300.0, 400.0, 500.0] * 4)
    head, tail = p.window("svc")
    assert head == 90.0 and abs(tail - 561.0) < 1e-9


def test_actions_wake_a_copy_at_zero_and_ping_a_warm_one_paced():
    p, last = fed([300.0] * 10)
    states = {("svc", "a"): "cached"}
    state = lambda s, c: states[(s, c)]  # noqa: E731
    assert p.actions(last + 100, state) == []
    assert p.actions(last + 265, state) == [("wake", "svc", "a")]
    states[("svc", "a")] = "waking"
    assert p.actions(last + 266, state) == []
    states[("svc", "a")] = "warm"
    assert p.actions(last + 270, state) == [("ping", "svc", "a")]
    assert p.actions(last + 275, state) == []  # ping_s is 10 s
    assert p.actions(last + 280, state) == [("ping", "svc", "a")]
    assert p.actions(last + 400, state) == []  # the window closed


def test_the_copy_kept_is_where_the_last_request_went_and_forget_drops_services():
    p, last = fed([300.0] * 10)
    p.on_served("svc", "b", last + 300)
    assert p.actions(last + 300 + 270, lambda s, c: "cold") == [("wake", "svc", "b")]
    p.forget({"other"})
    assert p.services == {} and p.cluster == {}
