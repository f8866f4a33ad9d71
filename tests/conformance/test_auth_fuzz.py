"""External authorization against a misbehaving authorization service: whatever it answers and when (a
200 with odd fields, a denial, a 5xx, a reset, a broken, cut-short, oversized or interim answer,
silence), the client gets an answer promptly, never an error of the router's own; only a whole 200
lets the request reach the cluster, and nothing stays in flight."""
import asyncio

from hypothesis import given, strategies as st

from tests.conftest import cluster_docs, fuzz_settings, loop_errors, raw_request, split_doc, wait_for
from tests.conformance.test_hedge_fuzz import scripted_cluster
from tests.integration.test_hedge import idle

AUTH_ANSWERS = {
    "allow": b"HTTP/1.1 200 OK\r\nX-User: alice\r\nContent-Length: 0\r\n\r\n",
    "allow-chunked": b"HTTP/1.1 200 OK\r\nX-User: bob\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    "interim": b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    "deny": b"HTTP/1.1 403 Forbidden\r\nContent-Length: 4\r\nX-Reason: no\r\n\r\nnope",
    "redirect": b"HTTP/1.1 302 Found\r\nLocation: /login\r\nContent-Length: 0\r\n\r\n",
    "error": b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n",
    "broken": b"HTTP/1.1 200 OK\r\nContent-Length: zz\r\n\r\n",
    "cut": b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
    "huge": b"HTTP/1.1 401 No\r\nContent-Length: 70000\r\n\r\n" + b"x" * 70000,
    "upgrade": b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n",
}
BEHAVIOUR = st.tuples(st.sampled_from([0.0, 0.05, 0.2]), st.sampled_from(sorted(AUTH_ANSWERS) + ["reset", "silent"]))
METHODS = st.sampled_from([b"GET", b"HEAD", b"POST", b"DELETE"])


@fuzz_settings
@given(behaviour=BEHAVIOUR, method=METHODS, forward=st.booleans())
async def test_any_authorization_answer_ends_promptly(router, backends, behaviour, method, forward, caplog):
    caplog.clear()
    a, = await backends("a")
    script = {"now": behaviour}
    async with scripted_cluster(script, AUTH_ANSWERS) as auth:
        app = await router(cluster_docs({"a": a.port, "auth": auth}) + split_doc({"a": 1}, "s", ["h"])
                           + "  externalAuth: {cluster: auth, allowedResponseHeaders: [X-User], timeout: 500ms%s}\n"
                           % (", forwardBody: {maxSize: 1Ki}" if forward else ""))
        body = b"hello" if method == b"POST" else b""
        loop = asyncio.get_running_loop()
        t = loop.time()
        raw = await raw_request(app.port, b"%s / HTTP/1.1\r\nHost: h\r\nConnection: close\r\nContent-Length: %d"
                                          b"\r\n\r\n%s" % (method, len(body), body), timeout_s=4)
        assert loop.time() - t < 2.0, f"no answer and no close: {raw[:200]!r}"
        what = behaviour[1]
        assert raw.startswith(b"HTTP/1.1 "), raw[:200]
        assert b"internal error" not in raw
        status = int(raw[9:12])
        head = method == b"HEAD"  # the check is a HEAD too: its answer ends with its head
        allowed = what in ("allow", "allow-chunked", "interim") or head and what == "cut"
        assert (status == 200) == allowed, (what, raw[:200])
        assert len(a.seen) == (1 if allowed else 0)
        if allowed:
            assert a.seen[0].headers.getall("X-User", []) in ([], ["alice"], ["bob"])
            assert a.bodies[0] == body  # (sent with the check too, when forwarded: still the cluster's)
        elif what in ("deny", "redirect") or head and what == "huge":
            assert status == {"deny": 403, "redirect": 302, "huge": 401}[what]
        else:
            assert status == 503, (what, raw[:200])
        if method == b"HEAD":
            assert raw.endswith(b"\r\n\r\n"), raw[-80:]  # the head alone
        await wait_for(lambda: not app.ctx.connections and idle(app) and not app.ctx.auth_checks, timeout_s=2,
                       what="the request over, no check left")
        assert not loop_errors(caplog), (behaviour, caplog.text[-2000:])
        await app.stop()
