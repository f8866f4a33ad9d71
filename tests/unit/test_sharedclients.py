"""The table in which the workers of `serve --workers` publish their open connections per client address:
a new connection is admitted against the address's total over every worker; a dead worker's region is
cleared; a full group leaves the address to the worker alone."""
import contextlib
import os

import pytest

from router.dataplane import sharedclients
from router.dataplane.sharedclients import SharedClientCounts, clear_region, create_table


@contextlib.contextmanager
def worker_views(create, view, n: int = 3):
    """A table of `n` worker regions (`create`) and each worker's `view` of it: (descriptor, views)."""
    fd = create(n)
    views = [view(fd, region) for region in range(n)]
    try:
        yield fd, views
    finally:
        for v in views:
            v.close()
        os.close(fd)


@pytest.fixture
def workers():
    with worker_views(create_table, SharedClientCounts) as table:
        yield table


def test_an_address_is_limited_over_every_worker(workers):
    _, (one, two, three) = workers
    assert one.publish("192.0.2.1", 1, 3) and one.publish("192.0.2.1", 2, 3)
    assert two.publish("192.0.2.1", 1, 3)
    assert not three.publish("192.0.2.1", 1, 3)  # two at one worker, one at another: the third is refused
    assert not one.publish("192.0.2.1", 3, 3)
    assert three.publish("192.0.2.9", 1, 3)  # another address has its own places
    one.publish("192.0.2.1", 1, None)  # one of the first worker's closed
    assert three.publish("192.0.2.1", 1, 3)
    assert not two.publish("192.0.2.1", 2, 3)


def test_a_dead_workers_region_is_cleared(workers):
    fd, (one, two, _) = workers
    assert one.publish("192.0.2.1", 2, 2)
    assert not two.publish("192.0.2.1", 1, 2)
    clear_region(fd, 0)  # the first worker died with its connections
    assert two.publish("192.0.2.1", 1, 2) and two.publish("192.0.2.1", 2, 2)
    assert not two.publish("192.0.2.1", 3, 2)


def test_a_closed_address_frees_its_place_in_the_group(workers, monkeypatch):
    monkeypatch.setattr(sharedclients, "REGION_GROUPS", 1)  # every address in one group
    _, (one, two, _) = workers
    addresses = [f"10.0.0.{i}" for i in range(sharedclients.GROUP_SLOTS)]
    for address in addresses:
        assert one.publish(address, 1, 1)
    full = []
    one.on_full = lambda: full.append(1)
    # The group of the first worker's region is full: a ninth address is counted by that worker alone ...
    assert one.publish("10.0.1.1", 1, 1) and full == [1]
    assert two.publish("10.0.1.1", 1, 1)  # ... so the other worker does not see it
    assert not two.publish(addresses[3], 1, 1)  # published ones it does see
    one.publish(addresses[3], 0, None)  # closed: its slot is free again
    assert two.publish(addresses[3], 1, 1)
    assert one.publish("10.0.1.1", 1, None)  # published now that a slot is free (the count is all of it)
    assert not two.publish("10.0.1.1", 2, 2)  # one at each worker: a second at the other passes 2


def test_a_descriptor_without_that_region_is_refused():
    fd = create_table(2)
    try:
        with pytest.raises(ValueError, match="no region 2"):
            SharedClientCounts(fd, 2)
    finally:
        os.close(fd)
