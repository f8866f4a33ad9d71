"""Each worker's value per key, for the other workers of `serve --workers N` to read: a table in anonymous
shared memory (memfd) the supervisor holds, one region per worker slot, SLOTS slots of (key hash, value), a
key in the first free slot from its hash on (a worker claims slots in its own region only, so no lock is
taken). When a worker dies the supervisor clears its region. Two tables are of this kind:

- requests in flight per cluster with a maxRequests (Envoy's circuit breakers count per Envoy, across its
  threads): each worker publishes its own count, and the choice adds what the others publish (`get`) to it.
  Two workers may both take a cluster's last place at the same instant, so the limit can be passed by at
  most one request per other worker for as long as those requests last; a per-worker count would pass it N
  times over.
- outlier ejections (control/ejections.py): until when a worker ejected a cluster, the others taking up
  the latest (`most`).
"""
from __future__ import annotations

import struct

from . import sharedmem

SLOTS = 1024  # keys a worker publishes (16 KiB a region); more are kept by the worker alone
SLOT = struct.Struct("<Qq")  # key hash (0: free), value
REGION_BYTES = SLOTS * SLOT.size


def create_table(regions: int) -> int:
    """A new, zeroed table of `regions` worker regions: its descriptor, to be passed to the workers."""
    return sharedmem.create_table("values", regions * REGION_BYTES)


def clear_region(fd: int, region: int) -> None:
    """Forget what a worker that is gone published (the supervisor, once it has exited)."""
    sharedmem.clear_region(fd, region, REGION_BYTES)


class SharedValues:
    """One worker's view: its own region to publish in, the others' to read (`get`, as a mapping's)."""
    __slots__ = ("map", "region", "regions", "hashes", "own", "on_full")

    def __init__(self, fd: int, region: int):
        self.map, self.regions = sharedmem.map_regions(fd, region, REGION_BYTES, "shared-values")
        self.region = region
        self.hashes: dict[str, int] = {}
        self.own: dict[str, int | None] = {}  # key -> offset of its slot in this worker's region
        self.on_full = lambda: None  # a key found no slot left in this worker's region

    def _hash(self, key: str) -> int:
        h = self.hashes.get(key)
        if h is None:
            h = self.hashes[key] = sharedmem.hash64(key)
        return h

    def _find(self, region: int, h: int, claim: bool) -> int | None:
        """The offset of `h`'s slot in `region` (with `claim`, the first free one is taken for it)."""
        base = region * REGION_BYTES
        for i in range(SLOTS):
            off = base + ((h + i) % SLOTS) * SLOT.size
            found = SLOT.unpack_from(self.map, off)[0]
            if found == h:
                return off
            if found == 0:
                if not claim:
                    return None
                SLOT.pack_into(self.map, off, h, 0)
                return off
        return None

    def publish(self, key: str, value: int) -> None:
        """This worker's value for `key` is now `value`."""
        off = self.own.get(key, -1)
        if off == -1:
            off = self.own[key] = self._find(self.region, self._hash(key), claim=True)
            if off is None:
                self.on_full()
        if off is not None:
            SLOT.pack_into(self.map, off, self._hash(key), value)

    def _others(self, key: str):
        """The values the other workers publish for `key`."""
        h = self._hash(key)
        for region in range(self.regions):
            if region != self.region:
                off = self._find(region, h, claim=False)
                if off is not None:
                    yield SLOT.unpack_from(self.map, off)[1]

    def get(self, key: str, default: int = 0) -> int:
        """The sum of the other workers' values for `key` (their requests in flight to a cluster). On the
        request path (each choice of a limited cluster): a plain loop, a fifth faster than _others()."""
        h, total = self._hash(key), default
        for region in range(self.regions):
            if region != self.region:
                off = self._find(region, h, claim=False)
                if off is not None:
                    total += SLOT.unpack_from(self.map, off)[1]
        return total

    def values_elsewhere(self, key: str) -> list[int]:
        """Each other worker's value for `key` (those that published one)."""
        return list(self._others(key))

    def most(self, key: str) -> int:
        """The largest value the other workers publish for `key` (0: none)."""
        return max(self._others(key), default=0)

    def close(self) -> None:
        self.map.close()
