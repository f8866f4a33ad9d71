"""A user-space TCP relay that stands in for a WAN link: it adds a one-way delay (± jitter) to
every chunk in each direction, and can blackhole (stop forwarding, keep connections open) or
refuse new connections. Settings change at run time and apply to data sent afterwards.

    relay = DelayRelay(("127.0.0.1", backend_port), delay_s=0.06)   # 120 ms RTT
    port = await relay.start()
"""
from __future__ import annotations

import asyncio
import random


class DelayRelay:
    def __init__(self, target: tuple[str, int], delay_s: float = 0.0, jitter_s: float = 0.0,
                 rng: random.Random | None = None):
        self.target = target
        self.delay_s, self.jitter_s = delay_s, jitter_s
        self.blackhole = False
        self.rng = rng or random.Random(1)
        self.server: asyncio.base_events.Server | None = None
        self.port = 0
        self.conns: set[asyncio.Task] = set()
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        self.server = await asyncio.start_server(self._accept, host, port)
        self.port = self.server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        self.reset_all()
        for task in list(self.conns):
            task.cancel()
        await asyncio.gather(*self.conns, return_exceptions=True)
        if self.server is not None:
            await self.server.wait_closed()
            self.server = None

    def reset_all(self) -> None:
        """Abort every relayed connection (both ends see a reset)."""
        for w in list(self.writers):
            w.transport.abort()

    def _one_way(self) -> float:
        return max(self.delay_s + self.rng.uniform(-self.jitter_s, self.jitter_s), 0.0)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self.conns.add(task)
        self.writers.add(writer)
        up_writer = None
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
            self.writers.add(up_writer)
            await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for w in (writer, up_writer):
                if w is not None:
                    self.writers.discard(w)
                    w.close()
            self.conns.discard(task)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()

        async def deliver():
            while True:
                at, data = await queue.get()
                wait = at - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if data is None:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()

        sender = loop.create_task(deliver())
        try:
            while True:
                data = await reader.read(65536)
                while self.blackhole:  # hold everything: the peer sees silence, not a reset
                    await asyncio.sleep(0.05)
                at = max(loop.time() + self._one_way(), getattr(queue, "last_at", 0.0))
                queue.last_at = at  # keep order even when jitter would reorder
                queue.put_nowait((at, data or None))
                if not data:
                    break
            await sender
        finally:
            sender.cancel()
