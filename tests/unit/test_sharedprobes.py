"""Probe turns the workers of `serve --workers` share: one worker probes a cluster an interval and the
others take its result; a claim keeps two from probing at once until it lapses; probers sharing a table
send one probe where each would have sent its own."""
import os
import time
import types

import pytest

from router.control import probes
from router.core import probeturn
from router.core.choice import PolicyInputs
from router.core.probeturn import ProbeRecord, turn, unseen
from router.dataplane import sharedprobes
from router.dataplane.sharedprobes import SharedProbes, create_table
from tests.conftest import wait_for


def record(**kw) -> ProbeRecord:
    fields = dict(seq=1, at=9.0, due=10.0, claimed_until=0.0, by=7, ok=True, connect_s=0.001, http_s=0.002,
                  reason="")
    return ProbeRecord(**{**fields, **kw})


def test_whose_turn():
    assert turn(None, 5.0) == ("probe", 5.0)  # nobody has probed: this worker
    assert turn(record(), 9.5) == ("take", 10.0)  # current: take it, look again when the next is due
    assert turn(record(), 10.0) == ("probe", 10.0)  # due, nobody probing
    assert turn(record(claimed_until=11.0), 10.5) == ("wait", 10.5 + probeturn.POLL_S)  # another is probing
    assert turn(record(claimed_until=10.52), 10.5) == ("wait", 10.52)  # ... looked at again when its claim ends
    assert turn(record(claimed_until=11.0), 11.0) == ("probe", 11.0)  # the claim lapsed: its worker is gone
    assert turn(record(seq=0, due=0.0, claimed_until=3.0), 2.0)[0] == "wait"  # the first probe is out
    assert probeturn.claim_until(10.0, 0.5) == 10.0 + 1.0 + probeturn.CLAIM_MARGIN_S


def test_a_result_is_applied_once_and_only_while_recent():
    assert unseen(record(seq=3), 2, 10.5, 3.0)  # new to this worker: applied, even once due (10.0)
    assert not unseen(record(seq=3), 3, 10.5, 3.0)  # applied already, or sent by this worker
    assert not unseen(record(seq=3, at=5.0), None, 10.5, 3.0)  # said long ago (the cluster was out of the config)
    assert not unseen(record(seq=0), None, 9.5, 3.0) and not unseen(None, None, 9.5, 3.0)


@pytest.fixture
def views():
    """Two workers' views of one table (pids 101 and 102)."""
    fd = create_table()
    one, two = SharedProbes(fd, pid=101), SharedProbes(fd, pid=102)
    yield one, two
    one.close(), two.close()
    os.close(fd)


def test_one_worker_probes_the_other_takes_its_result(views):
    one, two = views
    assert one.turn("a", 1.0, 0.5)[:2] == ("probe", 1.0)  # claimed
    what, when, _ = two.turn("a", 1.01, 0.5)
    assert what == "wait" and when == pytest.approx(1.01 + probeturn.POLL_S)
    assert one.turn("b", 1.01, 0.5)[0] == "probe"  # another cluster is its own turn
    assert one.publish("a", 1.0, 2.0, False, None, None, "connection refused") == 1
    what, when, got = two.turn("a", 1.1, 0.5)
    assert (what, when) == ("take", 2.0)
    assert (got.seq, got.at, got.by, got.ok, got.connect_s, got.http_s, got.reason) == (
        1, 1.0, 101, False, None, None, "connection refused")
    assert two.turn("a", 2.0, 0.5)[0] == "probe"  # due: the other worker's turn now
    assert one.turn("a", 2.0, 0.5)[0] == "wait"
    two.publish("a", 2.0, 3.0, True, 0.001, 0.003, "")
    what, _, got = one.turn("a", 2.5, 0.5)
    assert what == "take" and (got.seq, got.by, got.ok, got.connect_s, got.http_s) == (2, 102, True, 0.001, 0.003)


def test_a_released_or_lapsed_claim_lets_another_worker_probe(views):
    one, two = views
    one.turn("a", 1.0, 0.5)
    two.release("a")  # not its claim: nothing changes
    assert two.turn("a", 1.1, 0.5)[0] == "wait"
    one.release("a")  # could not probe (its own limits)
    assert two.turn("a", 1.1, 0.5)[0] == "probe"
    lapses = probeturn.claim_until(1.1, 0.5)  # and now the worker holding it dies mid-probe
    assert one.turn("a", lapses - 0.01, 0.5)[0] == "wait"
    assert one.turn("a", lapses, 0.5)[0] == "probe"


def test_a_full_group_gives_up_the_stalest_record(views, monkeypatch):
    one, two = views
    monkeypatch.setattr(sharedprobes.sharedmem, "hash64", lambda key: int(key[1:]) * sharedprobes.GROUPS)
    full = []
    one.on_full = lambda: full.append(1)
    for i, due in enumerate([5.0, 1.0, 7.0, 6.0], start=1):  # one group: every hash is 0 modulo GROUPS
        one.turn(f"k{i}", 0.0, 0.5)
        one.publish(f"k{i}", 0.0, due, True, 0.001, 0.001, "")
    assert full == []
    one.turn("k5", 0.0, 0.5)  # a fifth cluster in that group: k2's record (due soonest) goes
    assert full == [1]
    assert [two.turn(f"k{i}", 0.5, 0.5)[0] for i in (1, 3, 4)] == ["take"] * 3
    assert two.turn("k2", 0.5, 0.5)[2] is None  # k2 starts over (and takes the stalest of the rest)


async def test_probers_sharing_a_table_send_one_probe_an_interval(views, backends, monkeypatch):
    """Two probers (as two workers) on one table: every result reaches both policies, but the cluster
    is probed once for each, where each prober alone would have probed it as often."""
    (backend,) = await backends("a")
    cluster = types.SimpleNamespace(name="a", endpoint=types.SimpleNamespace(
        host="127.0.0.1", port=backend.port, connect_options=dict), probe_path="/healthz")
    monkeypatch.setattr(sharedprobes, "probe_key", lambda c: c.name)
    monkeypatch.setattr(probes, "probe_key", lambda c: c.name)
    own, applied = {101: 0, 102: 0}, {101: [], 102: []}
    made, sent = [], []  # sent: when each probe (by either) was answered
    for view in views:
        policy = PolicyInputs()

        def on_result(name, ok, connect_s, http_s, pid=view.pid):
            own[pid] += 1
            sent.append(time.monotonic())
        prober = probes.Prober(policy, lambda: (cluster,), lambda: 0.05, lambda: 0.5, on_result, shared=view)
        apply = prober._apply

        def counted(name, *args, pid=view.pid, apply=apply, **kw):
            applied[pid].append(kw.get("by"))
            apply(name, *args, **kw)
        prober._apply = counted
        made.append((prober, policy))
    for prober, _ in made:
        prober.sync()
    try:
        await wait_for(lambda: min(len(v) for v in applied.values()) >= 12, timeout_s=10, what="12 results each")
    finally:
        for prober, _ in made:
            prober.stop()
    assert sum(own.values()) == backend.probes  # every probe sent was counted by the worker that sent it
    # One sequence of probes an interval apart (the next is due 0.8-1.2 intervals after the last result),
    # not two interleaved ones, and every result applied by both (but one out when they stopped).
    assert all(len(got) >= backend.probes - 1 for got in applied.values()), (backend.probes, applied)
    gaps = [later - earlier for earlier, later in zip(sent, sent[1:])]
    assert min(gaps) >= 0.8 * 0.05 - 0.002, sorted(gaps)[:3]
    for pid, got in applied.items():  # each applied its own results and took the others'
        assert got.count(None) == own[pid] and all(by in (None, 203 - pid) for by in got), (pid, got)
    assert any(by is not None for got in applied.values() for by in got)
    for prober, policy in made:
        assert policy.rtt.rtt("a") is not None and prober.last["a"]["ok"] is True

    backend.probe_status = 500  # the probe path fails: both workers see the cluster down
    for prober, _ in made:
        prober.sync()
    try:
        await wait_for(lambda: not any(p.health.is_healthy("a", time.monotonic())
                                       for _, p in made), timeout_s=10, what="a down at both")
    finally:
        for prober, _ in made:
            prober.stop()
    reasons = {p.health.describe("a", 0.0).get("last_reason") for _, p in made}
    assert reasons == {"3 failed probes: probe answered 500"}, reasons
