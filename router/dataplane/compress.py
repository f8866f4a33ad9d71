"""gzip for responses (Router `compression`): which responses, and the streaming compressor.

A response is compressible when the router may change its encoding at all: a status that carries a
whole representation (2xx other than 204 and 206, or an error page: 403, 404, 410, 500..504), a listed
content type, no Content-Encoding of its own, no `Cache-Control: no-transform`, no Content-Range, and a
Content-Length (when given) of at least `minLength`. Such a response gets `Vary: Accept-Encoding`
whatever the client accepts (a cache must not hand the gzip copy to a client that did not ask for it);
it is compressed when the request's Accept-Encoding takes gzip. `plan()` is pure: headers in, a
decision out.

The compressor flushes after every piece of body it is given (Z_SYNC_FLUSH), so the router never holds
back bytes a cluster has sent (server-sent events and streamed JSON keep their timing), and keeps a small
window (Envoy's defaults: 4 KiB window, memory level 5: about 40 KiB per response being compressed).
"""
from __future__ import annotations

import zlib

from ..config.model import Compression

_COMPRESSIBLE_STATUS = frozenset((200, 201, 202, 203, 403, 404, 410, 500, 501, 502, 503, 504))
_LOOKED_AT = frozenset((b"content-type", b"content-encoding", b"cache-control", b"content-range", b"content-length",
                        b"etag", b"vary"))
WINDOW_BITS = 12
MEMORY_LEVEL = 5


def accepts_gzip(request_headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether Accept-Encoding takes gzip (RFC 9110 12.5.3): `gzip` (or `x-gzip`) with a q above 0, or `*`
    with a q above 0 and no explicit gzip entry."""
    gzip_q = star_q = None
    for name, value in request_headers:
        if name.lower() != b"accept-encoding":
            continue
        for item in value.split(b","):
            coding, _, params = item.partition(b";")
            coding = coding.strip(b" \t").lower()
            q = _q_value(params)
            if coding in (b"gzip", b"x-gzip"):
                gzip_q = q if gzip_q is None else max(gzip_q, q)
            elif coding == b"*":
                star_q = q
    if gzip_q is not None:
        return gzip_q > 0
    return star_q is not None and star_q > 0


def _q_value(params: bytes) -> float:
    for param in params.split(b";"):
        key, _, value = param.partition(b"=")
        if key.strip(b" \t").lower() == b"q":
            try:
                q = float(value.strip(b" \t"))
            except ValueError:
                return 0.0  # a malformed weight takes nothing
            return q if 0.0 <= q <= 1.0 else 0.0
    return 1.0


class Plan:
    """What the router does with one compressible response head: `gzip` (compress it), the Vary value to
    send, and the ETag to send in place of the upstream's (made weak when compressing; None: it had none)."""
    __slots__ = ("gzip", "vary", "etag")

    def __init__(self, gzip: bool, vary: bytes, etag: bytes | None):
        self.gzip, self.vary, self.etag = gzip, vary, etag

    def head_lines(self) -> bytes:
        """The header lines the plan writes (the upstream's Vary and ETag are left out of the head)."""
        lines = b"Vary: " + self.vary + b"\r\n"
        if self.etag is not None:
            lines += b"ETag: " + self.etag + b"\r\n"
        if self.gzip:
            lines += b"Content-Encoding: gzip\r\n"
        return lines


def plan(settings: Compression, status: int, response_headers: list[tuple[bytes, bytes]],
         request_headers: list[tuple[bytes, bytes]]) -> Plan | None:
    """None when the response is not compressible (left exactly as it is); else the plan."""
    if status not in _COMPRESSIBLE_STATUS:
        return None
    seen: dict[bytes, bytes] = {}
    for name, value in response_headers:
        lname = name.lower()
        if lname in _LOOKED_AT:
            seen[lname] = seen[lname] + b", " + value if lname in seen and lname == b"vary" else value
    if b"content-encoding" in seen or b"content-range" in seen:
        return None
    if b"no-transform" in seen.get(b"cache-control", b"").lower():
        return None
    media = seen.get(b"content-type", b"").partition(b";")[0].strip(b" \t").lower()
    if media.decode("latin-1") not in settings.types:
        return None
    length = seen.get(b"content-length")
    if length is not None and length.isdigit() and int(length) < settings.min_length:
        return None
    vary = seen.get(b"vary")
    if vary is None:
        vary_out = b"Accept-Encoding"
    elif vary.strip() == b"*" or b"accept-encoding" in vary.lower():
        vary_out = vary
    else:
        vary_out = vary + b", Accept-Encoding"
    etag = seen.get(b"etag")
    if not accepts_gzip(request_headers):
        return Plan(False, vary_out, etag)
    if etag is not None and not etag.startswith(b"W/"):
        etag = b"W/" + etag  # the compressed bytes are not the ones the strong validator named
    return Plan(True, vary_out, etag)


class GzipStream:
    """One response's gzip stream: every piece of body in, its compressed bytes out, flushed."""
    __slots__ = ("z", "bytes_in", "bytes_out")

    def __init__(self, level: int):
        self.z = zlib.compressobj(level, zlib.DEFLATED, 16 + WINDOW_BITS, MEMORY_LEVEL)
        self.bytes_in = self.bytes_out = 0

    def compress(self, data: bytes) -> bytes:
        out = self.z.compress(data) + self.z.flush(zlib.Z_SYNC_FLUSH)
        self.bytes_in += len(data)
        self.bytes_out += len(out)
        return out

    def finish(self) -> bytes:
        out = self.z.flush(zlib.Z_FINISH)
        self.bytes_out += len(out)
        return out
