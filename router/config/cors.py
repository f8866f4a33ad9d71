"""The reader of a route's `cors` (a TrafficSplit's field, an HTTPRoute rule's CORS filter: the same
fields as the Gateway API's HTTPCORSFilter). Problems are reported with their line."""
from __future__ import annotations

from typing import Any

from ..core.cors import OWNED, parse_origin
from .doc import Doc, parse_bool, read_list
from .model import Cors, HeaderOps
from .route_options import TOKEN, header_name
from .yamlsrc import Node

MAX_ITEMS = 64


def read_cors(doc: Doc, node: Node | None) -> Cors | None:
    """cors: {allowOrigins, allowCredentials, allowMethods, allowHeaders, exposeHeaders, maxAge}. A policy
    that allows no origin shares nothing, so allowOrigins is required."""
    if not doc.fields(node, {"allowOrigins", "allowCredentials", "allowMethods", "allowHeaders", "exposeHeaders",
                             "maxAge"}, {"allowOrigins"}):
        return None
    origins = _list(doc, node, "allowOrigins", _origin)
    credentials = doc.value(node, "allowCredentials", parse_bool, False)
    expose = _list(doc, node, "exposeHeaders", header_name)
    if credentials and expose == ("*",):
        doc.error(node.get("exposeHeaders"), "'*' is taken as a header name by a browser when credentials are "
                                             "allowed: list the headers scripts may read")
    cors = Cors(origins, credentials, _list(doc, node, "allowMethods", _method),
                _list(doc, node, "allowHeaders", header_name), expose, doc.value(node, "maxAge", _max_age, 5))
    return cors if origins else None


def read_route_cors(doc: Doc, node: Node | None, response_ops: HeaderOps | None,
                    ops_node: Node | None) -> Cors | None:
    """A route's cors; the route's response header changes may not touch the Access-Control-* fields the
    policy writes (`ops_node`: where those changes are, for the error's line)."""
    cors = read_cors(doc, node)
    name = owned_by_cors(response_ops) if cors is not None else None
    if name is not None:
        doc.error(ops_node, f"header {name} is written by the route's CORS policy")
    return cors


def owned_by_cors(ops: HeaderOps | None) -> str | None:
    """The first header `ops` touch that a CORS policy writes itself, if any."""
    if ops is None:
        return None
    return next((name for name in (*(n for n, _ in ops.set), *(n for n, _ in ops.add), *ops.remove)
                 if name.lower().encode() in OWNED), None)


def _list(doc: Doc, node: Node, key: str, parse) -> tuple[str, ...]:
    """A list of distinct values, each checked at its line; `*` stands alone."""
    out = read_list(doc, node, key, lambda v: "*" if v == "*" else parse(v), MAX_ITEMS)
    if "*" in out and len(out) > 1:
        doc.error(node.get(key), "'*' cannot be listed with other entries (it already means all)")
        return ()
    if node.get(key) is not None and not doc.seq(node, key):
        doc.error(node.get(key), "expected at least one entry")
    return out


def _origin(v: Any) -> str:
    parsed = parse_origin(v) if isinstance(v, str) else None
    host = parsed[1] if parsed else ""
    if parsed is None or "*" in host and not (host == "*" or host.startswith("*.") and "*" not in host[1:]):
        raise ValueError(f"an origin is scheme://host[:port] with scheme http or https, the host possibly '*' "
                         f"or starting with '*.', got {v!r}")
    return v.lower()


def _method(v: Any) -> str:
    if not isinstance(v, str) or not TOKEN.fullmatch(v):
        raise ValueError(f"a method is a token such as GET or PUT, got {v!r}")
    return v


def _max_age(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 2**31 - 1:
        raise ValueError(f"maxAge is whole seconds, at least 1, got {v!r}")
    return v
