"""Load config from files or directories into a validated, frozen `Config`.

Two passes: read every document (clusters, router settings, pending splits), then
resolve split entries to Clusters and check the degenerate cases. Every problem is
collected; `load_config` raises one ConfigError listing them all.
"""
from __future__ import annotations

from .cors import owned_by_cors
from .doc import Doc
from .errors import ConfigError, Problems
from .kinds import read_cluster, read_router, read_service
from .model import Backend, ClusterConfig, Config, RouterSettings, ServiceConfig, SplitConfig
from .smi import RouteGroup, expand_matches, read_route_group
from .splits import PendingSplit, read_httproute, read_native_split, read_smi_split
from .yamlsrc import Node, config_files, parse_documents, read_documents

EDGE = "edge.router/v1alpha1"
SMI_VERSIONS = ("v1alpha1", "v1alpha2", "v1alpha3", "v1alpha4")
GATEWAY_VERSIONS = ("v1", "v1beta1")


def load_config(*paths: str, documents: tuple[tuple[str, str], ...] = ()) -> Config:
    """Files and directories in `paths`, plus in-memory `documents` as (source name, YAML text),
    for example custom resources read from a cluster."""
    problems = Problems()
    clusters: list[ClusterConfig] = []
    routers: list[tuple[RouterSettings, Node]] = []
    pending: list[PendingSplit] = []
    files: list[str] = []
    cluster_names: list[tuple[str, str]] = []  # Clusters that failed to load
    services: list[ServiceConfig] = []
    groups: list[RouteGroup] = []  # SMI HTTPRouteGroups, for the SMI splits' matches
    for path in paths:
        for file in config_files(path):
            files.append(file)
            try:
                docs = list(read_documents(file))
            except ConfigError as exc:
                problems.items.extend(exc.problems)
                continue
            for root in docs:
                _dispatch(Doc(root, problems), clusters, routers, pending, cluster_names, services, groups)
    for source, text in documents:
        files.append(source)
        try:
            docs = list(parse_documents(text, source))
        except ConfigError as exc:
            problems.items.extend(exc.problems)
            continue
        for root in docs:
            _dispatch(Doc(root, problems), clusters, routers, pending, cluster_names, services, groups)
    if not files:
        problems.add(paths[0] if paths else "-", 0, "", "no .yaml or .yml files found")
    router = _one_router(routers, problems)
    _check_unique(sorted([(c.name, c.source) for c in clusters] + cluster_names,
                         key=lambda ns: (ns[1].rpartition(":")[0], int(ns[1].rpartition(":")[2]))),
                  "Cluster", problems)
    _check_unique([(s.name, s.source) for s in services], "Service", problems)
    _check_services(services, clusters, problems)
    splits = _resolve(expand_matches(pending, groups, problems), clusters, services, problems)
    for split in splits:  # a body the router may not hold whole could never be sent with its check
        if split.auth is not None and split.auth.forward_body > router.limits.max_buffered_bytes:
            problems.add(*split.auth.forward_body_at, f"{split.auth.forward_body} bytes is more than the Router's "
                         f"limits.maxBuffered ({router.limits.max_buffered_bytes}), what a request may hold buffered")
    problems.raise_if_any()
    return Config(router, tuple(clusters), tuple(splits), tuple(files), tuple(services))


def _check_services(services: list[ServiceConfig], clusters: list[ClusterConfig], problems: Problems) -> None:
    names = {c.name for c in clusters}
    owner: dict[str, str] = {}
    for svc in services:
        file, _, line = svc.source.rpartition(":")
        for cluster, _state in svc.static_state:
            if cluster not in names:
                problems.add(file, int(line), "spec.state", f"no Cluster named {cluster!r}")
        for host in svc.hosts:
            if host in owner:
                problems.add(file, int(line), "spec.hosts", f"host {host!r} already belongs to Service {owner[host]!r}")
            owner[host] = svc.name


def _dispatch(doc: Doc, clusters, routers, pending, cluster_names, services, groups) -> None:
    root = doc.root
    if root.kind != "map":
        doc.error(root, "a document must be a mapping with apiVersion and kind")
        return
    api, kind = root.value.get("apiVersion"), root.value.get("kind")
    if not isinstance(api, str) or not isinstance(kind, str):
        doc.error(root, "document needs apiVersion and kind")
        return
    group, _, version = api.rpartition("/")
    smi_v1alpha1_group = kind == "HTTPRouteGroup" and api == "specs.smi-spec.io/v1alpha1"  # (matches at the top)
    top = {"apiVersion", "kind", "metadata", "spec", "status"}
    doc.fields(root, top | {"matches"} if smi_v1alpha1_group else top)
    if api == EDGE and kind == "Cluster":
        c = read_cluster(doc)
        if c:
            clusters.append(c)
        else:  # still take part in the duplicate-name check
            name = root.value.get("metadata", {}).get("name") if isinstance(root.value.get("metadata"), dict) else None
            if isinstance(name, str):
                cluster_names.append((name, f"{root.file}:{root.line}"))
    elif api == EDGE and kind == "Service":
        svc = read_service(doc)
        if svc:
            services.append(svc)
    elif api == EDGE and kind == "Router":
        r = read_router(doc)
        if r:
            routers.append((r, root))
    elif kind == "TrafficSplit" and api in (EDGE, "networking.knative.dev/v1alpha1"):
        s = read_native_split(doc, "trafficsplit")
        if s:
            pending.append(s)
    elif kind == "TrafficSplit" and group == "split.smi-spec.io" and version in SMI_VERSIONS:
        s = read_smi_split(doc, version)
        if s:
            pending.append(s)
    elif kind == "HTTPRoute" and group == "gateway.networking.k8s.io" and version in GATEWAY_VERSIONS:
        pending.extend(read_httproute(doc))
    elif kind == "HTTPRouteGroup" and group == "specs.smi-spec.io" and version in SMI_VERSIONS:
        g = read_route_group(doc, version)
        if g:
            groups.append(g)
    else:
        line_node = root.get("kind") or root
        doc.problems.add(root.file, line_node.line, "kind", f"unknown kind {kind!r} in apiVersion {api!r}")


def _one_router(routers, problems: Problems) -> RouterSettings:
    for extra, node in routers[1:]:
        problems.add(node.file, node.line, "kind", "more than one Router document")
    return routers[0][0] if routers else RouterSettings()


def _check_unique(names: list[tuple[str, str]], what: str, problems: Problems) -> None:
    seen: dict[str, str] = {}
    for name, source in names:
        if name in seen:
            file, _, line = source.rpartition(":")
            problems.add(file, int(line or 0), "metadata.name",
                         f"duplicate {what} name {name!r} (first at {seen[name]})")
        else:
            seen[name] = source


def _resolve(pending: list[PendingSplit], clusters: list[ClusterConfig], services: list[ServiceConfig],
             problems: Problems) -> list[SplitConfig]:
    by_name = {c.name: c for c in clusters}
    service_hosts = {s.name: s.hosts for s in services}
    for p in pending:  # spec.service names a Service (its hosts), or is itself a host
        for ref, _node in p.services:
            p.hosts = p.hosts + tuple(h for h in service_hosts.get(ref, (ref,)) if h not in p.hosts)
    _check_unique([(p.name, f"{p.node.file}:{p.node.line}") for p in pending], "TrafficSplit", problems)
    routes: dict[tuple, PendingSplit] = {}
    out = []
    for p in pending:
        for key in [(h, p.path_prefix, p.path_exact, p.match, p.path_regex) for h in p.hosts] or \
                [("", p.path_prefix, p.path_exact, p.match, p.path_regex)]:
            if key in routes:
                first = routes[key].node
                what = f"host {key[0]!r}" if key[0] else "default route"
                also = " with the same header, query and method conditions" if key[3] else ""
                problems.add(p.node.file, p.node.line, "spec",
                             f"{what} {'path pattern' if key[4] else 'exact path' if key[2] else 'path'} "
                             f"{key[4] or key[1]!r}{also} already routed by "
                             f"{routes[key].name!r} ({first.file}:{first.line})")
            routes[key] = p
        weights: dict[str, float] = {}
        own_headers: dict[str, tuple] = {}  # cluster -> (request ops, response ops) of the entry naming it
        for e in p.entries:
            if e.selector is not None:
                matched = [c for c in clusters if all(c.label(k) == v for k, v in e.selector)]
                if not matched:
                    sel = ",".join(f"{k}={v}" for k, v in e.selector)
                    problems.add(e.node.file, e.node.get("selector").line, e.node.child_path("selector"),
                                 f"selector {sel!r} matches no Cluster")
            else:
                matched = [by_name[e.cluster_name]] if e.cluster_name in by_name else []
                if not matched:
                    field = "name" if e.node.get("name") is not None else "service"
                    node = e.node.get(field) or e.node
                    problems.add(e.node.file, node.line, node.path, f"no Cluster named {e.cluster_name!r}")
            clash = owned_by_cors(e.response_headers) if p.cors is not None else None
            if clash is not None:
                problems.add(e.node.file, e.node.line, e.node.path,
                             f"header {clash} is written by the route's CORS policy")
            for c in matched:  # an entry's weight is shared by the clusters it selects
                weights[c.name] = weights.get(c.name, 0.0) + e.weight / len(matched)
                ops = (e.request_headers, e.response_headers)
                if own_headers.setdefault(c.name, ops) != ops:
                    problems.add(e.node.file, e.node.line, e.node.path,
                                 f"Cluster {c.name!r} is given other header changes by another entry of the split")
        at = p.at or p.node
        if p.entries and all(e.weight == 0 for e in p.entries):
            problems.add(at.file, at.line, at.path, "all weights are zero")
        elif not p.declared and p.redirect is None and p.direct is None:
            problems.add(at.file, at.line, at.path or "spec", "no backends")
        for ref in (*p.mirrors, p.auth):  # (option, the node naming its Cluster)
            if ref is not None and ref[0].cluster not in by_name:
                problems.add(ref[1].file, ref[1].line, ref[1].path, f"no Cluster named {ref[0].cluster!r}")
        mirrors = tuple(m for m, _node in p.mirrors)
        auth = p.auth[0] if p.auth is not None else None
        out.append(SplitConfig(p.name, p.kind, p.hosts, p.path_prefix,
                               tuple(Backend(n, w) for n, w in weights.items()), p.algorithm, p.max_rtt_s,
                               f"{p.node.file}:{p.node.line}", p.affinity, p.request_headers, p.response_headers,
                               p.rewrite, p.redirect, p.path_exact, p.timeouts, p.rate_limit, p.retry, mirrors,
                               p.match, p.source_ranges, p.session, p.cors, auth, p.max_body,
                               p.direct, p.fault, p.path_regex,
                               tuple((n, *ops) for n, ops in own_headers.items() if ops != (None, None))))
    return out
