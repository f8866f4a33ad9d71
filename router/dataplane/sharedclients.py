"""limits.maxConnectionsPerClient over the workers of `serve --workers N`: an address's open connections
counted across all of them (as nginx's limit_conn zone in shared memory), not per worker.

Each worker keeps its own counts (ProxyContext.per_client) and publishes them in its own region of a
table in anonymous shared memory (memfd) that the supervisor holds: one region per worker slot, each
REGION_GROUPS groups of GROUP_SLOTS (address hash, connections). A new connection is admitted when the
worker's own count plus what the other regions publish for the address is under the limit; the check
and the worker's new count are one step under a POSIX record lock on the group's byte, so two workers
cannot both take an address's last place. When a worker dies the supervisor clears its region (its
connections died with it) before a replacement takes the slot. An address finding its group of the
worker's region full (eight other addresses with connections open there) is counted by the worker alone
until a place frees: the limit then holds per worker for it.
"""
from __future__ import annotations

import fcntl
import struct

from . import sharedmem

GROUP_SLOTS = 8
REGION_GROUPS = 4096  # 32,768 addresses with open connections per worker, 512 KiB
GROUP = struct.Struct("<" + "QQ" * GROUP_SLOTS)  # (address hash, 0: free; its open connections) per slot
SLOT = struct.Struct("<QQ")
REGION_BYTES = REGION_GROUPS * GROUP.size


def create_table(regions: int) -> int:
    """A new, zeroed table of `regions` worker regions: its descriptor, to be passed to the workers."""
    return sharedmem.create_table("client-connections", regions * REGION_BYTES)


def clear_region(fd: int, region: int) -> None:
    """Forget what a worker that is gone published (the supervisor, once it has exited)."""
    sharedmem.clear_region(fd, region, REGION_BYTES)


class SharedClientCounts:
    """One worker's view: its own region to publish in, the others' to read."""
    __slots__ = ("fd", "map", "region", "regions", "on_full")

    def __init__(self, fd: int, region: int):
        self.map, self.regions = sharedmem.map_regions(fd, region, REGION_BYTES, "client-connection")
        self.fd, self.region = fd, region
        self.on_full = lambda: None  # an address found its group of this worker's region full

    def publish(self, address: str, held: int, limit: int | None) -> bool:
        """The worker's count for `address` becomes `held` (it holds `held - 1` before a new connection);
        with `limit`, only if the address's total over every worker stays within it: False (nothing
        changed) when the others' connections and `held` would pass it."""
        h = sharedmem.hash64(address)
        group = h % REGION_GROUPS
        fcntl.lockf(self.fd, fcntl.LOCK_EX, 1, group)
        try:
            mine = free = None
            others = 0
            for region in range(self.regions):
                base = region * REGION_BYTES + group * GROUP.size
                fields = GROUP.unpack_from(self.map, base)  # a used slot's count is never 0, a hash never is
                if region == self.region:
                    if h in fields:
                        mine = base + fields.index(h) * 8
                    elif 0 in fields:
                        free = base + fields.index(0) * 8
                elif h in fields:
                    others += fields[fields.index(h) + 1]
            if limit is not None and held + others > limit:
                return False
            if mine is None:
                mine = free  # none free: this worker counts the address alone
                if mine is None and held > 0:
                    self.on_full()
            if mine is not None:
                SLOT.pack_into(self.map, mine, h if held > 0 else 0, held)  # (0 connections: the slot is free)
            return True
        finally:
            fcntl.lockf(self.fd, fcntl.LOCK_UN, 1, group)

    def close(self) -> None:
        self.map.close()
