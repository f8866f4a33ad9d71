"""The reader of a route's external authorization: a TrafficSplit's `externalAuth`, and an HTTPRoute rule's
ExternalAuth filter (the Gateway API's HTTPExternalAuthFilter, HTTP protocol). Problems are reported with
their line; what the router cannot do (the gRPC protocol) is refused, not ignored."""
from __future__ import annotations

import re
from typing import Any

from .doc import Doc, parse_path, positive_duration, read_list
from .model import ExternalAuth
from .route_options import RESERVED_HEADERS, header_name
from .values import parse_size
from .yamlsrc import Node

MAX_HEADERS = 64
# Sent to the authorization service with every check, whatever allowedHeaders lists.
ALWAYS_SENT = frozenset(("host", "authorization"))
_PLAIN_PATH = re.compile(r"(?:[-A-Za-z0-9/._~!$&'()*+,;=:@]|%[0-9a-fA-F]{2})+")


def read_external_auth(doc: Doc, node: Node | None) -> tuple[ExternalAuth, Node] | None:
    """externalAuth: {cluster, path, allowedHeaders, allowedResponseHeaders, timeout, forwardBody: {maxSize}};
    with the node the cluster's name is at, for the loader's check that such a Cluster exists."""
    if not doc.fields(node, {"cluster", "path", "allowedHeaders", "allowedResponseHeaders", "timeout", "forwardBody"},
                      {"cluster"}):
        return None
    cluster = doc.string(node, "cluster")
    auth = _auth(doc, node, cluster, doc.value(node, "timeout", positive_duration, 2.0), node.get("forwardBody"))
    return (auth, node.get("cluster")) if cluster and auth is not None else None


def read_gateway_external_auth(doc: Doc, node: Node) -> tuple[ExternalAuth, Node] | None:
    """An ExternalAuth filter's body: {protocol: HTTP, backendRef: {name}, http: {path, allowedHeaders,
    allowedResponseHeaders}, forwardBody: {maxSize}}; `protocol: GRPC` (Envoy's ext_authz protocol) is refused."""
    if not doc.fields(node, {"protocol", "backendRef", "http", "grpc", "forwardBody"}, {"protocol", "backendRef"}):
        return None
    if node.get("protocol") is not None and node.get("protocol").value != "HTTP":
        doc.error(node.get("protocol"), f"protocol must be HTTP (the gRPC ext_authz protocol is not supported), "
                                        f"got {node.get('protocol').value!r}")
        return None
    if node.get("grpc") is not None:
        doc.error(node.get("grpc"), "grpc settings go with protocol GRPC, which is not supported")
    ref = node.get("backendRef")
    if not doc.fields(ref, {"name", "kind", "group", "namespace", "port"}, {"name"}):
        return None
    cluster = doc.string(ref, "name")
    http = node.get("http")
    if http is not None and not doc.fields(http, {"path", "allowedHeaders", "allowedResponseHeaders"}):
        return None
    auth = _auth(doc, http, cluster, 2.0, node.get("forwardBody"))
    return (auth, ref.get("name")) if cluster and auth is not None else None


def _auth(doc: Doc, node: Node | None, cluster: str | None, timeout_s: float,
          body: Node | None) -> ExternalAuth | None:
    path = doc.value(node, "path", parse_path, "") if node is not None else ""
    if path and not _PLAIN_PATH.fullmatch(path):
        doc.error(node.get("path"), f"path must be plain path characters (or %XX escapes), got {path!r}")
    sent = _names(doc, node, "allowedHeaders", ())
    copied = _names(doc, node, "allowedResponseHeaders", RESERVED_HEADERS)
    forward = doc.value(body, "maxSize", parse_size, 0) if doc.fields(body, {"maxSize"}) else 0
    if cluster is None:
        return None
    at = body.get("maxSize") if forward else None
    return ExternalAuth(cluster, path.rstrip("/"), tuple(n for n in sent if n not in ALWAYS_SENT), copied, timeout_s,
                        forward, (at.file, at.line, at.path) if at is not None else ())


def _names(doc: Doc, node: Node | None, key: str, refused: frozenset) -> tuple[str, ...]:
    """A list of header names, lowercase; names in `refused` are reported at their line."""
    def parse(v: Any) -> str:
        name = header_name(v).lower()
        if name in refused:
            raise ValueError(f"header {v} is written by the router (framing, forwarding or routing) and cannot be "
                             "taken from the authorization service")
        return name
    return read_list(doc, node, key, parse, MAX_HEADERS)
