"""Rate-limit buckets shared by the workers of `serve --workers N`, so a route admits its rate in total
(as nginx's limit_req zone in shared memory, and Envoy's local rate limit shared by its worker threads).

The supervisor makes one table in anonymous shared memory (memfd) and hands its descriptor to every
worker; a worker that replaces one that died finds the buckets where they were. The table is a fixed
number of groups of GROUP_SLOTS buckets; a bucket lives in the group its key's hash names and holds
(key hash, route tag, tokens, when counted). The route tag names the route and its limit (name, rate,
burst, key kind): a reload that keeps them keeps the buckets, a changed limit starts new ones. A new key
takes a free slot of its group, or the slot used longest ago (it restarts full, as a key unseen that long
would be once refilled). A group is read and written under a POSIX record lock on its byte of the
descriptor: one lock per group, held for a few microseconds, released by the kernel if a worker dies.
The bucket arithmetic is the same pure `draw` as a single process's RateLimiter.
"""
from __future__ import annotations

import fcntl
import mmap
import os
import struct

from ..core.ratelimit import draw
from . import sharedmem

GROUP_SLOTS = 8
GROUPS = 16384  # 131,072 buckets in all, 4 MiB
SLOT = struct.Struct("<QQdd")  # key hash (0: free), route tag, tokens, when counted (monotonic clock)
GROUP = struct.Struct("<" + "QQdd" * GROUP_SLOTS)
TABLE_BYTES = GROUPS * GROUP.size


def create_table() -> int:
    """A new, zeroed table: its descriptor, to be passed to the workers."""
    return sharedmem.create_table("rate-limits", TABLE_BYTES)


class SharedBuckets:
    """One worker's view of the shared table."""
    __slots__ = ("fd", "map", "words", "on_full")

    def __init__(self, fd: int):
        if os.fstat(fd).st_size != TABLE_BYTES:
            raise ValueError(f"rate-limit table descriptor {fd} is not a table of {TABLE_BYTES} bytes")
        self.fd = fd
        self.map = mmap.mmap(fd, TABLE_BYTES)
        self.words = memoryview(self.map).cast("Q")
        self.on_full = lambda: None  # a live bucket was evicted for a new key (its group was full)

    def limiter(self, route_name: str, limit) -> SharedRateLimiter:
        return SharedRateLimiter(self, route_name, limit.rate, limit.burst, limit.key)

    def count(self, tag: int) -> int:
        """How many buckets a route tag holds (a scan of the table, for /debug/state)."""
        return self.words[1::4].tolist().count(tag)

    def close(self) -> None:
        self.words.release()
        self.map.close()


class SharedRateLimiter:
    """A route's buckets in the shared table; `take` as RateLimiter's."""
    __slots__ = ("table", "rate", "burst", "tag", "prefix")

    def __init__(self, table: SharedBuckets, route_name: str, rate: float, burst: int, kind: str):
        self.table, self.rate, self.burst = table, rate, burst
        self.prefix = f"{route_name}\0{rate!r}\0{burst}\0{kind}\0"
        self.tag = sharedmem.hash64(self.prefix)

    def take(self, key: str, now: float) -> float:
        """0.0 when a token was taken (the request may go), else the seconds until the next token."""
        table, tag = self.table, self.tag
        h = sharedmem.hash64(self.prefix + key)
        group = h % GROUPS
        base = group * GROUP.size
        fcntl.lockf(table.fd, fcntl.LOCK_EX, 1, group)
        try:
            fields = GROUP.unpack_from(table.map, base)
            slot = free = oldest = -1
            oldest_when = float("inf")
            for i in range(0, 4 * GROUP_SLOTS, 4):
                if fields[i] == h and fields[i + 1] == tag:
                    slot = i
                    break
                if fields[i] == 0:
                    if free < 0:
                        free = i
                elif fields[i + 3] < oldest_when:
                    oldest, oldest_when = i, fields[i + 3]
            if slot >= 0:
                tokens, when = fields[slot + 2], fields[slot + 3]
                elapsed = now - when
                if now < when:  # another worker counted after this request read the clock
                    now = when
            else:  # new to the table (or evicted since): a full bucket
                slot = free if free >= 0 else oldest
                if free < 0:
                    table.on_full()
                tokens, elapsed = float(self.burst), 0.0
            tokens, wait = draw(tokens, elapsed, self.rate, self.burst)
            SLOT.pack_into(table.map, base + slot * 8, h, tag, tokens, now)
        finally:
            fcntl.lockf(table.fd, fcntl.LOCK_UN, 1, group)
        return wait

    def count(self) -> int:
        """How many buckets (keys) the route holds in the table."""
        return self.table.count(self.tag)
