"""A route's externalAuth as the config states it (TrafficSplit field, HTTPRoute ExternalAuth filter), and
what is refused with its line: another protocol, a forwarded body larger than a request may hold buffered,
an unknown Cluster, fields the router writes itself."""
from router.config.loader import load_config
from router.config.model import ExternalAuth
from router.core.snapshot import build_snapshot
from tests.unit.test_config import CLUSTERS, assert_errors, httproute, native_split, write


def test_external_auth_from_a_trafficsplit_and_an_httproute_filter(tmp_path):
    text = native_split("""\
          clusters: [{name: us-west, weight: 1}]
          externalAuth: {cluster: eu-central, path: /authz/, allowedHeaders: [Cookie, authorization],
                         allowedResponseHeaders: [X-User, X-Tenant], timeout: 300ms}
        """) + httproute("""\
          hostnames: [web]
          rules:
          - filters:
            - type: ExternalAuth
              externalAuth: {protocol: HTTP, backendRef: {name: ap-east, port: 80}, http: {path: /check},
                             forwardBody: {maxSize: 0}}
            backendRefs: [{name: us-west}]
        """).replace(CLUSTERS, "")
    config = load_config(write(tmp_path, CLUSTERS + text))
    s, web = config.splits
    assert s.auth == ExternalAuth("eu-central", "/authz", ("cookie",), ("x-user", "x-tenant"), 0.3)
    assert web.auth == ExternalAuth("ap-east", "/check")
    backend, policy = build_snapshot(config, 1).named["s"].auth
    assert backend.cluster == "eu-central" and policy.path == b"/authz" and policy.body == 0
    assert policy.sent == {b"host", b"authorization", b"cookie"} and policy.copied == {b"x-user", b"x-tenant"}


def test_a_forwarded_body_holds_the_routes_max_body_to_its_size(tmp_path):
    text = native_split("""          clusters: [{name: us-west, weight: 1}]
          externalAuth: {cluster: eu-central, forwardBody: {maxSize: 8Ki}}
        """) + httproute("""          hostnames: [web]
          rules:
          - filters:
            - type: ExternalAuth
              externalAuth: {protocol: HTTP, backendRef: {name: ap-east}, forwardBody: {maxSize: 100}}
            backendRefs: [{name: us-west}]
        """).replace(CLUSTERS, "")
    config = load_config(write(tmp_path, CLUSTERS + text))
    s, web = config.splits
    assert (s.auth.forward_body, web.auth.forward_body) == (8192, 100)
    snap = build_snapshot(config, 1)
    assert snap.named["s"].auth[1].body == 8192 and snap.named["s"].max_body == 8192  # (the Router's: 10 MiB)
    assert snap.named["web/rule0"].max_body == 100


def test_what_external_auth_cannot_do_is_refused_with_its_line(tmp_path):
    bad = native_split("""\
          clusters: [{name: us-west, weight: 1}]
          externalAuth: {cluster: nowhere, allowedResponseHeaders: [Host, "X User"], timeout: 0s, path: "/a b"}
        """) + native_split("""\
          hosts: [b]
          redirect: {hostname: c}
          externalAuth: {cluster: us-west}
        """, "t")
    path = write(tmp_path, CLUSTERS + bad, "bad.yaml")
    assert_errors(path, [(21, "spec.externalAuth.cluster: no Cluster named 'nowhere'"),
                         (21, "spec.externalAuth.allowedResponseHeaders[0]: header Host is written by the router"),
                         (21, "spec.externalAuth.allowedResponseHeaders[1]: a header name is a token"),
                         (21, "spec.externalAuth.timeout: duration must be positive"),
                         (21, "spec.externalAuth.path: path must be plain path characters"),
                         (29, "spec.externalAuth: a redirect is answered by the router")])
    route = httproute("""\
          rules:
          - filters:
            - {type: ExternalAuth, externalAuth: {protocol: GRPC, backendRef: {name: eu-central}}}
            backendRefs: [{name: us-west}]
          - filters:
            - {type: ExternalAuth, externalAuth: {protocol: HTTP, backendRef: {name: eu-central},
                                                 forwardBody: {maxSize: 2Mi}}}
            - {type: RequestRedirect, requestRedirect: {hostname: d}}
          - filters:
            - {type: ExternalAuth, externalAuth: {protocol: HTTP, backendRef: {name: eu-central},
                                                 forwardBody: {maxSize: -1, chunks: 1}}}
            backendRefs: [{name: us-west}]
        """)
    path = write(tmp_path, route, "route.yaml")
    assert_errors(path, [(22, "spec.rules[0].filters[0].externalAuth.protocol: protocol must be HTTP"),
                         (26, "spec.rules[1].filters[0].externalAuth.forwardBody.maxSize: 2097152 bytes is more "
                              "than the Router's limits.maxBuffered (1048576)"),
                         (27, "spec.rules[1].filters[1]: RequestRedirect and ExternalAuth cannot be used together"),
                         (30, "spec.rules[2].filters[0].externalAuth.forwardBody.maxSize: "),
                         (30, "spec.rules[2].filters[0].externalAuth.forwardBody.chunks: unknown field")])
