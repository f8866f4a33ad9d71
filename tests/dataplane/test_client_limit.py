"""limits.maxConnectionsPerClient on real sockets: one address cannot hold more connections than that (plain,
TLS, behind a PROXY header), trusted proxies are not limited, and every place is given back."""
import asyncio

import pytest

from tests.conftest import (cluster_docs, raw_request, read_response, read_until_close, response_of, router_doc,
                            split_doc, wait_for)
from tests.dataplane.test_tls import client_context, https, write_pair

GET = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"


async def open_served(port: int, prefix: bytes = b""):
    """A connection that got one answer and stays open (keep-alive)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(prefix + GET)
    assert (await read_response(reader))[0] == 200
    return reader, writer


def rejected(app, code: str) -> float:
    return app.metrics.registry.get_sample_value(
        "router_rejected_requests_total", {"code": code, "reason": "too many connections from one address"})


async def test_one_address_holds_at_most_the_limit(backends, router):
    (b,) = await backends("a")
    app = await router(cluster_docs({"a": b.port}) + split_doc({"a": 1}) +
                       router_doc(limits={"maxConnectionsPerClient": 2}))
    held = [await open_served(app.port) for _ in range(2)]
    status, headers, body = response_of(await raw_request(app.port, GET))
    assert status == 503 and body == b"too many connections from one address\n"
    assert headers["connection"] == "close" and headers["retry-after"] == "1"
    assert rejected(app, "503") == 1 and app.ctx.per_client == {"127.0.0.1": 2}
    held[0][1].close()
    await wait_for(lambda: app.ctx.per_client == {"127.0.0.1": 1}, what="the place given back")
    held.append(await open_served(app.port))
    for _, writer in held[1:]:
        writer.close()
    await wait_for(lambda: not app.ctx.per_client and not app.ctx.connections, what="every place given back")


async def test_trusted_proxies_are_not_limited(backends, router):
    (b,) = await backends("a")
    app = await router(cluster_docs({"a": b.port}) + split_doc({"a": 1}) +
                       router_doc(limits={"maxConnectionsPerClient": 1}, trustedProxies=["127.0.0.1/32"]))
    held = [await open_served(app.port) for _ in range(3)]
    assert app.ctx.per_client == {}
    for _, writer in held:
        writer.close()


async def test_behind_a_proxy_header_the_clients_address_is_limited(backends, router):
    (b,) = await backends("a")
    app = await router(cluster_docs({"a": b.port}) + split_doc({"a": 1}) +
                       router_doc(limits={"maxConnectionsPerClient": 1}, proxyProtocol=True))
    first = await open_served(app.port, b"PROXY TCP4 203.0.113.7 10.0.0.1 1000 80\r\n")
    try:
        assert await raw_request(app.port, b"PROXY TCP4 203.0.113.7 10.0.0.1 1001 80\r\n" + GET) == b""
    except ConnectionResetError:
        pass
    assert rejected(app, "0") == 1
    other = await open_served(app.port, b"PROXY TCP4 203.0.113.8 10.0.0.1 1002 80\r\n")  # another client
    assert app.ctx.per_client == {"203.0.113.7": 1, "203.0.113.8": 1}
    for _, writer in (first, other):
        writer.close()
    await wait_for(lambda: not app.ctx.per_client, what="every place given back")


async def test_tls_handshakes_hold_the_clients_places(backends, router, tmp_path):
    import trustme
    ca = trustme.CA()
    (b,) = await backends("a")
    cert, key, _ = write_pair(tmp_path, ca)
    app = await router(cluster_docs({"a": b.port}) + split_doc({"a": 1}) +
                       router_doc(tls={"certFile": cert, "keyFile": key}, limits={"maxConnectionsPerClient": 2},
                                  timeouts={"headerRead": "1s"}))
    silent = await asyncio.open_connection("127.0.0.1", app.port)  # in its opening: holds a place
    reader, writer = await https(app.port, client_context(ca))
    writer.write(GET)
    assert (await read_response(reader))[0] == 200
    with pytest.raises((ConnectionError, OSError, asyncio.IncompleteReadError)):  # the third: closed at once
        await asyncio.wait_for(https(app.port, client_context(ca)), 2)
    assert rejected(app, "0") == 1
    assert await read_until_close(silent[0], 5) == b""  # closed at the deadline: its place comes back
    await wait_for(lambda: app.ctx.per_client == {"127.0.0.1": 1}, what="the silent one's place back")
    r2, w2 = await https(app.port, client_context(ca))
    w2.write(GET)
    assert (await read_response(r2))[0] == 200
    for w in (writer, w2, silent[1]):
        w.close()
    await wait_for(lambda: not app.ctx.per_client and not app.ctx.openings, what="every place given back")
    # a handshake that fails after its first byte was seen gives its place back too
    for _ in range(3):
        try:
            assert await raw_request(app.port, b"\x16\x03\x01\x00\x05hello") == b""
        except ConnectionResetError:
            pass
    await wait_for(lambda: not app.ctx.per_client and not app.ctx.openings, what="failed handshakes' places back")
    assert app.metrics.registry.get_sample_value(
        "router_rejected_requests_total", {"code": "0", "reason": "tls handshake"}) == 3
