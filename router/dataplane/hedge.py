"""Hedging (a route's `timeouts.hedge`, Envoy's hedge_on_per_try_timeout): when a try's perTry runs
out, it is kept and the next choice raced against it; the first response head wins, the other
tries are closed.

A mixin of Exchange (exchange.py), like ResponseRelay. The exchange's own fields describe its current
(newest) try; an earlier try waits as a ParkedTry, which its upstream connection reports to until it
answers (the exchange adopts it and drops the rest), fails (dropped, counted against its cluster), or
the exchange ends (dropped). A current try that fails while tries are parked gives way to the newest
of them instead of going elsewhere or answering 502.
"""
from __future__ import annotations

import asyncio


class ParkedTry:
    """An earlier try of a hedged request: its connection's events come here."""
    __slots__ = ("exchange", "conn", "ctx", "upstream", "backend", "decision", "counted", "sent_at", "retrying")
    resp_started = False  # read by the upstream connection: no response of this try has gone out

    def __init__(self, exchange) -> None:
        self.exchange, self.conn, self.ctx = exchange, exchange.conn, exchange.ctx
        self.upstream, self.backend, self.decision = exchange.upstream, exchange.backend, exchange.decision
        self.counted, self.sent_at, self.retrying = exchange.counted, exchange.sent_at, exchange.retrying
        self.upstream.exchange = self

    def on_response_head(self, status: int, headers: list, upgrade: bool) -> None:
        if 100 <= status < 200 and status != 101:
            return  # interim: the answer follows
        self.exchange.adopt(self, status, headers, upgrade)

    def on_response_end(self) -> None:  # a message end without a head: broken
        self.exchange.drop_parked(self, 502)

    def on_upstream_lost(self, exc) -> None:
        self.exchange.drop_parked(self, 502)

    def on_upstream_error(self, reason: str) -> None:
        self.exchange.drop_parked(self, 502)

    def on_upstream_pause_writing(self) -> None:
        pass  # the request was sent whole before the try was parked

    on_upstream_resume_writing = on_upstream_pause_writing


class Hedging:
    __slots__ = ()

    def park(self) -> None:
        """Keep the current try running as a ParkedTry (its in-flight place and share of the retry budget
        go with it); the exchange's fields are then free for the next try, the latest."""
        if self.parked is None:
            self.parked = []
        self.parked.append(ParkedTry(self))
        self.upstream = self.counted = None
        self.retrying = self.resumed = False

    def adopt(self, parked: ParkedTry, status: int, headers: list, upgrade: bool) -> None:
        """A parked try answered first: it becomes the exchange's try, the others are dropped."""
        if self.finished or self.resp_started:
            self.drop_parked(parked)
            return
        self._drop_current()
        self._resume(parked)
        self.on_response_head(status, headers, upgrade)  # drops the tries still parked

    def fall_back(self, status: int | None) -> bool:
        """The current try failed before its response head (`status`: what it counts as for its
        cluster's health, None when already counted): when a try is parked, the newest one is waited
        for instead."""
        if not self.parked or self.finished or self.resp_started:
            return False
        ctx = self.ctx
        if status is not None and self.backend is not None:
            ctx.health.on_response(self.backend.cluster, status, ctx.clock())
        self._drop_current()
        self._resume(self.parked[-1])
        self.conn.upstream_timer.set(max(self._header_wait_left(), 0.001), self._on_header_timeout)
        return True

    def drop_parked(self, parked: ParkedTry, status: int | None = None) -> None:
        """A parked try lost (closed), or failed (`status` counts against its cluster)."""
        if self.parked is None or parked not in self.parked:
            return
        self.parked.remove(parked)
        ctx = self.ctx
        up = parked.upstream
        up.exchange = None
        up.abort()
        if parked.counted is not None:
            ctx.count_finish(self.service, parked.counted)
        if parked.retrying:
            ctx.retry_budget.end_retry()
        if status is not None:
            ctx.health.on_response(parked.backend.cluster, status, ctx.clock())

    def drop_all_parked(self) -> None:
        for parked in list(self.parked):
            self.drop_parked(parked)

    def _drop_current(self) -> None:
        """The current try loses: its connect is called off or its connection closed."""
        if self.task is not None:
            if self.task is not asyncio.current_task():  # (its own failure can end the try from inside it)
                self.task.cancel()
            self.task = None
        self._cancel_header_timer()
        self._abort_upstream()
        self._uncount()
        if self.retrying:
            self.retrying = False
            self.ctx.retry_budget.end_retry()

    def _resume(self, parked: ParkedTry) -> None:
        self.parked.remove(parked)
        self.upstream, self.backend, self.decision = parked.upstream, parked.backend, parked.decision
        self.counted, self.sent_at, self.retrying = parked.counted, parked.sent_at, parked.retrying
        self.upstream.exchange = self
        self.streaming = True
        self.resumed = True  # an earlier try is the exchange's again
