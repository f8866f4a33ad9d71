"""A user-space TCP relay that stands in for a WAN link, with Toxiproxy's set of faults.

Every chunk is delivered after a one-way delay (± jitter) in each direction, in order. Faults
("toxics") change at run time and apply to data relayed afterwards:

    latency      extra one-way delay ± jitter on top of the link's own
    bandwidth    bytes per second per direction
    blackhole    data stops in both directions; connections stay open (the peer sees silence)
    reset_peer   every connection is reset (RST): at once, or a timeout after it was accepted
    slow_close   a close (FIN) is passed on only after a delay
    slicer       data is cut into small slices sent a little apart
    limit_data   a connection is closed after N bytes in one direction (truncation)
    refuse       the listener is closed: connects are refused (a dead cluster)

    relay = DelayRelay(("127.0.0.1", ingress_port), delay_s=0.06)   # 120 ms RTT
    port = await relay.start()
    relay.toxics["limit_data"] = LimitData(bytes=100)
"""
from __future__ import annotations

import asyncio
import random
import socket
import struct
from dataclasses import dataclass


@dataclass
class Latency:
    delay_s: float
    jitter_s: float = 0.0


@dataclass
class Bandwidth:
    bytes_per_s: float


@dataclass
class Slicer:
    average_size: int = 64
    size_variation: int = 32
    delay_s: float = 0.001


@dataclass
class LimitData:
    bytes: int
    direction: str = "down"  # down: towards the client (responses); up: towards the cluster


@dataclass
class ResetPeer:
    timeout_s: float = 0.0  # 0: at once; else each connection is reset this long after it is accepted
    toxicity: float = 1.0  # below 1: each chunk sent towards the cluster triggers a reset with this
    #                        probability, `timeout_s` later (some requests cut after they went out)


@dataclass
class SlowClose:
    delay_s: float


TOXICS = ("latency", "bandwidth", "blackhole", "reset_peer", "slow_close", "slicer", "limit_data")


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with an RST rather than a FIN."""
    sock = writer.get_extra_info("socket")
    try:
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    writer.transport.abort()


class DelayRelay:
    def __init__(self, target: tuple[str, int], delay_s: float = 0.0, jitter_s: float = 0.0,
                 rng: random.Random | None = None):
        self.target = target
        self.delay_s, self.jitter_s = delay_s, jitter_s
        self.toxics: dict[str, object] = {}
        self.rng = rng or random.Random(1)
        self.server: asyncio.base_events.Server | None = None
        self.host, self.port = "127.0.0.1", 0
        self.conns: set[asyncio.Task] = set()
        self.writers: set[asyncio.StreamWriter] = set()

    # blackhole as a plain attribute keeps older callers working
    @property
    def blackhole(self) -> bool:
        return "blackhole" in self.toxics

    @blackhole.setter
    def blackhole(self, on: bool) -> None:
        if on:
            self.toxics["blackhole"] = True
        else:
            self.toxics.pop("blackhole", None)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        self.host = host
        self.server = await asyncio.start_server(self._accept, host, port or self.port)
        self.port = self.server.sockets[0].getsockname()[1]
        return self.port

    async def refuse(self) -> None:
        """Close the listener and reset every connection: the link is down."""
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None
        self.reset_all()

    async def accept_again(self) -> None:
        if self.server is None:
            await self.start(self.host, self.port)

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

    def set_toxic(self, name: str, value) -> None:
        if name not in TOXICS:
            raise ValueError(f"unknown toxic {name!r} (known: {', '.join(TOXICS)})")
        self.toxics[name] = value
        if name == "reset_peer" and not getattr(value, "timeout_s", 0):
            self.reset_all()

    def clear_toxic(self, name: str) -> None:
        self.toxics.pop(name, None)

    def reset_all(self) -> None:
        """Abort every relayed connection with an RST (both ends see a reset)."""
        for w in list(self.writers):
            reset(w)

    def _one_way(self) -> float:
        delay = self.delay_s + self.rng.uniform(-self.jitter_s, self.jitter_s)
        extra = self.toxics.get("latency")
        if extra is not None:
            delay += extra.delay_s + self.rng.uniform(-extra.jitter_s, extra.jitter_s)
        return max(delay, 0.0)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        rp = self.toxics.get("reset_peer")
        if rp is not None and rp.toxicity >= 1 and not rp.timeout_s:
            reset(writer)
            return
        self.conns.add(task)
        self.writers.add(writer)
        up_writer = None
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
            self.writers.add(up_writer)
            if rp is not None and rp.toxicity >= 1:
                asyncio.get_running_loop().call_later(rp.timeout_s, lambda: (reset(writer), reset(up_writer)))

            def cut() -> None:
                reset(writer)
                reset(up_writer)
            pumps = [asyncio.ensure_future(self._pump(reader, up_writer, "up", cut)),
                     asyncio.ensure_future(self._pump(up_reader, writer, "down", cut))]
            try:
                done, _ = await asyncio.wait(pumps, return_when=asyncio.FIRST_EXCEPTION)
                for p in done:
                    if p.exception() is not None and isinstance(p.exception(), _Cut):
                        for w in (writer, up_writer):
                            w.close()
                await asyncio.gather(*pumps, return_exceptions=True)
            finally:
                for p in pumps:
                    p.cancel()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for w in (writer, up_writer):
                if w is not None:
                    self.writers.discard(w)
                    w.close()
            self.conns.discard(task)

    def _slices(self, data: bytes) -> list[bytes]:
        slicer = self.toxics.get("slicer")
        if slicer is None or len(data) <= slicer.average_size:
            return [data]
        out, i = [], 0
        while i < len(data):
            size = max(1, slicer.average_size + self.rng.randint(-slicer.size_variation, slicer.size_variation))
            out.append(data[i:i + size])
            i += size
        return out

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: str,
                    cut=None) -> None:
        queue: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        passed = 0
        last_at = 0.0

        async def deliver():
            while True:
                at, data = await queue.get()
                wait = at - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if data is None or data is _CUT:
                    slow = self.toxics.get("slow_close")
                    if slow is not None:
                        await asyncio.sleep(slow.delay_s)
                    if data is _CUT:
                        raise _Cut()
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
                    await asyncio.sleep(0.02)
                rp = self.toxics.get("reset_peer")
                if (data and direction == "up" and rp is not None and rp.toxicity < 1 and cut is not None
                        and self.rng.random() < rp.toxicity):
                    loop.call_later(rp.timeout_s, cut)
                limit = self.toxics.get("limit_data")
                cut_here = False
                if data and limit is not None and limit.direction == direction:
                    room = max(limit.bytes - passed, 0)
                    if len(data) >= room:
                        data, cut_here = data[:room], True
                passed += len(data)
                now = loop.time()
                pieces = self._slices(data) if data else ([] if cut_here else [None])
                slicer = self.toxics.get("slicer")
                bandwidth = self.toxics.get("bandwidth")
                for n, piece in enumerate(pieces):
                    at = max(now + self._one_way(), last_at)  # keep order even when jitter would reorder
                    if slicer is not None and n:
                        at = last_at + slicer.delay_s
                    if bandwidth is not None and piece:
                        at = max(at, last_at) + len(piece) / bandwidth.bytes_per_s
                    last_at = at
                    queue.put_nowait((at, piece))
                if cut_here:
                    queue.put_nowait((last_at, _CUT))
                    break
                if not data:
                    break
            await sender
        finally:
            sender.cancel()


class _Cut(Exception):
    """limit_data reached: the connection is closed."""


_CUT = object()
