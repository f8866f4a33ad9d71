"""Hostile config: a valid document set with random fields replaced or removed is either refused with
FILE:LINE: field problems or accepted as a config the router can serve (finite non-negative weights,
positive finite timeouts and limits, a snapshot that builds). Never an exception of another kind."""
import copy
import dataclasses
import math

import yaml
from hypothesis import given, settings, strategies as st

from router.config.errors import ConfigError
from router.config.loader import load_config
from router.core.snapshot import build_snapshot
from tests.conftest import fuzz_settings

SOURCE = "fuzz.yaml"
DOCS = list(yaml.safe_load_all("""\
apiVersion: edge.router/v1alpha1
kind: Router
metadata: {name: edge}
spec:
  listen: 0.0.0.0:8080
  admin: 127.0.0.1:9901
  adminToken: {env: EDGE_ROUTER_ADMIN_TOKEN}
  trustedProxies: [10.0.0.0/8]
  serverTiming: false
  decisionHeader: false
  via: edge-router
  probes: {enabled: true, interval: 1s, timeout: 500ms}
  rttDecay: 10s
  accessLog: {path: "-"}
  buffer: {perService: 1000, total: 10000, maxBytes: 64Mi}
  outlierDetection: {consecutive5xx: 5, baseEjectionTime: 30s, maxEjectionTime: 5m, panicThreshold: 50,
                     maxEjectionPercent: 10}
  proxyProtocol: false
  errorFormat: auto
  pinHeader: {name: X-Edge-Cluster, allow: [10.1.0.0/16]}
  limits: {maxRequestLine: 8Ki, maxHeaderBytes: 64Ki, maxHeaders: 100, maxBody: 10Mi, maxBuffered: 1Mi,
           maxRequestsPerConnection: 1000}
  timeouts: {headerRead: 10s, idle: 60s, connect: 2s, upstreamHeader: 30s, upstreamIdle: 30s, drain: 20s,
             perTry: 2s, bodyIdle: 60s, tunnelIdle: 5m, maxConnectionAge: 10m}
---
apiVersion: edge.router/v1alpha1
kind: Cluster
metadata: {name: a, labels: {region: a}}
spec: {endpoint: "http://127.0.0.1:1", kubernetes: {kubeconfig: /k, context: c}, maxRequestsPerConnection: 1000,
       maxConnectionAge: 1h}
---
apiVersion: edge.router/v1alpha1
kind: Cluster
metadata: {name: b, labels: {region: b}}
spec: {endpoint: "https://[::1]:8443", maxRequests: 1024, probe: {path: /healthz}, preconnect: 2}
---
apiVersion: edge.router/v1alpha1
kind: Service
metadata: {name: shop}
spec:
  hosts: [shop.example.com]
  workload: {kind: KnativeService, namespace: shop, name: frontend, image: shop:1}
  containerConcurrency: 10
  state: {a: warm, b: cached}
  wake: {http: {path: /wake, method: GET}}
  readinessPath: /healthz
  holdLimit: 30s
  wakeParallelism: 1
  spillover: false
  wakeSkipped: true
  keepWarm: false
---
apiVersion: networking.knative.dev/v1alpha1
kind: TrafficSplit
metadata: {name: global}
spec:
  clusters:
  - {name: a, weight: 45, selector: region=a}
  - {name: b, weight: 55}
  strategy: {algorithm: latency-aware, params: {maxRTT: 200ms}}
---
apiVersion: edge.router/v1alpha1
kind: TrafficSplit
metadata: {name: shop}
spec:
  service: shop
  clusters: [{name: a, weight: 1}]
  requestHeaders: {set: [{name: X-Env, value: prod}], add: [{name: X-Tag, value: a}], remove: [Cookie]}
  responseHeaders: {remove: [Server]}
  rewrite: {pathPrefix: /, hostname: shop.internal}
  timeouts: {request: 10s, perTry: 1s}
  maxBody: 1Gi
  fault: {delay: {fixedDelay: 1s, percent: 5}, abort: {httpStatus: 503, percent: 1}}
  cors: {allowOrigins: ["https://app.example.com", "https://*.example.org"], allowMethods: [GET, PUT],
         allowHeaders: [X-Api-Key], exposeHeaders: [X-Trace], allowCredentials: true, maxAge: 600}
  externalAuth: {cluster: b, path: /check, allowedHeaders: [Cookie], allowedResponseHeaders: [X-User], timeout: 1s}
---
apiVersion: edge.router/v1alpha1
kind: TrafficSplit
metadata: {name: down}
spec:
  hosts: [down.example.com]
  directResponse: {status: 503, body: back soon, contentType: text/html}
---
apiVersion: split.smi-spec.io/v1alpha1
kind: TrafficSplit
metadata: {name: smi1}
spec: {service: smi1.example.com, backends: [{service: a, weight: 500m}, {service: b, weight: "1"}]}
---
apiVersion: split.smi-spec.io/v1alpha4
kind: TrafficSplit
metadata: {name: smi4}
spec: {service: smi4.example.com, backends: [{service: a, weight: 5}, {service: b, weight: 1}]}
---
apiVersion: specs.smi-spec.io/v1alpha4
kind: HTTPRouteGroup
metadata: {name: ab}
spec:
  matches:
  - {name: ff, headers: {user-agent: ".*Firefox.*"}}
  - {name: api, pathRegex: /api, methods: [GET, HEAD]}
---
apiVersion: split.smi-spec.io/v1alpha4
kind: TrafficSplit
metadata: {name: smi4ab}
spec: {service: smi4.example.com, matches: [{kind: HTTPRouteGroup, name: ab}], backends: [{service: b, weight: 1}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r}
spec:
  hostnames: [r.example.com]
  rules:
  - matches: [{path: {type: PathPrefix, value: /api}}, {path: {value: /v2}}]
    filters:
    - {type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: Cache-Control, value: no-store}]}}
    - {type: URLRewrite, urlRewrite: {hostname: r.internal, path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}}
    backendRefs: [{name: a, weight: 3}, {name: b}]
    timeouts: {request: 5s, backendRequest: 0s}
  - backendRefs: [{name: b, weight: 1000000}]
  - matches: [{path: {type: Exact, value: /x}}]
    backendRefs: [{name: a}]
  - matches: [{headers: [{name: X-Canary, value: "1"}], queryParams: [{name: v, value: "2"}], method: GET}]
    backendRefs: [{name: b}]
  - matches: [{path: {value: /app}}]
    filters:
    - {type: CORS, cors: {allowOrigins: ["*"], allowMethods: ["*"]}}
    - {type: ExternalAuth, externalAuth: {protocol: HTTP, backendRef: {name: a}, http: {path: /authz}}}
    backendRefs: [{name: b}]
"""))

REMOVE = object()
BOUNDARY = [None, True, 0, -1, 0.5, 2**64, math.nan, math.inf, -math.inf, 1e308, "", "0", "-1", "0s",
            "1e400", "100m", "-1s", "99999999999h", "0.1ns", "http://", "http://[::1", "ftp://x", "a=b,", "=",
            "*", "0Ki", "10MB", "host:99999", "::", "snow ☃", [], {}, [0], {"a": 1}, REMOVE]
hostile_values = st.one_of(st.sampled_from(BOUNDARY), st.integers(-2**70, 2**70), st.floats(),
                           st.text(max_size=12))


def _places(value, path=()):
    """The path of every value inside a document: the scalars first (the likelier mistakes), then
    the mappings and lists."""
    inner, leaves = [], []
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in children:
        if isinstance(child, (dict, list)):
            inner.append(path + (key,))
            sub_leaves, sub_inner = _places(child, path + (key,))
            leaves += sub_leaves
            inner += sub_inner
        else:
            leaves.append(path + (key,))
    return leaves, inner


def _replace(doc, path, value):
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    if value is REMOVE:
        del parent[path[-1]]
    else:  # a copy: the [] and {} of BOUNDARY must not be shared between places or examples
        parent[path[-1]] = copy.deepcopy(value)


def _durations_and_sizes(obj):
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            yield from _durations_and_sizes(v)
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            yield f.name, v


@settings(fuzz_settings, max_examples=fuzz_settings.max_examples * 10)  # no sockets: 10 ms an example
@given(st.data())
def test_mutated_config_is_refused_with_a_location_or_served(data):
    docs = copy.deepcopy(DOCS)
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        doc = docs[data.draw(st.integers(0, len(docs) - 1), label="document")]
        leaves, inner = _places(doc)
        if leaves or inner:
            places = st.sampled_from(leaves) | st.sampled_from(inner) if leaves and inner else st.sampled_from(
                leaves or inner)
            _replace(doc, data.draw(places, label="field"), data.draw(hostile_values, label="value"))
    text = yaml.safe_dump_all(docs)
    lines = text.count("\n") + 1
    try:
        config = load_config(documents=((SOURCE, text),))
    except ConfigError as exc:
        assert exc.problems
        for problem in exc.problems:
            assert problem.file == SOURCE and 0 <= problem.line <= lines and problem.message, problem
        return
    for split in config.splits:
        if split.redirect is not None or split.direct is not None:  # answered by the router: no clusters
            continue
        assert split.backends and all(math.isfinite(b.weight) and b.weight >= 0 for b in split.backends), split
        assert any(b.weight > 0 for b in split.backends), split
        t = split.timeouts
        if t is not None:  # a deadline is positive (0s means none), a per-try timeout fits in it
            assert t.request_s is None or math.isfinite(t.request_s) and t.request_s > 0, t
            assert t.per_try_s is None or math.isfinite(t.per_try_s) and t.per_try_s >= 0, t
            assert not (t.request_s and t.per_try_s and t.per_try_s > t.request_s), t
    for name, value in _durations_and_sizes(config.router):  # 0 only where it has a meaning
        assert math.isfinite(value) and (value > 0 or name in ("max_bytes", "drain_s")), (name, value)
    build_snapshot(config, 1)
