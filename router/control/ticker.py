"""TickLoop: the shape of the control loops that decide on a timer (keep-warm, preconnect).

`tick()` decides with a pure policy and starts the I/O it asks for as tasks (`spawn`); the loop
calls it every `tick_s` (± `jitter`, so many routers do not act in step), survives a failing tick,
and `stop()` cancels the loop and every task it started.
"""
from __future__ import annotations

import abc
import asyncio
import logging
import random
from typing import Coroutine

log = logging.getLogger("router.control")


class TickLoop(abc.ABC):
    name = "control"

    def __init__(self, tick_s: float, jitter: float = 0.0, rng: random.Random | None = None):
        self.tick_s = tick_s
        self.jitter = jitter
        self.rng = rng or random.Random()
        self.task: asyncio.Task | None = None
        self.tasks: set[asyncio.Task] = set()

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.task = loop.create_task(self._run())

    def stop(self) -> None:
        for task in [self.task, *self.tasks]:
            if task is not None:
                task.cancel()

    def spawn(self, coro: Coroutine) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    @abc.abstractmethod
    def tick(self):
        """One decision and the I/O it starts; what it returns is for tests."""

    async def _run(self) -> None:
        while True:
            try:
                self.tick()
            except Exception:  # a bug here must not stop the loop for good
                log.exception("%s tick failed", self.name)
            spread = self.rng.uniform(1 - self.jitter, 1 + self.jitter) if self.jitter else 1.0
            await asyncio.sleep(self.tick_s * spread)
