"""Open-loop HTTP load through the router, with every request's outcome recorded.

Requests are started on a schedule (Poisson arrivals at `rate` per second, plus bursts) whether or
not earlier ones have finished, as real clients do; each carries `x-lab-request-id` so the lab can
tell a replayed request. Outcomes:

    ok         2xx/3xx/4xx answer with a complete body
    error      5xx answer (the status and the router's reason are kept)
    timeout    no answer within the client timeout (a hang)
    reset      the connection failed or was reset before a complete answer
    truncated  the body was cut short and the client could tell (connection closed mid-body)
    short      the response looked complete but the body was shorter than the pod sent: the one
               outcome a proxy must never produce
"""
from __future__ import annotations

import asyncio
import itertools
import random
import time
from dataclasses import dataclass, field
from typing import Callable

import aiohttp


@dataclass
class Outcome:
    id: str
    t: float  # start, seconds since the load began
    service: str
    method: str
    dur: float = 0.0
    status: int = 0
    kind: str = "pending"
    cluster: str = "-"
    reason: str = ""  # x-router-decision reason, or the error body's first line
    held_ms: float = 0.0  # waited on a cold start (router hold or cluster ingress)
    target: int | str = 0  # a port on 127.0.0.1, or a base URL

    @property
    def idempotent(self) -> bool:
        return self.method in ("GET", "HEAD", "OPTIONS", "PUT", "DELETE")

    @property
    def succeeded(self) -> bool:
        return self.kind == "ok" and self.status < 500


@dataclass
class Mix:
    services: dict[str, float]  # service -> weight
    post_fraction: float = 0.0
    post_bytes: int = 512


@dataclass
class Burst:
    at_s: float
    service: str
    count: int


class Load:
    def __init__(self, targets: Callable[[], list], hosts: dict[str, str], mix: Mix, rate: float,
                 duration_s: float, bursts: list[Burst] | None = None, timeout_s: float = 30.0,
                 seed: int = 1, max_inflight: int = 4000):
        self.targets, self.hosts, self.mix = targets, hosts, mix
        self.rate, self.duration_s = rate, duration_s
        self.bursts = sorted(bursts or [], key=lambda b: b.at_s)
        self.timeout_s = timeout_s
        self.rng = random.Random(seed)
        self.max_inflight = max_inflight
        self.outcomes: list[Outcome] = []
        self.inflight = 0
        self.shed = 0
        self.sessions: dict[int, aiohttp.ClientSession] = {}
        self.ids = itertools.count(1)
        self.t0 = 0.0
        self.tasks: set[asyncio.Task] = set()
        self.stopped = False
        self._services = list(mix.services)
        self._weights = [mix.services[s] for s in self._services]

    def now(self) -> float:
        return time.monotonic() - self.t0

    def session(self, port: int | str) -> aiohttp.ClientSession:
        s = self.sessions.get(port)
        if s is None:
            s = self.sessions[port] = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, force_close=False),
                timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        return s

    async def close(self) -> None:
        for s in self.sessions.values():
            await s.close()

    async def run(self) -> list[Outcome]:
        """Send for `duration_s`, then wait for every request to end (each has the client timeout)."""
        self.t0 = time.monotonic()
        bursts = list(self.bursts)
        next_at = 0.0
        try:
            while not self.stopped:
                now = self.now()
                if now >= self.duration_s:
                    break
                while bursts and bursts[0].at_s <= now:
                    b = bursts.pop(0)
                    for _ in range(b.count):
                        self._start(b.service)
                while self.rate > 0 and next_at <= now:
                    self._start(self.rng.choices(self._services, self._weights)[0])
                    next_at += self.rng.expovariate(self.rate)
                wake = min([next_at] + [b.at_s for b in bursts[:1]] + [self.duration_s])
                await asyncio.sleep(max(min(wake - self.now(), 0.05), 0.001))
            await asyncio.gather(*list(self.tasks), return_exceptions=True)
        finally:
            for t in list(self.tasks):
                t.cancel()
            await self.close()
        return self.outcomes

    def _start(self, service: str) -> None:
        targets = self.targets()
        if not targets or self.inflight >= self.max_inflight:
            self.shed += 1
            return
        method = "POST" if self.rng.random() < self.mix.post_fraction else "GET"
        o = Outcome(f"r{next(self.ids)}", self.now(), service, method, target=self.rng.choice(targets))
        self.outcomes.append(o)
        task = asyncio.get_running_loop().create_task(self._one(o))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _one(self, o: Outcome) -> None:
        self.inflight += 1
        start = time.monotonic()
        headers = {"Host": self.hosts[o.service], "x-lab-request-id": o.id}
        body = b"p" * self.mix.post_bytes if o.method == "POST" else None
        try:
            base = o.target if isinstance(o.target, str) else f"http://127.0.0.1:{o.target}"
            async with self.session(o.target).request(o.method, f"{base}/work",
                                                      headers=headers, data=body) as r:
                o.status = r.status
                o.cluster = r.headers.get("x-router-cluster", "-")
                o.reason = r.headers.get("x-router-decision", "").split(";")[0]
                o.held_ms = _held_ms(r.headers)
                payload = await r.read()
                expected = r.headers.get("x-lab-bytes")
                if expected is not None and len(payload) != int(expected):
                    o.kind = "short"
                elif r.status >= 500:
                    o.kind = "error"
                    o.reason = payload[:120].decode("latin-1").strip() or o.reason
                else:
                    o.kind = "ok"
        except asyncio.TimeoutError:
            o.kind = "timeout"
        except aiohttp.ClientPayloadError:
            o.kind = "truncated"
        except (aiohttp.ClientError, OSError) as exc:
            o.kind = "reset"
            o.reason = type(exc).__name__
        finally:
            o.dur = time.monotonic() - start
            self.inflight -= 1


def _held_ms(headers) -> float:
    held = 0.0
    timing = headers.get("Server-Timing", "")
    if "queue;dur=" in timing:
        try:
            held += float(timing.split("queue;dur=")[1].split(",")[0].split(";")[0])
        except ValueError:
            pass
    queued = headers.get("x-lab-queued-ms")
    if queued:
        held += float(queued)
    return held


@dataclass
class Summary:
    sent: int = 0
    succeeded: int = 0
    failed: int = 0
    lost: int = 0  # never answered: timeouts and pending
    kinds: dict = field(default_factory=dict)
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    cold_waited: int = 0
    cold_avoided: int = 0
    per_cluster: dict = field(default_factory=dict)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(int(len(values) * q), len(values) - 1)]


def summarise(outcomes: list[Outcome]) -> Summary:
    s = Summary(sent=len(outcomes))
    lat = []
    for o in outcomes:
        s.kinds[o.kind] = s.kinds.get(o.kind, 0) + 1
        if o.succeeded:
            s.succeeded += 1
            lat.append(o.dur)
            s.per_cluster[o.cluster] = s.per_cluster.get(o.cluster, 0) + 1
        else:
            s.failed += 1
        if o.kind in ("timeout", "pending"):
            s.lost += 1
        if o.held_ms > 0:
            s.cold_waited += 1
        elif o.reason == "warm-preferred":
            s.cold_avoided += 1
    s.p50_ms = percentile(lat, 0.5) * 1000
    s.p99_ms = percentile(lat, 0.99) * 1000
    return s


def timeline(outcomes: list[Outcome], bin_s: float, clusters: list[str], until_s: float | None = None) -> dict:
    """Per time bin (by start time): requests per cluster, failures, p50/p99 latency in ms."""
    end = max([o.t for o in outcomes] + [until_s or 0.0])
    n = int(end / bin_s) + 1
    bins = [[] for _ in range(n)]
    for o in outcomes:
        bins[min(int(o.t / bin_s), n - 1)].append(o)
    out = {"bin_s": bin_s, "t": [round(i * bin_s, 3) for i in range(n)],
           "clusters": {c: [0] * n for c in clusters}, "failed": [0] * n, "p50_ms": [0.0] * n, "p99_ms": [0.0] * n}
    for i, group in enumerate(bins):
        lat = []
        for o in group:
            if o.succeeded:
                if o.cluster in out["clusters"]:
                    out["clusters"][o.cluster][i] += 1
                lat.append(o.dur)
            else:
                out["failed"][i] += 1
        out["p50_ms"][i] = round(percentile(lat, 0.5) * 1000, 2)
        out["p99_ms"][i] = round(percentile(lat, 0.99) * 1000, 2)
    return out
