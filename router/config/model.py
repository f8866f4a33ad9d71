"""Frozen configuration model. Loaders normalise every accepted format into these types.

A `Config` is immutable and validated: every split names existing clusters with
non-negative weights, at least one of them positive.
"""
from __future__ import annotations

import ipaddress
import ssl
from dataclasses import dataclass, field


@dataclass(frozen=True)
class UpstreamTls:
    """How the router speaks TLS to a cluster's https:// endpoint (Cluster spec.tls): the CAs that
    verify it (None: the system's), a client certificate for mutual TLS, and the name sent in SNI
    and checked in its certificate (None: the endpoint's host). `context` is built from the files
    when the config is loaded; equal settings compare equal whatever the files held."""
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    server_name: str | None = None
    context: ssl.SSLContext | None = field(default=None, compare=False, repr=False)

    @property
    def files(self) -> tuple[str, ...]:
        return tuple(f for f in (self.ca_file, self.cert_file, self.key_file) if f)


_system_context: ssl.SSLContext | None = None


def system_client_context() -> ssl.SSLContext:
    """One client context for https:// endpoints without spec.tls: the system's CAs, made once (each
    context made reads the whole trust store)."""
    global _system_context
    if _system_context is None:
        _system_context = ssl.create_default_context()
    return _system_context


@dataclass(frozen=True)
class Endpoint:
    scheme: str  # http | https
    host: str
    port: int
    tls: UpstreamTls | None = None  # with https: the cluster's TLS settings (None: the defaults)

    @property
    def authority(self) -> str:
        return f"{self.host}:{self.port}"

    def connect_options(self) -> dict:
        """Keyword arguments for loop.create_connection / asyncio.open_connection to this endpoint:
        every connection to a cluster (requests, mirror copies, probes, wakes, readiness polls)
        speaks TLS the same way."""
        if self.scheme != "https":
            return {}
        tls = self.tls
        if tls is None or tls.context is None:
            return {"ssl": system_client_context(), "server_hostname": self.host}
        return {"ssl": tls.context, "server_hostname": tls.server_name or self.host}

    def __str__(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"


@dataclass(frozen=True)
class KubernetesRef:
    kubeconfig: str | None
    context: str | None
    in_cluster: bool


@dataclass(frozen=True)
class ClusterConfig:
    name: str
    labels: tuple[tuple[str, str], ...]
    endpoint: Endpoint
    probe_path: str = "/"
    kubernetes: KubernetesRef | None = None
    source: str = ""
    max_requests: int | None = None  # requests in flight to it at once (a circuit breaker); None: no limit
    preconnect: int = 0  # idle connections kept open to it, ready for requests
    max_requests_per_connection: int | None = None  # a pooled connection is closed after this many; None: no limit
    max_connection_age_s: float | None = None  # ... or once this old

    def label(self, key: str) -> str | None:
        return dict(self.labels).get(key)


@dataclass(frozen=True)
class Backend:
    cluster: str
    weight: float


@dataclass(frozen=True)
class HeaderOps:
    """Header changes on one direction of a route (Gateway API's HTTPHeaderFilter): `set` replaces
    every field of that name, `add` appends one, `remove` drops every field of that name."""
    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()


@dataclass(frozen=True)
class Rewrite:
    """What the cluster is asked for instead (Gateway API's URLRewrite): the split's path prefix
    replaced (`path_prefix`) or the whole path replaced (`full_path`), and/or another Host."""
    path_prefix: str | None = None
    full_path: str | None = None
    hostname: str | None = None


@dataclass(frozen=True)
class Redirect:
    """The router answers with a redirect (Gateway API's RequestRedirect); each part None keeps the
    request's own: scheme, host, port, the split's path prefix or the whole path replaced."""
    scheme: str | None = None
    hostname: str | None = None
    port: int | None = None
    path_prefix: str | None = None
    full_path: str | None = None
    status: int = 302


@dataclass(frozen=True)
class Fault:
    """Faults a route injects into its own requests (Envoy's fault filter, Istio's HTTPFaultInjection): a
    `delay_s` wait before the request goes on, for `delay_percent` of requests, and an answer of
    `abort_status` from the router in place of the cluster's, for `abort_percent` (after any delay)."""
    delay_s: float = 0.0
    delay_percent: float = 100.0
    abort_status: int = 0
    abort_percent: float = 100.0


@dataclass(frozen=True)
class DirectResponse:
    """The router answers every request of the route itself with this status and body (Envoy's
    direct_response, nginx's `return 503 "text"`): a maintenance page, a path closed at the edge."""
    status: int
    body: str = ""
    content_type: str = "text/plain; charset=utf-8"


@dataclass(frozen=True)
class RouteTimeouts:
    """A route's own timeouts (Gateway API's HTTPRouteTimeouts). `request_s`: the whole exchange, from
    the request head read to the response's last byte, tries and a scale-from-zero hold included (None:
    none, as without it). `per_try_s`: each try's wait for a response head before the next choice (None:
    the Router's perTry; 0: none for this route). `hedge`: when a try's per_try_s runs out, it is kept
    and the next choice raced against it (Envoy's hedge_on_per_try_timeout)."""
    request_s: float | None = None
    per_try_s: float | None = None
    hedge: bool = False


@dataclass(frozen=True)
class SessionPersistence:
    """Sticky sessions (the Gateway API's HTTPRoute sessionPersistence, nginx's `sticky cookie`, HAProxy's
    `cookie insert`): the router gives a client a token naming the cluster that answered, in a cookie
    (or a response header the client sends back), and sends its next requests there while that cluster
    can take them. `absolute_s`: how long a token is honoured; `permanent`: the cookie carries Max-Age."""
    name: str = "edge-router-session"
    header: bool = False  # the token travels in a header named `name` instead of a cookie
    absolute_s: float | None = None
    permanent: bool = False
    idle_s: float | None = None  # a session unused this long ends (its token is renewed with every answer)


@dataclass(frozen=True)
class RouteMatch:
    """Conditions beyond host and path (HTTPRoute's header, query parameter and method matches), all of
    which a request must meet: header names compared without case, their values, query parameter names
    and values (the first of a name, decoded) exactly."""
    headers: tuple[tuple[str, str], ...] = ()  # (lowercase name, value)
    query: tuple[tuple[str, str], ...] = ()
    method: str | None = None
    header_patterns: tuple[tuple[str, str], ...] = ()  # (lowercase name, RE2 pattern the whole value matches)
    query_patterns: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Mirror:
    """A copy of a route's requests sent to another Cluster, its answers dropped (Gateway API's
    RequestMirror, Envoy's request_mirror_policies): `percent` of the requests, chosen at random."""
    cluster: str
    percent: float = 100.0


@dataclass(frozen=True)
class RetryOn:
    """A route's retry on response status (Envoy's retriable_status_codes, Gateway API's HTTPRoute
    `retry`): a response head with one of `codes` is dropped and the request sent to the next choice,
    at most `attempts` times, when it may be retried at all (idempotent, its body kept), after `backoff_s`."""
    codes: frozenset[int]
    attempts: int = 1
    backoff_s: float | None = None  # the wait before the first retry, doubling for each next (None: at once)


@dataclass(frozen=True)
class RateLimit:
    """A route's local rate limit: `rate` requests a second sustained, up to `burst` at once, counted
    in one bucket for the route (`key` "route"), one per client address ("client"), or one per value
    of a request header ("header:NAME", the name lowercase)."""
    rate: float
    burst: int
    key: str = "route"


@dataclass(frozen=True)
class Cors:
    """Cross-origin resource sharing (the Gateway API's HTTPRoute CORS filter, Envoy's cors filter):
    the origins a route shares its responses with (`("*",)` every origin; a host may start with `*.`),
    what a preflight allows (`("*",)`: any), the response headers scripts may read, whether credentials
    go with the requests, and how long a browser may keep a preflight's answer."""
    origins: tuple[str, ...]  # "*", or "scheme://host[:port]" lowercase, the host possibly "*" or "*.suffix"
    credentials: bool = False
    methods: tuple[str, ...] = ()
    headers: tuple[str, ...] = ()
    expose: tuple[str, ...] = ()
    max_age_s: int = 5


@dataclass(frozen=True)
class ExternalAuth:
    """External authorization (the Gateway API's HTTPRoute ExternalAuth filter over HTTP, Envoy's ext_authz
    HTTP service, nginx's auth_request): before a request is routed, the router asks `cluster` with the
    request's method and `path_prefix` + path, its Host, Authorization and `allowed_headers`, and its body
    when `forward_body` is above 0 (a body over it is refused 413), else none. A 200 lets the request
    through with `allowed_response_headers` of that answer added (every field but framing, forwarding and
    representation ones when the list is empty); any other answer is the client's."""
    cluster: str
    path_prefix: str = ""
    allowed_headers: tuple[str, ...] = ()  # lowercase
    allowed_response_headers: tuple[str, ...] = ()  # lowercase
    timeout_s: float = 2.0
    forward_body: int = 0  # bytes of the request body sent with the check (forwardBody.maxSize); 0: none
    forward_body_at: tuple = ()  # (file, line, field) of forwardBody.maxSize, checked against limits.maxBuffered


@dataclass(frozen=True)
class SourceRanges:
    """Client addresses a route answers: none in `deny`, and, when `allow` is not empty, one in `allow`."""
    allow: tuple = ()  # ipaddress networks
    deny: tuple = ()


@dataclass(frozen=True)
class SplitConfig:
    name: str
    kind: str  # which format it came from, for /debug/state
    hosts: tuple[str, ...]  # empty: default route
    path_prefix: str
    backends: tuple[Backend, ...]
    algorithm: str = "weighted"
    max_rtt_s: float | None = None
    source: str = ""
    affinity: tuple[str, str] | None = None  # ("header"|"cookie"|"path", name or segment count)
    request_headers: HeaderOps | None = None  # changes to what the cluster receives
    response_headers: HeaderOps | None = None  # changes to what the client receives
    rewrite: Rewrite | None = None  # path or Host the cluster receives instead of the client's
    redirect: Redirect | None = None  # answered by the router with a redirect; no clusters
    path_exact: bool = False  # path_prefix is matched as the whole path (HTTPRoute's Exact)
    timeouts: RouteTimeouts | None = None  # the route's own; None: the Router's
    rate_limit: RateLimit | None = None
    retry: RetryOn | None = None
    mirrors: tuple[Mirror, ...] = ()  # each a copy of the route's requests to another Cluster
    match: RouteMatch | None = None  # header, query and method conditions; None: host and path alone
    source_ranges: SourceRanges | None = None  # which client addresses may use the route
    session: SessionPersistence | None = None  # requests of one session go to the cluster it began on
    cors: Cors | None = None  # preflights answered by the router, Access-Control-* on the responses
    auth: ExternalAuth | None = None  # an authorization service asked before the request is routed
    max_body_bytes: int | None = None  # the route's own request body limit; None: the Router's
    direct: DirectResponse | None = None  # answered by the router with this; no clusters
    fault: Fault | None = None  # delays and errors injected into the route's requests
    path_regex: str | None = None  # an RE2 pattern the whole path matches (HTTPRoute's RegularExpression)
    # Clusters with header changes of their own (an entry's requestHeaders/responseHeaders, a backendRef's
    # filters), applied after the route's: (cluster, request HeaderOps or None, response HeaderOps or None).
    backend_headers: tuple[tuple[str, HeaderOps | None, HeaderOps | None], ...] = ()


@dataclass(frozen=True)
class Workload:
    kind: str  # Deployment | KnativeService
    namespace: str
    name: str
    image: str | None = None


@dataclass(frozen=True)
class ServiceConfig:
    name: str
    hosts: tuple[str, ...]
    workload: Workload | None = None
    container_concurrency: int | None = None
    static_state: tuple[tuple[str, str], ...] = ()  # (cluster, warm|cached|cold) without discovery
    source: str = ""
    hold_limit_s: float = 30.0
    wake_path: str | None = None  # HTTP wake: request this path on the cluster with the service's Host
    wake_method: str = "GET"
    readiness_path: str = "/"
    wake_parallelism: int = 1
    spillover: bool = False
    wake_skipped: bool = True  # wake CACHED/COLD clusters the choice skipped, in the background
    keep_warm: bool = False  # hold a copy warm when its idle-time histogram expects the next request


@dataclass(frozen=True)
class Limits:
    max_request_line_bytes: int = 8 * 1024
    max_header_bytes: int = 64 * 1024
    max_header_count: int = 100
    max_body_bytes: int = 10 * 1024 * 1024
    max_buffered_bytes: int = 1024 * 1024
    max_connections: int | None = None  # client connections per process; None: from the open files limit
    max_requests_per_connection: int | None = None  # then the response says Connection: close; None: no limit
    max_connections_per_client: int | None = None  # open connections from one client address; None: no limit


@dataclass(frozen=True)
class Timeouts:
    header_read_s: float = 10.0
    idle_s: float = 60.0
    connect_s: float = 2.0
    upstream_header_s: float = 30.0
    upstream_idle_s: float = 30.0
    drain_s: float = 20.0
    per_try_s: float | None = None  # upstream response head per try; retried when idempotent
    body_idle_s: float = 60.0  # a request or response body that stops flowing for this long ends the exchange
    tunnel_idle_s: float = 300.0  # an upgraded connection (WebSocket) with no bytes either way is closed
    max_connection_age_s: float | None = None  # a client connection this old closes after its current response


@dataclass(frozen=True)
class ResourceWatch:
    """Where to read TrafficSplit and Cluster custom resources: a namespace of the router's own cluster."""
    namespace: str
    kubeconfig: str | None = None
    context: str | None = None
    in_cluster: bool = False


@dataclass(frozen=True)
class SniCertificate:
    """A certificate the client listener serves to clients that ask for one of `hosts` (SNI): exact
    names, and "*.example.com" for any name under example.com."""
    hosts: tuple[str, ...]
    cert_file: str
    key_file: str


@dataclass(frozen=True)
class ClientCertificates:
    """Mutual TLS with clients: certificates signed by the CAs in `ca_file` are accepted; with
    `required`, a handshake without one fails, else one is asked for and checked when given. With
    `forward_cert`, X-Forwarded-Client-Cert carries the certificate itself (Cert=, URL-encoded PEM)."""
    ca_file: str
    required: bool = True
    forward_cert: bool = False


@dataclass(frozen=True)
class Tls:
    """TLS on the client listener: a PEM certificate chain (leaf first) and its private key, served
    when no `sni` entry names the host the client asked for (or it asked for none)."""
    cert_file: str
    key_file: str
    sni: tuple[SniCertificate, ...] = ()
    min_version: str = "1.2"  # "1.2" or "1.3"
    client_certificates: ClientCertificates | None = None

    @property
    def files(self) -> tuple[str, ...]:
        clients = (self.client_certificates.ca_file,) if self.client_certificates else ()
        return (self.cert_file, self.key_file, *(f for c in self.sni for f in (c.cert_file, c.key_file)), *clients)


@dataclass(frozen=True)
class BufferSettings:
    per_service: int = 1000
    total: int = 10_000
    max_bytes: int = 64 * 1024 * 1024


@dataclass(frozen=True)
class Probes:
    enabled: bool = True
    interval_s: float = 1.0
    timeout_s: float = 0.5
    unhealthy_threshold: int = 3  # failed probes in a row that take a cluster out
    healthy_threshold: int = 2  # passing probes in a row that bring it back


@dataclass(frozen=True)
class OutlierDetection:
    """Passive health (Router `outlierDetection`, Envoy's outlier_detection): a cluster is ejected after
    `consecutive_5xx` 5xx answers, resets or timeouts in a row (a refused connect at once), for
    base_ejection_s × n (n: times ejected), at most max_ejection_s. An ejection for answers is made only
    while under max_ejection_percent of the Clusters are out (always when none is). Below `panic_below` of a
    split's clusters healthy, health is ignored for it (0: never)."""
    consecutive_5xx: int = 5
    base_ejection_s: float = 30.0
    max_ejection_s: float = 300.0
    panic_below: float = 0.5
    max_ejection_percent: float = 10.0


@dataclass(frozen=True)
class PinHeader:
    """A request header naming the cluster to send it to (Envoy's cluster_header), honoured for clients in
    `allow`: an operator's request to one region, a cluster at weight 0 tried before it gets traffic."""
    name: str  # lowercase
    allow: tuple = ()  # ipaddress networks


@dataclass(frozen=True)
class HttpsRedirect:
    """A second, plain-HTTP listener that answers every request with a redirect to the same URL over
    https (nginx's `return 301 https://$host$request_uri`, Envoy's https_redirect): `port` is the
    HTTPS port clients reach (left out of Location when 443)."""
    listen: str
    port: int = 443
    status: int = 301


# Envoy's compressor filter's default content types.
COMPRESSIBLE_TYPES = frozenset(("application/javascript", "application/json", "application/xhtml+xml", "image/svg+xml",
                                "text/css", "text/html", "text/plain", "text/xml"))


@dataclass(frozen=True)
class Compression:
    """gzip for responses whose client takes it (Router `compression`)."""
    level: int = 1  # zlib's 1 (fastest, nginx's default) .. 9 (smallest)
    min_length: int = 256  # responses with a smaller Content-Length are sent as they are
    types: frozenset = COMPRESSIBLE_TYPES  # lowercase media types (type/subtype)


@dataclass(frozen=True)
class Http2:
    """HTTP/2 from clients (Router `http2`): by ALPN on the TLS listener; with `cleartext`, with prior
    knowledge on a plain listener (h2c, RFC 9113 3.3)."""
    cleartext: bool = False
    max_concurrent_streams: int = 100  # SETTINGS_MAX_CONCURRENT_STREAMS


@dataclass(frozen=True)
class SlowStart:
    """A cluster that comes back (healthy again after an ejection or failed probes) or joins on a
    reload gets its weight ramped up over `window_s` (Envoy's slow start, HAProxy's slowstart):
    weight × max(min_weight, (max(t, 1 s) / window) ** (1 / aggression)), t the time since it came back."""
    window_s: float
    aggression: float = 1.0  # 1: linear; larger ramps faster at first
    min_weight: float = 0.1  # the least share of its weight it gets (minWeightPercent / 100)


@dataclass(frozen=True)
class RouterSettings:
    listen: str = "0.0.0.0:8080"
    admin: str = "127.0.0.1:9901"
    admin_token_env: str = "EDGE_ROUTER_ADMIN_TOKEN"
    admin_token_file: str | None = None
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    limits: Limits = field(default_factory=Limits)
    timeouts: Timeouts = field(default_factory=Timeouts)
    server_timing: bool = False
    fast_path: bool = True  # plain requests served by the compiled fast lane (fastlane.pyx), when it is built
    via: str = "edge-router"
    probes: Probes = field(default_factory=Probes)
    rtt_decay_s: float = 10.0
    decision_header: bool = False
    request_id: bool = False  # X-Request-Id made (or kept from trusted proxies), sent on, logged, returned
    normalize_path: bool = True  # remove dot segments, merge slashes: route on and forward the same path
    escaped_slashes: str = "keep"  # %2F and %5C in a path: keep (as Envoy), reject (400) or unescape
    underscore_headers: str = "drop"  # request header names with "_": drop (nginx), reject (400) or allow
    error_format: str = "text"  # the router's own answers: text, problem-json (RFC 9457), or auto (by Accept)
    pin_header: PinHeader | None = None  # a header that sends a request to the cluster it names
    tls: Tls | None = None  # the client listener speaks TLS (HTTPS) when set
    https_redirect: HttpsRedirect | None = None  # a plain listener redirecting every request to https
    proxy_protocol: bool = False  # every client connection begins with a PROXY protocol header
    access_log: str | None = None  # a file to append JSON lines to, "-" for stdout; None: no access log
    compression: Compression | None = None  # gzip for responses; None: responses pass as they are
    http2: Http2 | None = None  # HTTP/2 from clients; None: HTTP/1.1 only (fixed at start)
    early_hints: str = "off"  # a cluster's 103 Early Hints passed on: off, http2 (to HTTP/2 clients), all
    slow_start: SlowStart | None = None  # ramp a returning or new cluster's weight; None: full weight at once
    outlier_detection: OutlierDetection = field(default_factory=OutlierDetection)
    buffer: BufferSettings = field(default_factory=BufferSettings)
    resources: ResourceWatch | None = None


@dataclass(frozen=True)
class Config:
    router: RouterSettings
    clusters: tuple[ClusterConfig, ...]
    splits: tuple[SplitConfig, ...]
    files: tuple[str, ...] = ()
    services: tuple[ServiceConfig, ...] = ()

    def cluster(self, name: str) -> ClusterConfig:
        for c in self.clusters:
            if c.name == name:
                return c
        raise KeyError(name)
