"""Header rules of the proxy: request validation beyond the parser, hop-by-hop removal,
forwarding headers, and the heads the proxy writes.

Framing headers (Content-Length, Transfer-Encoding) are never copied: the proxy writes its
own framing on each side, so a client cannot make router and upstream disagree on where a
message ends.
"""
from __future__ import annotations

import ipaddress
import json
import re

from .paths import replaced

HOP_BY_HOP = frozenset((b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
                        b"transfer-encoding", b"upgrade", b"content-length"))
FORWARDING = frozenset((b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"forwarded",
                        b"x-forwarded-client-cert"))
# Headers a client may not declare hop-by-hop: dropping them would change what the message means.
PROTECTED = frozenset((b"host", b"content-length", b"x-forwarded-for", b"transfer-encoding"))

REASONS = {100: "Continue", 101: "Switching Protocols", 103: "Early Hints", 200: "OK", 301: "Moved Permanently", 302: "Found",
           303: "See Other", 307: "Temporary Redirect", 308: "Permanent Redirect", 400: "Bad Request",
           403: "Forbidden", 404: "Not Found",
           405: "Method Not Allowed", 408: "Request Timeout", 413: "Content Too Large", 414: "URI Too Long",
           429: "Too Many Requests", 431: "Request Header Fields Too Large", 500: "Internal Server Error",
           501: "Not Implemented", 502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout",
           508: "Loop Detected"}


class HttpReject(Exception):
    """A request the proxy answers itself with `status` and closes."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


def split_tokens(value: bytes) -> list[bytes]:
    return [t.strip(b" \t").lower() for t in value.split(b",") if t.strip(b" \t")]


# Request headers the proxy looks at or drops. Everything else passes through untouched.
SPECIAL = frozenset((b"host", b"transfer-encoding", b"content-length", b"connection", b"expect", b"upgrade",
                     b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"forwarded", b"keep-alive",
                     b"proxy-connection", b"te", b"trailer", b"via", b"x-request-id", b"x-forwarded-client-cert"))
# SPECIAL headers that are also passed on as they came (the rest are dropped or rewritten).
PASSED_ON = frozenset((b"host", b"expect", b"via", b"x-request-id"))
REQUEST_ID = frozenset((b"x-request-id",))
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"  # the interim answer to Expect: 100-continue
_CONNECTION_OPTIONS = frozenset((b"keep-alive", b"close", b"upgrade"))


def is_h2c(upgrade: bytes | None) -> bool:
    """Whether an Upgrade header asks for HTTP/2 in cleartext (h2c) among its protocols."""
    return upgrade is not None and any(t.split(b"/")[0] == b"h2c" for t in split_tokens(upgrade))


def validate_request(version: str, special: list[tuple[bytes, bytes]]) -> dict:
    """Checks llhttp leaves to us, over the SPECIAL headers only. Returns facts; raises HttpReject."""
    hosts, te, cl, conn_tokens, fwd, via = [], [], [], [], {}, []
    expect, upgrade, request_id = False, None, None
    for lname, value in special:
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
        elif lname in FORWARDING:
            fwd.setdefault(lname, []).append(value)
        elif lname == b"via":  # received-by of each entry ("1.1 name, 1.0 other (comment)")
            via += [entry.split()[1] for entry in value.split(b",") if len(entry.split()) > 1]
        elif lname == b"x-request-id" and request_id is None:
            request_id = value.strip(b" \t")
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
    named = None
    for token in conn_tokens:
        if token in PROTECTED:
            raise HttpReject(400, f"Connection names {token.decode('latin-1')}")
        if token not in _CONNECTION_OPTIONS:
            named = (named or set()) | {token}
    raw_host = hosts[0] if hosts else b""
    host = raw_host.strip().lower()
    if host and not _AUTHORITY.fullmatch(host):  # uri-host [":" port] (RFC 9110 7.2); empty is allowed
        raise HttpReject(400, "malformed Host header")
    if host.startswith(b"["):
        host = host[:host.find(b"]") + 1]
    else:
        host = host.partition(b":")[0]
    return {"host": host.decode("latin-1").rstrip("."), "raw_host": raw_host, "chunked": bool(te),
            "content_length": int(cl[0]) if cl else None, "named": named, "forwarding": fwd,
            "expect_continue": expect, "upgrade": upgrade, "via": via, "request_id": request_id}


# host[:port] of an absolute-form target: a reg-name (RFC 3986 unreserved, sub-delims, pct-encoded) or an IP
# literal; no userinfo (RFC 9110 4.2.4: a recipient treats it as an error).
_AUTHORITY = re.compile(rb"(?:[A-Za-z0-9\-._~!$&'()*+,;=%]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{0,5})?")


def origin_form(method: bytes, url: bytes) -> tuple[bytes, bytes | None]:
    """A request target that is not origin-form ("/path?query"), as sent upstream, and its authority:
    an absolute-form http(s) target becomes its path and query plus its host[:port] (which replaces
    the Host header, RFC 9112 3.2.2); "*" passes with OPTIONS (no authority); anything else is refused."""
    if url == b"*":
        if method == b"OPTIONS":
            return url, None
        raise HttpReject(400, "request target * is only for OPTIONS")
    scheme, sep, rest = url.partition(b"://")
    if not sep or scheme.lower() not in (b"http", b"https"):
        raise HttpReject(400, "malformed request target")
    end = len(rest)
    for stop in (b"/", b"?"):
        i = rest.find(stop)
        if 0 <= i < end:
            end = i
    if not _AUTHORITY.fullmatch(rest, 0, end):
        raise HttpReject(400, "malformed request target")
    path = rest[end:]
    return (path if path[:1] == b"/" else b"/" + path), rest[:end]


def with_host(pairs: list[tuple[bytes, bytes]], authority: bytes) -> list[tuple[bytes, bytes]]:
    """`pairs` with every Host value replaced by `authority` (a count of Hosts stays as it was, for
    the checks that follow)."""
    return [(name, authority) if name.lower() == b"host" else (name, value) for name, value in pairs]


def is_trusted(client_ip: str, trusted: tuple) -> bool:
    if not trusted or not client_ip:
        return False
    try:
        addr = ipaddress.ip_address(client_ip)
    except ValueError:
        return False
    return any(addr in net for net in trusted)


def source_allowed(address: str, allow: tuple, deny: tuple) -> bool:
    """A route's sourceRanges: in no `deny` network, and in an `allow` one when there are any. An
    address that does not parse is allowed only when nothing needs to contain it."""
    try:
        addr = ipaddress.ip_address(address)
    except ValueError:
        return not allow
    if addr.version == 6 and addr.ipv4_mapped is not None:  # ::ffff:1.2.3.4 is the IPv4 client 1.2.3.4
        addr = addr.ipv4_mapped
    return not any(addr in net for net in deny) and (not allow or any(addr in net for net in allow))


def client_address(peer_ip: str, facts: dict, trusted: tuple, peer_trusted: bool) -> str:
    """Who sent the request: the peer, or, when the peer is a trusted proxy, the nearest address in
    X-Forwarded-For that is not one (nginx's real_ip_recursive): what a trusted proxy reports is
    believed, what the client wrote before it is not."""
    prior = facts["forwarding"].get(b"x-forwarded-for") if peer_trusted else None
    if not prior:
        return peer_ip
    hops = [hop.strip(b" \t").decode("latin-1") for value in prior for hop in value.split(b",")]
    for hop in reversed(hops):
        if not is_trusted(hop, trusted):
            return hop
    return hops[0]


def forwarded_node(client_ip: str) -> bytes:
    ip = client_ip.encode()
    return b'"[' + ip + b']"' if b":" in ip else ip


def request_lines(method: bytes, url: bytes, headers: list[tuple[bytes, bytes]], named) -> list[bytes]:
    """Request line and the client's end-to-end headers (those its Connection header named dropped);
    the caller adds forwarding_headers() and framing. `headers` holds the client's headers minus the
    SPECIAL ones (Host included back by the parser)."""
    out = [method, b" ", url, b" HTTP/1.1\r\n"]
    for name, value in headers:
        if named is None or name.lower() not in named:
            out += (name, b": ", value, b"\r\n")
    return out


def forwarding_headers(facts: dict, client_ip: bytes, node: bytes, trusted: bool, via: bytes,
                       upgrade: bool, scheme: bytes, client_cert: bytes = b"", received: bytes = b"1.1") -> bytes:
    """X-Forwarded-*, Forwarded, Via (its protocol the one the request came in: `received`, "1.0", "1.1"
    or "2", RFC 9110 7.6.3) and the upgrade headers. The same for every request of a
    keep-alive connection that repeats its headers, so the connection keeps the last one.
    X-Forwarded-Client-Cert: a trusted proxy's kept, `client_cert` (the certificate the client showed
    on this connection, as client_certificate_element() wrote it) added; a client's own dropped."""
    host = facts["raw_host"]
    fwd = facts["forwarding"] if trusted else {}
    prior = fwd.get(b"x-forwarded-for")
    out = [b"X-Forwarded-For: ", b", ".join(prior) + b", " + client_ip if prior else client_ip, b"\r\n"]
    proto = fwd.get(b"x-forwarded-proto")
    out += (b"X-Forwarded-Proto: ", proto[0] if proto else scheme, b"\r\n")
    fhost = fwd.get(b"x-forwarded-host")
    out += (b"X-Forwarded-Host: ", fhost[0] if fhost else host, b"\r\n")
    element = b"for=" + node + b";proto=" + scheme
    if host:
        element += b';host="' + host.replace(b'"', b"") + b'"'
    prior = fwd.get(b"forwarded")
    out += (b"Forwarded: ", b", ".join(prior) + b", " + element if prior else element, b"\r\n")
    out += (b"Via: ", received, b" ", via, b"\r\n")
    prior = fwd.get(b"x-forwarded-client-cert")
    if prior or client_cert:
        out += (b"X-Forwarded-Client-Cert: ", b",".join((*(prior or ()), client_cert) if client_cert else prior),
                b"\r\n")
    if upgrade:
        out += (b"Connection: upgrade\r\nUpgrade: ", facts["upgrade"] or b"", b"\r\n")
    return b"".join(out)


# Response headers response_head() looks at: framing and hop-by-hop, and the router's own.
_RESPONSE_SPECIAL = HOP_BY_HOP | {b"x-router-cluster", b"x-request-id"}
_STATUS_LINES: dict[int, bytes] = {}
_PLAIN_CONNECTION = frozenset((b"keep-alive", b"close", b"Keep-Alive", b"Close"))


def status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        line = _STATUS_LINES[status] = b"HTTP/1.1 %d %s\r\n" % (status, REASONS.get(status, "").encode())
    return line


def response_head(status: int, headers: list[tuple[bytes, bytes]], tail: bytes, upgrade: bool,
                  drop: frozenset | None = None,
                  own_request_id: bool = False) -> tuple[list[bytes], bytes | None, bool]:
    """Status line + end-to-end headers + `tail` (the router's own headers); framing added by caller.
    `drop`: lowercase names a route removes or sets; `own_request_id`: the tail has X-Request-Id, so
    the upstream's is left out.

    Returns the parts, the upstream's Content-Length (or None) and whether it was chunked.
    """
    out = [status_line(status)]
    named = set(drop) if drop else None
    content_length, chunked = None, False
    for name, value in headers:
        lname = name.lower()
        if lname in _RESPONSE_SPECIAL:
            if lname == b"content-length":
                content_length = value
            elif lname == b"transfer-encoding":
                chunked = True
            elif lname == b"connection":
                if value not in _PLAIN_CONNECTION:
                    named = (named or set()) | set(split_tokens(value))
            elif upgrade and lname == b"upgrade" or lname == b"x-request-id" and not own_request_id:
                out += (name, b": ", value, b"\r\n")
            continue
        out += (name, b": ", value, b"\r\n")
    if named:
        named -= {b"close", b"keep-alive", b"upgrade"}
        if named:  # drop headers the upstream's Connection header named (rare: filter afterwards)
            kept = [out[0]]
            for i in range(1, len(out), 4):
                if out[i].lower() not in named:
                    kept += out[i:i + 4]
            out = kept
    out.append(tail)
    if upgrade:
        out.append(b"Connection: upgrade\r\n")
    return out, content_length, chunked


def simple_response(status: int, body: str | bytes, close: bool, extra: list[tuple[str, str]] = (),
                    raw_extra: bytes = b"", head_only: bool = False, problem: bool = False) -> bytes:
    """The router's own answer: `body` a line of text (str; with `problem`, the detail of an RFC 9457
    problem document in JSON), or bytes sent as they are (their type, if any, among `raw_extra`: header
    lines as bytes, such as a Location built from the request). A HEAD request's answer (`head_only`) has
    the head a GET's would, and no body (RFC 9110 9.3.2)."""
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, '')}"]
    if isinstance(body, str) and problem:
        data = json.dumps({"type": "about:blank", "title": REASONS.get(status, ""), "status": status,
                           "detail": body}).encode() + b"\n"
        lines.append("Content-Type: application/problem+json")
    elif isinstance(body, str):
        data = (body + "\n").encode()
        lines.append("Content-Type: text/plain; charset=utf-8")
    else:
        data = body
    if status != 204:  # (a 204 has no Content-Length: RFC 9110 8.6)
        lines.append(f"Content-Length: {len(data)}")
    lines += [f"{k}: {v}" for k, v in extra]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n").encode() + raw_extra + b"\r\n" + (b"" if head_only else data)


def wants_json(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether the request's Accept names a JSON type (application/json, application/problem+json, any
    +json) before any text/ one: an API client rather than a browser or a terminal."""
    for name, value in headers:
        if name.lower() == b"accept":
            v = value.lower()
            j = v.find(b"json")
            t = v.find(b"text/")
            return j >= 0 and (t < 0 or j < t)
    return False


def redirect_location(redirect: tuple, own_scheme: bytes, host: str, raw_host: bytes, url: bytes,
                      path_prefix: str) -> bytes:
    """Where a redirect route sends the client: each part the route does not set is the request's own
    (scheme, host, port: the port is dropped when the scheme changes, and when it is the scheme's
    default). Without any host (HTTP/1.0 without Host) the Location is the path alone (RFC 9110 10.2.2)."""
    scheme, new_host, port, prefix, full, _ = redirect
    url = replaced(url if url[:1] == b"/" else b"/", path_prefix, prefix, full)  # (OPTIONS * goes to /)
    target = scheme or own_scheme
    hostname = new_host or host.encode("latin-1")
    if not hostname:
        return url
    if port is None and scheme is None:
        tail = raw_host.strip().rpartition(b"]")[2] if raw_host.strip().startswith(b"[") else raw_host.strip()
        _, colon, digits = tail.rpartition(b":")
        port = int(digits) if colon and digits else None
    if port == (443 if target == b"https" else 80):
        port = None
    return target + b"://" + hostname + (b":%d" % port if port else b"") + url
