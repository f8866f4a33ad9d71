"""RoutingSnapshot: the immutable view a request reads once.

Built from a Config by the reconcile task and swapped in whole; maps (Host, path)
to a Route (the split's backends with their endpoints).
"""
from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl

from ..config.model import (Config, DirectResponse, Endpoint, ExternalAuth, Fault, HeaderOps, RateLimit, Redirect,
                            Rewrite, RouteMatch, RouteTimeouts, SessionPersistence, SourceRanges, SplitConfig)
from ..config.authz import ALWAYS_SENT
from .cors import OWNED as CORS_OWNED, CorsPolicy, field, is_preflight
from .decisions import Forward
from .regex import compile_pattern


HOST_MEMO_MAX = 4096


def pool_key(ep: Endpoint) -> tuple:
    """Connections are shared by endpoints with the same address and TLS settings. Plain strings: the
    key is hashed for every request that takes a pooled connection."""
    tls = ep.tls
    tls_key = () if tls is None else (tls.ca_file, tls.cert_file, tls.key_file, tls.server_name)
    return (ep.scheme, ep.host, ep.port, *tls_key)


@dataclass(frozen=True)
class RouteBackend:
    cluster: str
    weight: float
    endpoint: Endpoint
    pool_key: tuple = ()  # (scheme, host, port[, TLS settings]): keys the upstream connection pool
    max_requests: int | None = None  # the cluster's limit on requests in flight


@dataclass(frozen=True)
class AuthPolicy:
    """A route's externalAuth, compiled: what a check sends, how long it may take, and what of a 200 the
    request takes."""
    path: bytes  # put before the request's path
    sent: frozenset  # lowercase names of the request's fields sent along: Host, Authorization, allowedHeaders
    copied: frozenset  # lowercase names taken from a 200 (empty: every field but framing and the like)
    timeout_s: float
    body: int = 0  # bytes of the request body sent with the check (the route's maxBody is held to it); 0: none


@dataclass(frozen=True)
class Route:
    name: str
    path_prefix: str
    backends: tuple[RouteBackend, ...]
    max_rtt_s: float | None
    algorithm: str
    live: tuple[RouteBackend, ...] = ()  # backends with weight > 0
    live_total: float = 0.0
    affinity: tuple[str, str] | None = None
    plain: tuple[Forward, ...] = ()  # Forward(backend, "weighted") for each of `live`, built once
    limited: bool = False  # some backend has a request limit (the choice then checks in-flight counts)
    # Header changes, compiled: lowercase names whose fields are dropped (set and remove), and the
    # lines appended (set and add). None / b"" when the route changes nothing in that direction.
    request_drop: frozenset | None = None
    request_add: bytes = b""
    response_drop: frozenset | None = None
    response_add: bytes = b""
    # URL rewrite, compiled: (path prefix, whole path, Host) the cluster gets, each None when kept;
    # None when the route rewrites nothing.
    rewrite: tuple | None = None
    # Redirect answered by the router: (scheme, host, port, path prefix, whole path, status), the
    # strings as bytes, each part None when the request's own is kept; None for a proxied route.
    redirect: tuple | None = None
    path_exact: bool = False  # path_prefix is matched as the whole path
    # The route's timeouts: the whole exchange (None: no deadline) and each try's wait for a response
    # head (the route's perTry, else the Router's; None or 0: none).
    request_timeout_s: float | None = None
    per_try_s: float | None = None
    rate_limit: RateLimit | None = None  # the route's local rate limit (buckets kept by the ProxyContext)
    retry_codes: frozenset | None = None  # response statuses retried on the next choice ...
    retry_attempts: int = 0  # ... at most this many times per request
    mirrors: tuple | None = None  # (a mirror cluster, percent of requests copied) each; None: no mirror
    # Header, query and method conditions, compiled: ((lowercase name, value) bytes pairs, (name, value)
    # str pairs, method bytes or None, (lowercase name bytes, RE2 pattern) pairs, (name, RE2 pattern)
    # pairs); None when host and path alone decide.
    match: tuple | None = None
    source_ranges: SourceRanges | None = None  # client addresses allowed; None: every client
    hedge: bool = False  # a try past its per_try_s is kept and raced against the next choice
    session: SessionPersistence | None = None  # sticky sessions: a token names the cluster to use
    cors: CorsPolicy | None = None  # cross-origin sharing: preflights answered here, Access-Control-* written
    auth: tuple[RouteBackend, AuthPolicy] | None = None  # the authorization cluster asked before routing
    max_body: int = 0  # request body bytes the route takes (its own maxBody, else the Router's)
    # Answered by the router: (status, body, Content-Type line) as bytes; None for a proxied route.
    direct: tuple | None = None
    fault: Fault | None = None  # delays and errors injected into its requests
    path_regex: object = None  # a compiled RE2 pattern the whole path matches (then path_prefix is "/")
    retry_backoff_s: float | None = None  # the wait before a retry on status (doubling for each next); None: at once
    # Clusters with header changes of their own, compiled with the route's: cluster -> (request_drop,
    # request_add, response_drop, response_add) for every backend of the route; None when none has any.
    per_backend: dict | None = None
    request_changes: bool = False  # some of request_drop, request_add, rewrite (one test on the hot path)
    response_changes: bool = False  # response_drop or response_add
    guarded: bool = False  # something of the route may answer or hold a request before the choice (one test)

    def __post_init__(self) -> None:
        object.__setattr__(self, "request_changes", bool(self.request_drop or self.request_add or self.rewrite
                                                        or self.per_backend))
        object.__setattr__(self, "response_changes", bool(self.response_drop or self.response_add or self.session
                                                         or self.cors or self.per_backend))
        object.__setattr__(self, "guarded", any(x is not None for x in (
            self.source_ranges, self.rate_limit, self.cors, self.redirect, self.direct, self.fault, self.auth)))


@dataclass(frozen=True)
class RoutingSnapshot:
    version: int
    config: Config
    exact: dict  # host -> tuple[Route] (longest prefix first)
    wildcard: tuple  # (suffix, tuple[Route]) longest suffix first
    default: tuple  # tuple[Route]
    services: dict = None  # host -> Service name (exact, and "*.suffix" entries)
    # When no route looks at the path (or headers), (route, service) per Host, filled as requests arrive
    # (bounded, so random Host headers cannot grow it); None when some route has a path prefix.
    by_host: dict | None = None
    named: dict = None  # split name -> Route
    max_body: int = 0  # the largest body any route takes: what a request is held to before it is routed

    def resolve(self, host: str, path: str, req=None) -> tuple[Route, str] | None:
        """The route and the service name for a request, or None when no route matches; remembered in
        `by_host` when that memo is on. Callers read `by_host` first (before working out the path)."""
        route = self.route_for(host, path, req)
        if route is None:
            return None
        hit = (route, self.service_for(host, route))
        memo = self.by_host
        if memo is not None and len(memo) < HOST_MEMO_MAX:
            memo[host] = hit
        return hit

    def service_for(self, host: str, route: Route) -> str:
        """The name warm/cold state and server time are kept under for this request."""
        services = self.services
        if services:
            name = services.get(host)
            if name is None:
                dot = host.find(".")
                name = services.get("*" + host[dot:]) if dot > 0 else None
            if name is not None:
                return name
        return route.name

    def route_for(self, host: str, path: str, req=None) -> Route | None:
        """The first route for the host (exact, then wildcard, then the default routes) whose path, and
        conditions when it has some, `req` meets (without `req`, routes with conditions are passed over)."""
        routes = self.exact.get(host)
        if routes is None:
            for suffix, candidates in self.wildcard:
                if host.endswith(suffix) and len(host) > len(suffix):
                    routes = candidates
                    break
        for candidates in (routes or (), self.default):
            for route in candidates:
                if (route.path_regex.fullmatch(path) is not None if route.path_regex is not None else
                        path == route.path_prefix if route.path_exact else _prefix_match(path, route.path_prefix)):
                    if route.match is None or req is not None and meets(route.match, req):
                        return route
        return None


def meets(match: tuple, req) -> bool:
    """Whether a request (method, url and headers as the data path holds them) meets a route's
    compiled conditions: every header and query pair, and the method."""
    headers, query, method, header_patterns, query_patterns = match
    if method is not None and req.method != method and not (req.method == b"OPTIONS" and is_preflight(
            req.method, req.headers) and field(req.headers, b"access-control-request-method") == method):
        return False  # (a preflight is routed as the request it asks about, as the Gateway API's CORS asks)
    for name, value in headers:  # the fields the router reads itself (Upgrade, ...) are kept apart, lowercase
        if not any(value == v and name == n.lower() for n, v in req.headers) and \
                not any(value == v and name == n for n, v in req.special):
            return False
    for name, pattern in header_patterns:  # the first field of the name (the special ones kept apart, lowercase)
        value = next((v for n, v in req.headers if n.lower() == name), None)
        if value is None:
            value = next((v for n, v in req.special if n == name), None)
        if value is None or pattern.fullmatch(value.decode("latin-1")) is None:
            return False
    if query or query_patterns:
        first: dict[str, str] = {}
        for k, v in parse_qsl(req.url.partition(b"?")[2].decode("latin-1"), keep_blank_values=True):
            first.setdefault(k, v)
        if any(first.get(name) != value for name, value in query):
            return False
        if any(name not in first or pattern.fullmatch(first[name]) is None for name, pattern in query_patterns):
            return False
    return True


def _prefix_match(path: str, prefix: str) -> bool:
    if prefix == "/" or path == prefix:
        return True
    return path.startswith(prefix if prefix.endswith("/") else prefix + "/")


def _compiled(ops: HeaderOps | None) -> tuple[frozenset | None, bytes]:
    if ops is None:
        return None, b""
    drop = frozenset(name.lower().encode() for name in (*(n for n, _ in ops.set), *ops.remove))
    add = b"".join(b"%s: %s\r\n" % (name.encode(), value.encode()) for name, value in (*ops.set, *ops.add))
    return drop or None, add


def _response_changes(split: SplitConfig, own: HeaderOps | None = None) -> tuple[frozenset | None, bytes]:
    """The route's response header changes (then a cluster's `own`), compiled; a CORS policy drops the
    cluster's Access-Control-* fields (it writes its own)."""
    drop, add = _compiled(then(split.response_headers, own))
    return (drop or frozenset()) | CORS_OWNED if split.cors is not None else drop, add


def then(first: HeaderOps | None, second: HeaderOps | None) -> HeaderOps | None:
    """`second`'s changes made after `first`'s, as one set of changes: a name `second` sets or removes
    loses what `first` set, added or removed for it; what `second` adds comes after `first`'s lines."""
    if second is None or first is None:
        return first if second is None else second
    over = {n.lower() for n, _ in second.set} | {n.lower() for n in second.remove}
    return HeaderOps(tuple(p for p in first.set if p[0].lower() not in over) + second.set,
                     tuple(p for p in first.add if p[0].lower() not in over) + second.add,
                     tuple(n for n in first.remove if n.lower() not in over) + second.remove)


def _per_backend(split: SplitConfig) -> dict | None:
    """Each backend's header changes compiled with the route's, when some backend has its own."""
    if not split.backend_headers:
        return None
    own = {cluster: (request, response) for cluster, request, response in split.backend_headers}
    out = {}
    for b in split.backends:
        request, response = own.get(b.cluster, (None, None))
        out[b.cluster] = (*_compiled(then(split.request_headers, request)), *_response_changes(split, response))
    return out


def _auth(auth: ExternalAuth) -> AuthPolicy:
    return AuthPolicy(auth.path_prefix.encode(),
                      frozenset(n.encode() for n in (*ALWAYS_SENT, *auth.allowed_headers)),
                      frozenset(n.encode() for n in auth.allowed_response_headers), auth.timeout_s, auth.forward_body)


def _max_body(split: SplitConfig, limit: int) -> int:
    """The route's maxBody (else the Router's), held to what its authorization check is sent of a body:
    a larger body could not go with the check (the Gateway API asks for a 4xx)."""
    max_body = split.max_body_bytes or limit
    if split.auth is not None and split.auth.forward_body:
        max_body = min(max_body, split.auth.forward_body)
    return max_body


def _direct(d: DirectResponse) -> tuple[int, bytes, bytes]:
    return d.status, d.body.encode(), b"Content-Type: %s\r\n" % d.content_type.encode() if d.status != 204 else b""


def _bytes(v: str | None) -> bytes | None:
    return v.encode() if v is not None else None


def _rewrite(rw: Rewrite | None) -> tuple[bytes | None, bytes | None, bytes | None] | None:
    if rw is None:
        return None
    return _bytes(rw.path_prefix), _bytes(rw.full_path), _bytes(rw.hostname)


def _redirect(rd: Redirect | None) -> tuple | None:
    if rd is None:
        return None
    return _bytes(rd.scheme), _bytes(rd.hostname), rd.port, _bytes(rd.path_prefix), _bytes(rd.full_path), rd.status


def _match(m: RouteMatch | None) -> tuple | None:
    if m is None:
        return None
    # A value's text as a client sends it: UTF-8, as the route's own header changes are sent (a value
    # beyond Latin-1, valid in the config, must not fail the snapshot's build).
    return (tuple((n.encode(), v.encode()) for n, v in m.headers), m.query,
            m.method.encode() if m.method else None,
            tuple((n.encode(), compile_pattern(p)) for n, p in m.header_patterns),
            tuple((n, compile_pattern(p)) for n, p in m.query_patterns))


def _timeouts(t: RouteTimeouts | None, router_per_try_s: float | None) -> tuple[float | None, float | None]:
    """(request deadline, per-try timeout): a route without a perTry of its own takes the Router's, here
    once per snapshot rather than on every request."""
    if t is None:
        return None, router_per_try_s
    return t.request_s, router_per_try_s if t.per_try_s is None else t.per_try_s


def build_snapshot(config: Config, version: int) -> RoutingSnapshot:
    endpoints = {c.name: c.endpoint for c in config.clusters}
    limits = {c.name: c.max_requests for c in config.clusters}

    def backend(cluster: str, weight: float) -> RouteBackend:
        ep = endpoints[cluster]
        return RouteBackend(cluster, weight, ep, pool_key(ep), limits[cluster])

    def route(split: SplitConfig) -> Route:
        backends = tuple(backend(b.cluster, b.weight) for b in split.backends)
        mirrors = tuple((backend(m.cluster, 0.0), m.percent) for m in split.mirrors) or None
        live = tuple(b for b in backends if b.weight > 0)
        return Route(split.name, split.path_prefix, backends, split.max_rtt_s, split.algorithm, live,
                     sum(b.weight for b in live), split.affinity, tuple(Forward(b) for b in live),
                     any(b.max_requests is not None for b in live), *_compiled(split.request_headers),
                     *_response_changes(split), _rewrite(split.rewrite), _redirect(split.redirect),
                     split.path_exact, *_timeouts(split.timeouts, config.router.timeouts.per_try_s),
                     split.rate_limit,
                     *((split.retry.codes, split.retry.attempts) if split.retry else (None, 0)), mirrors,
                     _match(split.match), split.source_ranges,
                     hedge=split.timeouts is not None and split.timeouts.hedge, session=split.session,
                     cors=CorsPolicy(split.cors) if split.cors is not None else None,
                     auth=(backend(split.auth.cluster, 0.0), _auth(split.auth)) if split.auth is not None else None,
                     max_body=_max_body(split, config.router.limits.max_body_bytes),
                     direct=_direct(split.direct) if split.direct else None, fault=split.fault,
                     retry_backoff_s=split.retry.backoff_s if split.retry else None,
                     path_regex=compile_pattern(split.path_regex) if split.path_regex else None,
                     per_backend=_per_backend(split))

    exact: dict[str, list[Route]] = {}
    wildcard: dict[str, list[Route]] = {}
    default: list[Route] = []
    named: dict[str, Route] = {}
    for split in config.splits:
        r = named[split.name] = route(split)
        if not split.hosts:
            default.append(r)
        for host in split.hosts:
            if host.startswith("*."):
                wildcard.setdefault(host[1:], []).append(r)
            else:
                exact.setdefault(host, []).append(r)

    def order(routes: list[Route]) -> tuple[Route, ...]:
        # The Gateway API's precedence: an exact path, (a path pattern, the longest first: the Gateway API
        # leaves its place to the implementation), the longest prefix, then a method condition, the most
        # header conditions, the most query conditions; ties keep the order the splits were read in.
        def key(r: Route) -> tuple:
            headers, query, method, header_patterns, query_patterns = r.match or ((), (), None, (), ())
            kind = 0 if r.path_exact else 1 if r.path_regex is not None else 2  # exact, pattern, prefix
            length = len(r.path_regex.pattern) if r.path_regex is not None else len(r.path_prefix)
            return (kind, -length, method is None, -len(headers) - len(header_patterns),
                    -len(query) - len(query_patterns))
        return tuple(sorted(routes, key=key))

    return RoutingSnapshot(
        version, config, {h: order(rs) for h, rs in exact.items()},
        tuple((s, order(rs)) for s, rs in sorted(wildcard.items(), key=lambda kv: -len(kv[0]))),
        order(default), {h: svc.name for svc in config.services for h in svc.hosts},
        None if any(s.path_prefix != "/" or s.path_exact or s.match or s.path_regex for s in config.splits) else {},
        named,
        max((r.max_body for r in named.values()), default=config.router.limits.max_body_bytes))
