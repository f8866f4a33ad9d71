"""HTTP/2 clients doing anything in any order (requests with odd or forbidden fields, bodies longer or
shorter than announced, resets, window changes, settings, pings, GOAWAY, leaving mid-stream): the router never
logs an error of its own, never presents a cut-short response as whole, lets go of every stream and
connection, and serves the next client."""
import asyncio

from aiohttp import web
from h2.config import H2Configuration
from h2.exceptions import H2Error
from h2.settings import SettingCodes
from hypothesis import given, strategies as st

from tests.conftest import cluster_docs, fuzz_settings, loop_errors, router_doc, serve_app, split_doc, wait_for
from tests.h2client import H2Client
from tests.integration.test_hedge import idle

BIG = b"b" * 300_000  # more than a stream's default window


async def cluster_app():
    async def echo(request):
        body = await request.read()
        return web.Response(text=f"ok:{len(body)}")

    async def big(request):
        return web.Response(body=BIG)

    async def slow(request):
        await asyncio.sleep(0.1)
        return web.Response(text="slow")

    async def streamed(request):
        resp = web.StreamResponse()
        await resp.prepare(request)
        for _ in range(5):
            await resp.write(b"s" * 10_000)
        await resp.write_eof()
        return resp

    app = web.Application(client_max_size=1 << 24)
    for path, handler in (("/echo", echo), ("/big", big), ("/slow", slow), ("/streamed", streamed)):
        app.router.add_route("*", path, handler)
    return await serve_app(app)


FIELDS = st.sampled_from([
    [], [("accept", "*/*")], [("cookie", "a=1"), ("cookie", "b=2")], [("content-length", "3")],
    [("content-length", "x")], [("te", "trailers")], [("te", "gzip")], [("connection", "close")],
    [("X-Upper", "1")], [("host", "other")], [("expect", "100-continue")], [("x-long", "v" * 5000)],
    [(f"x-{i}", "v") for i in range(120)], [("x-sp", " padded ")], [("transfer-encoding", "chunked")],
])
ACTION = st.one_of(
    st.tuples(st.just("request"), st.sampled_from(["GET", "POST", "HEAD", "PUT", "OPTIONS", "CONNECT"]),
              st.sampled_from(["/echo", "/big", "/slow", "/streamed", "/none", "*", "/a b"]), FIELDS,
              st.sampled_from([0, 3, 70_000]), st.booleans()),
    st.tuples(st.just("data"), st.integers(0, 5), st.sampled_from([0, 1, 3, 20_000]), st.booleans()),
    st.tuples(st.just("reset"), st.integers(0, 5)),
    st.tuples(st.just("window"), st.integers(-1, 5), st.sampled_from([1, 65535, 1 << 20])),
    st.tuples(st.just("settings"), st.sampled_from([0, 1, 65535, 1 << 20])),
    st.tuples(st.just("ping")),
    st.tuples(st.just("read")),
    st.tuples(st.just("goaway")),
    st.tuples(st.just("leave")),
)


async def act(client: H2Client, action) -> bool:
    """One client action; False when the client is done (it left, or the connection ended)."""
    h2 = client.h2
    kind = action[0]
    sids = sorted(client.streams)
    pick = (lambda i: sids[i % len(sids)] if sids else None)
    if kind == "request":
        _, method, path, fields, body, end = action
        sid = client.request(method, path, headers=fields, end=end and not body)
        if body:
            room = min(h2.local_flow_control_window(sid), body, h2.max_outbound_frame_size)
            if room > 0:
                h2.send_data(sid, b"d" * room, end_stream=end)
    elif kind == "data" and pick(action[1]) is not None:
        sid, n = pick(action[1]), action[2]
        n = min(n, max(h2.local_flow_control_window(sid), 0), h2.max_outbound_frame_size)
        h2.send_data(sid, b"d" * n, end_stream=action[3])
    elif kind == "reset" and pick(action[1]) is not None:
        h2.reset_stream(pick(action[1]))
    elif kind == "window":
        sid = pick(action[1]) if action[1] >= 0 else None
        h2.increment_flow_control_window(action[2], sid)
    elif kind == "settings":
        h2.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: action[1]})
    elif kind == "ping":
        h2.ping(b"12345678")
    elif kind == "read":
        try:
            await client.pump(lambda: False, 0.05)
        except TimeoutError:
            pass
    elif kind == "goaway":
        h2.close_connection()
        client.flush()
        return False
    elif kind == "leave":
        return False
    client.flush()
    return not client.closed


@fuzz_settings
@given(actions=st.lists(ACTION, min_size=1, max_size=12))
async def test_any_http2_client_behaviour_leaves_the_router_whole(router, actions, caplog):
    caplog.clear()
    runner, port = await cluster_app()
    try:
        app = await router(cluster_docs({"a": port}) + split_doc({"a": 1}) +
                           router_doc(http2={"cleartext": True}, timeouts={"headerRead": "500ms", "idle": "500ms",
                                                                           "bodyIdle": "500ms"}))
        client = await H2Client.open(app.port)
        client.h2.config = H2Configuration(client_side=True, header_encoding=None, validate_outbound_headers=False,
                                           normalize_outbound_headers=False, validate_inbound_headers=False)
        try:
            for action in actions:
                if not await act(client, action):
                    break
            await client.pump(lambda: all(s.done for s in client.streams.values()), 1.5)
        except (H2Error, ConnectionError, TimeoutError, OSError):
            pass
        finally:
            client.close()
        for stream in client.streams.values():
            if (stream.ended and stream.headers.get(b":status") == b"200" and b"content-length" in stream.headers
                    and stream.method != "HEAD"):
                assert len(stream.data) == int(stream.headers[b"content-length"]), "a cut-short body passed as whole"
        await wait_for(lambda: not app.ctx.connections and idle(app), timeout_s=3, what="everything let go")
        assert loop_errors(caplog) == []
        fresh = await H2Client.open(app.port)
        got = await fresh.get("/echo")
        assert got.status == 200 and bytes(got.data) == b"ok:0"
        fresh.close()
        await wait_for(lambda: not app.ctx.connections, timeout_s=3, what="the last client gone")
    finally:
        await runner.cleanup()
