"""Access log: one JSON line per answered request, written off the event loop.

The request path only appends a tuple to a list (no formatting, no I/O). Every FLUSH_S the batch
goes to a writer thread, which formats and writes it, so a slow disk or a full stdout pipe never
stalls the loop. While the writer is behind, lines wait in memory up to MAX_PENDING; past that
they are dropped and counted (router_access_log_dropped_total), never blocking requests.
"""
from __future__ import annotations

import asyncio
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

FLUSH_S = 0.1
MAX_PENDING = 100_000


_quote = json.encoder.encode_basestring  # a JSON string literal, escaped (the C encoder)
_LINE = ('{"time":"%s.%03dZ","client":%s,"method":%s,"host":%s,"path":%s,"status":%d,"cluster":%s,"route":%s,'
         '"duration_ms":%.3f,"reason":%s,"request_id":%s,"tries":%d,"bytes_received":%d,"bytes_sent":%d,'
         '"upstream_ms":%s,"protocol":"HTTP/%s"}\n')


def format_lines(batch: list[tuple]) -> bytes:
    """One JSON object per record, keys in _LINE's order (a line format, not json.dumps of a dict: 2.6
    instead of 6.7 us a line). Method and path bytes are shown as Latin-1 characters."""
    out = []
    second, stamp = -1, ""
    for (ts, client, method, host, path, status, cluster, route, duration_s, reason, request_id, tries, received, sent,
         upstream_s, version) in batch:
        if int(ts) != second:
            second = int(ts)
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        out.append(_LINE % (stamp, int(ts % 1 * 1000), _quote(client), _quote(method.decode("latin-1")), _quote(host),
                            _quote(path.decode("latin-1")), status, _quote(cluster), _quote(route), duration_s * 1000,
                            _quote(reason), _quote(request_id.decode("latin-1")), tries, received, sent,
                            "null" if upstream_s is None else "%.3f" % (upstream_s * 1000), version))
    return "".join(out).encode("utf-8", "replace")


class AccessLog:
    def __init__(self, loop: asyncio.AbstractEventLoop, path: str, on_drop: Callable[[int], None] = lambda n: None,
                 max_pending: int = MAX_PENDING):
        self.loop, self.path, self.on_drop, self.max_pending = loop, path, on_drop, max_pending
        self.fh = sys.stdout.buffer if path == "-" else open(path, "ab")  # noqa: SIM115 - closed in close()
        self.pending: list[tuple] = []
        self.writing: asyncio.Future | None = None  # the batch the writer thread has
        self.handle: asyncio.TimerHandle | None = None
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="access-log")

    def request(self, client: str, req, status: int, cluster: str, duration_s: float, reason: str,
                route: str = "-", tries: int = 0, sent: int = 0, upstream_s: float | None = None,
                http2: bool = False) -> None:
        """An answered request (a dataplane Request: as much of it as was read); `tries`: how many times it
        was sent to a cluster; `sent`: response body bytes written; `upstream_s`: from the answering try's
        send to its response head (None when no cluster answered); `http2`: it came as an HTTP/2 stream."""
        self.log((time.time(), client, req.method, req.facts.get("host", ""), req.url, status, cluster, route,
                  duration_s, reason, req.request_id, tries, req.body_len, sent, upstream_s,
                  "2" if http2 else req.version))

    def log(self, record: tuple) -> None:
        """Hot path: `record` is (time as epoch seconds, client, method bytes, host, path bytes, status,
        cluster, route, duration in seconds, reason, request id bytes, tries, request body bytes, response
        body bytes, upstream seconds or None, HTTP version as "1.1", "1.0" or "2")."""
        if len(self.pending) >= self.max_pending:
            self.on_drop(1)
            return
        self.pending.append(record)
        if self.handle is None and not self.writing:
            self.handle = self.loop.call_later(FLUSH_S, self._flush)

    def _flush(self) -> None:
        self.handle = None
        if self.writing or not self.pending:
            return
        batch, self.pending = self.pending, []
        self.writing = self.loop.run_in_executor(self.executor, self._write, batch)
        self.writing.add_done_callback(lambda fut: self._written(fut, len(batch)))

    def _write(self, batch: list[tuple]) -> None:
        self.fh.write(format_lines(batch))
        self.fh.flush()

    def _written(self, fut: asyncio.Future, lines: int) -> None:
        self.writing = None
        if fut.cancelled() or fut.exception() is not None:  # a full disk: those lines are lost, counted
            self.on_drop(lines)
        if self.pending and self.handle is None:
            self.handle = self.loop.call_later(FLUSH_S, self._flush)

    async def close(self) -> None:
        """Write what is pending, then close the file."""
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
        if self.writing is not None:
            await asyncio.wait([self.writing])
        if self.pending:
            batch, self.pending = self.pending, []
            await self.loop.run_in_executor(self.executor, self._write, batch)
        self.executor.shutdown(wait=True)
        if self.fh is not sys.stdout.buffer:
            self.fh.close()
