"""Cluster.maxRequests over the workers of `serve --workers N`: a cluster's requests in flight counted at
every worker (Envoy's circuit breakers count per Envoy, across its threads), not per worker.

Each worker counts its own requests (PolicyInputs.inflight) and publishes the count of every cluster with
a request limit in its own region of a table in anonymous shared memory (memfd) the supervisor holds: one
region per worker slot, SLOTS slots of (cluster hash, requests in flight), a cluster in the first free
slot from its hash on (a worker claims slots in its own region only, so no lock is taken). The choice
reads what the other regions publish (`get`) beside its own count. Two workers may both take a cluster's
last place at the same instant, so the limit can be passed by at most one request per other worker for as
long as those requests last; a per-worker count would pass it N times over. When a worker dies the
supervisor clears its region (its requests died with it).
"""
from __future__ import annotations

import struct

from . import sharedmem

SLOTS = 1024  # clusters a worker publishes for (16 KiB a region); more are counted by the worker alone
SLOT = struct.Struct("<Qq")  # cluster hash (0: free), requests in flight
REGION_BYTES = SLOTS * SLOT.size


def create_table(regions: int) -> int:
    """A new, zeroed table of `regions` worker regions: its descriptor, to be passed to the workers."""
    return sharedmem.create_table("inflight", regions * REGION_BYTES)


def clear_region(fd: int, region: int) -> None:
    """Forget what a worker that is gone published (the supervisor, once it has exited)."""
    sharedmem.clear_region(fd, region, REGION_BYTES)


class SharedInflight:
    """One worker's view: its own region to publish in, the others' to read (`get`, as a mapping's)."""
    __slots__ = ("map", "region", "regions", "hashes", "own")

    def __init__(self, fd: int, region: int):
        self.map, self.regions = sharedmem.map_regions(fd, region, REGION_BYTES, "in-flight")
        self.region = region
        self.hashes: dict[str, int] = {}
        self.own: dict[str, int | None] = {}  # cluster -> offset of its slot in this worker's region

    def _hash(self, cluster: str) -> int:
        h = self.hashes.get(cluster)
        if h is None:
            h = self.hashes[cluster] = sharedmem.hash64(cluster)
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

    def publish(self, cluster: str, count: int) -> None:
        """This worker now has `count` requests in flight to `cluster`."""
        off = self.own.get(cluster, -1)
        if off == -1:
            off = self.own[cluster] = self._find(self.region, self._hash(cluster), claim=True)
        if off is not None:
            SLOT.pack_into(self.map, off, self._hash(cluster), count)

    def get(self, cluster: str, default: int = 0) -> int:
        """The requests in flight to `cluster` from the other workers."""
        h, total = self._hash(cluster), default
        for region in range(self.regions):
            if region != self.region:
                off = self._find(region, h, claim=False)
                if off is not None:
                    total += SLOT.unpack_from(self.map, off)[1]
        return total

    def most(self, cluster: str) -> int:
        """The largest value the other workers publish for `cluster` (0: none)."""
        h, most = self._hash(cluster), 0
        for region in range(self.regions):
            if region != self.region:
                off = self._find(region, h, claim=False)
                if off is not None:
                    most = max(most, SLOT.unpack_from(self.map, off)[1])
        return most

    def close(self) -> None:
        self.map.close()
