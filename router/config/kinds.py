"""Readers of the documents that are not splits: Cluster, Router and Service (edge.router/v1alpha1).
Splits (TrafficSplit in its three formats, HTTPRoute) are read in splits.py.
"""
from __future__ import annotations

import re
from dataclasses import replace
from typing import Any, Callable

from .doc import (Doc, one_of, parse_bool, parse_path, parse_percent, parse_port, positive_duration, positive_int,
                  read_cidrs, read_hosts, redirect_code)
from .model import (BufferSettings, ClientCertificates, ClusterConfig, Compression, Endpoint, Http2, HttpsRedirect,
                    KubernetesRef, Limits, OutlierDetection, PinHeader, Probes, ResourceWatch, RouterSettings,
                    ServiceConfig, SlowStart, SniCertificate, Timeouts, Tls, UpstreamTls, Workload)
from .route_options import RESERVED_HEADERS, header_name
from .values import (check_ca_file, check_tls_pair, parse_duration, parse_endpoint, parse_hostport,
                     parse_positive_size, parse_server_name, parse_size, parse_tls_version, upstream_context)
from .yamlsrc import Node


def read_cluster(doc: Doc) -> ClusterConfig | None:
    name = doc.name()
    meta = doc.root.get("metadata")
    labels: dict[str, str] = {}
    lab = meta.get("labels") if meta is not None and meta.kind == "map" else None
    if lab is not None:
        if lab.kind != "map":
            doc.error(lab, "expected a mapping of label: value")
        else:
            labels = {str(k): str(c.value) for k, c in lab.children.items()}
    spec = doc.root.get("spec")
    if not doc.fields(spec, {"endpoint", "kubernetes", "probe", "maxRequests", "tls", "preconnect",
                             "maxRequestsPerConnection", "maxConnectionAge"}, {"endpoint"}):
        if spec is None:
            doc.error(doc.root, "missing required field 'spec'")
        return None
    endpoint = doc.value(spec, "endpoint", parse_endpoint)
    kube = None
    knode = spec.get("kubernetes")
    if doc.fields(knode, {"kubeconfig", "context", "inCluster"}):
        kube = KubernetesRef(doc.string(knode, "kubeconfig"), doc.string(knode, "context"),
                             doc.value(knode, "inCluster", parse_bool, False))
    probe_path = "/"
    pnode = spec.get("probe")
    if doc.fields(pnode, {"path"}):
        probe_path = doc.value(pnode, "path", parse_path, "/")
    max_requests = doc.value(spec, "maxRequests", positive_int)
    preconnect = doc.value(spec, "preconnect", _preconnect_count, 0)
    reuse = (doc.value(spec, "maxRequestsPerConnection", positive_int),
             doc.value(spec, "maxConnectionAge", positive_duration))
    if not name or endpoint is None:
        return None
    tnode = spec.get("tls")
    if tnode is not None:
        tls = _read_upstream_tls(doc, tnode, endpoint)
        if tls is None:
            return None
        endpoint = replace(endpoint, tls=tls)
    return ClusterConfig(name, tuple(sorted(labels.items())), endpoint, probe_path, kube,
                         f"{doc.root.file}:{doc.root.line}", max_requests, preconnect, *reuse)


def _preconnect_count(v: Any) -> int:
    """Idle connections to keep open to a cluster: 0 (none, the default) to 64."""
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 64:
        raise ValueError(f"expected a number of connections from 0 to 64, got {v!r}")
    return v


def read_router(doc: Doc) -> RouterSettings | None:
    doc.name()
    spec = doc.root.get("spec")
    if not doc.fields(spec, {"listen", "admin", "adminToken", "trustedProxies", "limits", "timeouts",
                             "serverTiming", "via", "probes", "rttDecay", "decisionHeader", "buffer",
                             "resources", "accessLog", "normalizePath", "underscoreHeaders", "errorFormat", "pinHeader",
                             "tls", "requestId", "escapedSlashes", "httpsRedirect", "proxyProtocol", "compression",
                             "slowStart", "outlierDetection", "http2", "earlyHints", "fastPath"}):
        return RouterSettings()
    d = RouterSettings()
    hostport = lambda v: (parse_hostport(v), v)[1]  # noqa: E731 - validate, keep the text
    token_env, token_file = d.admin_token_env, None
    tnode = spec.get("adminToken")
    if doc.fields(tnode, {"env", "file"}):
        token_env = doc.string(tnode, "env", token_env)
        token_file = doc.string(tnode, "file")
    proxies = read_cidrs(doc, doc.seq(spec, "trustedProxies"))
    lim, dl = spec.get("limits"), Limits()
    limits = dl
    if doc.fields(lim, {"maxRequestLine", "maxHeaderBytes", "maxHeaders", "maxBody", "maxBuffered",
                        "maxConnections", "maxRequestsPerConnection", "maxConnectionsPerClient"}):
        limits = Limits(doc.value(lim, "maxRequestLine", parse_positive_size, dl.max_request_line_bytes),
                        doc.value(lim, "maxHeaderBytes", parse_positive_size, dl.max_header_bytes),
                        doc.value(lim, "maxHeaders", positive_int, dl.max_header_count),
                        doc.value(lim, "maxBody", parse_positive_size, dl.max_body_bytes),
                        doc.value(lim, "maxBuffered", parse_positive_size, dl.max_buffered_bytes),
                        doc.value(lim, "maxConnections", positive_int, dl.max_connections),
                        doc.value(lim, "maxRequestsPerConnection", positive_int, dl.max_requests_per_connection),
                        doc.value(lim, "maxConnectionsPerClient", positive_int, dl.max_connections_per_client))
    tim, dt = spec.get("timeouts"), Timeouts()
    timeouts = dt
    if doc.fields(tim, {"headerRead", "idle", "connect", "upstreamHeader", "upstreamIdle", "drain", "perTry",
                        "bodyIdle", "tunnelIdle", "maxConnectionAge"}):
        timeouts = Timeouts(doc.value(tim, "headerRead", positive_duration, dt.header_read_s),
                            doc.value(tim, "idle", positive_duration, dt.idle_s),
                            doc.value(tim, "connect", positive_duration, dt.connect_s),
                            doc.value(tim, "upstreamHeader", positive_duration, dt.upstream_header_s),
                            doc.value(tim, "upstreamIdle", positive_duration, dt.upstream_idle_s),
                            doc.value(tim, "drain", parse_duration, dt.drain_s),
                            doc.value(tim, "perTry", positive_duration, dt.per_try_s),
                            doc.value(tim, "bodyIdle", positive_duration, dt.body_idle_s),
                            doc.value(tim, "tunnelIdle", positive_duration, dt.tunnel_idle_s),
                            doc.value(tim, "maxConnectionAge", positive_duration, dt.max_connection_age_s))
    pnode, dp = spec.get("probes"), Probes()
    probes = dp
    if doc.fields(pnode, {"enabled", "interval", "timeout", "unhealthyThreshold", "healthyThreshold"}):
        probes = Probes(doc.value(pnode, "enabled", parse_bool, dp.enabled),
                        doc.value(pnode, "interval", positive_duration, dp.interval_s),
                        doc.value(pnode, "timeout", positive_duration, dp.timeout_s),
                        doc.value(pnode, "unhealthyThreshold", positive_int, dp.unhealthy_threshold),
                        doc.value(pnode, "healthyThreshold", positive_int, dp.healthy_threshold))
    return RouterSettings(listen=doc.value(spec, "listen", hostport, d.listen),
                          admin=doc.value(spec, "admin", hostport, d.admin),
                          admin_token_env=token_env, admin_token_file=token_file,
                          trusted_proxies=proxies, limits=limits, timeouts=timeouts,
                          server_timing=doc.value(spec, "serverTiming", parse_bool, False),
                          fast_path=doc.value(spec, "fastPath", parse_bool, d.fast_path),
                          via=doc.string(spec, "via", d.via), probes=probes,
                          rtt_decay_s=doc.value(spec, "rttDecay", positive_duration, d.rtt_decay_s),
                          decision_header=doc.value(spec, "decisionHeader", parse_bool, False),
                          request_id=doc.value(spec, "requestId", parse_bool, d.request_id),
                          normalize_path=doc.value(spec, "normalizePath", parse_bool, d.normalize_path),
                          escaped_slashes=doc.value(spec, "escapedSlashes", _escaped_slashes_action,
                                                    d.escaped_slashes),
                          underscore_headers=doc.value(spec, "underscoreHeaders", _underscore_action,
                                                       d.underscore_headers),
                          pin_header=_read_pin_header(doc, spec.get("pinHeader")),
                          error_format=doc.value(spec, "errorFormat", one_of("errorFormat", "text", "problem-json",
                                                                               "auto"), d.error_format),
                          buffer=_read_buffer(doc, spec.get("buffer")),
                          resources=_read_resources(doc, spec.get("resources")),
                          access_log=_read_access_log(doc, spec.get("accessLog")),
                          tls=_read_tls(doc, spec.get("tls")),
                          https_redirect=_read_https_redirect(doc, spec.get("httpsRedirect"), hostport),
                          proxy_protocol=doc.value(spec, "proxyProtocol", parse_bool, False),
                          compression=_read_compression(doc, spec.get("compression")),
                          http2=_read_http2(doc, spec),
                          early_hints=doc.value(spec, "earlyHints", _early_hints, d.early_hints),
                          slow_start=_read_slow_start(doc, spec.get("slowStart")),
                          outlier_detection=_read_outlier_detection(doc, spec.get("outlierDetection")))


def _early_hints(v: Any) -> str:
    """earlyHints: false (off), true (to every HTTP/1.1 and HTTP/2 client), or http2 (to HTTP/2 clients only)."""
    if v is True or v is False:
        return "all" if v else "off"
    if v == "http2":
        return "http2"
    raise ValueError(f"expected true, false or http2, got {v!r}")


def _read_https_redirect(doc: Doc, node: Node | None, hostport: Callable[[Any], str]) -> HttpsRedirect | None:
    """httpsRedirect: {listen: 0.0.0.0:8080, port: 443, statusCode: 301}"""
    if not doc.fields(node, {"listen", "port", "statusCode"}, {"listen"}):
        return None
    listen = doc.value(node, "listen", hostport)
    port, status = doc.value(node, "port", parse_port, 443), doc.value(node, "statusCode", redirect_code, 301)
    return HttpsRedirect(listen, port, status) if listen is not None else None


def _read_compression(doc: Doc, node: Node | None) -> Compression | None:
    """compression: {level: 1, minLength: 256, types: [application/json, ...]}; `{}` takes the defaults."""
    if not doc.fields(node, {"level", "minLength", "types"}):
        return None
    d = Compression()
    types = set()
    for item in doc.seq(node, "types"):
        value = item.value if isinstance(item.value, str) else ""
        if not _MEDIA_TYPE.fullmatch(value):
            doc.error(item, f"expected a media type such as application/json, got {item.value!r}")
        else:
            types.add(value.lower())
    return Compression(doc.value(node, "level", _zlib_level, d.level),
                       doc.value(node, "minLength", parse_size, d.min_length),
                       frozenset(types) if node.get("types") is not None else d.types)


def _read_http2(doc: Doc, spec: Node) -> Http2 | None:
    """http2: {cleartext: false, maxConcurrentStreams: 100}; `{}` offers HTTP/2 on the TLS listener."""
    node = spec.get("http2")
    if not doc.fields(node, {"cleartext", "maxConcurrentStreams"}):
        return None
    d = Http2()
    http2 = Http2(doc.value(node, "cleartext", parse_bool, d.cleartext),
                  doc.value(node, "maxConcurrentStreams", _stream_count, d.max_concurrent_streams))
    if not http2.cleartext and spec.get("tls") is None:
        doc.error(node, "HTTP/2 is offered by ALPN on the TLS listener: set tls, or cleartext: true for HTTP/2 "
                        "with prior knowledge on the plain listener")
    elif http2.cleartext and spec.get("tls") is not None:
        doc.error(node.get("cleartext"), "cleartext is for a plain listener; with tls, HTTP/2 is offered by ALPN")
    return http2


def _stream_count(v: Any) -> int:
    """Concurrent streams per HTTP/2 connection: 1 to 1000."""
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 1000:
        raise ValueError(f"expected a number of streams from 1 to 1000, got {v!r}")
    return v


def _read_slow_start(doc: Doc, node: Node | None) -> SlowStart | None:
    """slowStart: {window: 60s, aggression: 1.0, minWeightPercent: 10}"""
    if not doc.fields(node, {"window", "aggression", "minWeightPercent"}, {"window"}):
        return None
    window = doc.value(node, "window", positive_duration)
    aggression = doc.value(node, "aggression", _aggression, 1.0)
    min_percent = doc.value(node, "minWeightPercent", parse_percent, 10.0)
    return SlowStart(window, aggression, min_percent / 100) if window is not None else None


def _read_outlier_detection(doc: Doc, node: Node | None) -> OutlierDetection:
    """outlierDetection: {consecutive5xx: 5, baseEjectionTime: 30s, maxEjectionTime: 5m, panicThreshold: 50,
    maxEjectionPercent: 10}"""
    d = OutlierDetection()
    if not doc.fields(node, {"consecutive5xx", "baseEjectionTime", "maxEjectionTime", "panicThreshold",
                             "maxEjectionPercent"}):
        return d
    base = doc.value(node, "baseEjectionTime", positive_duration, d.base_ejection_s)
    most = doc.value(node, "maxEjectionTime", positive_duration)
    if most is not None and most < base:
        doc.error(node.get("maxEjectionTime"), f"maxEjectionTime ({most:g}s) is shorter than baseEjectionTime "
                                               f"({base:g}s)")
    panic = doc.value(node, "panicThreshold", parse_percent, d.panic_below * 100)
    return OutlierDetection(doc.value(node, "consecutive5xx", positive_int, d.consecutive_5xx), base,
                            most if most is not None else max(d.max_ejection_s, base), panic / 100,
                            doc.value(node, "maxEjectionPercent", parse_percent, d.max_ejection_percent))


def _aggression(v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 100:
        raise ValueError(f"expected a number above 0 and at most 100 (1 ramps linearly), got {v!r}")
    return float(v)


_MEDIA_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*")


def _zlib_level(v) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 9:
        raise ValueError(f"expected a gzip level from 1 (fastest) to 9 (smallest), got {v!r}")
    return v


def _read_access_log(doc: Doc, node: Node | None) -> str | None:
    """accessLog: {path: /var/log/edge/access.log}, or {path: "-"} for stdout"""
    return doc.string(node, "path") if doc.fields(node, {"path"}, {"path"}) else None


def _read_tls(doc: Doc, node: Node | None) -> Tls | None:
    """tls: {certFile: PATH, keyFile: PATH, sni: [{hosts: [NAME], certFile, keyFile}], minVersion: "1.2",
    clientCertificates: {caFile: PATH, required: true, forwardCert: false}}; each pair must load (as
    `nginx -t` checks), and a host name may pick one certificate only."""
    if not doc.fields(node, {"certFile", "keyFile", "sni", "minVersion", "clientCertificates"},
                      {"certFile", "keyFile"}):
        return None
    min_version = doc.value(node, "minVersion", parse_tls_version, "1.2")
    clients = _read_client_certificates(doc, node.get("clientCertificates"))
    default = _read_pair(doc, node)
    sni, seen = [], set()
    for item in doc.seq(node, "sni"):
        if not doc.fields(item, {"hosts", "certFile", "keyFile"}, {"hosts", "certFile", "keyFile"}):
            continue
        host_nodes = doc.seq(item, "hosts")
        hosts = read_hosts(doc, host_nodes)
        for host, host_node in zip(hosts, host_nodes):
            if host in seen:
                doc.error(host_node, f"{host!r} already picks another certificate")
            seen.add(host)
        if not host_nodes and item.get("hosts") is not None:
            doc.error(item.get("hosts"), "expected at least one host name")
        pair = _read_pair(doc, item)
        if pair is not None and hosts:
            sni.append(SniCertificate(hosts, *pair))
    return Tls(*default, tuple(sni), min_version, clients) if default is not None else None


def _read_client_certificates(doc: Doc, node: Node | None) -> ClientCertificates | None:
    """clientCertificates: {caFile: PATH, required: true, forwardCert: false}: the CA bundle must hold a
    certificate that loads."""
    if not doc.fields(node, {"caFile", "required", "forwardCert"}, {"caFile"}):
        return None
    ca_file = doc.string(node, "caFile")
    required = doc.value(node, "required", parse_bool, True)
    forward_cert = doc.value(node, "forwardCert", parse_bool, False)
    if ca_file is None:
        return None
    problem = check_ca_file(ca_file)
    if problem is not None:
        doc.error(node.get("caFile"), problem)
        return None
    return ClientCertificates(ca_file, required, forward_cert)


def _read_pair(doc: Doc, node: Node) -> tuple[str, str] | None:
    """certFile and keyFile of `node`, when the pair loads."""
    cert, key = doc.string(node, "certFile"), doc.string(node, "keyFile")
    if cert is None or key is None:
        return None
    problem = check_tls_pair(cert, key)
    if problem is not None:
        doc.error(node.get(problem[0]), problem[1])
        return None
    return cert, key


def _read_upstream_tls(doc: Doc, node: Node, endpoint: Endpoint) -> UpstreamTls | None:
    """Cluster tls: {caFile, certFile, keyFile, serverName}, for an https:// endpoint; the files must load."""
    if not doc.fields(node, {"caFile", "certFile", "keyFile", "serverName"}):
        return None
    if endpoint.scheme != "https":
        doc.error(node, f"TLS settings need an https:// endpoint, not {endpoint}")
        return None
    ca, cert, key = doc.string(node, "caFile"), doc.string(node, "certFile"), doc.string(node, "keyFile")
    server_name = doc.value(node, "serverName", parse_server_name)
    if (cert is None) != (key is None):
        doc.error(node, "certFile and keyFile go together (the client certificate and its key)")
        return None
    context, problem = upstream_context(ca, cert, key)
    if problem is not None:
        doc.error(node.get(problem[0]), problem[1])
        return None
    return UpstreamTls(ca, cert, key, server_name, context)


def _read_resources(doc: Doc, node: Node | None) -> ResourceWatch | None:
    """resources: {namespace: edge-router, kubeconfig: PATH, context: NAME, inCluster: true}"""
    if not doc.fields(node, {"namespace", "kubeconfig", "context", "inCluster"}, {"namespace"}):
        return None
    return ResourceWatch(doc.string(node, "namespace", "default"), doc.string(node, "kubeconfig"),
                         doc.string(node, "context"), doc.value(node, "inCluster", parse_bool, False))


def _read_pin_header(doc: Doc, node: Node | None) -> PinHeader | None:
    """pinHeader: {name: X-Edge-Cluster, allow: [CIDR]}: both required (no client is trusted by default)."""
    if not doc.fields(node, {"name", "allow"}, {"name", "allow"}):
        return None
    name = doc.value(node, "name", header_name)
    if name is not None and name.lower() in RESERVED_HEADERS:
        doc.error(node.get("name"), f"header {name} is written by the router and cannot name a cluster")
    allow = read_cidrs(doc, doc.seq(node, "allow"))
    if node.get("allow") is not None and not allow:
        doc.error(node.get("allow"), "pinHeader needs the client addresses it is honoured for")
    return PinHeader(name.lower(), allow) if name and allow else None


def _read_buffer(doc: Doc, node: Node | None) -> BufferSettings:
    d = BufferSettings()
    if not doc.fields(node, {"perService", "total", "maxBytes"}):
        return d
    return BufferSettings(doc.value(node, "perService", positive_int, d.per_service),
                          doc.value(node, "total", positive_int, d.total),
                          doc.value(node, "maxBytes", parse_size, d.max_bytes))


def read_service(doc: Doc) -> ServiceConfig | None:
    name = doc.name()
    spec = doc.root.get("spec")
    if not doc.fields(spec, {"hosts", "workload", "containerConcurrency", "state", "holdLimit", "wake",
                             "readinessPath", "wakeParallelism", "spillover", "wakeSkipped", "keepWarm"},
                      {"hosts"}):
        if spec is None:
            doc.error(doc.root, "missing required field 'spec'")
        return None
    hosts = read_hosts(doc, doc.seq(spec, "hosts"))
    workload = None
    wnode = spec.get("workload")
    if doc.fields(wnode, {"kind", "namespace", "name", "image"}, {"kind", "name"}):
        kind = doc.value(wnode, "kind", _workload_kind)
        workload = Workload(kind or "Deployment", doc.string(wnode, "namespace", "default"),
                            doc.string(wnode, "name", ""), doc.string(wnode, "image"))
    cc = doc.value(spec, "containerConcurrency", positive_int)
    state = []
    snode = spec.get("state")
    if snode is not None:
        if snode.kind != "map":
            doc.error(snode, "expected a mapping of cluster: warm|cached|cold")
        for cluster, child in (snode.children.items() if snode.kind == "map" else ()):
            if child.value not in ("warm", "cached", "cold"):
                doc.error(child, f"state must be warm, cached or cold, got {child.value!r}")
            else:
                state.append((str(cluster), child.value))
    wake_path, wake_method = None, "GET"
    wnode = spec.get("wake")
    if doc.fields(wnode, {"http"}):
        hnode = wnode.get("http")
        if doc.fields(hnode, {"path", "method"}):
            wake_path = doc.value(hnode, "path", parse_path, "/")
            wake_method = doc.value(hnode, "method", _http_method, "GET")
    parallel = doc.value(spec, "wakeParallelism", positive_int, 1)
    if parallel > 2:
        doc.error(spec.get("wakeParallelism"), "wakeParallelism must be 1 or 2")
    if not name:
        return None
    return ServiceConfig(name, hosts, workload, cc, tuple(state), f"{doc.root.file}:{doc.root.line}",
                         doc.value(spec, "holdLimit", positive_duration, 30.0), wake_path, wake_method,
                         doc.value(spec, "readinessPath", parse_path, "/"), min(parallel, 2),
                         doc.value(spec, "spillover", parse_bool, False),
                         doc.value(spec, "wakeSkipped", parse_bool, True),
                         doc.value(spec, "keepWarm", parse_bool, False))


_http_method = one_of("method", "GET", "POST", "HEAD", "PUT")


_workload_kind = one_of("workload kind", "Deployment", "KnativeService")


_underscore_action = one_of(None, "drop", "reject", "allow")


_escaped_slashes_action = one_of(None, "keep", "reject", "unescape")
