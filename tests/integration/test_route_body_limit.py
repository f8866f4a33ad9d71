"""A route's own maxBody (nginx's client_max_body_size in a location): requests of that route are held to
it, others to the Router's; a body over it is answered 413 whether its length is declared or streamed."""
import asyncio

from aiohttp import web

from tests.conftest import Backend,  cluster_docs, read_response, read_until_close, router_doc, split_doc


def routes(port: int) -> str:
    """The Router takes 1 MiB; uploads take 2 MiB, api 100 bytes, the rest the Router's."""
    return (cluster_docs({"a": port}) + split_doc({"a": 1}, "uploads", ["up"]) + "  maxBody: 2Mi\n"
            + split_doc({"a": 1}, "api", ["api"]) + "  maxBody: 100\n" + split_doc({"a": 1}, "rest")
            + router_doc(limits={"maxBody": "1Mi"}))


async def post(port: int, host: str, body: bytes, chunked: bool = False) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        if chunked:
            writer.write(f"POST / HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
            for i in range(0, len(body), 50):
                piece = body[i:i + 50]
                writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            writer.write(b"0\r\n\r\n")
        else:
            writer.write(f"POST / HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        status, headers, answer = await asyncio.wait_for(read_response(reader), 5)
        rest = await read_until_close(reader, 2) if headers.get("connection") == "close" else b""
        return b"%d %s%s" % (status, answer, rest)
    finally:
        writer.close()


async def recording_cluster() -> tuple[Backend, list[str]]:
    """A cluster that notes each request's Host as its head arrives, before reading its body."""
    arrived: list[str] = []
    backend = Backend("a")

    async def handle(request: web.Request) -> web.Response:
        arrived.append(request.host)
        body = await request.read()
        backend.seen.append(request)
        return web.Response(text=f"a:{len(body)}")
    app = web.Application(client_max_size=1 << 30)
    app.router.add_route("*", "/{tail:.*}", handle)
    return await backend.start(app), arrived


async def test_each_route_holds_requests_to_its_own_limit(router):
    a, arrived = await recording_cluster()
    try:
        app = await router(routes(a.port))
        big = b"x" * (1536 * 1024)  # over the Router's 1 MiB, within the uploads route's 2 MiB
        assert await post(app.port, "up", big) == b"200 a:%d" % len(big)
        assert await post(app.port, "up", big, chunked=True) == b"200 a:%d" % len(big)
        for chunked in (False, True):
            answer = await post(app.port, "rest", big, chunked)
            assert answer.startswith(b"413 request body larger than the"), answer[:80]
        assert await post(app.port, "api", b"y" * 100) == b"200 a:100"
        for chunked in (False, True):
            answer = await post(app.port, "api", b"y" * 500, chunked)
            assert answer.startswith(b"413 request body larger than the route's limit") \
                or answer.startswith(b"413 request body larger than the limit"), answer
            assert answer.count(b"HTTP/1.1") == 0, answer  # one answer, nothing after it
        assert await post(app.port, "rest", b"z" * 500) == b"200 a:500"  # the Router's limit
        assert len(a.seen) == 4
        # a declared length over the route's limit is refused before anything is sent; a streamed one when it
        # passes it (its head has gone to the cluster by then, and the rest never follows)
        assert arrived.count("api") == 2
        # pipelined behind another request, a body is read whole before its request is routed: still refused
        reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: rest\r\n\r\nPOST / HTTP/1.1\r\nHost: api\r\nContent-Length: 500\r\n\r\n"
                     + b"y" * 500)
        assert (await asyncio.wait_for(read_response(reader), 5))[0] == 200
        status, _, body = await asyncio.wait_for(read_response(reader), 5)
        assert (status, body) == (413, b"request body larger than the route's limit\n")
        writer.close()
        assert arrived.count("api") == 2
    finally:
        await a.stop()
