"""Tables in anonymous shared memory that the workers of `serve --workers N` count in together: the
supervisor makes each one (a memfd, zeroed) before it starts the workers and hands them its descriptor,
so a worker that replaces one that died finds the table as it was. A table of worker regions has one
region per worker slot: a worker writes its own, reads the others', and the supervisor clears a dead
worker's. The tables: rate-limit buckets (sharedlimit.py), open connections per client address
(sharedclients.py), requests in flight per limited cluster and outlier ejections (sharedvalues.py),
probe turns and results (sharedprobes.py).
"""
from __future__ import annotations

import hashlib
import mmap
import os


def create_table(name: str, size: int) -> int:
    """A new, zeroed table of `size` bytes: its descriptor, to be passed to the workers."""
    fd = os.memfd_create(f"edge-router-{name}", 0)
    os.ftruncate(fd, size)
    return fd


def clear_region(fd: int, region: int, region_bytes: int) -> None:
    """Forget what a worker that is gone wrote in its region (the supervisor, once it has exited)."""
    os.pwrite(fd, bytes(region_bytes), region * region_bytes)


def map_regions(fd: int, region: int, region_bytes: int, what: str) -> tuple[mmap.mmap, int]:
    """A worker's map of a table of regions, and how many regions it has; ValueError when `region` is
    not one of them."""
    size = os.fstat(fd).st_size
    if size == 0 or size % region_bytes or not 0 <= region < size // region_bytes:
        raise ValueError(f"{what} table descriptor {fd} has no region {region}")
    return mmap.mmap(fd, size), size // region_bytes


def hash64(text: str) -> int:
    """A key's hash, the same in every process (Python's own hash is salted per process); never 0, which
    marks a free slot."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogateescape"), digest_size=8).digest(),
                          "little") or 1
