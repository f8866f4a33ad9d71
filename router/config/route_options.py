"""Readers of a route's options, the same whether a TrafficSplit's fields or an HTTPRoute rule's
filters and fields state them: header changes, rewrite, redirect, timeouts, retry on status, rate limit,
mirror and affinity. Problems are reported with their line, as everywhere in config/."""
from __future__ import annotations

import math
import re
from dataclasses import replace
from typing import Any

from .doc import (Doc, one_of, parse_bool, parse_path, parse_percent, parse_port, positive_duration, positive_int,
                  read_cidrs, redirect_code)
from .model import (DirectResponse, Fault, HeaderOps, Mirror, RateLimit, Redirect, RetryOn, Rewrite, RouteMatch,
                    RouteTimeouts, SessionPersistence, SourceRanges)
from ..core.regex import compile_pattern
from .values import normalise_host, parse_duration
from .yamlsrc import Node


MAX_MIRRORS = 8  # copies of one request at most (each is a request of its own to a cluster)


def read_mirrors(doc: Doc, spec: Node) -> tuple[tuple[Mirror, Node], ...]:
    """A TrafficSplit's `mirror` (one) or `mirrors` (a list), not both."""
    one, many = spec.get("mirror"), spec.get("mirrors")
    if one is not None and many is not None:
        doc.error(many, "mirror and mirrors cannot go together (list the first in mirrors)")
    items = [one] if one is not None else doc.seq(spec, "mirrors")
    found = [read_mirror(doc, item) for item in items]
    return checked_mirrors(doc, [m for m in found if m is not None], many)


def checked_mirrors(doc: Doc, mirrors: list, at: Node | None) -> tuple[tuple[Mirror, Node], ...]:
    """At most MAX_MIRRORS, each to another Cluster."""
    if len(mirrors) > MAX_MIRRORS:
        doc.error(at, f"at most {MAX_MIRRORS} mirrors, got {len(mirrors)}")
    seen = set()
    for mirror, node in mirrors:
        if mirror.cluster in seen:
            doc.error(node, f"Cluster {mirror.cluster!r} is mirrored to twice")
        seen.add(mirror.cluster)
    return tuple(mirrors)


def read_mirror(doc: Doc, node: Node | None) -> tuple[Mirror, Node] | None:
    """mirror: {cluster: NAME, percent: 0..100} (percent defaults to 100)."""
    if not doc.fields(node, {"cluster", "percent"}, {"cluster"}):
        return None
    cluster = doc.string(node, "cluster")
    percent = doc.value(node, "percent", parse_percent, 100.0)
    return (Mirror(cluster, percent), node.get("cluster")) if cluster else None


def non_negative_int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError(f"expected a whole number 0 or above, got {v!r}")
    return v


def read_retry(doc: Doc, node: Node | None, gateway: bool = False) -> RetryOn | None:
    """retry: {codes: [503], attempts: 1, backoff: 100ms}: status codes 400..599; `backoff` (the Gateway
    API's minimum wait between tries) before the first retry, doubling for each next, at most 10 times it."""
    if not doc.fields(node, {"codes", "attempts", "backoff"}, {"codes"}):
        return None
    codes = set()
    for item in doc.seq(node, "codes"):
        if isinstance(item.value, bool) or not isinstance(item.value, int) or not 400 <= item.value <= 599:
            doc.error(item, f"a retried status code must be 400..599, got {item.value!r}")
        else:
            codes.add(item.value)
    attempts = doc.value(node, "attempts", positive_int, 1)
    backoff = doc.value(node, "backoff", positive_duration)
    return RetryOn(frozenset(codes), attempts, backoff) if codes else None


def read_source_ranges(doc: Doc, node: Node | None) -> SourceRanges | None:
    """sourceRanges: {allow: [CIDR], deny: [CIDR]}: at least one of them, each a list of CIDRs."""
    if not doc.fields(node, {"allow", "deny"}):
        return None
    allow, deny = read_cidrs(doc, doc.seq(node, "allow")), read_cidrs(doc, doc.seq(node, "deny"))
    if not allow and not deny:
        doc.error(node, "sourceRanges needs allow or deny CIDRs")
        return None
    return SourceRanges(allow, deny)


def read_rate_limit(doc: Doc, node: Node | None) -> RateLimit | None:
    """rateLimit: {requestsPerSecond: 100, burst: 200, key: route | client | header:NAME}."""
    if not doc.fields(node, {"requestsPerSecond", "burst", "key"}, {"requestsPerSecond"}):
        return None
    rate = doc.value(node, "requestsPerSecond", _positive_rate)
    if rate is None:
        return None
    burst = doc.value(node, "burst", positive_int, max(1, math.ceil(rate)))
    return RateLimit(rate, burst, doc.value(node, "key", _rate_key, "route"))


def _positive_rate(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0 or v > 1e9:
        raise ValueError(f"requestsPerSecond must be a positive number (at most 1e9), got {v!r}")
    return float(v)


def _rate_key(v: Any) -> str:
    if v in ("route", "client"):
        return v
    if isinstance(v, str) and v.startswith("header:") and TOKEN.fullmatch(v[7:]):
        return "header:" + v[7:].lower()
    raise ValueError(f"key must be route, client or header:NAME (such as header:X-Api-Key), got {v!r}")


def read_route_timeouts(doc: Doc, node: Node | None, gateway: bool = False) -> RouteTimeouts | None:
    """A TrafficSplit's `timeouts: {request, perTry}` (positive durations), or an HTTPRoute rule's
    `timeouts: {request, backendRequest}` (`gateway`; 0s turns that timeout off, as the Gateway API
    asks). The per-try timeout may not exceed the request timeout, which covers every try."""
    per_try_key = "backendRequest" if gateway else "perTry"
    if not doc.fields(node, {"request", per_try_key} if gateway else {"request", per_try_key, "hedge"}):
        return None
    parse = parse_duration if gateway else positive_duration
    request, per_try = doc.value(node, "request", parse), doc.value(node, per_try_key, parse)
    if request and per_try and per_try > request:
        doc.error(node.get(per_try_key), f"{per_try_key} ({per_try:g}s) is longer than request ({request:g}s), "
                                         "which covers every try")
    hedge = False if gateway else doc.value(node, "hedge", parse_bool, False)
    if hedge and not per_try:
        doc.error(node.get("hedge"), "hedge races a try against the next one once its perTry runs out: "
                                     "give this route a perTry")
    timeouts = RouteTimeouts(request or None, per_try, hedge)
    return timeouts if timeouts != RouteTimeouts() else None


def read_session_persistence(doc: Doc, node: Node | None) -> SessionPersistence | None:
    """sessionPersistence: {sessionName, type: Cookie | Header, absoluteTimeout, cookieConfig: {lifetimeType:
    Session | Permanent}, idleTimeout}, the Gateway API's fields (a TrafficSplit takes the same)."""
    if not doc.fields(node, {"sessionName", "type", "absoluteTimeout", "idleTimeout", "cookieConfig"}):
        return None
    d = SessionPersistence()
    name = doc.value(node, "sessionName", _session_name, d.name)
    header = doc.value(node, "type", one_of(None, "Cookie", "Header"), "Cookie") == "Header"
    absolute = doc.value(node, "absoluteTimeout", positive_duration)
    idle = doc.value(node, "idleTimeout", positive_duration)
    lifetime = "Session"
    config = node.get("cookieConfig")
    if doc.fields(config, {"lifetimeType"}):
        lifetime = doc.value(config, "lifetimeType", one_of(None, "Session", "Permanent"), lifetime)
        if header:
            doc.error(config, "cookieConfig is for type Cookie")
    if lifetime == "Permanent" and absolute is None:
        doc.error(config, "a Permanent cookie needs absoluteTimeout (its Max-Age)")
    return SessionPersistence(name, header, absolute, lifetime == "Permanent", idle)


def _session_name(v: Any) -> str:
    if not isinstance(v, str) or not TOKEN.fullmatch(v) or len(v) > 128:
        raise ValueError(f"expected a cookie or header name (a token, at most 128 characters), got {v!r}")
    return v


def read_redirect(doc: Doc, node: Node | None, gateway: bool = False) -> Redirect | None:
    """redirect: {scheme, hostname, port, statusCode} and a path: on a TrafficSplit `pathPrefix` (the
    split's prefix replaced) or `fullPath`; in an HTTPRoute (`gateway`) `path: {type: ReplacePrefixMatch |
    ReplaceFullPath, ...}`."""
    paths = {"path"} if gateway else {"pathPrefix", "fullPath"}
    if not doc.fields(node, {"scheme", "hostname", "port", "statusCode"} | paths):
        return None
    if gateway:
        prefix, full = path_modifier(doc, node.get("path")) if node.get("path") is not None else (None, None)
    else:
        prefix, full = _prefix_or_full(doc, node, "redirect")
    return Redirect(doc.value(node, "scheme", _redirect_scheme), doc.value(node, "hostname", rewrite_host),
                    doc.value(node, "port", parse_port), prefix, full,
                    doc.value(node, "statusCode", redirect_code, 302))


def read_fault(doc: Doc, node: Node | None) -> Fault | None:
    """fault: {delay: {fixedDelay: 2s, percent: 10}, abort: {httpStatus: 503, percent: 5}}: either or both."""
    if not doc.fields(node, {"delay", "abort"}):
        return None
    fault = Fault()
    delay, abort = node.get("delay"), node.get("abort")
    if doc.fields(delay, {"fixedDelay", "percent"}, {"fixedDelay"}):
        fault = replace(fault, delay_s=doc.value(delay, "fixedDelay", positive_duration, 0.0),
                        delay_percent=doc.value(delay, "percent", parse_percent, 100.0))
    if doc.fields(abort, {"httpStatus", "percent"}, {"httpStatus"}):
        fault = replace(fault, abort_status=doc.value(abort, "httpStatus", _direct_status, 0),
                        abort_percent=doc.value(abort, "percent", parse_percent, 100.0))
    if delay is None and abort is None:
        doc.error(node, "fault needs a delay or an abort")
    return fault if fault.delay_s or fault.abort_status else None


MAX_DIRECT_BODY = 4096  # as Envoy's direct_response bodies


def read_direct_response(doc: Doc, node: Node | None) -> DirectResponse | None:
    """directResponse: {status: 503, body: "down for maintenance", contentType: text/html}."""
    if not doc.fields(node, {"status", "body", "contentType"}, {"status"}):
        return None
    status = doc.value(node, "status", _direct_status)
    body = doc.value(node, "body", _direct_body, "")
    content_type = doc.value(node, "contentType", _content_type, DirectResponse(200).content_type)
    if body and status in (204, 304):
        doc.error(node.get("body"), f"a {status} answer has no body")
    return DirectResponse(status, body, content_type) if status is not None else None


def _direct_status(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 200 <= v <= 599:
        raise ValueError(f"status must be 200..599, got {v!r}")
    return v


def _direct_body(v: Any) -> str:
    if not isinstance(v, str) or len(v.encode()) > MAX_DIRECT_BODY:
        raise ValueError(f"body must be text of at most {MAX_DIRECT_BODY} bytes")
    return v


def _content_type(v: Any) -> str:
    if not isinstance(v, str) or not v.strip() or not FIELD_VALUE.fullmatch(v):
        raise ValueError(f"contentType must be a media type such as text/html, got {v!r}")
    return v.strip()


def read_rewrite(doc: Doc, node: Node | None) -> Rewrite | None:
    """rewrite: {pathPrefix: /} (the split's pathPrefix replaced) or {fullPath: /x}, and/or {hostname: h}."""
    if not doc.fields(node, {"pathPrefix", "fullPath", "hostname"}):
        return None
    rewrite = Rewrite(*_prefix_or_full(doc, node, "rewrite"), doc.value(node, "hostname", rewrite_host))
    return rewrite if rewrite != Rewrite() else None


def _prefix_or_full(doc: Doc, node: Node, what: str) -> tuple[str | None, str | None]:
    """A TrafficSplit's `pathPrefix` (the split's prefix replaced) or `fullPath`, not both."""
    prefix, full = doc.value(node, "pathPrefix", parse_path), doc.value(node, "fullPath", parse_path)
    if prefix is not None and full is not None:
        doc.error(node, f"{what} takes pathPrefix or fullPath, not both")
    return prefix, full


def rewrite_host(v: Any) -> str:
    host = normalise_host(v)
    if host.startswith("*") or not re.fullmatch(r"[a-z0-9.-]+(:[0-9]{1,5})?", host):
        raise ValueError(f"hostname must be a DNS name such as api.internal, got {v!r}")
    return host


# RFC 9110 field-name token; a value without CR, LF, NUL or other control characters (HTAB allowed).
TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


FIELD_VALUE = re.compile(r"[^\x00-\x08\x0a-\x1f\x7f]*")


# Written by the router itself, or framing and hop-by-hop: a route may not change them.
RESERVED_HEADERS = frozenset(("host", "content-length", "transfer-encoding", "connection", "keep-alive",
                               "proxy-connection", "te", "trailer", "upgrade", "via", "x-forwarded-for",
                               "x-forwarded-proto", "x-forwarded-host", "forwarded", "x-router-cluster",
                               "x-router-decision", "server-timing"))


MAX_HEADER_OPS = 16  # per list, as the Gateway API allows


def read_header_ops(doc: Doc, node: Node | None) -> HeaderOps | None:
    """{set: [{name, value}], add: [{name, value}], remove: [name]} (Gateway API HTTPHeaderFilter)."""
    if not doc.fields(node, {"set", "add", "remove"}):
        return None
    seen: dict[str, str] = {}

    def name_of(item: Node, verb: str) -> str | None:
        name = item.value if item.kind == "scalar" else None
        if not isinstance(name, str) or not TOKEN.fullmatch(name):
            doc.error(item, f"header name must be a token such as X-Env, got {name!r}")
            return None
        lower = name.lower()
        if lower in RESERVED_HEADERS:
            doc.error(item, f"header {name} is written by the router (framing, forwarding or routing) and "
                            "cannot be changed by a route")
            return None
        if lower in seen and (verb != "add" or seen[lower] != "add"):
            doc.error(item, f"header {name} is named twice (already in {seen[lower]})")
            return None
        seen[lower] = verb
        return name

    lists = {}
    for verb in ("set", "add"):
        pairs = []
        items = doc.seq(node, verb)
        if len(items) > MAX_HEADER_OPS:
            doc.error(node.get(verb), f"at most {MAX_HEADER_OPS} headers, got {len(items)}")
        for item in items:
            if not doc.fields(item, {"name", "value"}, {"name", "value"}) or item.get("name") is None \
                    or item.get("value") is None:
                continue
            name = name_of(item.get("name"), verb)
            value = item.get("value").value
            if not isinstance(value, str) or not FIELD_VALUE.fullmatch(value):
                doc.error(item.get("value"), f"header value must be a string without control characters, "
                                             f"got {value!r}")
            elif name is not None:
                pairs.append((name, value.strip(" \t")))
        lists[verb] = tuple(pairs)
    removed = doc.seq(node, "remove")
    if len(removed) > MAX_HEADER_OPS:
        doc.error(node.get("remove"), f"at most {MAX_HEADER_OPS} headers, got {len(removed)}")
    remove = tuple(n for n in (name_of(item, "remove") for item in removed) if n is not None)
    return HeaderOps(lists["set"], lists["add"], remove) if lists["set"] or lists["add"] or remove else None


def read_affinity(doc: Doc, node: Node | None) -> tuple[str, str] | None:
    """affinity: {header: X-User} | {cookie: session} | {pathSegments: 2}"""
    if not doc.fields(node, {"header", "cookie", "pathSegments"}):
        return None
    if len(node.children) != 1:
        doc.error(node, "affinity takes exactly one of header, cookie, pathSegments")
        return None
    (key, child), = node.children.items()
    if key == "pathSegments":
        if isinstance(child.value, bool) or not isinstance(child.value, int) or child.value < 1:
            doc.error(child, f"pathSegments must be a positive integer, got {child.value!r}")
            return None
        return ("path", str(child.value))
    if not isinstance(child.value, str) or not child.value:
        doc.error(child, f"expected a {key} name, got {child.value!r}")
        return None
    return (key, child.value)


_redirect_scheme = one_of("scheme", "http", "https")


def path_modifier(doc: Doc, path: Node) -> tuple[str | None, str | None]:
    """HTTPPathModifier {type: ReplacePrefixMatch | ReplaceFullPath, ...}: (prefix, full path)."""
    if not doc.fields(path, {"type", "replacePrefixMatch", "replaceFullPath"}, {"type"}):
        return None, None
    kind = doc.string(path, "type")
    key = {"ReplacePrefixMatch": "replacePrefixMatch", "ReplaceFullPath": "replaceFullPath"}.get(kind or "")
    if key is None:
        doc.error(path.get("type") or path, f"path type must be ReplacePrefixMatch or ReplaceFullPath, got {kind!r}")
    elif path.get(key) is None:
        doc.error(path, f"missing required field {path.child_path(key)!r}")
    elif key == "replacePrefixMatch":
        return doc.value(path, key, parse_path), None
    else:
        return None, doc.value(path, key, parse_path)
    return None, None


METHOD = one_of("method", "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")


def read_conditions(doc: Doc, m: Node) -> RouteMatch | None:
    """A match's header and query parameter conditions (type Exact, or RegularExpression: an RE2 pattern the
    whole value matches; a name once per match) and method: an HTTPRoute match's `headers`, `queryParams`,
    `method`, and a TrafficSplit's `match` the same (the caller has checked the mapping's fields)."""
    found, found_patterns = {}, {}
    for key, what in (("headers", "header"), ("queryParams", "query parameter")):
        pairs: dict[str, str] = {}
        patterns: dict[str, str] = {}
        for item in doc.seq(m, key):
            if not doc.fields(item, {"name", "value", "type"}, {"name", "value"}):
                continue
            kind = doc.value(item, "type", one_of(f"{what} match type", "Exact", "RegularExpression"), "Exact")
            name = doc.value(item, "name", _token_name)
            value = doc.value(item, "value", _match_value if kind != "RegularExpression" else parse_pattern)
            if name is None or value is None:
                continue
            name = name.lower() if key == "headers" else name
            if name in pairs or name in patterns:
                doc.error(item.get("name"), f"{what} {name} is matched twice")
                continue
            (patterns if kind == "RegularExpression" else pairs)[name] = value
        found[key], found_patterns[key] = tuple(pairs.items()), tuple(patterns.items())
    conditions = RouteMatch(found["headers"], found["queryParams"], doc.value(m, "method", METHOD),
                            found_patterns["headers"], found_patterns["queryParams"])
    return conditions if conditions != RouteMatch() else None


def header_name(v: Any) -> str:
    """A header name as a route option names it (CORS lists, authorization headers, the pin header)."""
    if not isinstance(v, str) or not TOKEN.fullmatch(v):
        raise ValueError(f"a header name is a token such as X-User, got {v!r}")
    return v


def _token_name(v: Any) -> str:
    if not isinstance(v, str) or not TOKEN.fullmatch(v):
        raise ValueError(f"name must be a token such as X-Canary, got {v!r}")
    return v


def parse_pattern(v: Any) -> str:
    """A match's RegularExpression value, checked by compiling it (the snapshot compiles it again, once per
    config)."""
    compile_pattern(v)
    return v


def _match_value(v: Any) -> str:
    if not isinstance(v, str) or len(v) > 4096 or not FIELD_VALUE.fullmatch(v):
        raise ValueError(f"value must be a string of at most 4096 characters without control characters, "
                         f"got {v!r}")
    return v
