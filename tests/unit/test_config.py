"""Config loading: every accepted format normalises to the same model; every error names FILE:LINE: field."""
import subprocess
import sys
import textwrap

import pytest

from router.config.errors import ConfigError
from router.config.loader import load_config
from router.config.model import HeaderOps, RateLimit, Redirect, Rewrite, RouteTimeouts, SlowStart
from router.config.values import parse_duration, parse_quantity

CLUSTERS = textwrap.dedent("""\
    apiVersion: edge.router/v1alpha1
    kind: Cluster
    metadata: {name: us-west, labels: {region: us-west}}
    spec: {endpoint: "http://10.0.0.1:80"}
    ---
    apiVersion: edge.router/v1alpha1
    kind: Cluster
    metadata: {name: eu-central, labels: {region: eu-central}}
    spec: {endpoint: "http://10.0.0.2"}
    ---
    apiVersion: edge.router/v1alpha1
    kind: Cluster
    metadata: {name: ap-east, labels: {region: ap-east, zone: ap-east}}
    spec: {endpoint: "https://ap.example.com:8443"}
    """)


def write(tmp_path, text, name="c.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def httproute(spec: str) -> str:
    """CLUSTERS, then an HTTPRoute named web whose spec is `spec` (a block, dedented here)."""
    return (CLUSTERS + "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: web}\n"
            "spec:\n" + textwrap.indent(textwrap.dedent(spec), "  "))


def native_split(spec: str, name: str = "s") -> str:
    """A TrafficSplit (edge.router/v1alpha1) document named `name` whose spec is `spec` (a block,
    dedented here); five lines of header, as written out in full."""
    return (f"---\napiVersion: edge.router/v1alpha1\nkind: TrafficSplit\nmetadata: {{name: {name}}}\nspec:\n"
            + textwrap.indent(textwrap.dedent(spec), "  "))


def errors_of(*paths):
    with pytest.raises(ConfigError) as exc:
        load_config(*paths)
    return [str(p) for p in exc.value.problems]


def assert_errors(path: str, expected: list[tuple[int, str]]) -> None:
    """Loading `path` fails, and each (line, message start) is among its FILE:LINE errors."""
    errors = errors_of(path)
    for line, message in expected:
        assert any(e.startswith(f"{path}:{line}: {message}") for e in errors), (line, errors)


def test_seed_trafficsplit_verbatim(tmp_path):
    write(tmp_path, CLUSTERS, "clusters.yaml")
    (tmp_path / "seed.yaml").write_text(open("config/trafficsplit.yaml").read())
    cfg = load_config(str(tmp_path))
    (split,) = cfg.splits
    assert split.name == "global-split" and split.hosts == ()
    assert {b.cluster: b.weight for b in split.backends} == {"us-west": 45, "eu-central": 35, "ap-east": 20}
    assert split.max_rtt_s == pytest.approx(0.2)
    assert split.algorithm == "latency-aware"
    assert cfg.cluster("eu-central").endpoint.port == 80
    assert cfg.cluster("ap-east").endpoint.scheme == "https"


def test_shipped_config_dir_is_valid():
    cfg = load_config("config")
    assert [c.name for c in cfg.clusters] == ["us-west", "eu-central", "ap-east"]


def test_selector_matching_several_clusters_shares_the_weight(tmp_path):
    text = CLUSTERS.replace("region: eu-central}", "region: eu-central, tier: a}").replace(
        "zone: ap-east}", "zone: ap-east, tier: a}") + native_split("""\
          clusters:
          - {selector: tier=a, weight: 50}
          - {name: us-west, weight: 50}
        """, "s")
    cfg = load_config(write(tmp_path, text))
    assert {b.cluster: b.weight for b in cfg.splits[0].backends} == {"eu-central": 25, "ap-east": 25, "us-west": 50}


@pytest.mark.parametrize("version,weights,expected", [
    ("v1alpha1", ["500m", "250m", "250m"], [0.5, 0.25, 0.25]),
    ("v1alpha2", [50, 25, 25], [50, 25, 25]),
    ("v1alpha3", [50, 25, 25], [50, 25, 25]),
    ("v1alpha4", [1, 0, 3], [1, 0, 3]),
])
def test_smi_trafficsplit(tmp_path, version, weights, expected):
    backends = "".join(f"  - service: {n}\n    weight: {w}\n"
                       for n, w in zip(["us-west", "eu-central", "ap-east"], weights))
    text = CLUSTERS + f"---\napiVersion: split.smi-spec.io/{version}\nkind: TrafficSplit\nmetadata:\n  name: smi\n" \
                      f"spec:\n  service: api.example.com\n  backends:\n{backends}"
    cfg = load_config(write(tmp_path, text))
    (split,) = cfg.splits
    assert split.hosts == ("api.example.com",)
    assert [b.weight for b in split.backends] == pytest.approx(expected)


def test_httproute_weights_default_one_and_path_prefix(tmp_path):
    text = httproute("""\
          hostnames: [Web.Example.com]
          rules:
          - matches: [{path: {type: PathPrefix, value: /api}}]
            backendRefs:
            - {name: us-west, port: 80}
            - {name: eu-central, port: 80, weight: 3}
          - backendRefs:
            - {name: ap-east, weight: 1000000}
        """)
    cfg = load_config(write(tmp_path, text))
    api, rest = cfg.splits
    assert api.hosts == ("web.example.com",) and api.path_prefix == "/api"
    assert {b.cluster: b.weight for b in api.backends} == {"us-west": 1, "eu-central": 3}
    assert rest.path_prefix == "/" and rest.backends[0].weight == 1_000_000


def test_httproute_matches_are_ored_and_what_cannot_be_honoured_is_refused(tmp_path):
    text = httproute("""\
          rules:
          - matches: [{path: {value: /a}}, {path: {type: PathPrefix, value: /b}}, {path: {value: /a}}]
            backendRefs: [{name: us-west}]
        """)
    cfg = load_config(write(tmp_path, text))
    assert [(s.name, s.path_prefix) for s in cfg.splits] == [("web/rule0/match0", "/a"), ("web/rule0/match1", "/b")]
    bad = httproute("""\
          rules:
          - matches:
            - path: {value: /a}
              headers: [{name: x-canary, value: "1", type: Prefix}, {name: "x y", value: a}]
            - method: FETCH
            filters:
            - type: RequestMirror
              requestMirror: {backendRef: {name: x}}
            timeouts: {request: 1s, backendRequest: 2s}
            backendRefs:
            - name: us-west
              filters: [{type: RequestMirror}]
        """) + textwrap.dedent("""\
        ---
        apiVersion: split.smi-spec.io/v1alpha4
        kind: TrafficSplit
        metadata: {name: smi}
        spec:
          service: web
          matches: [{kind: HTTPRouteGroup, name: canary}]
          backends: [{service: us-west, weight: 1}]
        """)
    path = write(tmp_path, bad, "bad.yaml")
    assert_errors(path, [(23, "spec.rules[0].matches[0].headers[0].type: header match type must be Exact or "
                              "RegularExpression, got 'Prefix'"),
                         (23, "spec.rules[0].matches[0].headers[1].name: name must be a token"),
                         (24, "spec.rules[0].matches[1].method: method must be GET, HEAD, POST"),
                         (27, "spec.rules[0].filters[0].requestMirror.backendRef.name: no Cluster named 'x'"),
                         (28, "spec.rules[0].timeouts.backendRequest: backendRequest (2s) is longer than"),
                         (31, "spec.rules[0].backendRefs[0].filters[0]: filter RequestMirror is not supported"),
                         (38, "spec.matches[0].name: no HTTPRouteGroup named 'canary'")])


def test_httproute_header_query_and_method_matches(tmp_path):
    from router.config.model import RouteMatch
    text = httproute("""\
          rules:
          - matches:
            - headers: [{name: X-Canary, value: "yes"}, {name: X-Env, value: prod, type: Exact}]
              queryParams: [{name: v, value: "2"}]
              method: GET
            - path: {value: /a}
            backendRefs: [{name: us-west}]
          - backendRefs: [{name: eu-central}]
        """)
    cfg = load_config(write(tmp_path, text))
    assert [(s.name, s.path_prefix, s.match) for s in cfg.splits] == [
        ("web/rule0/match0", "/", RouteMatch((("x-canary", "yes"), ("x-env", "prod")), (("v", "2"),), "GET")),
        ("web/rule0/match1", "/a", None), ("web/rule1", "/", None)]  # the same path, other conditions: both
    bad = httproute("""\
          rules:
          - matches: [{headers: [{name: X-A, value: "1"}, {name: x-a, value: "2"}]}]
            backendRefs: [{name: us-west}]
          - matches: [{headers: [{name: X-A, value: "1"}]}]
            backendRefs: [{name: eu-central}]
          - matches: [{queryParams: [{name: q, value: "a\\nb"}]}]
            backendRefs: [{name: eu-central}]
        """)
    path = write(tmp_path, bad, "bad.yaml")
    assert_errors(path, [(21, "spec.rules[0].matches[0].headers[1].name: header x-a is matched twice"),
                         (23, "spec: default route path '/' with the same header, query and method conditions "
                              "already routed by 'web/rule0'"),
                         (25, "spec.rules[2].matches[0].queryParams[0].value: value must be a string of at most "
                              "4096 characters without control characters")])


def test_match_values_beyond_latin1_build_and_match_their_utf8_bytes(tmp_path):
    from types import SimpleNamespace

    from router.core.snapshot import build_snapshot, meets
    text = CLUSTERS + native_split('clusters: [{name: us-west, weight: 1}]\n'
                                   'match: {headers: [{name: X-A, value: "snow \u2603"}]}\n')
    route = build_snapshot(load_config(write(tmp_path, text)), 1).named["s"]
    req = SimpleNamespace(method=b"GET", url=b"/", special=[], headers=[(b"X-A", "snow \u2603".encode())])
    assert meets(route.match, req)
    assert not meets(route.match, SimpleNamespace(method=b"GET", url=b"/", special=[], headers=[(b"X-A", b"snow")]))


def test_httproute_exact_path_matches_come_before_prefixes(tmp_path):
    from router.core.snapshot import build_snapshot
    text = httproute("""\
          rules:
          - matches: [{path: {type: Exact, value: /api/health}}, {path: {value: /api}}]
            backendRefs: [{name: us-west}]
          - matches: [{path: {type: PathPrefix, value: /api/health}}]
            backendRefs: [{name: eu-central}]
        """)
    cfg = load_config(write(tmp_path, text))
    assert [(s.name, s.path_prefix, s.path_exact) for s in cfg.splits] == [
        ("web/rule0/match0", "/api/health", True), ("web/rule0/match1", "/api", False), ("web/rule1", "/api/health", False)]
    snap = build_snapshot(cfg, 1)
    assert snap.by_host is None  # the path decides
    route = lambda path: snap.route_for("any", path).name  # noqa: E731
    assert route("/api/health") == "web/rule0/match0"  # Exact wins over the longer-or-equal prefix
    assert route("/api/health/") == route("/api/health/x") == "web/rule1"
    assert route("/api/other") == "web/rule0/match1" and snap.route_for("any", "/") is None
    bad = httproute("""\
          rules:
          - matches: [{path: {type: RegularExpression, value: "/a(.*"}}]
            backendRefs: [{name: us-west}]
          - matches: [{path: {type: Exact, value: /b}}]
            filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}}]
            backendRefs: [{name: us-west}]
        """)
    errors = errors_of(write(tmp_path, bad, "bad.yaml"))
    assert any("spec.rules[0].matches[0].path.value: not a regular expression RE2 takes (missing ): /a(.*)" in e
               for e in errors), errors
    assert any("spec.rules[1].filters: ReplacePrefixMatch needs PathPrefix matches" in e for e in errors), errors


def test_header_changes_from_trafficsplit_and_httproute_filters(tmp_path):
    text = httproute("""\
          hostnames: [b.example.com]
          rules:
          - filters:
            - type: RequestHeaderModifier
              requestHeaderModifier: {add: [{name: X-Tag, value: a}, {name: X-Tag, value: b}]}
            - type: ResponseHeaderModifier
              responseHeaderModifier: {set: [{name: Cache-Control, value: no-store}]}
            backendRefs: [{name: eu-central}]
        """) + native_split("""\
          hosts: [a.example.com]
          clusters: [{name: us-west, weight: 1}]
          requestHeaders: {set: [{name: X-Env, value: prod}], add: [{name: X-Tag, value: a}], remove: [Cookie]}
          responseHeaders: {remove: [Server]}
        """, "native")
    route, native = load_config(write(tmp_path, text)).splits
    assert native.request_headers == HeaderOps((("X-Env", "prod"),), (("X-Tag", "a"),), ("Cookie",))
    assert native.response_headers == HeaderOps((), (), ("Server",))
    assert route.request_headers == HeaderOps((), (("X-Tag", "a"), ("X-Tag", "b")), ())
    assert route.response_headers == HeaderOps((("Cache-Control", "no-store"),), (), ())


def test_header_changes_of_one_cluster(tmp_path):
    """A backendRef's header filters and a TrafficSplit entry's requestHeaders/responseHeaders belong to
    that entry's clusters; two entries giving one cluster different changes are refused."""
    from router.core.snapshot import build_snapshot, then
    text = httproute("""\
          rules:
          - filters:
            - type: RequestHeaderModifier
              requestHeaderModifier: {set: [{name: X-Env, value: prod}], add: [{name: X-Tag, value: r}]}
            backendRefs:
            - name: eu-central
              filters:
              - type: RequestHeaderModifier
                requestHeaderModifier: {set: [{name: X-Env, value: eu}], remove: [X-Tag]}
              - type: ResponseHeaderModifier
                responseHeaderModifier: {add: [{name: X-Region, value: eu}]}
            - name: us-west
        """) + native_split("""\
          hosts: [a.example.com]
          clusters:
          - {selector: region=us-west, weight: 1, responseHeaders: {remove: [Server]}}
          - {name: ap-east, weight: 1}
        """, "native")
    config = load_config(write(tmp_path, text))
    route, native = config.splits
    assert route.backend_headers == (("eu-central", HeaderOps((("X-Env", "eu"),), (), ("X-Tag",)),
                                      HeaderOps((), (("X-Region", "eu"),), ())),)
    assert native.backend_headers == (("us-west", None, HeaderOps((), (), ("Server",))),)
    compiled = build_snapshot(config, 1).route_for("x", "/")
    assert compiled.per_backend["eu-central"][:2] == (frozenset({b"x-env", b"x-tag"}), b"X-Env: eu\r\n")
    assert compiled.per_backend["us-west"][:2] == (frozenset({b"x-env"}), b"X-Env: prod\r\nX-Tag: r\r\n")
    # `then`: the second's set or remove of a name replaces what the first did with it; its adds come after.
    first = HeaderOps((("A", "1"),), (("B", "1"), ("C", "1")), ("D",))
    assert then(first, HeaderOps((), (("B", "2"),), ("C", "A"))) == \
        HeaderOps((), (("B", "1"), ("B", "2")), ("D", "C", "A"))
    assert then(first, None) is first and then(None, first) is first

    bad = httproute("""\
          rules:
          - backendRefs:
            - name: eu-central
              filters:
              - type: RequestHeaderModifier
                requestHeaderModifier: {set: [{name: Host, value: x}]}
              - type: URLRewrite
                urlRewrite: {hostname: x}
        """) + native_split("""\
          clusters:
          - {selector: region=us-west, weight: 1, requestHeaders: {add: [{name: X-A, value: "1"}]}}
          - {name: us-west, weight: 1}
          - {name: ap-east, weight: 1, responseHeaders: {set: [{name: Access-Control-Allow-Origin, value: "*"}]}}
          cors: {allowOrigins: ["https://a.example.com"]}
        """, "native")
    path = write(tmp_path, bad, "bad.yaml")
    assert_errors(path, [(25, "spec.rules[0].backendRefs[0].filters[0].requestHeaderModifier.set[0].name: header "
                              "Host is written by the router"),
                         (26, "spec.rules[0].backendRefs[0].filters[1]: filter URLRewrite is not supported"),
                         (35, "spec.clusters[1]: Cluster 'us-west' is given other header changes"),
                         (36, "spec.clusters[2]: header Access-Control-Allow-Origin is written by the route's CORS")])


def test_httproute_url_rewrite_filter(tmp_path):
    text = httproute("""\
          rules:
          - matches: [{path: {value: /api}}]
            filters:
            - type: URLRewrite
              urlRewrite: {hostname: api.internal, path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}
            backendRefs: [{name: us-west}]
          - filters:
            - type: URLRewrite
              urlRewrite: {path: {type: ReplaceRegex, replaceFullPath: /x}}
            backendRefs: [{name: us-west}]
        """)
    path = write(tmp_path, text)
    errors = errors_of(path)
    assert any("spec.rules[1].filters[0].urlRewrite.path.type: path type must be ReplacePrefixMatch or "
               "ReplaceFullPath, got 'ReplaceRegex'" in e for e in errors), errors
    good = load_config(write(tmp_path, text.split("  - filters:")[0], "good.yaml"))
    assert good.splits[0].rewrite == Rewrite("/v2", None, "api.internal")


def test_redirects_from_trafficsplit_and_httproute(tmp_path):
    text = httproute("""\
          rules:
          - matches: [{path: {value: /docs}}]
            filters:
            - type: RequestRedirect
              requestRedirect: {scheme: https, port: 8443, path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2/docs}}
        """) + native_split("""\
          hosts: [old.example.com]
          redirect: {hostname: new.example.com, statusCode: 301}
        """, "moved")
    docs, moved = load_config(write(tmp_path, text)).splits
    assert moved.redirect == Redirect(None, "new.example.com", None, None, None, 301) and not moved.backends
    assert docs.redirect == Redirect("https", None, 8443, "/v2/docs", None, 302)
    bad = httproute("""\
          rules:
          - filters:
            - {type: RequestRedirect, requestRedirect: {hostname: x.example}}
            - {type: URLRewrite, urlRewrite: {hostname: y.example}}
            backendRefs: [{name: us-west}]
        """) + native_split("""\
          clusters: [{name: us-west, weight: 1}]
          redirect: {scheme: ftp, statusCode: 404, port: 0, pathPrefix: /, fullPath: /x}
        """, "moved")
    path = write(tmp_path, bad, "bad.yaml")
    assert_errors(path, [(30, "spec.clusters: a redirect is answered by the router: clusters cannot go with it"),
                         (31, "spec.redirect: redirect takes pathPrefix or fullPath, not both"),
                         (31, "spec.redirect.scheme: scheme must be http or https, got 'ftp'"),
                         (31, "spec.redirect.port: port must be 1..65535, got 0"),
                         (31, "spec.redirect.statusCode: statusCode must be one of 301, 302, 303, 307, 308"),
                         (22, "spec.rules[0].filters[0]: RequestRedirect and URLRewrite cannot be used together"),
                         (24, "spec.rules[0].backendRefs: a rule with a RequestRedirect filter is answered")])
    idle = native_split("""\
          redirect: {hostname: new.example.com}
          affinity: {header: X-User}
          requestHeaders: {set: [{name: X-A, value: "1"}]}
          responseHeaders: {remove: [Server]}
        """, "moved")
    path = write(tmp_path, CLUSTERS + idle, "idle.yaml")
    assert_errors(path, [(21, "spec.affinity: a redirect is answered by the router: affinity cannot go with it"),
                         (22, "spec.requestHeaders: a redirect is answered by the router: requestHeaders cannot"),
                         (23, "spec.responseHeaders: a redirect is answered by the router: responseHeaders")])


def test_mirror(tmp_path):
    from router.config.model import Mirror
    from router.core.snapshot import build_snapshot
    text = httproute("""\
          rules:
          - filters:
            - {type: RequestMirror, requestMirror: {backendRef: {name: eu-central}, fraction: {numerator: 1, denominator: 8}}}
            backendRefs: [{name: us-west}]
          - matches: [{path: {value: /b}}]
            filters:
            - {type: RequestMirror, requestMirror: {backendRef: {name: ap-east}, percent: 30}}
            backendRefs: [{name: us-west}]
        """) + native_split("""\
          hosts: [s.example.com]
          clusters: [{name: us-west, weight: 1}]
          mirror: {cluster: ap-east}
        """, "s")
    text += native_split("""\
          hosts: [t.example.com]
          clusters: [{name: us-west, weight: 1}]
          mirrors: [{cluster: ap-east, percent: 50}, {cluster: eu-central}]
        """, "t")
    line = next(x for x in text.splitlines(keepends=True) if "percent: 30" in x)
    text = text.replace(line, line + line.replace("{name: ap-east}, percent: 30", "{name: eu-central}"))
    cfg = load_config(write(tmp_path, text))
    assert [s.mirrors for s in cfg.splits] == [
        (Mirror("eu-central", 12.5),), (Mirror("ap-east", 30.0), Mirror("eu-central", 100.0)),
        (Mirror("ap-east", 100.0),), (Mirror("ap-east", 50.0), Mirror("eu-central", 100.0))]
    route = build_snapshot(cfg, 1).route_for("s.example.com", "/")
    (backend, percent), = route.mirrors
    assert backend.cluster == "ap-east" and backend.pool_key == ("https", "ap.example.com", 8443) and percent == 100
    assert [(b.cluster, p) for b, p in build_snapshot(cfg, 1).route_for("t.example.com", "/").mirrors] == [
        ("ap-east", 50.0), ("eu-central", 100.0)]
    bad = httproute("""\
          rules:
          - filters:
            - {type: RequestMirror, requestMirror: {backendRef: {name: ap-east}, fraction: {numerator: 3, denominator: 2}}}
            - {type: RequestMirror, requestMirror: {backendRef: {name: ap-east}, percent: 5, fraction: {numerator: 1}}}
            backendRefs: [{name: us-west}]
        """)
    bad += native_split("""\
          hosts: [t.example.com]
          clusters: [{name: us-west, weight: 1}]
          mirror: {cluster: ap-east}
          mirrors: [{cluster: eu-central}]
        """, "t") + native_split("""\
          hosts: [u.example.com]
          clusters: [{name: us-west, weight: 1}]
          mirrors: [CLUSTERS]
        """.replace("CLUSTERS", ", ".join(["{cluster: ap-east}"] * 9)), "u")
    path = write(tmp_path, bad, "bad.yaml")
    assert_errors(path, [(22, "spec.rules[0].filters[0].requestMirror.fraction: numerator (3) is above denominator (2)"),
                         (23, "spec.rules[0].filters[1].requestMirror.fraction: requestMirror takes percent or "
                              "fraction, not both"),
                         (23, "spec.rules[0].filters[1].requestMirror.backendRef.name: Cluster 'ap-east' is mirrored "
                              "to twice"),
                         (33, "spec.mirrors: mirror and mirrors cannot go together"),
                         (41, "spec.mirrors: at most 8 mirrors, got 9")])


def test_retry_on_status(tmp_path):
    from router.config.model import RetryOn
    text = httproute("""\
          rules:
          - retry: {codes: [502, 503], attempts: 2}
            backendRefs: [{name: us-west}]
          - matches: [{path: {value: /b}}]
            retry: {codes: [503], backoff: 100ms}
            backendRefs: [{name: us-west}]
        """)
    cfg = load_config(write(tmp_path, text))
    assert [s.retry for s in cfg.splits] == [RetryOn(frozenset({502, 503}), 2), RetryOn(frozenset({503}), 1, 0.1)]
    path = write(tmp_path, text.replace("backoff: 100ms", "backoff: -1s"), "bad.yaml")
    assert_errors(path, [(24, "spec.rules[1].retry.backoff: ")])


def test_rate_limit(tmp_path):
    one = "clusters: [{name: us-west, weight: 1}]\n"
    text = (CLUSTERS + native_split(one + "hosts: [a.example.com]\nrateLimit: {requestsPerSecond: 2.5}\n", "s")
            + native_split(one + "hosts: [b.example.com]\n"
                           "rateLimit: {requestsPerSecond: 100, burst: 20, key: header:X-Api-Key}\n", "t"))
    s, t = load_config(write(tmp_path, text)).splits
    assert s.rate_limit == RateLimit(2.5, 3, "route")  # burst defaults to the rate, rounded up
    assert t.rate_limit == RateLimit(100.0, 20, "header:x-api-key")


def test_route_timeouts_from_trafficsplit_and_httproute(tmp_path):
    from router.core.snapshot import build_snapshot
    text = httproute("""\
          hostnames: [web]
          rules:
          - matches: [{path: {value: /a}}]
            timeouts: {request: 10s, backendRequest: 2s}
            backendRefs: [{name: us-west}]
          - matches: [{path: {value: /b}}]
            timeouts: {request: 0s, backendRequest: 0s}
            backendRefs: [{name: us-west}]
          - matches: [{path: {value: /c}}]
            timeouts: {request: 0s}
            backendRefs: [{name: us-west}]
        """) + native_split("""\
          clusters: [{name: us-west, weight: 1}]
          timeouts: {request: 1m30s, perTry: 500ms}
        """, "s")
    cfg = load_config(write(tmp_path, text))
    a, b, c, s = cfg.splits
    assert a.timeouts == RouteTimeouts(10.0, 2.0)
    assert b.timeouts == RouteTimeouts(None, 0.0)  # 0s: no deadline, and no per-try timeout even if the Router has one
    assert c.timeouts is None  # as if unset
    assert s.timeouts == RouteTimeouts(90.0, 0.5)
    snap = build_snapshot(cfg, 1)
    route = snap.route_for("web", "/a/x")
    assert (route.request_timeout_s, route.per_try_s) == (10.0, 2.0)
    route = snap.route_for("other", "/")
    assert (route.request_timeout_s, route.per_try_s) == (90.0, 0.5)
    route = snap.route_for("web", "/c")
    assert (route.request_timeout_s, route.per_try_s) == (None, None)
    bad = httproute("""\
          rules:
          - timeouts: {request: 1s, backendRequest: 2s}
            backendRefs: [{name: us-west}]
          - matches: [{path: {value: /b}}]
            timeouts: {request: -1s, total: 2s}
            backendRefs: [{name: us-west}]
        """)
    path = write(tmp_path, bad, "bad.yaml")
    assert_errors(path, [(21, "spec.rules[0].timeouts.backendRequest: backendRequest (2s) is longer than request "
                              "(1s), which covers every try"),
                         (24, "spec.rules[1].timeouts.request: bad duration '-1s'"),
                         (24, "spec.rules[1].timeouts.total: unknown field")])


def test_hedged_route_timeouts(tmp_path):
    from router.core.snapshot import build_snapshot
    text = native_split("""\
          clusters: [{name: us-west, weight: 1}, {name: ap-east, weight: 1}]
          timeouts: {perTry: 300ms, hedge: true}
        """, "s")
    cfg = load_config(write(tmp_path, CLUSTERS + text))
    assert cfg.splits[0].timeouts == RouteTimeouts(None, 0.3, True)
    assert build_snapshot(cfg, 1).route_for("h", "/").hedge
    bad = native_split("""\
          clusters: [{name: us-west, weight: 1}]
          timeouts: {request: 2s, hedge: true}
        """, "s") + httproute("""\
          hostnames: [web]
          rules:
          - timeouts: {backendRequest: 1s, hedge: true}
            backendRefs: [{name: us-west}]
        """).replace(CLUSTERS, "")
    path = write(tmp_path, CLUSTERS + bad, "bad.yaml")
    assert_errors(path, [(21, "spec.timeouts.hedge: hedge races a try against the next one once its perTry runs "
                              "out: give this route a perTry"),
                         (29, "spec.rules[0].timeouts.hedge: unknown field")])


@pytest.mark.parametrize("line,expected", [
    ("requestHeaders: {set: [{name: Host, value: x}]}", "requestHeaders.set[0].name: header Host is written by the router"),
    ("requestHeaders: {remove: [X-Forwarded-For]}",
     "requestHeaders.remove[0]: header X-Forwarded-For is written by the router"),
    ("requestHeaders: {set: [{name: 'X Bad', value: x}]}", "requestHeaders.set[0].name: header name must be a token"),
    ('requestHeaders: {set: [{name: X-A, value: "a\\r\\nInjected: 1"}]}',
     "requestHeaders.set[0].value: header value must be a string without control characters"),
    ("requestHeaders: {set: [{name: X-A, value: 1}]}", "requestHeaders.set[0].value: header value must be a string"),
    ("requestHeaders: {set: [{name: X-A, value: a}], remove: [x-a]}",
     "requestHeaders.remove[0]: header x-a is named twice"),
    ("requestHeaders: {add: [{name: X-A}]}", "requestHeaders.add[0]: missing required field"),
    ("responseHeaders: {replace: []}", "responseHeaders.replace: unknown field"),
    ("rewrite: {pathPrefix: /, fullPath: /x}", "rewrite: rewrite takes pathPrefix or fullPath, not both"),
    ("rewrite: {pathPrefix: x}", "rewrite.pathPrefix: path must start with '/'"),
    ("rewrite: {hostname: 'a b'}", "rewrite.hostname: host must be a DNS name"),
    ("rewrite: {hostname: '*.x.com'}", "rewrite.hostname: hostname must be a DNS name"),
    ("timeouts: {request: 0s}", "timeouts.request: duration must be positive"),
    ("timeouts: {perTry: 2s, request: 1s}", "timeouts.perTry: perTry (2s) is longer than request (1s)"),
    ("timeouts: {backendRequest: 1s}", "timeouts.backendRequest: unknown field"),
    ("mirror: {cluster: nowhere}", "mirror.cluster: no Cluster named 'nowhere'"),
    ("mirror: {cluster: eu-central, percent: 101}", "mirror.percent: percent must be a number 0..100, got 101"),
    ("mirror: {percent: 5}", "mirror: missing required field 'spec.mirror.cluster'"),
    ("match: {path: {value: /x}}", "match.path: unknown field"),
    ("match: {method: FETCH}", "match.method: method must be GET, HEAD, POST"),
    ("match: {headers: [{name: X-A, value: '(a)\\1', type: RegularExpression}]}",
     "match.headers[0].value: not a regular expression RE2 takes (invalid escape sequence"),
    ("retry: {codes: [200]}", "retry.codes[0]: a retried status code must be 400..599, got 200"),
    ("retry: {codes: [503], attempts: 0}", "retry.attempts: expected a positive integer, got 0"),
    ("retry: {codes: [503], backoff: 0s}", "retry.backoff: "),
    ("retry: {attempts: 2}", "retry: missing required field 'spec.retry.codes'"),
    ("rateLimit: {burst: 5}", "rateLimit: missing required field 'spec.rateLimit.requestsPerSecond'"),
    ("rateLimit: {requestsPerSecond: 0}", "rateLimit.requestsPerSecond: requestsPerSecond must be a positive number"),
    ("rateLimit: {requestsPerSecond: .inf}", "rateLimit.requestsPerSecond: requestsPerSecond must be a positive"),
    ("rateLimit: {requestsPerSecond: 10, burst: 0}", "rateLimit.burst: expected a positive integer, got 0"),
    ("rateLimit: {requestsPerSecond: 10, key: ip}", "rateLimit.key: key must be route, client or header:NAME"),
    ("rateLimit: {requestsPerSecond: 10, key: 'header:X Y'}", "rateLimit.key: key must be route, client or header"),
])
def test_header_changes_and_rewrites_refused(tmp_path, line, expected):
    path = write(tmp_path, CLUSTERS + "---\napiVersion: edge.router/v1alpha1\nkind: TrafficSplit\n"
                                      "metadata: {name: s}\nspec:\n  clusters: [{name: us-west, weight: 1}]\n"
                                      f"  {line}\n")
    assert any(f"spec.{expected}" in e for e in errors_of(path)), errors_of(path)


def test_router_document(tmp_path):
    text = CLUSTERS + textwrap.dedent("""\
        ---
        apiVersion: edge.router/v1alpha1
        kind: Router
        metadata: {name: edge}
        spec:
          listen: 0.0.0.0:8443
          trustedProxies: [10.0.0.0/8, "::1/128"]
          limits: {maxBody: 1Mi, maxHeaders: 50}
          timeouts: {headerRead: 5s, connect: 250ms}
        """)
    r = load_config(write(tmp_path, text)).router
    assert r.listen == "0.0.0.0:8443" and len(r.trusted_proxies) == 2
    assert r.limits.max_body_bytes == 1 << 20 and r.limits.max_header_count == 50
    assert r.timeouts.header_read_s == 5 and r.timeouts.connect_s == 0.25
    assert r.normalize_path is True and r.underscore_headers == "drop"  # the edge defaults
    assert r.slow_start is None  # off unless asked for, as in Envoy and HAProxy


def test_router_outlier_detection_and_probe_thresholds(tmp_path):
    from router.config.model import OutlierDetection, Probes
    head = "apiVersion: edge.router/v1alpha1\nkind: Router\nmetadata: {name: edge}\nspec:\n"
    path = write(tmp_path, head + "  outlierDetection: {consecutive5xx: 2, baseEjectionTime: 10s, panicThreshold: 0,"
                                  " maxEjectionPercent: 50}\n  probes: {unhealthyThreshold: 1, healthyThreshold: 4}\n")
    r = load_config(path).router
    assert r.outlier_detection == OutlierDetection(2, 10.0, 300.0, 0.0, 50.0)
    assert r.probes == Probes(True, 1.0, 0.5, 1, 4)
    path = write(tmp_path, head + "  outlierDetection: {baseEjectionTime: 10m}\n")
    assert load_config(path).router.outlier_detection == OutlierDetection(5, 600.0, 600.0, 0.5)  # max follows
    assert load_config(write(tmp_path, head + "  via: x\n")).router.outlier_detection == OutlierDetection()
    bad = write(tmp_path, head + "  outlierDetection:\n    consecutive5xx: 0\n    baseEjectionTime: 1m\n"
                                 "    maxEjectionTime: 30s\n    panicThreshold: 150\n    maxEjectionPercent: -1\n"
                                 "  probes: {unhealthyThreshold: 0}\n", "bad.yaml")
    assert_errors(bad, [(6, "spec.outlierDetection.consecutive5xx: expected a positive integer, got 0"),
                        (8, "spec.outlierDetection.maxEjectionTime: maxEjectionTime (30s) is shorter than "
                            "baseEjectionTime (60s)"),
                        (9, "spec.outlierDetection.panicThreshold: percent must be a number 0..100, got 150"),
                        (10, "spec.outlierDetection.maxEjectionPercent: percent must be a number 0..100, got -1"),
                        (11, "spec.probes.unhealthyThreshold: expected a positive integer, got 0")])


def test_router_slow_start(tmp_path):
    path = write(tmp_path, "apiVersion: edge.router/v1alpha1\nkind: Router\nmetadata: {name: edge}\n"
                           "spec:\n  slowStart: {window: 1m30s, aggression: 1.5, minWeightPercent: 5}\n")
    assert load_config(path).router.slow_start == SlowStart(90.0, 1.5, 0.05)
    path = write(tmp_path, "apiVersion: edge.router/v1alpha1\nkind: Router\nmetadata: {name: edge}\n"
                           "spec:\n  slowStart: {window: 30s}\n")
    assert load_config(path).router.slow_start == SlowStart(30.0, 1.0, 0.1)  # Envoy's defaults


@pytest.mark.parametrize("line,expected", [
    ("underscoreHeaders: keep", "spec.underscoreHeaders: expected drop, reject or allow, got 'keep'"),
    ("normalizePath: 'no'", "spec.normalizePath: expected true or false, got 'no'"),
    ("escapedSlashes: decode", "spec.escapedSlashes: expected keep, reject or unescape, got 'decode'"),
    ("httpsRedirect: {port: 443}", "spec.httpsRedirect: missing required field 'spec.httpsRedirect.listen'"),
    ("httpsRedirect: {listen: '0.0.0.0:80', statusCode: 200}",
     "spec.httpsRedirect.statusCode: statusCode must be one of 301, 302, 303, 307, 308, got 200"),
    ("httpsRedirect: {listen: 'x:80', port: 0}", "spec.httpsRedirect.port: port must be 1..65535, got 0"),
    ("slowStart: {aggression: 2}", "spec.slowStart: missing required field 'spec.slowStart.window'"),
    ("slowStart: {window: 0s}", "spec.slowStart.window: duration must be positive, got '0s'"),
    ("slowStart: {window: 30s, aggression: 0}",
     "spec.slowStart.aggression: expected a number above 0 and at most 100 (1 ramps linearly), got 0"),
    ("slowStart: {window: 30s, aggression: .nan}",
     "spec.slowStart.aggression: expected a number above 0 and at most 100 (1 ramps linearly), got nan"),
    ("slowStart: {window: 30s, minWeightPercent: 150}",
     "spec.slowStart.minWeightPercent: percent must be a number 0..100, got 150"),
    ("slowStart: {window: 30s, rampUp: fast}", "spec.slowStart.rampUp: unknown field (allowed: aggression, minWeightPercent, window)"),
    ("pinHeader: {name: X-Edge-Cluster}", "spec.pinHeader: missing required field 'spec.pinHeader.allow'"),
    ("pinHeader: {name: Via, allow: [10.0.0.0/8]}",
     "spec.pinHeader.name: header Via is written by the router and cannot name a cluster"),
    ("pinHeader: {name: X-Edge-Cluster, allow: []}",
     "spec.pinHeader.allow: pinHeader needs the client addresses it is honoured for"),
    ("pinHeader: {name: 'X Edge', allow: [10.0.0.0/8]}",
     "spec.pinHeader.name: a header name is a token such as X-User, got 'X Edge'"),
    ("errorFormat: xml", "spec.errorFormat: errorFormat must be text, problem-json or auto, got 'xml'"),
])
def test_router_request_rules_refused(tmp_path, line, expected):
    path = write(tmp_path, f"apiVersion: edge.router/v1alpha1\nkind: Router\nmetadata: {{name: edge}}\nspec:\n  {line}\n")
    assert f"{path}:5: {expected}" in errors_of(path)


@pytest.mark.parametrize("limits,expected", [
    ("maxHeaders: 0", "spec.limits.maxHeaders: expected a positive integer, got 0"),
    ("maxHeaders: 100m", "spec.limits.maxHeaders: expected a positive integer, got '100m'"),
    ("maxBody: 0", "spec.limits.maxBody: size must be at least 1 byte, got 0"),
    ("maxRequestLine: 0Ki", "spec.limits.maxRequestLine: size must be at least 1 byte, got '0Ki'"),
    ("maxBuffered: -1", "spec.limits.maxBuffered: size must not be negative, got -1"),
    ("maxHeaderBytes: .inf", "spec.limits.maxHeaderBytes: size must be a finite number, got inf"),
    ("maxBody: 10MB", "spec.limits.maxBody: size must be a quantity like 1024, 64Ki or 10Mi, got '10MB'"),
    ("maxBody: 1.5", "spec.limits.maxBody: size must be a whole number of bytes, got 1.5"),
])
def test_router_limits_refused(tmp_path, limits, expected):
    path = write(tmp_path, "apiVersion: edge.router/v1alpha1\nkind: Router\nmetadata: {name: edge}\n"
                           f"spec:\n  limits:\n    {limits}\n")
    assert f"{path}:6: {expected}" in errors_of(path)


SPLIT_AT_LINE_16 = CLUSTERS + "---\napiVersion: edge.router/v1alpha1\nkind: TrafficSplit\nmetadata: {name: s}\nspec:\n  clusters:\n"


@pytest.mark.parametrize("entries,extra,expected", [
    ("  - {name: us-west, weight: -1}\n", "", ":21: spec.clusters[0].weight: weight must not be negative"),
    ("  - {name: us-west, weight: 0}\n  - {name: ap-east, weight: 0}\n", "", ":20: spec.clusters: all weights are zero"),
    ("  - {selector: region=mars, weight: 1}\n", "", ":21: spec.clusters[0].selector: selector 'region=mars' matches no Cluster"),
    ("  - {name: pluto, weight: 1}\n", "", ":21: spec.clusters[0].name: no Cluster named 'pluto'"),
    ("  - {name: us-west, weight: 1, color: red}\n", "", ":21: spec.clusters[0].color: unknown field"),
    ("  - {name: us-west, weight: 1}\n", "  strategy: {params: {maxRTT: 200 ms}}\n",
     ":22: spec.strategy.params.maxRTT: bad duration '200 ms'"),
    ("  - {name: us-west, weight: 1}\n", "  strategy: {params: {maxRTT: -1s}}\n",
     ":22: spec.strategy.params.maxRTT: bad duration '-1s'"),
    ("  - {name: us-west, weight: ten}\n", "", ":21: spec.clusters[0].weight: weight must be a number"),
    ("  - {name: us-west, weight: .nan}\n  - {name: ap-east, weight: 1}\n", "",
     ":21: spec.clusters[0].weight: weight must be a finite number, got nan"),
    ("  - {name: us-west, weight: .inf}\n", "", ":21: spec.clusters[0].weight: weight must be a finite number"),
])
def test_split_errors_name_file_line_field(tmp_path, entries, extra, expected):
    path = write(tmp_path, SPLIT_AT_LINE_16 + entries + extra)
    errs = errors_of(path)
    assert any(e.startswith(path + expected) for e in errs), errs


def test_cluster_errors(tmp_path):
    text = textwrap.dedent("""\
        apiVersion: edge.router/v1alpha1
        kind: Cluster
        metadata: {name: a}
        spec: {endpoint: "not a url"}
        ---
        apiVersion: edge.router/v1alpha1
        kind: Cluster
        metadata: {name: b}
        spec: {endpoint: "http://b:80"}
        ---
        apiVersion: edge.router/v1alpha1
        kind: Cluster
        metadata: {name: b}
        spec: {endpoint: "ftp://b"}
        ---
        apiVersion: edge.router/v1alpha1
        kind: Cluster
        metadata: {name: c}
        spec: {endpoint: "http://c", maxRequests: 0, maxRequestsPerConnection: 0, maxConnectionAge: 1 h}
        ---
        apiVersion: edge.router/v1alpha1
        kind: Gizmo
        metadata: {name: g}
        """)
    path = write(tmp_path, text)
    errs = errors_of(path)
    assert f"{path}:4: spec.endpoint: endpoint is not an http(s) URL: 'not a url'" in errs
    assert f"{path}:14: spec.endpoint: endpoint is not an http(s) URL: 'ftp://b'" in errs
    assert any(e.startswith(f"{path}:11: metadata.name: duplicate Cluster name 'b'") for e in errs), errs
    assert f"{path}:19: spec.maxRequests: expected a positive integer, got 0" in errs
    assert f"{path}:19: spec.maxRequestsPerConnection: expected a positive integer, got 0" in errs
    assert any(e.startswith(f"{path}:19: spec.maxConnectionAge: ") for e in errs), errs
    assert f"{path}:22: kind: unknown kind 'Gizmo' in apiVersion 'edge.router/v1alpha1'" in errs


def test_a_routes_own_body_limit(tmp_path):
    text = CLUSTERS + native_split("""\
          clusters: [{name: us-west, weight: 1}]
          maxBody: 1Gi
        """) + native_split("""\
          hosts: [b]
          clusters: [{name: us-west, weight: 1}]
        """, "t")
    config = load_config(write(tmp_path, text))
    assert [s.max_body_bytes for s in config.splits] == [1 << 30, None]
    from router.core.snapshot import build_snapshot
    snap = build_snapshot(config, 1)
    assert (snap.named["s"].max_body, snap.named["t"].max_body, snap.max_body) == (1 << 30, 10 << 20, 1 << 30)
    bad = CLUSTERS + native_split("""\
          clusters: [{name: us-west, weight: 1}]
          maxBody: 0
        """) + native_split("""\
          hosts: [b]
          redirect: {hostname: c}
          maxBody: 1Mi
        """, "t")
    path = write(tmp_path, bad, "bad.yaml")
    assert_errors(path, [(21, "spec.maxBody: "), (29, "spec.maxBody: a redirect is answered by the router")])


def test_direct_responses(tmp_path):
    from router.config.model import DirectResponse
    text = CLUSTERS + native_split("""\
          hosts: [a]
          directResponse: {status: 503, body: "down for maintenance"}
        """) + native_split("""\
          hosts: [b]
          directResponse: {status: 200, body: "{}", contentType: application/json}
        """, "t")
    assert [s.direct for s in load_config(write(tmp_path, text)).splits] == [
        DirectResponse(503, "down for maintenance"), DirectResponse(200, "{}", "application/json")]
    bad = CLUSTERS + native_split("""\
          hosts: [a]
          clusters: [{name: us-west, weight: 1}]
          directResponse: {status: 99, contentType: "text/html\\u0000"}
        """) + native_split("""\
          hosts: [b]
          redirect: {hostname: c}
          directResponse: {status: 204, body: x}
        """, "t")
    path = write(tmp_path, bad, "bad.yaml")
    assert_errors(path, [(21, "spec.clusters: a direct response is answered by the router"),
                         (22, "spec.directResponse.status: status must be 200..599, got 99"),
                         (22, "spec.directResponse.contentType: contentType must be a media type"),
                         (30, "spec.directResponse: a redirect is answered by the router"),
                         (30, "spec.directResponse.body: a 204 answer has no body")])


def test_route_faults(tmp_path):
    from router.config.model import Fault
    text = CLUSTERS + native_split("""\
          clusters: [{name: us-west, weight: 1}]
          fault: {delay: {fixedDelay: 1.5s, percent: 10}, abort: {httpStatus: 503, percent: 0.5}}
        """)
    (s,) = load_config(write(tmp_path, text)).splits
    assert s.fault == Fault(1.5, 10.0, 503, 0.5)
    bad = CLUSTERS + native_split("""\
          clusters: [{name: us-west, weight: 1}]
          fault: {delay: {percent: 10}, abort: {httpStatus: 700, percent: 101}}
        """) + native_split("""\
          hosts: [b]
          clusters: [{name: us-west, weight: 1}]
          fault: {}
        """, "t")
    path = write(tmp_path, bad, "bad.yaml")
    assert_errors(path, [(21, "spec.fault.delay: missing required field 'spec.fault.delay.fixedDelay'"),
                         (21, "spec.fault.abort.httpStatus: status must be 200..599, got 700"),
                         (21, "spec.fault.abort.percent: percent must be a number 0..100"),
                         (29, "spec.fault: fault needs a delay or an abort")])


def test_cluster_connection_reuse_limits(tmp_path):
    text = CLUSTERS.replace('spec: {endpoint: "http://10.0.0.2"}',
                            'spec: {endpoint: "http://10.0.0.2", maxRequestsPerConnection: 1000, maxConnectionAge: 1h}')
    config = load_config(write(tmp_path, text + native_split("clusters: [{name: eu-central, weight: 1}]")))
    (eu,) = [c for c in config.clusters if c.name == "eu-central"]
    assert (eu.max_requests_per_connection, eu.max_connection_age_s) == (1000, 3600.0)


def test_yaml_syntax_error_has_line(tmp_path):
    path = write(tmp_path, "apiVersion: v1\nkind: [unclosed\nmetadata: {}\n")
    (err,) = errors_of(path)
    assert err.startswith(f"{path}:") and "YAML syntax" in err
    assert int(err.split(":")[1]) in (2, 3, 4)


def test_duplicate_default_route_and_split_names(tmp_path):
    split = "---\napiVersion: edge.router/v1alpha1\nkind: TrafficSplit\nmetadata: {name: s}\nspec:\n  clusters: [{name: us-west, weight: 1}]\n"
    errs = errors_of(write(tmp_path, CLUSTERS + split + split))
    assert any("duplicate TrafficSplit name 's'" in e for e in errs)
    assert any("default route path '/' already routed by 's'" in e for e in errs)


def test_all_errors_reported_together(tmp_path):
    path = write(tmp_path, SPLIT_AT_LINE_16 + "  - {name: us-west, weight: -1}\n  - {name: nowhere, weight: 2}\n")
    assert len(errors_of(path)) == 2


@pytest.mark.parametrize("text,seconds", [("200ms", 0.2), ("1.5s", 1.5), ("1m30s", 90), ("250us", 0.00025), (0, 0)])
def test_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["200 ms", "-1s", "5", "1d", "", "s", True, 5, "2562048h", "1" + "0" * 400 + "s"])
def test_bad_durations(bad):
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_quantities():
    assert parse_quantity("100m") == pytest.approx(0.1)
    assert parse_quantity("2k") == 2000
    for bad in ("-100m", "1x", "m", True):
        with pytest.raises(ValueError):
            parse_quantity(bad)


def test_validate_cli_exit_codes(tmp_path):
    good = subprocess.run([sys.executable, "-m", "router", "validate", "config"], capture_output=True, text=True)
    assert good.returncode == 0, good.stderr
    bad_path = write(tmp_path, SPLIT_AT_LINE_16 + "  - {name: us-west, weight: -1}\n")
    bad = subprocess.run([sys.executable, "-m", "router", "validate", bad_path], capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr.strip() == f"{bad_path}:21: spec.clusters[0].weight: weight must not be negative, got -1"


def test_service_wake_and_keep_warm_switches(tmp_path):
    doc = textwrap.dedent("""\
        ---
        apiVersion: edge.router/v1alpha1
        kind: Service
        metadata: {name: shop}
        spec:
          hosts: [shop.example.com]
        """)
    svc = load_config(write(tmp_path, CLUSTERS + doc)).services[0]
    assert svc.wake_skipped is True and svc.keep_warm is False  # the defaults
    svc = load_config(write(tmp_path, CLUSTERS + doc + "  keepWarm: true\n  wakeSkipped: false\n")).services[0]
    assert svc.wake_skipped is False and svc.keep_warm is True
    path = write(tmp_path, CLUSTERS + doc + "  keepWarm: maybe\n")
    assert f"{path}:21: spec.keepWarm: expected true or false, got 'maybe'" in errors_of(path)


def test_start_only_changes_name_what_a_reload_cannot_apply(tmp_path):
    from router.control.reload import start_only_changes
    base = CLUSTERS + "---\napiVersion: edge.router/v1alpha1\nkind: TrafficSplit\nmetadata: {name: s}\n" \
                      "spec:\n  clusters: [{name: us-west, weight: 1}]\n"
    started = load_config(write(tmp_path, base, "a.yaml"))
    changed = load_config(write(tmp_path, base.replace('spec: {endpoint: "http://10.0.0.2"}',
                                                       'spec: {endpoint: "http://10.0.0.2", kubernetes: {context: eu}}')
                                + "---\napiVersion: edge.router/v1alpha1\nkind: Router\nmetadata: {name: e}\n"
                                  "spec: {listen: 1.2.3.4:80, adminToken: {file: /t}, timeouts: {connect: 1s}}\n",
                                "b.yaml"))
    # (a Cluster's spec.kubernetes is applied by a reload: its provider is started, or replaced)
    assert start_only_changes(started, changed) == ["Router spec.listen", "Router spec.adminToken"]
    assert start_only_changes(started, changed, frozenset({"listen"})) == ["Router spec.adminToken"]
    assert start_only_changes(started, started) == []
    h2c = "---\napiVersion: edge.router/v1alpha1\nkind: Router\nmetadata: {name: e}\nspec: {http2: {cleartext: true%s}}\n"
    with_h2c = load_config(write(tmp_path, base + h2c % "", "c.yaml"))
    assert start_only_changes(started, with_h2c) == ["Router spec.http2"]
    fewer_streams = load_config(write(tmp_path, base + h2c % ", maxConcurrentStreams: 10", "d.yaml"))
    assert start_only_changes(with_h2c, fewer_streams) == []  # read by each new connection


def test_aliases_work_but_an_alias_bomb_is_refused(tmp_path):
    shared = CLUSTERS.replace("metadata: {name: us-west, labels: {region: us-west}}",
                              "metadata: {name: &w us-west, labels: {region: *w, zone: *w}}")
    cfg = load_config(write(tmp_path, shared, "aliases.yaml"))
    assert cfg.clusters[0].labels == (("region", "us-west"), ("zone", "us-west"))
    bomb = ["apiVersion: edge.router/v1alpha1", "kind: Cluster", "metadata:", "  name: a", "  labels:",
            '    l0: &l0 ["x","x","x","x","x","x","x","x","x","x"]']
    bomb += [f"    l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, 10)]
    path = write(tmp_path, "\n".join(bomb + ['spec: {endpoint: "http://127.0.0.1:1"}']) + "\n", "bomb.yaml")
    (err,) = errors_of(path)  # 10^10 values if expanded: refused at the budget, in well under a second
    assert err.startswith(f"{path}:6: metadata.labels.l") and "YAML expands to more than 200000 values" in err


def test_session_persistence(tmp_path):
    from router.config.model import SessionPersistence
    text = native_split("""\
          clusters: [{name: us-west, weight: 1}, {name: ap-east, weight: 1}]
          sessionPersistence: {sessionName: sid, absoluteTimeout: 1h, cookieConfig: {lifetimeType: Permanent}}
        """, "s") + httproute("""\
          hostnames: [web]
          rules:
          - sessionPersistence: {type: Header, sessionName: X-Session}
            backendRefs: [{name: us-west}, {name: ap-east}]
        """).replace(CLUSTERS, "")
    s, web = load_config(write(tmp_path, CLUSTERS + text)).splits
    assert s.session == SessionPersistence("sid", False, 3600.0, True)
    assert web.session == SessionPersistence("X-Session", True, None, False)
    bad = native_split("""\
          clusters: [{name: us-west, weight: 1}]
          affinity: {cookie: sid}
          sessionPersistence: {idleTimeout: 0s, cookieConfig: {lifetimeType: Permanent}}
        """, "s") + native_split("""\
          clusters: [{name: us-west, weight: 1}]
          hosts: [b]
          sessionPersistence: {type: Header, sessionName: "a b", cookieConfig: {lifetimeType: Session}}
        """, "t")
    path = write(tmp_path, CLUSTERS + bad, "bad.yaml")
    assert_errors(path, [(22, "spec.sessionPersistence: sessionPersistence and affinity cannot go together"),
                         (22, "spec.sessionPersistence.idleTimeout: duration must be positive"),
                         (22, "spec.sessionPersistence.cookieConfig: a Permanent cookie needs absoluteTimeout"),
                         (30, "spec.sessionPersistence.sessionName: expected a cookie or header name"),
                         (30, "spec.sessionPersistence.cookieConfig: cookieConfig is for type Cookie")])


def test_httproute_regular_expression_matches_and_their_precedence(tmp_path):
    from router.config.model import RouteMatch
    from router.core.snapshot import build_snapshot
    text = httproute("""\
          rules:
          - matches: [{path: {type: PathPrefix, value: /api}}]
            backendRefs: [{name: us-west}]
          - matches: [{path: {type: RegularExpression, value: "/api/v[0-9]+"}}]
            backendRefs: [{name: eu-central}]
          - matches: [{path: {type: Exact, value: /api/v1}}]
            backendRefs: [{name: ap-east}]
          - matches: [{path: {value: /q}, queryParams: [{name: v, type: RegularExpression, value: "[0-9]+"}],
                       headers: [{name: X-Env, type: RegularExpression, value: "prod|stage"}]}]
            backendRefs: [{name: ap-east}]
        """)
    cfg = load_config(write(tmp_path, text))
    assert [s.path_regex for s in cfg.splits] == [None, "/api/v[0-9]+", None, None]
    assert cfg.splits[3].match == RouteMatch(header_patterns=(("x-env", "prod|stage"),),
                                             query_patterns=(("v", "[0-9]+"),))
    snap = build_snapshot(cfg, 1)
    assert snap.by_host is None
    route = lambda path: snap.route_for("any", path).name  # noqa: E731
    assert route("/api/v1") == "web/rule2"  # Exact, then the pattern, then the prefix
    assert route("/api/v2") == "web/rule1" and route("/api/v2/x") == route("/api/x") == "web/rule0"


SMI_AB = """\
---
apiVersion: specs.smi-spec.io/v1alpha4
kind: HTTPRouteGroup
metadata: {name: ab-test}
spec:
  matches:
  - name: firefox-users
    headers: {user-agent: ".*Firefox.*"}
  - name: api-reads
    pathRegex: /api
    methods: [GET, HEAD]
    headers: [{Cookie: "(.*;)?type=insider(;.*)?"}]
---
apiVersion: split.smi-spec.io/v1alpha4
kind: TrafficSplit
metadata: {name: ab}
spec:
  service: web.example.com
  matches: [{kind: HTTPRouteGroup, name: ab-test}]
  backends: [{service: eu-central, weight: 100}, {service: us-west, weight: 0}]
---
apiVersion: split.smi-spec.io/v1alpha4
kind: TrafficSplit
metadata: {name: root}
spec:
  service: web.example.com
  backends: [{service: us-west, weight: 1}]
"""


def test_smi_trafficsplit_matches_take_the_route_groups_requests(tmp_path):
    from router.config.model import RouteMatch
    cfg = load_config(write(tmp_path, CLUSTERS + SMI_AB))
    splits = {s.name: s for s in cfg.splits}
    assert sorted(splits) == ["ab/api-reads/GET", "ab/api-reads/HEAD", "ab/firefox-users", "root"]
    ff = splits["ab/firefox-users"]
    assert ff.path_regex is None and ff.path_prefix == "/" and ff.hosts == ("web.example.com",)
    assert ff.match == RouteMatch(header_patterns=(("user-agent", ".*Firefox.*"),))
    get = splits["ab/api-reads/GET"]
    assert get.path_regex == "(?:/api)(?s:.*)"  # anchored at the start of the path only
    assert get.match == RouteMatch(method="GET", header_patterns=(("cookie", "(.*;)?type=insider(;.*)?"),))
    assert {b.cluster: b.weight for b in get.backends} == {"eu-central": 100, "us-west": 0}
    assert splits["root"].match is None and splits["root"].path_regex is None

    v1 = """---
apiVersion: specs.smi-spec.io/v1alpha1
kind: HTTPRouteGroup
metadata: {name: g}
matches:
- {name: metrics, pathRegex: /metrics, methods: ["*"]}
---
apiVersion: split.smi-spec.io/v1alpha3
kind: TrafficSplit
metadata: {name: m}
spec:
  service: web.example.com
  matches: [{kind: HTTPRouteGroup, name: g, apiGroup: specs.smi-spec.io}]
  backends: [{service: ap-east, weight: 1}]
"""
    (split,) = load_config(write(tmp_path, CLUSTERS + v1)).splits
    assert split.name == "m/metrics" and split.path_regex == "(?:/metrics)(?s:.*)" and split.match is None


def test_smi_route_group_errors_name_the_line(tmp_path):
    bad = CLUSTERS + """---
apiVersion: specs.smi-spec.io/v1alpha4
kind: HTTPRouteGroup
metadata: {name: g}
spec:
  matches:
  - name: a
    pathRegex: "(?<=x)y"
  - name: b
    methods: [FETCH]
  - name: c
  - name: a
    headers: {"bad name": x}
---
apiVersion: specs.smi-spec.io/v1alpha1
kind: HTTPRouteGroup
metadata: {name: old}
matches:
- {name: h, headers: {user-agent: x}}
---
apiVersion: split.smi-spec.io/v1alpha4
kind: TrafficSplit
metadata: {name: s}
spec:
  service: web
  matches: [{kind: TCPRoute, name: g}]
  backends: [{service: us-west, weight: 1}]
"""
    path = write(tmp_path, bad, "bad.yaml")
    assert_errors(path, [(22, "spec.matches[0].pathRegex: not a regular expression RE2 takes"),
                         (24, "spec.matches[1].methods[0]: method must be GET, HEAD, POST"),
                         (25, "spec.matches[2]: a match needs pathRegex, methods or headers"),
                         (26, "spec.matches[3].name: match 'a' is named twice"),
                         (27, "spec.matches[3].headers.bad name: header name must be a token"),
                         (33, "matches[0].headers: unknown field"),
                         (40, "spec.matches[0].kind: the kind a TrafficSplit's matches name is HTTPRouteGroup")])


def test_a_resource_renders_as_the_document_the_loader_reads(tmp_path):
    from router.control.resources import render
    old_group = {"apiVersion": "specs.smi-spec.io/v1alpha1", "kind": "HTTPRouteGroup",
                 "metadata": {"name": "g", "namespace": "edge", "resourceVersion": "7", "uid": "u"},
                 "matches": [{"name": "metrics", "pathRegex": "/metrics", "methods": ["GET"]}]}
    split = {"apiVersion": "split.smi-spec.io/v1alpha2", "kind": "TrafficSplit",
             "metadata": {"name": "s", "namespace": "edge"}, "status": {"x": 1},
             "spec": {"service": "web", "matches": [{"kind": "HTTPRouteGroup", "name": "g"}],
                      "backends": [{"service": "us-west", "weight": 1}]}}
    path = write(tmp_path, CLUSTERS + "---\n" + render(old_group) + "---\n" + render(split))
    (route,) = load_config(path).splits
    assert route.name == "s/metrics" and route.match.method == "GET" and route.hosts == ("web",)
