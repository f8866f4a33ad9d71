"""Sticky sessions on real sockets: the first answer hands the client a token for the cluster that
answered (a cookie, or a header), later requests carrying it go there, and when that cluster cannot
take them the session moves with a new token."""
from chaos.relay import DelayRelay
import time

from router.core.session import make_token, read_session
from tests.conftest import cluster_docs, keepalive_answers, split_doc


async def exchange(port: int, n: int, headers: str = "") -> list[tuple[str, dict]]:
    return await keepalive_answers(port, n, "shop", "/cart", headers)


def sticky(ports: dict, session: str) -> str:
    split = split_doc({n: 1 for n in ports}, "shop", ["shop"])
    return cluster_docs(ports) + split + f"  sessionPersistence: {session}\n"


async def test_a_cookie_session_keeps_its_cluster(backends, router):
    a, b = await backends("a", "b")
    app = await router(sticky({"a": a.port, "b": b.port}, "{sessionName: sid}"))
    assert {c for c, _ in await exchange(app.port, 40)} == {"a", "b"}  # without a token: the weights
    (first, head), = await exchange(app.port, 1)
    cookie = head["set-cookie"]
    assert cookie == f"sid={make_token(first, None)}; Path=/; HttpOnly"
    later = await exchange(app.port, 30, f"Cookie: theme=dark; {cookie.split(';')[0]}\r\n")
    assert {c for c, _ in later} == {first}
    assert not any("set-cookie" in h for _, h in later)  # the token stands: nothing new to hand out
    stray = await exchange(app.port, 1, "Cookie: sid=bWFycw\r\n")  # a cluster the route does not have
    assert "set-cookie" in stray[0][1]
    (state,) = [r for r in app.state()["routes"] if r["name"] == "shop"]
    assert state["session_persistence"] == {"name": "sid", "header": False, "absolute_s": None, "permanent": False,
                                            "idle_s": None}


async def test_the_session_moves_when_its_cluster_is_down(backends, router):
    a, b = await backends("a", "b")
    relay = DelayRelay(("127.0.0.1", a.port))
    try:
        app = await router(sticky({"a": await relay.start(), "b": b.port}, "{sessionName: sid}"))
        on_a = f"Cookie: sid={make_token('a', None)}\r\n"
        assert {c for c, _ in await exchange(app.port, 5, on_a)} == {"a"}
        await relay.refuse()
        (cluster, head), = await exchange(app.port, 1, on_a)  # refused, retried on b: the session moves there
        assert cluster == "b" and head["set-cookie"].startswith(f"sid={make_token('b', None)};")
        await relay.accept_again()
        on_b = f"Cookie: sid={make_token('b', None)}\r\n"
        assert {c for c, _ in await exchange(app.port, 5, on_b)} == {"b"}  # it stays where it went
    finally:
        await relay.stop()


async def test_a_header_session_and_a_timed_cookie(backends, router):
    a, b = await backends("a", "b")
    app = await router(sticky({"a": a.port, "b": b.port}, "{type: Header, sessionName: X-Session}"))
    (first, head), = await exchange(app.port, 1)
    assert "set-cookie" not in head
    later = await exchange(app.port, 20, f"X-Session: {head['x-session']}\r\n")
    assert {c for c, _ in later} == {first} and not any("x-session" in h for _, h in later)

    timed = await router(sticky({"a": a.port, "b": b.port},
                                "{sessionName: sid, absoluteTimeout: 1h, cookieConfig: {lifetimeType: Permanent}}"))
    (first, head), = await exchange(timed.port, 1)
    assert head["set-cookie"].endswith("; Path=/; HttpOnly; Max-Age=3600")
    token = head["set-cookie"].split(";")[0]
    assert {c for c, _ in await exchange(timed.port, 10, f"Cookie: {token}\r\n")} == {first}
    expired = await exchange(timed.port, 1, f"Cookie: sid={make_token(first, 1.0)}\r\n")
    assert "set-cookie" in expired[0][1]  # past its time: a new session, whichever cluster it lands on


async def test_an_idle_timeout_ends_an_unused_session_and_renews_a_used_one(backends, router):
    a, b = await backends("a", "b")
    app = await router(sticky({"a": a.port, "b": b.port}, "{sessionName: sid, idleTimeout: 10m}"))
    now = time.time()
    used = await exchange(app.port, 10, f"Cookie: sid={make_token('a', None, now - 60)}\r\n")
    assert {c for c, _ in used} == {"a"}  # used a minute ago: honoured
    for _, head in used:  # ... and renewed with every answer: its last use is now
        token = head["set-cookie"].split(";")[0].removeprefix("sid=")
        assert read_session(token, now + 599, False, 600.0) == ("a", None)
    stale = await exchange(app.port, 40, f"Cookie: sid={make_token('a', None, now - 601)}\r\n")
    assert {c for c, _ in stale} == {"a", "b"}  # unused for over 10 minutes: routed by the weights
    assert all(h["set-cookie"].startswith(f"sid={make_token(c, None)}.") for c, h in stale)  # new sessions
