"""Activation buffer: requests held while a service scales from zero (pure; `now` passed in).

Events in, actions out:
  on_hold(...)      -> Held | Refuse          a request with no warm copy anywhere eligible
  on_ready(...)     -> [Release]              a cluster has ready capacity for the service
  on_finished(...)  -> [Release]              a released request finished: its slot is free
  on_tick(now)      -> [Expire]               deadlines that passed
  on_gone(id)       -> bool                   the client left; removed at once
Held requests leave in FIFO order per service, paced by the capacity known for the cluster
(container concurrency x ready replicas) instead of all at once. The window then grows by one
for every released request that completes (doubling per round trip, like TCP slow start): a
cluster whose autoscaler adds replicas behind the first one gets the rest of the burst quickly,
while a first replica is never handed the whole burst at once. Every held request ends in
exactly one outcome: forwarded, rejected, expired or gone.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field


def capacity_share(capacity: int | None, other_holders: int) -> int | None:
    """The share of a ready copy's capacity one worker of `serve --workers` releases into when
    `other_holders` other workers hold requests for the same service (as Knative splits a revision's
    capacity among its activators): together they start at about the copy's capacity, not N times it.
    None (unknown): release all."""
    if capacity is None:
        return None
    return max(1, -(-capacity // (other_holders + 1)))


@dataclass(frozen=True)
class BufferLimits:
    per_service: int = 1000
    total: int = 10_000
    max_bytes: int = 64 * 1024 * 1024  # request heads held (bodies stay in the clients' sockets)


@dataclass
class Held:
    id: int
    service: str
    size: int
    since: float
    deadline: float


@dataclass(frozen=True)
class Refuse:
    status: int  # 503
    reason: str
    retry_after_s: float
    overflow: bool = False  # a bound was hit (rather than a deadline that cannot be met)


@dataclass(frozen=True)
class Release:
    id: int
    cluster: str
    waited_s: float


@dataclass(frozen=True)
class Expire:
    id: int
    service: str
    waited_s: float


@dataclass
class ActivationBuffer:
    limits: BufferLimits = field(default_factory=BufferLimits)
    queues: dict[str, OrderedDict] = field(default_factory=dict)  # service -> id -> Held (FIFO)
    total: int = 0
    bytes: int = 0
    outcomes: dict[str, int] = field(default_factory=lambda: {"forwarded": 0, "rejected": 0, "expired": 0,
                                                              "gone": 0})
    # (service, cluster) -> (capacity, in flight from this buffer) while releasing
    releasing: dict[tuple[str, str], list] = field(default_factory=dict)

    def held(self, service: str) -> int:
        q = self.queues.get(service)
        return len(q) if q else 0

    def on_hold(self, id: int, service: str, size: int, now: float, deadline: float,
                ready_in_s: float | None, elsewhere: tuple[int, int] = (0, 0)) -> Held | Refuse:
        """`elsewhere`: requests the other workers of `serve --workers` hold for the service, and in all,
        counted against per_service and total with this buffer's own (max_bytes is this process's memory)."""
        if ready_in_s is not None and now + ready_in_s > deadline:
            self.outcomes["rejected"] += 1
            return Refuse(503, f"no copy of {service} can be ready before the request's deadline",
                          max(1.0, round(ready_in_s)))
        q = self.queues.get(service)
        if (len(q) if q else 0) + elsewhere[0] >= self.limits.per_service \
                or self.total + elsewhere[1] >= self.limits.total or self.bytes + size > self.limits.max_bytes:
            self.outcomes["rejected"] += 1
            return Refuse(503, f"too many requests waiting for {service} to start", max(1.0, round(ready_in_s or 1)),
                          overflow=True)
        if q is None:
            q = self.queues[service] = OrderedDict()
        held = Held(id, service, size, now, deadline)
        q[id] = held
        self.total += 1
        self.bytes += size
        return held

    def on_ready(self, service: str, cluster: str, capacity: int | None, in_flight: int, now: float) -> list[Release]:
        """`cluster` has `capacity` concurrent slots (None: unknown, release all), `in_flight` used."""
        slots = self.releasing.setdefault((service, cluster), [capacity, in_flight])
        slots[0], slots[1] = capacity, in_flight
        return self._release(service, cluster, now)

    def on_finished(self, service: str, cluster: str, now: float) -> list[Release]:
        slots = self.releasing.get((service, cluster))
        if slots is None:
            return []
        slots[1] = max(slots[1] - 1, 0)
        if slots[0] is not None:
            slots[0] += 1  # it kept up: widen the window
        return self._release(service, cluster, now)

    def on_tick(self, now: float) -> list[Expire]:
        out = []
        for service, q in list(self.queues.items()):
            for held in [h for h in q.values() if h.deadline <= now]:
                self._remove(held)
                self.outcomes["expired"] += 1
                out.append(Expire(held.id, service, now - held.since))
        return out

    def on_gone(self, id: int, service: str) -> bool:
        q = self.queues.get(service)
        held = q.get(id) if q else None
        if held is None:
            return False
        self._remove(held)
        self.outcomes["gone"] += 1
        return True

    def next_deadline(self) -> float | None:
        deadlines = [h.deadline for q in self.queues.values() for h in q.values()]
        return min(deadlines) if deadlines else None

    def _release(self, service: str, cluster: str, now: float) -> list[Release]:
        q = self.queues.get(service)
        slots = self.releasing[(service, cluster)]
        out = []
        while q and (slots[0] is None or slots[1] < slots[0]):
            _, held = q.popitem(last=False)
            self._account(held)
            slots[1] += 1
            self.outcomes["forwarded"] += 1
            out.append(Release(held.id, cluster, now - held.since))
        if not q:
            self.releasing.pop((service, cluster), None)
        return out

    def _remove(self, held: Held) -> None:
        del self.queues[held.service][held.id]
        self._account(held)

    def _account(self, held: Held) -> None:
        self.total -= 1
        self.bytes -= held.size
        if not self.queues.get(held.service):
            self.queues.pop(held.service, None)
