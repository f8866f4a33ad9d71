"""The rate-limit table the workers of `serve --workers` share: two views of one table count in the same
buckets, with the same arithmetic as a single process's RateLimiter; a full group gives up the bucket used
longest ago; a changed limit starts new buckets."""
import os

import pytest
from hypothesis import given, settings, strategies as st

from router.config.model import RateLimit
from router.core.ratelimit import RateLimiter
from router.dataplane import sharedlimit
from router.dataplane.sharedlimit import SharedBuckets, create_table


@pytest.fixture
def views():
    """Two workers' views of one table."""
    fd = create_table()
    one, two = SharedBuckets(fd), SharedBuckets(fd)
    yield one, two
    one.close(), two.close()
    os.close(fd)


def test_two_views_count_in_one_bucket(views):
    one, two = views
    limit = RateLimit(10.0, 3, "route")
    a, b = one.limiter("r", limit), two.limiter("r", limit)
    assert [a.take("", 0.0), b.take("", 0.0), a.take("", 0.0)] == [0.0, 0.0, 0.0]
    assert b.take("", 0.0) == pytest.approx(0.1)  # the burst is spent, whichever worker asks
    assert a.take("", 0.05) == pytest.approx(0.05)
    assert b.take("", 0.1) == 0.0
    assert a.count() == b.count() == 1
    # Another route, and the same route under another limit (a reload that changed it), count apart.
    assert one.limiter("other", limit).take("", 0.1) == 0.0
    changed = two.limiter("r", RateLimit(10.0, 2, "route"))
    got = [changed.take("", 0.1) for _ in range(3)]
    assert got[:2] == [0.0, 0.0] and got[2] > 0  # a new bucket, full: burst 2
    assert a.take("", 0.1) > 0  # the old limit's bucket is still empty


def test_a_worker_whose_clock_read_is_older_is_not_credited_twice(views):
    one, two = views
    limit = RateLimit(1.0, 1, "route")
    a, b = one.limiter("r", limit), two.limiter("r", limit)
    assert a.take("", 5.0) == 0.0
    assert b.take("", 4.5) == pytest.approx(1.0)  # read its clock before a counted: no token, none gained
    assert a.take("", 5.5) == pytest.approx(0.5)  # half a token since 5.0, not a whole one since 4.5


def test_a_full_group_gives_up_the_bucket_used_longest_ago(views, monkeypatch):
    monkeypatch.setattr(sharedlimit, "GROUPS", 1)  # every key in one group of GROUP_SLOTS
    one, two = views
    lim = one.limiter("r", RateLimit(0.001, 1, "client"))
    keys = [f"10.0.0.{i}" for i in range(sharedlimit.GROUP_SLOTS)]
    for i, key in enumerate(keys):
        assert lim.take(key, float(i)) == 0.0
    others = [k for k in keys if k != keys[1]]
    assert all(lim.take(key, 10.0 + i) > 0 for i, key in enumerate(others))  # keys[1] now used longest ago
    assert lim.count() == sharedlimit.GROUP_SLOTS
    evicted = []
    one.on_full = lambda: evicted.append(1)
    assert lim.take("10.0.1.1", 20.0) == 0.0 and evicted == [1]  # a new key takes keys[1]'s slot ...
    assert lim.take("10.0.1.1", 20.0) > 0
    assert all(two.limiter("r", RateLimit(0.001, 1, "client")).take(key, 21.0) > 0 for key in others)
    assert lim.take(keys[1], 21.0) == 0.0  # ... which starts again full
    assert lim.count() == sharedlimit.GROUP_SLOTS


@settings(max_examples=100, deadline=None)
@given(rate=st.floats(0.1, 1000), burst=st.integers(1, 20),
       steps=st.lists(st.tuples(st.sampled_from("abcd"), st.floats(0, 2), st.booleans()), min_size=1, max_size=100))
def test_the_shared_table_answers_as_one_process_would(rate, burst, steps):
    """Spread over two views, the table gives each request the answer a single RateLimiter gives."""
    fd = create_table()
    one, two = SharedBuckets(fd), SharedBuckets(fd)
    try:
        limit = RateLimit(rate, burst, "client")
        views = (one.limiter("r", limit), two.limiter("r", limit))
        alone = RateLimiter(rate, burst)
        now = 0.0
        for key, gap, second in steps:
            now += gap
            assert views[second].take(key, now) == pytest.approx(alone.take(key, now), abs=1e-9)
    finally:
        one.close(), two.close()
        os.close(fd)


def test_a_descriptor_that_is_not_a_table_is_refused(tmp_path):
    fd = os.memfd_create("not-a-table")
    try:
        with pytest.raises(ValueError, match="not a table"):
            SharedBuckets(fd)
    finally:
        os.close(fd)
