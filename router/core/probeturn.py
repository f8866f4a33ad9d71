"""Whose turn it is to probe a cluster, for the workers of `serve --workers N` (pure, `now` passed in).

The workers keep one record per cluster in shared memory: the last probe's result, when the next probe
is due, and a claim while a worker is probing. At every look a worker applies a result it has not applied
yet (`unseen`); then (`turn`) one that finds the result current sleeps until the next is due, one that
finds it due and unclaimed probes (and claims it, in the same step), one that finds it claimed looks again
shortly, until the result comes or the claim lapses (its worker died mid-probe). So a cluster is probed
once an interval by the router, not once per worker, and every worker sees every result.
"""
from __future__ import annotations

from dataclasses import dataclass

POLL_S = 0.05  # how often a worker looks again while another is probing
CLAIM_MARGIN_S = 0.5  # beyond the probe's own deadlines (name lookup, then connect and answer)


@dataclass(frozen=True)
class ProbeRecord:
    seq: int  # results published so far (0: none yet)
    at: float  # when the last probe started (monotonic clock, the same in every process of the host)
    due: float  # when the next probe is due
    claimed_until: float  # a worker is probing until then at the latest (0: nobody)
    by: int  # the pid of the worker that published the last result (or claimed since)
    ok: bool
    connect_s: float | None
    http_s: float | None
    reason: str  # why it failed


def turn(record: ProbeRecord | None, now: float) -> tuple[str, float]:
    """("take", due): the last result is current: look again when the next is due;
    ("wait", when): another worker is probing: look again then; ("probe", now): this worker's turn."""
    if record is not None:
        if record.seq and now < record.due:
            return "take", record.due
        if now < record.claimed_until:
            return "wait", min(record.claimed_until, now + POLL_S)
    return "probe", now


def unseen(record: ProbeRecord | None, seen: int | None, now: float, max_age_s: float) -> bool:
    """Whether a worker applies the record's result at this look: one it has not applied yet (nor sent),
    started within `max_age_s` (an interval or two: not what a cluster said long ago). Applied whatever
    whose turn it is, so a worker that looks once the next probe is due misses no result."""
    return record is not None and record.seq > 0 and record.seq != seen and now - record.at <= max_age_s


def claim_until(now: float, timeout_s: float) -> float:
    """How long a claim holds: the probe's deadlines (name lookup, then connect and answer) and a margin."""
    return now + 2 * timeout_s + CLAIM_MARGIN_S
