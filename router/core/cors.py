"""Cross-origin resource sharing for a route (its `cors`): whether a request's Origin may read the
route's responses, the router's answer to a browser's preflight, and the Access-Control-* lines of an
actual response. Pure: a CorsPolicy is compiled once per snapshot from the config's Cors, then asked
with the request's header values.

An origin is `scheme://host[:port]`; without a port it is the scheme's default (80, 443), so
`https://a.example` and `https://a.example:443` are the same origin. A pattern's host may be `*`
(any host) or start with `*.` (any name ending in the rest, however many labels: `*.example.com`
takes `www.example.com` and `a.b.example.com`, not `example.com`).
"""
from __future__ import annotations

from ..config.model import Cors

_DEFAULT_PORTS = {"http": 80, "https": 443}
# Response fields a route with a policy writes itself: a cluster's own would contradict them (a second
# Access-Control-Allow-Origin makes a browser refuse the response).
OWNED = frozenset((b"access-control-allow-origin", b"access-control-allow-credentials",
                   b"access-control-allow-methods", b"access-control-allow-headers",
                   b"access-control-expose-headers", b"access-control-max-age"))


def parse_origin(value: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of a serialized origin or an origin pattern, lowercase; None when it is not
    one (`null`, a path, a scheme other than http and https, a bad port)."""
    scheme, sep, rest = value.lower().partition("://")
    if not sep or scheme not in _DEFAULT_PORTS or not rest or "/" in rest or "@" in rest:
        return None
    if rest.startswith("["):  # an IPv6 literal
        close = rest.find("]")
        if close < 0:
            return None
        host, tail = rest[:close + 1], rest[close + 1:]
    else:
        host, colon, port = rest.partition(":")
        tail = ":" + port if colon else ""
    if not host:
        return None
    if not tail:
        return scheme, host, _DEFAULT_PORTS[scheme]
    digits = tail[1:]
    if not tail.startswith(":") or not digits.isdigit() or not digits.isascii() or not 0 < int(digits) < 65536:
        return None
    return scheme, host, int(digits)


class CorsPolicy:
    """A route's Cors, compiled: origin sets and the constant header lines."""
    __slots__ = ("any_origin", "exact", "wildcards", "credentials", "star", "methods", "any_method", "headers",
                 "any_header", "expose_line", "max_age_line")

    def __init__(self, cors: Cors):
        self.any_origin = cors.origins == ("*",)
        wildcards, exact = [], set()
        for pattern in () if self.any_origin else cors.origins:
            scheme, host, port = parse_origin(pattern)  # checked at load
            if host == "*" or host.startswith("*."):
                wildcards.append((scheme, host[1:], port))  # "" (any host) or ".suffix"
            else:
                exact.add((scheme, host, port))
        self.exact, self.wildcards = frozenset(exact), tuple(wildcards)
        self.credentials = cors.credentials
        # Every origin without credentials: `*`, the same for every request (no Vary needed).
        self.star = self.any_origin and not cors.credentials
        self.any_method = cors.methods == ("*",)
        self.methods = ", ".join(cors.methods).encode()
        self.any_header = cors.headers == ("*",)
        self.headers = ", ".join(cors.headers).encode()
        self.expose_line = (b"Access-Control-Expose-Headers: " + ", ".join(cors.expose).encode() + b"\r\n"
                            if cors.expose else b"")
        self.max_age_line = b"Access-Control-Max-Age: %d\r\n" % cors.max_age_s

    def allows(self, origin: bytes | None) -> bool:
        """Whether a request's Origin value may read the route's responses."""
        if origin is None:
            return False
        if self.star:
            return True
        parsed = parse_origin(origin.decode("latin-1"))
        if parsed is None:  # `null` (a sandboxed page, a file) too: never given credentials by a wildcard
            return False
        if self.any_origin or parsed in self.exact:
            return True
        scheme, host, port = parsed
        return any(scheme == s and port == p and (not suffix or host.endswith(suffix) and len(host) > len(suffix))
                   for s, suffix, p in self.wildcards)

    def _origin_lines(self, origin: bytes) -> bytes:
        if self.star:
            return b"Access-Control-Allow-Origin: *\r\n"
        lines = b"Access-Control-Allow-Origin: " + origin + b"\r\n"
        return lines + b"Access-Control-Allow-Credentials: true\r\n" if self.credentials else lines

    def response_lines(self, origin: bytes | None) -> bytes:
        """The Access-Control-* lines (and Vary) of an actual response, the cluster's or the router's own."""
        if self.star:
            return self._origin_lines(b"*") + self.expose_line
        if self.allows(origin):
            return self._origin_lines(origin) + self.expose_line + b"Vary: Origin\r\n"
        return b"Vary: Origin\r\n"  # the answer depends on the Origin: a cache must not share it across them

    def preflight_lines(self, origin: bytes, method: bytes, headers: bytes | None) -> bytes:
        """The answer to an allowed preflight: what the actual request may be, and for how long a browser may
        keep that. A wildcard list is `*` without credentials; with them a browser takes `*` literally, so
        the request's own method and header names are given back."""
        lines = [self._origin_lines(origin)]
        vary = [] if self.star else [b"Origin"]
        if self.any_method:
            if self.credentials:
                lines.append(b"Access-Control-Allow-Methods: " + method + b"\r\n")
                vary.append(b"Access-Control-Request-Method")
            else:
                lines.append(b"Access-Control-Allow-Methods: *\r\n")
        elif self.methods:
            lines.append(b"Access-Control-Allow-Methods: " + self.methods + b"\r\n")
        if self.any_header:
            if not self.credentials:
                lines.append(b"Access-Control-Allow-Headers: *\r\n")
            elif headers:
                lines.append(b"Access-Control-Allow-Headers: " + headers + b"\r\n")
                vary.append(b"Access-Control-Request-Headers")
        elif self.headers:
            lines.append(b"Access-Control-Allow-Headers: " + self.headers + b"\r\n")
        lines += (self.expose_line, self.max_age_line)
        if vary:
            lines.append(b"Vary: " + b", ".join(vary) + b"\r\n")
        return b"".join(lines)


def field(headers: list[tuple[bytes, bytes]], lname: bytes) -> bytes | None:
    """The value of a field the request has exactly once (None when it has none, or several: two Origins
    name no origin)."""
    found = None
    for name, value in headers:
        if len(name) == len(lname) and name.lower() == lname:
            if found is not None:
                return None
            found = value
    return found


def is_preflight(method: bytes, headers: list[tuple[bytes, bytes]]) -> bool:
    """An OPTIONS request with Origin and Access-Control-Request-Method: a browser asking before a request."""
    if method != b"OPTIONS":
        return False
    has_origin = has_method = False
    for name, _ in headers:
        lname = name.lower()
        if lname == b"origin":
            has_origin = True
        elif lname == b"access-control-request-method":
            has_method = True
    return has_origin and has_method
