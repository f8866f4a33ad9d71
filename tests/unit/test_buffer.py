"""The activation buffer state machine with a fake clock: every outcome and every bound."""
from router.core.buffer import ActivationBuffer, BufferLimits, Expire, Held, Refuse, capacity_share


def hold_many(buf, n, service="svc", now=0.0, deadline=30.0, start=0):
    return [buf.on_hold(start + i, service, 100, now, deadline, None) for i in range(n)]


def test_fifo_release_paced_by_capacity():
    buf = ActivationBuffer()
    assert all(isinstance(h, Held) for h in hold_many(buf, 25))
    out = buf.on_ready("svc", "us-west", capacity=10, in_flight=0, now=2.0)
    assert [r.id for r in out] == list(range(10)) and all(r.cluster == "us-west" for r in out)
    assert out[0].waited_s == 2.0 and buf.held("svc") == 15
    nxt = buf.on_finished("svc", "us-west", 2.5)
    assert [r.id for r in nxt] == [10, 11]  # its slot is free, and the window grew by one
    more = buf.on_ready("svc", "us-west", capacity=30, in_flight=11, now=3.0)  # two more pods came up
    assert [r.id for r in more] == list(range(12, 25))
    assert buf.held("svc") == 0 and buf.total == 0 and buf.bytes == 0
    assert buf.outcomes == {"forwarded": 25, "rejected": 0, "expired": 0, "gone": 0}


def test_unknown_capacity_releases_everything():
    buf = ActivationBuffer()
    hold_many(buf, 5)
    assert len(buf.on_ready("svc", "a", None, 0, 1.0)) == 5


def test_deadline_expiry_and_prediction():
    buf = ActivationBuffer()
    buf.on_hold(1, "svc", 10, 0.0, 5.0, None)
    buf.on_hold(2, "svc", 10, 1.0, 31.0, None)
    assert buf.on_tick(4.9) == []
    assert buf.on_tick(5.0) == [Expire(1, "svc", 5.0)]
    r = buf.on_hold(3, "svc", 10, 10.0, 12.0, ready_in_s=6.0)  # would be ready after its deadline
    assert isinstance(r, Refuse) and r.status == 503 and r.retry_after_s == 6
    assert buf.outcomes["expired"] == 1 and buf.outcomes["rejected"] == 1


def test_bounds_per_service_total_and_bytes():
    buf = ActivationBuffer(BufferLimits(per_service=3, total=5, max_bytes=1000))
    assert all(isinstance(h, Held) for h in hold_many(buf, 3, "a"))
    assert isinstance(buf.on_hold(10, "a", 1, 0, 30, None), Refuse)
    assert all(isinstance(h, Held) for h in hold_many(buf, 2, "b", start=20))
    assert isinstance(buf.on_hold(30, "c", 1, 0, 30, None), Refuse)  # total full
    buf2 = ActivationBuffer(BufferLimits(max_bytes=250))
    assert isinstance(buf2.on_hold(1, "a", 200, 0, 30, None), Held)
    assert isinstance(buf2.on_hold(2, "a", 100, 0, 30, None), Refuse)


def test_what_other_workers_hold_counts_toward_the_bounds():
    buf = ActivationBuffer(limits=BufferLimits(per_service=3, total=5))
    assert isinstance(buf.on_hold(1, "svc", 100, 0.0, 30.0, None, elsewhere=(1, 1)), Held)
    refused = buf.on_hold(2, "svc", 100, 0.0, 30.0, None, elsewhere=(2, 2))  # 1 here + 2 elsewhere: full
    assert isinstance(refused, Refuse) and refused.overflow and refused.status == 503
    assert isinstance(buf.on_hold(3, "other", 100, 0.0, 30.0, None, elsewhere=(0, 3)), Held)  # 2 + 3 = 5 next
    assert isinstance(buf.on_hold(4, "third", 100, 0.0, 30.0, None, elsewhere=(0, 3)), Refuse)  # the total
    assert buf.total == 2


def test_workers_holding_for_one_service_share_a_copys_capacity():
    assert capacity_share(10, 0) == 10  # alone
    assert capacity_share(10, 1) == 5 and capacity_share(10, 2) == 4  # rounded up: together about the capacity
    assert capacity_share(2, 7) == 1  # never nothing: each worker may send one
    assert capacity_share(None, 3) is None  # unknown capacity: release all, as alone


def test_client_gone_is_removed_at_once_and_never_released():
    buf = ActivationBuffer()
    hold_many(buf, 3)
    assert buf.on_gone(1, "svc") and not buf.on_gone(1, "svc")
    assert [r.id for r in buf.on_ready("svc", "a", None, 0, 1.0)] == [0, 2]
    assert buf.outcomes == {"forwarded": 2, "rejected": 0, "expired": 0, "gone": 1}


def test_every_request_has_exactly_one_outcome():
    buf = ActivationBuffer(BufferLimits(per_service=50))
    import random
    rng = random.Random(3)
    ids, now = 0, 0.0
    for step in range(400):
        now += 0.1
        action = rng.random()
        if action < 0.5:
            buf.on_hold(ids, "svc", 10, now, now + rng.uniform(0.5, 5), None)
            ids += 1
        elif action < 0.6:
            buf.on_gone(rng.randrange(max(ids, 1)), "svc")
        elif action < 0.8:
            buf.on_ready("svc", "a", 3, rng.randrange(3), now)
        elif action < 0.9:
            buf.on_finished("svc", "a", now)
        else:
            buf.on_tick(now)
    buf.on_tick(now + 100)
    assert sum(buf.outcomes.values()) == ids
    assert buf.total == 0 and buf.bytes == 0


def test_overflow_is_marked_so_the_route_may_spill():
    buf = ActivationBuffer(BufferLimits(per_service=1))
    buf.on_hold(1, "svc", 10, 0, 30, None)
    over = buf.on_hold(2, "svc", 10, 0, 30, None)
    late = buf.on_hold(3, "other", 10, 0, 1, ready_in_s=5)
    assert over.overflow and not late.overflow
