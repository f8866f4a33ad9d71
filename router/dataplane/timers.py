"""LazyTimer: a deadline that costs a float store per request, not a timer per request.

Moving the deadline later only records it; the armed handle, when it fires early,
re-arms itself for the remaining time. Only a deadline moved earlier re-arms at once.
"""
from __future__ import annotations

import asyncio
from typing import Callable


class LazyTimer:
    __slots__ = ("loop", "deadline", "callback", "handle", "armed_at")

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.deadline = 0.0  # 0: no deadline
        self.callback: Callable[[], None] | None = None
        self.handle: asyncio.TimerHandle | None = None
        self.armed_at = 0.0

    def set(self, delay_s: float, callback: Callable[[], None]) -> None:
        self.deadline = self.loop.time() + delay_s
        self.callback = callback
        if self.handle is not None and self.armed_at > self.deadline:
            self.handle.cancel()
            self.handle = None
        if self.handle is None:
            self._arm()

    def clear(self) -> None:
        self.deadline = 0.0
        self.callback = None

    def cancel(self) -> None:
        self.clear()
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None

    @property
    def active(self) -> bool:
        return self.deadline != 0.0

    def _arm(self) -> None:
        self.armed_at = self.deadline
        self.handle = self.loop.call_at(self.deadline, self._fire)

    def _fire(self) -> None:
        self.handle = None
        if not self.deadline:  # cleared (callers may also just zero `deadline`)
            return
        if self.loop.time() < self.deadline:
            self._arm()
            return
        callback = self.callback
        self.clear()
        callback()
