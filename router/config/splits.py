"""Readers of the split documents, each into PendingSplits (resolved against the Clusters by the
loader); a route's options are read by route_options.py, HTTPRoute's matches and filters here.

Accepted kinds:
  edge.router/v1alpha1 TrafficSplit, and networking.knative.dev/v1alpha1 TrafficSplit (the seed format)
  split.smi-spec.io/v1alpha1..v1alpha4 TrafficSplit (its matches name HTTPRouteGroups: smi.py)
  gateway.networking.k8s.io/v1, v1beta1 HTTPRoute
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .authz import read_external_auth, read_gateway_external_auth
from .cors import read_route_cors
from .doc import Doc, one_of, parse_path, parse_percent, positive_duration, positive_int, read_hosts
from .model import (Cors, DirectResponse, ExternalAuth, Fault, HeaderOps, Mirror, RateLimit, Redirect, RetryOn, Rewrite,
                    RouteMatch, RouteTimeouts, SessionPersistence, SourceRanges)
from .route_options import (checked_mirrors, non_negative_int, parse_pattern, path_modifier, read_affinity,
                            read_conditions, read_direct_response, read_fault, read_header_ops, read_mirrors,
                            read_rate_limit, read_redirect, read_retry, read_rewrite, read_route_timeouts,
                            read_session_persistence, read_source_ranges, rewrite_host)
from .values import normalise_host, parse_positive_size, parse_quantity, parse_selector, parse_weight
from .yamlsrc import Node


@dataclass
class PendingEntry:
    """A split entry before its Clusters are resolved: by selector, or by name."""
    label: str
    weight: float
    selector: tuple[tuple[str, str], ...] | None
    cluster_name: str | None
    node: Node
    request_headers: HeaderOps | None = None  # changes for this entry's clusters only, after the route's
    response_headers: HeaderOps | None = None


@dataclass
class PendingSplit:
    name: str
    kind: str
    hosts: tuple[str, ...]
    path_prefix: str
    entries: list[PendingEntry]
    algorithm: str
    max_rtt_s: float | None
    node: Node
    at: Node | None = None  # where weight problems are reported (the list of entries)
    declared: int = 0  # entries written, valid or not
    services: tuple[tuple[str, Node], ...] = ()  # spec.service: a Service name, else a host
    affinity: tuple[str, str] | None = None
    request_headers: HeaderOps | None = None
    response_headers: HeaderOps | None = None
    rewrite: Rewrite | None = None
    redirect: Redirect | None = None
    path_exact: bool = False  # path_prefix is an exact path (HTTPRoute's Exact match)
    timeouts: RouteTimeouts | None = None
    rate_limit: RateLimit | None = None
    retry: RetryOn | None = None
    mirrors: tuple[tuple[Mirror, Node], ...] = ()  # the Clusters they name are checked by the loader, at the node
    match: RouteMatch | None = None
    source_ranges: SourceRanges | None = None
    session: SessionPersistence | None = None
    cors: Cors | None = None
    auth: tuple[ExternalAuth, Node] | None = None  # the Cluster it names is checked by the loader, at the node
    max_body: int | None = None
    path_regex: str | None = None  # an RE2 pattern the whole path matches (path_prefix is then "/")
    direct: DirectResponse | None = None
    fault: Fault | None = None
    group_refs: tuple[tuple[str, Node], ...] = ()  # SMI spec.matches: HTTPRouteGroup names (expanded by smi.py)


def read_native_split(doc: Doc, kind: str) -> PendingSplit | None:
    """The seed TrafficSplit (networking.knative.dev/v1alpha1) and edge.router/v1alpha1."""
    name = doc.name()
    spec = doc.root.get("spec")
    answered = [key for key in ("redirect", "directResponse")  # by the router itself: no clusters
                if spec is not None and spec.kind == "map" and spec.get(key) is not None]
    if not doc.fields(spec, {"clusters", "strategy", "hosts", "service", "pathPrefix", "affinity", "requestHeaders",
                             "responseHeaders", "rewrite", "redirect", "timeouts", "rateLimit", "retry", "mirror",
                             "mirrors",
                             "match", "sourceRanges", "sessionPersistence", "cors", "externalAuth", "maxBody",
                             "directResponse", "fault"},
                       set() if answered else {"clusters"}):
        if spec is None:
            doc.error(doc.root, "missing required field 'spec'")
        return None
    entries = []
    for item in doc.seq(spec, "clusters"):
        if not doc.fields(item, {"name", "weight", "selector", "requestHeaders", "responseHeaders"}, {"weight"}):
            continue
        label = doc.string(item, "name") or ""
        selector = doc.value(item, "selector", parse_selector)
        if item.get("selector") is None and not label:
            doc.error(item, "entry needs a selector or a name")
            continue
        weight = doc.value(item, "weight", parse_weight)
        if weight is None:
            continue
        entries.append(PendingEntry(label or str(item.get("selector").value), weight, selector,
                                    None if item.get("selector") is not None else label, item,
                                    read_header_ops(doc, item.get("requestHeaders")),
                                    read_header_ops(doc, item.get("responseHeaders"))))
    algorithm, max_rtt = "latency-aware", None
    strat = spec.get("strategy")
    if doc.fields(strat, {"algorithm", "params"}):
        algorithm = doc.value(strat, "algorithm", _algorithm, algorithm)
        params = strat.get("params")
        if doc.fields(params, {"maxRTT"}):
            max_rtt = doc.value(params, "maxRTT", positive_duration)
    hosts = read_hosts(doc, doc.seq(spec, "hosts"))
    services = _service_refs(doc, spec)
    prefix = doc.value(spec, "pathPrefix", parse_path, "/")
    redirect = read_redirect(doc, spec.get("redirect"))
    direct = read_direct_response(doc, spec.get("directResponse"))
    if answered:
        what = "a redirect" if answered[0] == "redirect" else "a direct response"
        for key in ("clusters", "rewrite", "timeouts", "retry", "mirror", "mirrors", "affinity", "requestHeaders",
                    "responseHeaders", "sessionPersistence", "cors", "externalAuth", "maxBody", "fault",
                    *answered[1:]):
            if spec.get(key) is not None:  # each would be accepted and do nothing
                doc.error(spec.get(key), f"{what} is answered by the router: {key} cannot go with it")
    response_ops = read_header_ops(doc, spec.get("responseHeaders"))
    return PendingSplit(name, kind, hosts, prefix, entries, algorithm, max_rtt, doc.root, spec.get("clusters"),
                        len(doc.seq(spec, "clusters")), services, read_affinity(doc, spec.get("affinity")),
                        read_header_ops(doc, spec.get("requestHeaders")), response_ops,
                        read_rewrite(doc, spec.get("rewrite")),
                        redirect, timeouts=read_route_timeouts(doc, spec.get("timeouts")),
                        rate_limit=read_rate_limit(doc, spec.get("rateLimit")),
                        retry=read_retry(doc, spec.get("retry")), mirrors=read_mirrors(doc, spec),
                        match=read_conditions(doc, spec.get("match"))
                        if doc.fields(spec.get("match"), {"headers", "queryParams", "method"}) else None,
                        source_ranges=read_source_ranges(doc, spec.get("sourceRanges")),
                        session=_session(doc, spec),
                        cors=read_route_cors(doc, spec.get("cors"), response_ops, spec.get("responseHeaders")),
                        auth=read_external_auth(doc, spec.get("externalAuth")),
                        max_body=doc.value(spec, "maxBody", parse_positive_size), direct=direct,
                        fault=read_fault(doc, spec.get("fault")))


def _session(doc: Doc, node: Node) -> SessionPersistence | None:
    """A TrafficSplit's sessionPersistence, refused beside its affinity: one key decides where a request
    goes (an HTTPRoute rule has no affinity)."""
    session = read_session_persistence(doc, node.get("sessionPersistence"))
    if session is not None and node.get("affinity") is not None:
        doc.error(node.get("sessionPersistence"), "sessionPersistence and affinity cannot go together")
    return session


def _gateway_mirror(doc: Doc, node: Node) -> tuple[Mirror, Node] | None:
    """requestMirror: {backendRef: {name}, percent | fraction: {numerator, denominator}}."""
    if not doc.fields(node, {"backendRef", "percent", "fraction"}, {"backendRef"}):
        return None
    ref = node.get("backendRef")
    if not doc.fields(ref, {"name", "port", "kind", "group", "namespace"}, {"name"}):
        return None
    percent = doc.value(node, "percent", parse_percent, 100.0)
    fraction = node.get("fraction")
    if fraction is not None and node.get("percent") is not None:
        doc.error(fraction, "requestMirror takes percent or fraction, not both")
    elif doc.fields(fraction, {"numerator", "denominator"}, {"numerator"}):
        numerator = doc.value(fraction, "numerator", non_negative_int, 0)
        denominator = doc.value(fraction, "denominator", positive_int, 100)
        if numerator > denominator:
            doc.error(fraction, f"numerator ({numerator}) is above denominator ({denominator})")
        else:
            percent = 100.0 * numerator / denominator
    name = doc.string(ref, "name")
    return (Mirror(name, percent), ref.get("name")) if name else None


def _service_refs(doc: Doc, spec: Node) -> tuple:
    node = spec.get("service")
    if node is None:
        return ()
    try:
        return ((normalise_host(node.value), node),)
    except ValueError as exc:
        doc.error(node, str(exc))
        return ()


_algorithm = one_of("algorithm", "latency-aware", "weighted")


def _route_group_kind(v: Any) -> str:
    if v != "HTTPRouteGroup":
        raise ValueError(f"the kind a TrafficSplit's matches name is HTTPRouteGroup, got {v!r}")
    return v


def read_smi_split(doc: Doc, version: str) -> PendingSplit | None:
    name = doc.name()
    spec = doc.root.get("spec")
    if not doc.fields(spec, {"service", "backends", "matches"}, {"service", "backends"}):
        if spec is None:
            doc.error(doc.root, "missing required field 'spec'")
        return None
    group_refs = []
    for ref in doc.seq(spec, "matches"):
        if doc.fields(ref, {"kind", "name", "apiGroup"}, {"kind", "name"}):
            doc.value(ref, "kind", _route_group_kind)
            group = doc.string(ref, "name")
            if group:
                group_refs.append((group, ref.get("name")))
    parse = parse_quantity if version == "v1alpha1" else parse_weight
    entries = []
    for item in doc.seq(spec, "backends"):
        if not doc.fields(item, {"service", "weight"}, {"service", "weight"}):
            continue
        cluster, weight = doc.string(item, "service"), doc.value(item, "weight", parse)
        if cluster and weight is not None:
            entries.append(PendingEntry(cluster, weight, None, cluster, item))
    return PendingSplit(name, f"smi/{version}", (), "/", entries, "weighted", None, doc.root,
                        spec.get("backends"), len(doc.seq(spec, "backends")), _service_refs(doc, spec),
                        group_refs=tuple(group_refs))


def _gateway_weight(v: Any) -> float:
    w = parse_weight(v)
    if w != int(w) or w > 1_000_000:
        raise ValueError(f"weight must be an integer 0..1000000, got {v!r}")
    return w


def read_httproute(doc: Doc) -> list[PendingSplit]:
    """Each rule becomes one split per distinct match (path, and header, query parameter and method
    conditions; matches are ORed; a rule without matches takes the prefix "/"). What the router cannot
    honour is refused with its line rather than ignored, as the Gateway API asks of a rule it cannot
    implement: regular expression matches, and filters other than those read here."""
    name = doc.name()
    spec = doc.root.get("spec")
    if not doc.fields(spec, {"parentRefs", "hostnames", "rules"}, {"rules"}):
        if spec is None:
            doc.error(doc.root, "missing required field 'spec'")
        return []
    hosts = read_hosts(doc, doc.seq(spec, "hostnames"))
    splits = []
    for i, rule in enumerate(doc.seq(spec, "rules")):
        redirects = rule.kind == "map" and "RequestRedirect" in {_filter_type(f) for f in doc.seq(rule, "filters")}
        if not doc.fields(rule, {"matches", "backendRefs", "filters", "timeouts", "retry", "name",
                                 "sessionPersistence"}, set() if redirects else {"backendRefs"}):
            continue
        prefixes = []  # (path, exact, RE2 pattern or None, RouteMatch | None)
        for m in doc.seq(rule, "matches"):
            if not doc.fields(m, {"path", "headers", "queryParams", "method"}):
                continue
            match = _path_match(doc, m.get("path")) + (read_conditions(doc, m),)
            if match not in prefixes:
                prefixes.append(match)
        request_ops, response_ops, rewrite, redirect, mirrors, cors, auth = _rule_filters(doc, rule)
        replaces_prefix = rewrite and rewrite.path_prefix or redirect and redirect.path_prefix
        if replaces_prefix and any(exact or regex for _, exact, regex, _ in prefixes):
            doc.error(rule.get("filters"), "ReplacePrefixMatch needs PathPrefix matches (an Exact or "
                                           "RegularExpression match has no prefix to replace)")
        timeouts = read_route_timeouts(doc, rule.get("timeouts"), gateway=True)
        retry = read_retry(doc, rule.get("retry"), gateway=True)
        session = read_session_persistence(doc, rule.get("sessionPersistence"))
        entries = []
        for ref in doc.seq(rule, "backendRefs"):
            if not doc.fields(ref, {"name", "weight", "port", "kind", "group", "namespace", "filters"},
                              {"name"}):
                continue
            own_request, own_response = _backend_filters(doc, ref)
            cluster = doc.string(ref, "name")
            weight = doc.value(ref, "weight", _gateway_weight, 1.0)
            if cluster and weight is not None:
                entries.append(PendingEntry(cluster, weight, None, cluster, ref, own_request, own_response))
        prefixes = prefixes or [("/", False, None, None)]
        for j, (prefix, exact, regex, conditions) in enumerate(prefixes):
            split_name = f"{name}/rule{i}" if len(prefixes) == 1 else f"{name}/rule{i}/match{j}"
            splits.append(PendingSplit(split_name, "httproute", hosts, prefix, list(entries), "weighted",
                                       None, rule, rule.get("backendRefs"), len(doc.seq(rule, "backendRefs")),
                                       request_headers=request_ops, response_headers=response_ops,
                                       rewrite=rewrite, redirect=redirect, path_exact=exact, timeouts=timeouts,
                                       retry=retry, mirrors=mirrors, match=conditions, session=session,
                                       cors=cors, auth=auth, path_regex=regex))
    return splits


def _path_match(doc: Doc, path: Node | None) -> tuple[str, bool, str | None]:
    """A match's path: (prefix, exact, RE2 pattern): PathPrefix (the default, "/"), Exact, or RegularExpression
    (the whole path matches the pattern; its route's prefix is "/")."""
    if path is None or not doc.fields(path, {"type", "value"}):
        return "/", False, None
    kind = doc.value(path, "type", one_of("path match type", "PathPrefix", "Exact", "RegularExpression"),
                     "PathPrefix")
    if kind == "RegularExpression":
        pattern = doc.value(path, "value", parse_pattern)
        return "/", False, pattern
    return doc.value(path, "value", parse_path, "/"), kind == "Exact", None


_FILTERS = {"RequestHeaderModifier": "requestHeaderModifier", "ResponseHeaderModifier": "responseHeaderModifier",
            "URLRewrite": "urlRewrite", "RequestRedirect": "requestRedirect", "RequestMirror": "requestMirror",
            "CORS": "cors", "ExternalAuth": "externalAuth"}


def _rule_filters(doc: Doc, rule: Node) -> tuple[HeaderOps | None, HeaderOps | None, Rewrite | None,
                                                 Redirect | None, tuple[tuple[Mirror, Node], ...], Cors | None,
                                                 tuple[ExternalAuth, Node] | None]:
    """A rule's RequestHeaderModifier, ResponseHeaderModifier, URLRewrite, RequestRedirect, RequestMirror
    (several may go, each to another Cluster), CORS and ExternalAuth (each other at most once; a redirect with
    neither a rewrite, CORS, ExternalAuth nor backendRefs); any other filter is refused."""
    found: dict[str, Any] = {}
    for item in doc.seq(rule, "filters"):
        kind = _filter_type(item)
        if kind not in _FILTERS:
            _unsupported_filter(doc, item, kind)
            continue
        if not doc.fields(item, {"type", _FILTERS[kind]}, {_FILTERS[kind]}) or item.get(_FILTERS[kind]) is None:
            continue
        if kind in found and kind != "RequestMirror":  # (mirrors may be several, each to another Cluster)
            doc.error(item, f"filter {kind} is given twice")
            continue
        body = item.get(_FILTERS[kind])
        if kind == "URLRewrite":
            found[kind] = _url_rewrite(doc, body)
        elif kind == "RequestMirror":
            mirror = _gateway_mirror(doc, body)
            found[kind] = found.get(kind, []) + ([mirror] if mirror is not None else [])
        elif kind == "RequestRedirect":
            found[kind] = read_redirect(doc, body, gateway=True)
            if doc.seq(rule, "backendRefs"):
                doc.error(rule.get("backendRefs"), "a rule with a RequestRedirect filter is answered by the router: "
                                                   "backendRefs cannot go with it")
            for other in ("URLRewrite", "CORS", "ExternalAuth"):
                if other in {_filter_type(f) for f in doc.seq(rule, "filters")}:
                    doc.error(item, f"RequestRedirect and {other} cannot be used together")
        elif kind == "CORS":
            found[kind] = body
        elif kind == "ExternalAuth":
            found[kind] = read_gateway_external_auth(doc, body)
        else:
            found[kind] = read_header_ops(doc, body)
    response_ops = found.get("ResponseHeaderModifier")
    cors = None
    if "CORS" in found:
        cors = read_route_cors(doc, found["CORS"], response_ops, rule.get("filters"))
    mirrors = checked_mirrors(doc, found.get("RequestMirror", []), rule.get("filters"))
    return (found.get("RequestHeaderModifier"), response_ops, found.get("URLRewrite"),
            found.get("RequestRedirect"), mirrors, cors, found.get("ExternalAuth"))


def _url_rewrite(doc: Doc, node: Node) -> Rewrite | None:
    """urlRewrite: {hostname, path: {type: ReplacePrefixMatch, replacePrefixMatch} | {type: ReplaceFullPath,
    replaceFullPath}}"""
    if not doc.fields(node, {"hostname", "path"}):
        return None
    path = node.get("path")
    prefix, full = path_modifier(doc, path) if path is not None else (None, None)
    rewrite = Rewrite(prefix, full, doc.value(node, "hostname", rewrite_host))
    return rewrite if rewrite != Rewrite() else None


def _backend_filters(doc: Doc, ref: Node) -> tuple[HeaderOps | None, HeaderOps | None]:
    """A backendRef's RequestHeaderModifier and ResponseHeaderModifier (each at most once): changes for
    requests sent to that backend and its answers, after the rule's own; any other filter is refused."""
    found: dict[str, HeaderOps | None] = {}
    for item in doc.seq(ref, "filters"):
        kind = _filter_type(item)
        if kind not in ("RequestHeaderModifier", "ResponseHeaderModifier"):
            _unsupported_filter(doc, item, kind)
            continue
        if not doc.fields(item, {"type", _FILTERS[kind]}, {_FILTERS[kind]}):
            continue
        if kind in found:
            doc.error(item, f"filter {kind} is given twice")
            continue
        found[kind] = read_header_ops(doc, item.get(_FILTERS[kind]))
    return found.get("RequestHeaderModifier"), found.get("ResponseHeaderModifier")


def _filter_type(item: Node) -> str | None:
    kind = item.get("type").value if item.kind == "map" and item.get("type") is not None else None
    return kind if isinstance(kind, str) else None


def _unsupported_filter(doc: Doc, item: Node, kind) -> None:
    doc.error(item, f"filter {kind or '(no type)'} is not supported here (a route that cannot apply its filters "
                    "is refused, not served without them)")
