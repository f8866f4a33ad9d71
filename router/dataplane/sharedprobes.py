"""Probe results shared by the workers of `serve --workers N`, so the router probes each cluster once an
interval rather than once per worker, and every worker judges a cluster's health and RTT from the same
probes (as Envoy's active health checks run once for all its worker threads).

One table in anonymous shared memory (memfd) from the supervisor: GROUPS groups of GROUP_SLOTS records, a
cluster's record in the group its key (name, endpoint, probe path) hashes to, read and written under a
POSIX record lock on the group's byte of the descriptor (released by the kernel if a worker dies). Whose
turn it is is decided by core/probeturn.py: `turn` decides and, when it is this worker's, claims in the
same locked step, so two workers never probe a cluster at once (until a claim lapses).
"""
from __future__ import annotations

import fcntl
import math
import mmap
import os
import struct

from ..core import probeturn
from ..core.probeturn import ProbeRecord
from . import sharedmem

GROUP_SLOTS = 4
GROUPS = 256  # 1,024 clusters, 192 KiB
REASON_BYTES = 120
# hash (0: free), seq, at, due, claimed until, by (the pid that claimed or published last), ok, connect_s and
# http_s (NaN: none), reason
RECORD = struct.Struct(f"<QQdddqqdd{REASON_BYTES}s")
CLAIM = struct.Struct("<dq")  # claimed until, by: at CLAIM_AT in a record
CLAIM_AT = 32
TABLE_BYTES = GROUPS * GROUP_SLOTS * RECORD.size


def create_table() -> int:
    """A new, zeroed table: its descriptor, to be passed to the workers."""
    return sharedmem.create_table("probes", TABLE_BYTES)


def probe_key(cluster) -> str:
    """A cluster's key: a reload that moves its endpoint or probe path starts a new record."""
    return f"{cluster.name}\0{cluster.endpoint}\0{cluster.probe_path}"


def _seconds(value: float) -> float | None:
    return None if math.isnan(value) else value


class SharedProbes:
    """One worker's view of the shared table."""
    __slots__ = ("fd", "map", "pid", "hashes", "on_full")

    def __init__(self, fd: int, pid: int | None = None):
        if os.fstat(fd).st_size != TABLE_BYTES:
            raise ValueError(f"probe table descriptor {fd} is not a table of {TABLE_BYTES} bytes")
        self.fd = fd
        self.map = mmap.mmap(fd, TABLE_BYTES)
        self.pid = os.getpid() if pid is None else pid
        self.hashes: dict[str, int] = {}
        self.on_full = lambda: None  # a cluster's record was evicted for another's (its group was full)

    def _place(self, key: str) -> tuple[int, int]:
        """The key's hash and group."""
        h = self.hashes.get(key)
        if h is None:
            h = self.hashes[key] = sharedmem.hash64(key)
        return h, h % GROUPS

    def _find(self, h: int, group: int, make: bool) -> tuple[int, tuple | None]:
        """The offset of the key's record in its group (the group locked) and its fields (None: new)."""
        base = group * GROUP_SLOTS * RECORD.size
        free = stalest = -1
        stalest_when = math.inf
        for i in range(GROUP_SLOTS):
            offset = base + i * RECORD.size
            fields = RECORD.unpack_from(self.map, offset)
            if fields[0] == h:
                return offset, fields
            if fields[0] == 0:
                if free < 0:
                    free = offset
            elif max(fields[3], fields[4]) < stalest_when:
                stalest, stalest_when = offset, max(fields[3], fields[4])
        if not make:
            return -1, None
        if free < 0:
            self.on_full()
            free = stalest
        RECORD.pack_into(self.map, free, h, 0, 0.0, 0.0, 0.0, 0, 0, math.nan, math.nan, b"")
        return free, None

    def turn(self, key: str, now: float, timeout_s: float) -> tuple[str, float, ProbeRecord | None]:
        """probeturn.turn on the key's record, claiming it when it is this worker's turn to probe."""
        h, group = self._place(key)
        fcntl.lockf(self.fd, fcntl.LOCK_EX, 1, group)
        try:
            offset, fields = self._find(h, group, make=True)
            record = None if fields is None else _record(fields)
            what, when = probeturn.turn(record, now)
            if what == "probe":
                CLAIM.pack_into(self.map, offset + CLAIM_AT, probeturn.claim_until(now, timeout_s), self.pid)
        finally:
            fcntl.lockf(self.fd, fcntl.LOCK_UN, 1, group)
        return what, when, record

    def publish(self, key: str, at: float, due: float, ok: bool, connect_s: float | None,
                http_s: float | None, reason: str) -> int:
        """This worker's probe result (the claim ends): its sequence number."""
        h, group = self._place(key)
        fcntl.lockf(self.fd, fcntl.LOCK_EX, 1, group)
        try:
            offset, fields = self._find(h, group, make=True)
            seq = (fields[1] if fields else 0) + 1
            RECORD.pack_into(self.map, offset, h, seq, at, due, 0.0, self.pid, int(ok),
                             math.nan if connect_s is None else connect_s, math.nan if http_s is None else http_s,
                             reason.encode("utf-8", "replace")[:REASON_BYTES])
        finally:
            fcntl.lockf(self.fd, fcntl.LOCK_UN, 1, group)
        return seq

    def release(self, key: str) -> None:
        """Give up a claim without a result (the worker could not probe: its own limits)."""
        h, group = self._place(key)
        fcntl.lockf(self.fd, fcntl.LOCK_EX, 1, group)
        try:
            offset, fields = self._find(h, group, make=False)
            if fields is not None and fields[5] == self.pid:
                CLAIM.pack_into(self.map, offset + CLAIM_AT, 0.0, self.pid)
        finally:
            fcntl.lockf(self.fd, fcntl.LOCK_UN, 1, group)

    def close(self) -> None:
        self.map.close()


def _record(fields: tuple) -> ProbeRecord:
    _, seq, at, due, claimed_until, by, ok, connect_s, http_s, reason = fields
    return ProbeRecord(seq, at, due, claimed_until, by, bool(ok), _seconds(connect_s), _seconds(http_s),
                       reason.rstrip(b"\0").decode("utf-8", "replace"))
