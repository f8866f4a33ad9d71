"""A route's CORS policy: origin matching, the preflight answer and the response lines (pure), and the
config that states it (TrafficSplit cors, HTTPRoute CORS filter) with its load-time refusals."""
import pytest

from router.config.loader import load_config
from router.config.model import Cors
from router.core.cors import CorsPolicy, field, is_preflight, parse_origin
from tests.unit.test_config import CLUSTERS, assert_errors, httproute, native_split, write


def lines_of(raw: bytes) -> list[tuple[str, str]]:
    return [tuple(part.strip() for part in line.split(":", 1)) for line in raw.decode().split("\r\n") if line]


@pytest.mark.parametrize("value, expected", [
    ("https://App.Example.com", ("https", "app.example.com", 443)),
    ("http://a.example:8080", ("http", "a.example", 8080)),
    ("http://[::1]:3000", ("http", "[::1]", 3000)),
    ("https://*.example.com", ("https", "*.example.com", 443)),
    ("null", None), ("ftp://a.example", None), ("https://a.example/path", None), ("https://", None),
    ("https://a.example:0", None), ("https://a.example:99999", None), ("https://a.example:+1", None),
    ("https://user@a.example", None), ("https://a.example:", None), ("https://[::1", None),
])
def test_origins_parse_with_the_schemes_default_port(value, expected):
    assert parse_origin(value) == expected


def test_exact_and_wildcard_origins():
    policy = CorsPolicy(Cors(("https://app.example.com", "https://*.example.org", "http://*:8080")))
    allowed = [b"https://app.example.com", b"https://app.example.com:443", b"https://a.example.org",
               b"https://a.b.example.org", b"http://anything.test:8080", b"HTTPS://APP.EXAMPLE.COM"]
    refused = [b"http://app.example.com", b"https://app.example.com:8443", b"https://example.org",
               b"https://evilexample.org", b"http://a.example.org", b"http://anything.test", b"null", b"",
               b"https://app.example.com.evil.test", None]
    assert [o for o in allowed if policy.allows(o)] == allowed
    assert [o for o in refused if policy.allows(o)] == []


def test_response_lines_echo_an_allowed_origin_and_always_vary_on_it():
    policy = CorsPolicy(Cors(("https://app.example.com",), credentials=True, expose=("X-Trace", "X-Id")))
    assert lines_of(policy.response_lines(b"https://app.example.com")) == [
        ("Access-Control-Allow-Origin", "https://app.example.com"), ("Access-Control-Allow-Credentials", "true"),
        ("Access-Control-Expose-Headers", "X-Trace, X-Id"), ("Vary", "Origin")]
    assert lines_of(policy.response_lines(b"https://other.example")) == [("Vary", "Origin")]
    assert lines_of(policy.response_lines(None)) == [("Vary", "Origin")]


def test_every_origin_without_credentials_is_a_star_the_same_for_every_request():
    policy = CorsPolicy(Cors(("*",), methods=("*",), headers=("*",)))
    for origin in (b"https://a.example", b"null", None):
        assert lines_of(policy.response_lines(origin)) == [("Access-Control-Allow-Origin", "*")]
    assert lines_of(policy.preflight_lines(b"https://a.example", b"PATCH", b"x-a")) == [
        ("Access-Control-Allow-Origin", "*"), ("Access-Control-Allow-Methods", "*"),
        ("Access-Control-Allow-Headers", "*"), ("Access-Control-Max-Age", "5")]


def test_with_credentials_a_wildcard_answers_with_the_requests_own_values():
    policy = CorsPolicy(Cors(("*",), credentials=True, methods=("*",), headers=("*",), max_age_s=600))
    assert not policy.allows(b"null")  # a sandboxed page is never handed credentials by a wildcard
    assert lines_of(policy.preflight_lines(b"https://a.example", b"PUT", b"x-a, x-b")) == [
        ("Access-Control-Allow-Origin", "https://a.example"), ("Access-Control-Allow-Credentials", "true"),
        ("Access-Control-Allow-Methods", "PUT"), ("Access-Control-Allow-Headers", "x-a, x-b"),
        ("Access-Control-Max-Age", "600"),
        ("Vary", "Origin, Access-Control-Request-Method, Access-Control-Request-Headers")]
    assert ("Access-Control-Allow-Headers", "*") not in lines_of(policy.preflight_lines(b"https://a.example",
                                                                                         b"PUT", None))


def test_listed_methods_and_headers_are_given_as_listed():
    policy = CorsPolicy(Cors(("https://a.example",), methods=("GET", "PUT"), headers=("X-A",), max_age_s=60))
    assert lines_of(policy.preflight_lines(b"https://a.example", b"DELETE", b"x-b")) == [
        ("Access-Control-Allow-Origin", "https://a.example"), ("Access-Control-Allow-Methods", "GET, PUT"),
        ("Access-Control-Allow-Headers", "X-A"), ("Access-Control-Max-Age", "60"), ("Vary", "Origin")]


def test_preflights_and_single_fields():
    headers = [(b"Origin", b"https://a.example"), (b"Access-Control-Request-Method", b"PUT")]
    assert is_preflight(b"OPTIONS", headers)
    assert not is_preflight(b"GET", headers) and not is_preflight(b"OPTIONS", headers[:1])
    assert field(headers, b"origin") == b"https://a.example"
    assert field(headers + [(b"origin", b"https://b.example")], b"origin") is None  # two Origins name none
    assert field(headers, b"x-none") is None


def test_cors_from_a_trafficsplit_and_an_httproute_filter(tmp_path):
    text = native_split("""\
          clusters: [{name: us-west, weight: 1}]
          cors:
            allowOrigins: ["https://App.example.com", "https://*.example.org"]
            allowMethods: [GET, PUT]
            allowHeaders: [X-A]
            exposeHeaders: [X-Trace]
            allowCredentials: true
            maxAge: 600
        """) + httproute("""\
          hostnames: [web]
          rules:
          - filters: [{type: CORS, cors: {allowOrigins: ["*"]}}]
            backendRefs: [{name: us-west}]
        """).replace(CLUSTERS, "")
    s, web = load_config(write(tmp_path, CLUSTERS + text)).splits
    assert s.cors == Cors(("https://app.example.com", "https://*.example.org"), True, ("GET", "PUT"), ("X-A",),
                          ("X-Trace",), 600)
    assert web.cors == Cors(("*",))


def test_what_cors_cannot_mean_is_refused_with_its_line(tmp_path):
    bad = native_split("""\
          clusters: [{name: us-west, weight: 1}]
          cors:
            allowOrigins: ["https://a.example", "ftp://b.example", "https://a.*.example", "*"]
            allowMethods: [GET, "P UT"]
            exposeHeaders: ["*"]
            allowCredentials: true
            maxAge: 0
        """) + native_split("""\
          clusters: [{name: us-west, weight: 1}]
          hosts: [b]
          cors: {allowOrigins: ["https://a.example"]}
          responseHeaders: {set: [{name: Access-Control-Allow-Origin, value: "*"}]}
        """, "t") + native_split("""\
          hosts: [c]
          redirect: {hostname: d}
          cors: {allowOrigins: ["https://a.example"], allowHeaders: []}
        """, "u")
    path = write(tmp_path, CLUSTERS + bad, "bad.yaml")
    assert_errors(path, [(22, "spec.cors.allowOrigins[1]: an origin is scheme://host[:port]"),
                         (22, "spec.cors.allowOrigins[2]: an origin is scheme://host[:port]"),
                         (22, "spec.cors.allowOrigins: '*' cannot be listed with other entries"),
                         (23, "spec.cors.allowMethods[1]: a method is a token"),
                         (24, "spec.cors.exposeHeaders: '*' is taken as a header name by a browser"),
                         (26, "spec.cors.maxAge: maxAge is whole seconds, at least 1"),
                         (35, "spec.responseHeaders: header Access-Control-Allow-Origin is written by the route's "
                              "CORS policy"),
                         (43, "spec.cors: a redirect is answered by the router: cors cannot go with it"),
                         (43, "spec.cors.allowHeaders: expected at least one entry")])
    route = httproute("""\
          rules:
          - filters:
            - {type: RequestRedirect, requestRedirect: {hostname: d}}
            - {type: CORS, cors: {allowOrigins: ["https://a.example"], bogus: 1}}
          - filters: [{type: CORS, cors: {allowMethods: [GET]}}]
            backendRefs: [{name: us-west}]
        """)
    path = write(tmp_path, route, "route.yaml")
    assert_errors(path, [(22, "spec.rules[0].filters[0]: RequestRedirect and CORS cannot be used together"),
                         (23, "spec.rules[0].filters[1].cors.bogus: unknown field"),
                         (24, "spec.rules[1].filters[0].cors: missing required field")])
