"""Cluster endpoint host names, resolved off the request path.

Without this, every new upstream connection to a named endpoint waits on getaddrinfo, which runs
in a small thread pool: a slow or failing resolver stalls connects to every named cluster until
their connect timeouts eject them all. Here a name is resolved once (concurrent first callers share
the lookup), refreshed in the background every REFRESH_S while it is in use, and a failed refresh
keeps the last good addresses (as Envoy's STRICT_DNS clusters keep their hosts). Each connect starts
at the next of a name's addresses and tries the others in turn (as create_connection tries every
address of a name). An IP literal is its own single address, with no lookup.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from functools import lru_cache
from typing import Awaitable, Callable

log = logging.getLogger("router.dns")

REFRESH_S = 5.0  # Envoy's default dns_refresh_rate
LOOKUP_TIMEOUT_S = 5.0
UNUSED_S = 600.0  # a name no connect asked for this long is dropped (its cluster is gone or all pooled)

Lookup = Callable[[str, int], Awaitable[list]]  # loop.getaddrinfo-like: [(family, type, proto, name, sockaddr)]


@lru_cache(maxsize=1024)
def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class DnsCache:
    def __init__(self, loop: asyncio.AbstractEventLoop, lookup: Lookup | None = None,
                 refresh_s: float = REFRESH_S, timeout_s: float = LOOKUP_TIMEOUT_S):
        self.loop = loop
        self.lookup = lookup or (lambda host, port: loop.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        self.refresh_s, self.timeout_s = refresh_s, timeout_s
        self.addresses: dict[tuple[str, int], list[str]] = {}
        self.turn: dict[tuple[str, int], int] = {}
        self.used: dict[tuple[str, int], float] = {}
        self.errors: dict[tuple[str, int], str] = {}  # the last failed lookup, while old addresses serve
        self.pending: dict[tuple[str, int], asyncio.Future] = {}
        self.task: asyncio.Task | None = None

    async def resolve(self, host: str, port: int) -> list[str]:
        """host's addresses, to try in this order (each call starts one further along, so connects
        spread over them); raises OSError (socket.gaierror) when the name has never resolved."""
        if is_ip(host):
            return [host]
        key = (host, port)
        self.used[key] = self.loop.time()
        addrs = self.addresses.get(key)
        if not addrs:
            addrs = await self._first(key)
        i = self.turn.get(key, 0) % len(addrs)
        self.turn[key] = i + 1
        return addrs[i:] + addrs[:i]

    async def _first(self, key: tuple[str, int]) -> list[str]:
        task = self.pending.get(key)
        if task is None:  # one lookup, shared by every connect waiting for it; a caller giving up
            task = self.pending[key] = self.loop.create_task(self._resolve(key))  # does not cancel it
            task.add_done_callback(lambda t: (self.pending.pop(key, None), t.cancelled() or t.exception()))
            if self.task is None:
                self.task = self.loop.create_task(self._refresh())
        return await asyncio.shield(task)

    async def _resolve(self, key: tuple[str, int]) -> list[str]:
        try:
            infos = await asyncio.wait_for(self.lookup(*key), self.timeout_s)
        except asyncio.TimeoutError:
            raise socket.gaierror(socket.EAI_AGAIN, f"name resolution of {key[0]} timed out") from None
        addrs = list(dict.fromkeys(info[4][0] for info in infos))  # in the resolver's order, once each
        if not addrs:
            raise socket.gaierror(socket.EAI_NONAME, f"{key[0]} resolved to no address")
        self.addresses[key] = addrs
        self.errors.pop(key, None)
        return addrs

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_s)  # a refresh period, not a wait on a condition
            now = self.loop.time()
            for key in list(self.addresses):
                if now - self.used.get(key, now) > UNUSED_S:
                    for table in (self.addresses, self.turn, self.used, self.errors):
                        table.pop(key, None)
                    continue
                try:
                    await self._resolve(key)
                except OSError as exc:  # keep serving the last good addresses
                    if self.errors.get(key) != str(exc):
                        log.warning("cannot resolve %s (keeping %s): %s", key[0], self.addresses[key], exc)
                    self.errors[key] = str(exc)

    def close(self) -> None:
        for task in [self.task, *self.pending.values()]:
            if task is not None:
                task.cancel()
        self.task = None

    def describe(self) -> dict:
        return {f"{host}:{port}": {"addresses": addrs, "error": self.errors.get((host, port))}
                for (host, port), addrs in self.addresses.items()}
