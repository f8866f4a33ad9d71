"""Retrying an exchange elsewhere: a reset, a timeout or a retried status before any response byte
sends the request to the next choice, within the retry budget, after the route's backoff; or (a route's
perTry running out, the route hedging) beside the running try.

A mixin of Exchange (which owns the state, see exchange.py).
"""
from __future__ import annotations

from ..core.choice import Reject, choose_backend
from .request import IDEMPOTENT


class Retrying:
    __slots__ = ()

    def _backoff_s(self) -> float:
        """The route's retry backoff before this retry: doubling with each, at most 10 times the first."""
        first = self.route.retry_backoff_s
        return min(first * 2 ** self.status_retries, 10 * first) if first else 0.0

    def _may_retry(self) -> bool:
        req = self.req
        return (not self.resp_started and self.kept is not None and req.method in IDEMPOTENT
                and not req.upgrade and not self.finished)

    def _retry_elsewhere(self, reason: str, status: int = 502, delay_s: float = 0.0) -> bool:
        """Reset, timeout or a retried status before any response byte: try the next choice, within
        the budget (after `delay_s`: a route's retry backoff). `status`: what the failed try counts as
        for outlier detection. Reason "hedge" (a route's perTry ran out, the route hedges): the try is
        kept running beside the next one (parked, see hedge.py) rather than dropped; it needs the request
        sent whole, and never waits on a cold start."""
        hedge = reason == "hedge"
        if not self._may_retry() or hedge and (self.upstream is None or not self.req.complete):
            return False
        ctx = self.ctx
        cluster = self.backend.cluster
        decision = choose_backend(self.route, ctx.policy, ctx.clock(), ctx.rng, self.tried | {cluster},
                                  self.service, self.affinity, self.session)
        if isinstance(decision, Reject) or hedge and decision.reason == "cold":
            return False  # nowhere else to go: the caller answers with the failure itself (or waits on)
        budget = ctx.retry_budget
        if self.retrying and not hedge:  # (a parked try keeps its share while it runs)
            budget.end_retry()
            self.retrying = False
        if not budget.start_retry():
            ctx.metrics.retries.labels("budget_exhausted").inc()
            return False
        self.tried = self.tried | {cluster}
        ctx.metrics.retries.labels(reason).inc()
        if hedge:
            self.park()
        else:
            ctx.health.on_response(cluster, status, ctx.clock())  # a 5xx counts toward outlier ejection
            self._cancel_header_timer()
            self._abort_upstream()
        self.retrying = True
        self.streaming = False
        if delay_s > 0:  # the choice is made again once the wait is over (health may change meanwhile)
            if self.counted is not None:
                self._uncount()
            deadline = self.request_deadline()
            if deadline is not None:  # the wait ends no later than the route's request timeout
                delay_s = min(delay_s, max(deadline - ctx.clock(), 0.0))
            self.conn.upstream_timer.set(delay_s, self._after_backoff)
            return True
        self._choose(decision)
        return True

    def _after_backoff(self) -> None:
        if self.finished:
            return
        deadline = self.request_deadline()
        if deadline is not None and deadline - self.ctx.clock() <= 0.001:
            self._on_header_timeout()  # the route's request timeout ran out during the wait: 504
        else:
            self._choose()
