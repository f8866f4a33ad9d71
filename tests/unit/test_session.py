"""Sticky-session tokens and the choice: a token names a cluster (until its expiry), is honoured while
that cluster is a candidate, and gives way to the usual choice when it is not."""
import random

from router.config.model import (Backend, ClusterConfig, Config, Endpoint, RouterSettings, SessionPersistence,
                                 SplitConfig)
from router.core.choice import PolicyInputs, choose_backend
from router.core.session import make_token, read_token, session_cluster, session_line
from router.core.snapshot import build_snapshot

COOKIE = SessionPersistence("sid")
TIMED = SessionPersistence("sid", absolute_s=3600.0, permanent=True)


def route(max_requests=None):
    clusters = tuple(ClusterConfig(n, (), Endpoint("http", "127.0.0.1", 1000 + i), max_requests=max_requests)
                     for i, n in enumerate(("us-west", "eu-central")))
    split = SplitConfig("s", "t", (), "/", (Backend("us-west", 1), Backend("eu-central", 1)), "latency-aware", 0.2,
                        session=COOKIE)
    return build_snapshot(Config(RouterSettings(), clusters, (split,)), 1).route_for("h", "/")


def test_tokens_round_trip_and_expire():
    assert read_token(make_token("eu-central", None), 0.0, timed=False) == "eu-central"
    timed = make_token("eu-central", 1000.0)
    assert read_token(timed, 999.0, timed=True) == "eu-central"
    assert read_token(timed, 1000.0, timed=True) is None  # past its absoluteTimeout
    assert read_token(make_token("eu-central", None), 0.0, timed=True) is None  # the route now times sessions
    for junk in ("", "!!!", "ZXU.zz", "ZXU.1.2.3", "ZXU.", "ZXU..zz", "//8", "_w", "ZXU" + "A" * 300):
        assert read_token(junk, 0.0, timed=False) is None, junk  # empty, not base64url, bad expiry, not UTF-8, long
    assert read_token("ZXU", 0.0, timed=False) == "eu"


def test_an_idle_timeout_ends_a_session_unused_that_long():
    token = make_token("eu-central", None, used_at=100.0)
    assert token == make_token("eu-central", None) + "..64"
    assert read_token(token, 129.0, timed=False, idle_s=30.0) == "eu-central"
    assert read_token(token, 130.0, timed=False, idle_s=30.0) is None  # unused for 30 s
    assert read_token(make_token("eu-central", None), 0.0, timed=False, idle_s=30.0) is None  # no last use
    assert read_token(make_token("eu-central", 1000.0, 100.0), 1000.0, timed=True, idle_s=1e6) is None  # expired
    assert read_token(make_token("eu-central", None, 99.2), 129.9, False, 30.0) == "eu-central"  # rounded up
    assert read_token(token, 10_000.0, timed=False) == "eu-central"  # a route without idleTimeout ignores it


def test_a_used_session_is_renewed_with_its_expiry_kept():
    idle = SessionPersistence("sid", absolute_s=3600.0, permanent=True, idle_s=60.0)
    first = session_line(idle, "us-west", 100.0, "/", secure=False)  # a new session: expires 3700
    token = first.split(b"sid=")[1].split(b";")[0]
    assert first.endswith(b"; Max-Age=3600\r\n") and read_token(token.decode(), 159.0, True, 60.0) == "us-west"
    again = session_line(idle, "us-west", 150.0, "/", False, [(b"cookie", b"sid=" + token)])
    renewed = again.split(b"sid=")[1].split(b";")[0].decode()
    assert renewed == make_token("us-west", 3700.0, 150.0) and again.endswith(b"; Max-Age=3550\r\n")
    assert read_token(renewed, 209.0, True, 60.0) == "us-west"  # 59 s after its last use
    moved = session_line(idle, "eu-central", 150.0, "/", False, [(b"cookie", b"sid=" + token)])
    assert make_token("eu-central", 3750.0, 150.0).encode() in moved  # another cluster: a new session


def test_the_token_is_read_from_the_cookie_or_the_header():
    token = make_token("us-west", None)
    cookie = [(b"Cookie", b"a=1; sid=" + token.encode() + b"; b=2")]
    assert session_cluster(COOKIE, cookie, 0.0) == "us-west"
    assert session_cluster(COOKIE, [(b"Cookie", b"sidx=" + token.encode())], 0.0) is None
    header = SessionPersistence("X-Session", header=True)
    assert session_cluster(header, [(b"x-session", token.encode())], 0.0) == "us-west"
    assert session_cluster(header, cookie, 0.0) is None


def test_the_line_that_hands_out_a_token():
    line = session_line(TIMED, "us-west", 100.0, "/shop", secure=True)
    assert line == (f"Set-Cookie: sid={make_token('us-west', 3700.0)}; Path=/shop; HttpOnly; Secure; "
                    "Max-Age=3600\r\n").encode()
    plain = session_line(COOKIE, "us-west", 100.0, "/", secure=False)
    assert plain == b"Set-Cookie: sid=dXMtd2VzdA; Path=/; HttpOnly\r\n"
    assert session_line(SessionPersistence("X-S", header=True), "us-west", 0.0, "/", False) == b"X-S: dXMtd2VzdA\r\n"


def test_a_session_keeps_its_cluster_while_it_is_a_candidate():
    r, p, rng = route(max_requests=2), PolicyInputs(), random.Random(4)
    picks = {choose_backend(r, p, 1.0, rng, session="eu-central").backend.cluster for _ in range(50)}
    assert picks == {"eu-central"}
    assert choose_backend(r, p, 1.0, rng, session="eu-central").reason == "session"
    assert {choose_backend(r, p, 1.0, rng, session="mars").backend.cluster for _ in range(50)} == {"us-west",
                                                                                                  "eu-central"}
    p.start("", "eu-central")
    p.start("", "eu-central")  # at its request limit: the session goes elsewhere for now
    assert choose_backend(r, p, 1.0, rng, session="eu-central").backend.cluster == "us-west"
    p.finish("", "eu-central")
    for _ in range(3):
        p.health.on_probe("eu-central", False, 1.0)  # down: elsewhere too
    d = choose_backend(r, p, 2.0, rng, session="eu-central")
    assert d.backend.cluster == "us-west" and d.reason != "session"
    tried = choose_backend(r, PolicyInputs(), 1.0, rng, frozenset({"eu-central"}), session="eu-central")
    assert tried.backend.cluster == "us-west"  # a retry after the session's cluster failed
