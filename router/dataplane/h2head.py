"""HTTP/2 heads to and from the HTTP/1.1 the rest of the data path reads and writes.

A client's HTTP/2 request becomes the HTTP/1.1 head it stands for (RFC 9113 8.3.1): `:authority` as
Host, cookie fields joined with "; " (8.2.3; h2 joins them as it reads the request too), and chunked
framing for a body of unknown length. The bytes are parsed again as any request is, so every check and
limit applies. A value with CR, LF or NUL (which would end a line there) or a field name that is not a
lowercase token is refused here, whatever h2 checked before: the request is malformed (8.2.1), and would
otherwise smuggle a header into the HTTP/1.1 text. CONNECT becomes its authority-form HTTP/1.1 head,
which the request reader refuses (405) as it refuses one sent over HTTP/1.1.

An HTTP/1.1 response head becomes an HTTP/2 header list: `:status`, lowercase names, without the
connection-specific fields (8.2.2) and those its Connection field names.
"""
from __future__ import annotations

import re

ALPN = "h2"  # HTTP/2 over TLS, as ALPN names it
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"  # what a client speaking HTTP/2 with prior knowledge sends first
CONNECTION_SPECIFIC = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding",
                                 b"upgrade"})
_NAME = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-z]+")
_LINE_BREAKING = re.compile(rb"[\x00\r\n]")


class Malformed(Exception):
    """An HTTP/2 request that cannot be a request (RFC 9113 8.1.1): reset with PROTOCOL_ERROR."""


def request_head(headers, ended: bool) -> tuple[bytes, bytes, bool]:
    """(method, HTTP/1.1 head, chunked) for an HTTP/2 request's header list; `ended` when the HEADERS
    frame ended the stream (no body). A body without content-length is sent on chunked."""
    method = path = authority = host = None
    fields: list[bytes] = []
    cookies: list[bytes] = []
    has_length = False
    for name, value in headers:
        if _LINE_BREAKING.search(value):
            raise Malformed(f"{name.decode('latin-1')!r}: a value with CR, LF or NUL")
        if name[:1] == b":":
            if name == b":method":
                method = value
            elif name == b":path":
                path = value
            elif name == b":authority":
                authority = value
            elif name != b":scheme":
                raise Malformed(f"pseudo-header {name.decode('latin-1')!r} is not served")
            continue
        if not _NAME.fullmatch(name):
            raise Malformed(f"field name {name.decode('latin-1')!r} is not a lowercase token")
        if name == b"cookie":
            cookies.append(value)
        elif name == b"host":
            if host is not None:
                raise Malformed("two host fields")
            host = value
        else:
            if name == b"content-length":
                has_length = True
            fields += (name, b": ", value, b"\r\n")
    if method is None:
        raise Malformed("no :method")
    if method == b"CONNECT":  # (RFC 9113 8.5): refused as HTTP/1.1's CONNECT is, by the request reader
        if authority is None or path is not None:
            raise Malformed("CONNECT needs :authority and no :path")
        return method, b"CONNECT %s HTTP/1.1\r\nhost: %s\r\n\r\n" % (authority, authority), False
    if not path:
        raise Malformed("no :path")
    if authority is not None and host is not None and host != authority:
        raise Malformed("host differs from :authority")
    target = authority if authority is not None else host
    head = [method, b" ", path, b" HTTP/1.1\r\n"]
    if target is not None:
        head += (b"host: ", target, b"\r\n")
    if cookies:
        head += (b"cookie: ", b"; ".join(cookies), b"\r\n")
    chunked = not ended and not has_length
    if chunked:
        head.append(b"transfer-encoding: chunked\r\n")
    head += fields
    head.append(b"\r\n")
    return method, b"".join(head), chunked


def response_headers(status: int, fields: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """An HTTP/1.1 response head's status and fields as an HTTP/2 header list."""
    named: set[bytes] = set()
    for name, value in fields:
        if name.lower() == b"connection":
            named.update(token.strip().lower() for token in value.split(b","))
    out = [(b":status", b"%d" % status)]
    for name, value in fields:
        name = name.lower()
        if name not in CONNECTION_SPECIFIC and name not in named:
            out.append((name, value))
    return out
