"""Retry budget (Envoy/Linkerd style): retries in flight may not exceed `ratio` of the
requests in flight, with a floor of `min_retries`, so retries cannot multiply an outage."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RetryBudget:
    ratio: float = 0.2
    min_retries: int = 3
    active_requests: int = 0
    active_retries: int = 0

    def allows(self) -> bool:
        return self.active_retries < max(self.min_retries, self.ratio * self.active_requests)

    def start_request(self) -> None:
        self.active_requests += 1

    def end_request(self) -> None:
        self.active_requests -= 1

    def start_retry(self) -> bool:
        if not self.allows():
            return False
        self.active_retries += 1
        return True

    def end_retry(self) -> None:
        self.active_retries -= 1
