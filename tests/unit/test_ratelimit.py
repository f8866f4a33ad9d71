"""Token buckets (pure, time passed in) and the client address a per-client limit counts by."""
import ipaddress

import pytest
from hypothesis import given, strategies as st

from router.core.ratelimit import RateLimiter
from router.dataplane.headers import client_address


def test_burst_then_the_rate():
    lim = RateLimiter(rate=10, burst=3)
    assert [lim.take("", 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert lim.take("", 0.0) == pytest.approx(0.1)  # the next token in 100 ms
    assert lim.take("", 0.05) == pytest.approx(0.05)  # half of it has refilled
    assert lim.take("", 0.1) == 0.0
    assert lim.take("", 0.1) > 0
    assert [lim.take("", 10.0) for _ in range(4)].count(0.0) == 3  # refilled to the burst, not beyond


def test_keys_have_their_own_buckets_and_the_oldest_goes_when_full():
    lim = RateLimiter(rate=1, burst=1, max_keys=2)
    assert lim.take("a", 0.0) == 0.0 and lim.take("b", 0.0) == 0.0
    assert lim.take("a", 0.1) > 0 and lim.take("b", 0.1) > 0
    assert lim.take("a", 0.2) > 0  # a used last: b is now the oldest
    assert lim.take("c", 0.2) == 0.0  # b's bucket makes room
    assert set(lim.buckets) == {"a", "c"}
    assert lim.take("a", 0.3) > 0  # a kept its (empty) bucket


@given(rate=st.floats(0.1, 1000), burst=st.integers(1, 50),
       gaps=st.lists(st.floats(0, 2), min_size=1, max_size=200))
def test_never_more_than_burst_plus_rate_times_elapsed(rate, burst, gaps):
    lim = RateLimiter(rate, burst)
    now, admitted = 0.0, 0
    for gap in gaps:
        now += gap
        wait = lim.take("k", now)
        assert wait >= 0
        if wait == 0:
            admitted += 1
        else:  # refused only when less than a token is left, and told how long until one
            assert wait <= 1 / rate + 1e-9
        assert admitted <= burst + rate * now + 1e-6


TRUSTED = (ipaddress.ip_network("10.0.0.0/8"),)


def facts(*xff: bytes) -> dict:
    return {"forwarding": {b"x-forwarded-for": list(xff)} if xff else {}}


def test_client_address_believes_trusted_proxies_only():
    assert client_address("192.0.2.9", facts(b"6.6.6.6"), TRUSTED, False) == "192.0.2.9"  # peer not trusted
    assert client_address("10.0.0.2", facts(b"203.0.113.7"), TRUSTED, True) == "203.0.113.7"
    # The client wrote 6.6.6.6 itself; the trusted LB appended what it saw; a second LB appended the first.
    assert client_address("10.0.0.2", facts(b"6.6.6.6, 203.0.113.7", b"10.1.1.1"), TRUSTED, True) == "203.0.113.7"
    assert client_address("10.0.0.2", facts(b"10.3.3.3, 10.1.1.1"), TRUSTED, True) == "10.3.3.3"  # all trusted
    assert client_address("10.0.0.2", facts(), TRUSTED, True) == "10.0.0.2"
