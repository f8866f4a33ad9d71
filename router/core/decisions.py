"""What the choice decides for one request: forward to a backend, or answer itself."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .snapshot import RouteBackend


@dataclass(slots=True)
class Forward:
    # Not frozen: a frozen dataclass costs ~1.3 us per instance (object.__setattr__ per field). Treated as
    # immutable all the same: each Route keeps one plain ("weighted") Forward per live backend, and the
    # choice hands those out instead of building one per request.
    backend: RouteBackend
    reason: str = "weighted"  # weighted | warm-preferred | failover | affinity | spillover | panic | cold
    expected_s: float | None = None
    wake: tuple[str, ...] = ()


@dataclass(slots=True)
class Reject:
    status: int
    reason: str
    retry_after_s: float | None = None
