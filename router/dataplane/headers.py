"""Header rules of the proxy: request validation beyond the parser, hop-by-hop removal,
forwarding headers, and the heads the proxy writes.

Framing headers (Content-Length, Transfer-Encoding) are never copied: the proxy writes its
own framing on each side, so a client cannot make router and upstream disagree on where a
message ends.
"""
from __future__ import annotations

import ipaddress

HOP_BY_HOP = frozenset((b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
                        b"transfer-encoding", b"upgrade", b"content-length"))
FORWARDING = frozenset((b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"forwarded"))
# Headers a client may not declare hop-by-hop: dropping them would change what the message means.
PROTECTED = frozenset((b"host", b"content-length", b"x-forwarded-for", b"transfer-encoding"))

REASONS = {100: "Continue", 101: "Switching Protocols", 200: "OK", 400: "Bad Request", 404: "Not Found",
           408: "Request Timeout", 413: "Content Too Large", 414: "URI Too Long",
           431: "Request Header Fields Too Large", 501: "Not Implemented", 502: "Bad Gateway",
           503: "Service Unavailable", 504: "Gateway Timeout"}


class HttpReject(Exception):
    """A request the proxy answers itself with `status` and closes."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


def split_tokens(value: bytes) -> list[bytes]:
    return [t.strip(b" \t").lower() for t in value.split(b",") if t.strip(b" \t")]


def validate_request(version: str, headers: list[tuple[bytes, bytes]]) -> dict:
    """Checks llhttp leaves to us. Returns facts the proxy needs; raises HttpReject."""
    hosts, te, cl, conn_tokens, expect, upgrade = [], [], [], [], False, None
    for name, value in headers:
        lname = name.lower()
        if lname == b"host":
            hosts.append(value)
        elif lname == b"transfer-encoding":
            te.append(value)
        elif lname == b"content-length":
            cl.append(value)
        elif lname == b"connection":
            conn_tokens.extend(split_tokens(value))
        elif lname == b"expect":
            expect = value.strip().lower() == b"100-continue"
        elif lname == b"upgrade":
            upgrade = value
    if len(hosts) > 1:
        raise HttpReject(400, "more than one Host header")
    if not hosts and version == "1.1":
        raise HttpReject(400, "HTTP/1.1 request without Host")
    if te:
        if version == "1.0":
            raise HttpReject(400, "Transfer-Encoding on HTTP/1.0")
        tokens = [t for v in te for t in split_tokens(v)]
        if tokens != [b"chunked"]:
            raise HttpReject(501, "only Transfer-Encoding: chunked is supported")
        if cl:
            raise HttpReject(400, "Content-Length with Transfer-Encoding")
    if len(cl) > 1:
        raise HttpReject(400, "duplicate Content-Length")
    if cl and not cl[0].strip(b" \t").isdigit():
        raise HttpReject(400, "Content-Length is not a plain number")
    for token in conn_tokens:
        if token in PROTECTED:
            raise HttpReject(400, f"Connection names {token.decode('latin-1')}")
    host = hosts[0].strip().lower() if hosts else b""
    if host.startswith(b"["):
        host = host[:host.find(b"]") + 1]
    else:
        host = host.partition(b":")[0]
    if any(c in host for c in b" \t/\\@") :
        raise HttpReject(400, "malformed Host header")
    return {"host": host.decode("latin-1").rstrip("."), "chunked": bool(te),
            "content_length": int(cl[0]) if cl else None, "connection": conn_tokens,
            "expect_continue": expect, "upgrade": upgrade}


def is_trusted(client_ip: str, trusted: tuple) -> bool:
    if not trusted or not client_ip:
        return False
    try:
        addr = ipaddress.ip_address(client_ip)
    except ValueError:
        return False
    return any(addr in net for net in trusted)


def upstream_request_head(method: bytes, url: bytes, headers: list[tuple[bytes, bytes]], facts: dict,
                          client_ip: str, trusted: bool, via: bytes, upgrade: bool) -> list[bytes]:
    """Request line + headers to send upstream, without framing headers (caller adds them)."""
    named = set(facts["connection"])
    out = [method, b" ", url, b" HTTP/1.1\r\n"]
    prior_xff = prior_fwd = None
    original_host = b""
    for name, value in headers:
        lname = name.lower()
        if lname == b"host":
            original_host = value
        if lname in HOP_BY_HOP or lname in named:
            continue
        if lname in FORWARDING:
            if trusted:
                if lname == b"x-forwarded-for":
                    prior_xff = value if prior_xff is None else prior_xff + b", " + value
                    continue
                if lname == b"forwarded":
                    prior_fwd = value if prior_fwd is None else prior_fwd + b", " + value
                    continue
                out += [name, b": ", value, b"\r\n"]
            continue
        out += [name, b": ", value, b"\r\n"]
    ip = client_ip.encode()
    out += [b"X-Forwarded-For: ", (prior_xff + b", " + ip) if prior_xff else ip, b"\r\n"]
    if not trusted or not any(h.lower() == b"x-forwarded-proto" for h, _ in headers):
        out.append(b"X-Forwarded-Proto: http\r\n")
    if not trusted or not any(h.lower() == b"x-forwarded-host" for h, _ in headers):
        out += [b"X-Forwarded-Host: ", original_host, b"\r\n"]
    node = b'"[' + ip + b']"' if b":" in ip else ip
    fwd = b"for=" + node + b";proto=http"
    if original_host:
        fwd += b';host="' + original_host.replace(b'"', b"") + b'"'
    out += [b"Forwarded: ", (prior_fwd + b", " + fwd) if prior_fwd else fwd, b"\r\n"]
    out += [b"Via: 1.1 ", via, b"\r\n"]
    if upgrade:
        out += [b"Connection: upgrade\r\nUpgrade: ", facts["upgrade"] or b"", b"\r\n"]
    return out


def response_head(status: int, reason: bytes, headers: list[tuple[bytes, bytes]], cluster: bytes,
                  via: bytes, upgrade: bool) -> list[bytes]:
    """Status line + end-to-end headers + router headers; framing added by caller."""
    named = set()
    for name, value in headers:
        if name.lower() == b"connection":
            named.update(split_tokens(value))
    out = [b"HTTP/1.1 ", str(status).encode(), b" ", reason or REASONS.get(status, "").encode(), b"\r\n"]
    for name, value in headers:
        lname = name.lower()
        if lname in HOP_BY_HOP or lname in named or lname == b"x-router-cluster":
            if upgrade and lname == b"upgrade":
                out += [name, b": ", value, b"\r\n"]
            continue
        out += [name, b": ", value, b"\r\n"]
    out += [b"Via: 1.1 ", via, b"\r\nx-router-cluster: ", cluster, b"\r\n"]
    if upgrade:
        out.append(b"Connection: upgrade\r\n")
    return out


def simple_response(status: int, body: str, close: bool, extra: list[tuple[str, str]] = ()) -> bytes:
    data = (body + "\n").encode()
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, '')}", "Content-Type: text/plain; charset=utf-8",
             f"Content-Length: {len(data)}"]
    lines += [f"{k}: {v}" for k, v in extra]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data
