"""The PROXY protocol on the client listeners (Router proxyProtocol): the client's address comes from
the header (X-Forwarded-For, Forwarded), on plain HTTP, on TLS (the handshake right behind the header,
in the same segment) and on the HTTPS redirect listener; a connection without a valid header is closed
with nothing sent and reaches no cluster; a header that does not finish in time is closed."""
import asyncio
import ssl
import time

import pytest
import trustme
from hypothesis import given, strategies as st

from tests.conftest import (cluster_docs, fuzz_settings, raw_request, read_response, read_until_close, response_of,
                            router_doc, split_doc, wait_for)
from tests.dataplane.test_tls import write_pair
from tests.unit.test_proxyproto import v2, v2_tcp4, v2_tcp6

GET = b"GET /p HTTP/1.1\r\nHost: h\r\n\r\n"


async def closed_unanswered(port: int, data: bytes) -> bool:
    """Sent `data`: the connection closed (or reset: the router leaves the rest unread) with nothing sent."""
    try:
        return await raw_request(port, data) == b""
    except ConnectionResetError:
        return True


def rejected(app) -> float:
    return app.metrics.registry.get_sample_value("router_rejected_requests_total",
                                                 {"code": "0", "reason": "proxy protocol"}) or 0.0


async def test_the_client_address_comes_from_the_header(backends, router):
    (b,) = await backends("a")
    app = await router(cluster_docs({"a": b.port}) + split_doc({"a": 1}) + router_doc(proxyProtocol=True))
    cases = [(b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 80\r\n", "203.0.113.7", "for=203.0.113.7"),
             (v2_tcp6("2001:db8::1"), "2001:db8::1", 'for="[2001:db8::1]"'),
             (v2_tcp4("198.51.100.9", tlvs=b"\x04\x00\x03abc"), "198.51.100.9", "for=198.51.100.9"),
             (v2(0, 0x11, bytes(12)), "127.0.0.1", "for=127.0.0.1"),  # LOCAL: the peer's own address
             (b"PROXY UNKNOWN\r\n", "127.0.0.1", "for=127.0.0.1")]
    for header, address, forwarded in cases:
        reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
        writer.write(header + GET + GET)  # the header, then two requests, in one segment
        for _ in range(2):  # the address holds for every request of the connection
            status, _, _ = await read_response(reader)
            assert status == 200
            seen = b.seen[-1].headers
            assert seen["X-Forwarded-For"] == address and seen["Forwarded"].startswith(forwarded), dict(seen)
        writer.close()
    # a header sent apart from the request, in pieces, works the same
    reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
    for piece in (b"PROX", b"Y TCP4 192.0.2.1 10.0", b".0.1 1 80\r", b"\n"):
        writer.write(piece)
        await writer.drain()
        await asyncio.sleep(0.01)  # each piece its own read
    writer.write(GET)
    assert (await read_response(reader))[0] == 200 and b.seen[-1].headers["X-Forwarded-For"] == "192.0.2.1"
    writer.close()
    assert rejected(app) == 0


async def test_trust_is_judged_on_the_headers_address(backends, router):
    """The balancer's own address is in trustedProxies; the client behind it is not, so what the client
    wrote in X-Forwarded-For is replaced, not kept as a trusted proxy's would be."""
    (b,) = await backends("a")
    app = await router(cluster_docs({"a": b.port}) + split_doc({"a": 1}) +
                       router_doc(proxyProtocol=True, trustedProxies=["127.0.0.0/8"]))
    forged = b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 10.9.9.9\r\nConnection: close\r\n\r\n"
    status, _, _ = response_of(await raw_request(app.port, b"PROXY TCP4 203.0.113.7 10.0.0.1 1 80\r\n" + forged))
    assert status == 200 and b.seen[-1].headers["X-Forwarded-For"] == "203.0.113.7"
    # a health check's LOCAL header leaves the balancer's (trusted) address: its header is kept
    status, _, _ = response_of(await raw_request(app.port, v2(0, 0x11, bytes(12)) + forged))
    assert status == 200 and b.seen[-1].headers["X-Forwarded-For"] == "10.9.9.9, 127.0.0.1"


async def test_tls_begins_right_after_the_header(backends, router, tmp_path):
    """An L4 balancer sends the header and the client's ClientHello back to back: not a byte of the
    handshake may be taken for the header."""
    (b,) = await backends("a")
    ca = trustme.CA()
    cert, key, _ = write_pair(tmp_path, ca)
    app = await router(cluster_docs({"a": b.port}) + split_doc({"a": 1}) +
                       router_doc(proxyProtocol=True, tls={"certFile": cert, "keyFile": key}))
    client = ssl.create_default_context()
    ca.configure_trust(client)
    reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = client.wrap_bio(incoming, outgoing, server_hostname="localhost")
    first = True
    while True:  # a handshake by hand, so its first flight shares the header's segment
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            writer.write((b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 443\r\n" if first else b"") + outgoing.read())
            first = False
            data = await asyncio.wait_for(reader.read(65536), 5)
            assert data, "closed during the handshake"
            incoming.write(data)
    tls.write(GET)
    writer.write(outgoing.read())
    answer = b""
    while b"a:0" not in answer:
        try:
            answer += tls.read(65536)
        except ssl.SSLWantReadError:
            incoming.write(await asyncio.wait_for(reader.read(65536), 5))
    assert answer.startswith(b"HTTP/1.1 200")
    seen = b.seen[-1].headers
    assert seen["X-Forwarded-For"] == "203.0.113.7" and seen["X-Forwarded-Proto"] == "https"
    writer.close()


async def test_a_failed_handshake_after_the_header_leaves_nothing_behind(backends, router, tmp_path):
    (b,) = await backends("a")
    cert, key, _ = write_pair(tmp_path, trustme.CA())
    app = await router(cluster_docs({"a": b.port}) + split_doc({"a": 1}) +
                       router_doc(proxyProtocol=True, tls={"certFile": cert, "keyFile": key},
                                  timeouts={"headerRead": "300ms"}))
    header = b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 443\r\n"
    for after in (b"\x16\x03\x01\x00\x05hello", b""):  # a broken record, no handshake at all
        assert await closed_unanswered(app.port, header + after)
    # plain HTTP after the header: answered 400, as on the TLS listener without the PROXY protocol
    status, _, body = response_of(await raw_request(app.port, header + GET))
    assert status == 400 and b"plain HTTP request sent to the HTTPS port" in body
    await wait_for(lambda: not app.ctx.openings and not app.ctx.connections, what="the openings ended")
    assert app.metrics.registry.get_sample_value("router_open_connections") == 0
    assert app.metrics.registry.get_sample_value("router_rejected_requests_total",
                                                 {"code": "0", "reason": "tls handshake"}) == 1
    assert b.seen == []


async def test_the_redirect_listener_reads_the_header_too(backends, router):
    (b,) = await backends("a")
    app = await router(cluster_docs({"a": b.port}) + split_doc({"a": 1}) +
                       router_doc(proxyProtocol=True, httpsRedirect={"listen": "127.0.0.1:0"}))
    raw = await raw_request(app.redirect_port, b"PROXY TCP4 203.0.113.7 10.0.0.1 1 80\r\n"
                                               b"GET /x?y=1 HTTP/1.1\r\nHost: shop.example.com\r\n"
                                               b"Connection: close\r\n\r\n")
    status, headers, _ = response_of(raw)
    assert status == 301 and headers["location"] == "https://shop.example.com/x?y=1"
    assert await closed_unanswered(app.redirect_port, GET)  # without a header: closed, nothing sent


async def test_a_connection_without_a_valid_header_is_closed_and_reaches_no_cluster(backends, router):
    (b,) = await backends("a")
    app = await router(cluster_docs({"a": b.port}) + split_doc({"a": 1}) +
                       router_doc(proxyProtocol=True, timeouts={"headerRead": "500ms"}))
    for stream in (GET,  # a client that went around the balancer
                   b"PROXY TCP4 203.0.113.07 10.0.0.1 1 80\r\n" + GET,
                   b"PROXY TCP4 203.0.113.7 10.0.0.1 1 80\n" + GET,  # no CR: read on until too long
                   v2(1, 0x12, bytes(12)) + GET):  # UDP
        assert await closed_unanswered(app.port, stream)
    assert rejected(app) == 4 and b.seen == []
    # a header that does not finish within the header deadline: closed then, counted
    reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
    writer.write(b"PROXY TCP4 203.0.113.7")
    t0 = time.monotonic()
    assert await read_until_close(reader, 5) == b""
    assert 0.4 < time.monotonic() - t0 < 3
    writer.close()
    assert rejected(app) == 5
    # a connection that sends nothing and leaves (a balancer's TCP health check) is not counted
    reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
    writer.close()
    await wait_for(lambda: not app.ctx.connections, what="no client connection left")
    assert rejected(app) == 5 and b.seen == []


@pytest.fixture
async def proxy_router(backends, router):
    (b,) = await backends("a")
    return await router(cluster_docs({"a": b.port}) + split_doc({"a": 1}) +
                        router_doc(proxyProtocol=True, timeouts={"headerRead": "300ms"}))


@fuzz_settings
@given(st.lists(st.one_of(st.binary(min_size=1, max_size=80),
                          st.sampled_from([b"PROXY ", b"TCP4 ", b"TCP6 ", b"UNKNOWN", b"\r\n", b"1.2.3.4 ",
                                           b"::1 ", b"65535 ", v2_tcp4("1.2.3.4")[:12], v2_tcp4("1.2.3.4")])),
                min_size=1, max_size=8))
async def test_random_bytes_never_crash_the_listener_or_leak_a_connection(proxy_router, pieces):
    app = proxy_router
    reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
    try:
        writer.write(b"".join(pieces) + b"\r\n\r\n" + GET)
        await read_until_close(reader, 2)
    except (ConnectionError, asyncio.TimeoutError):
        pass
    finally:
        writer.close()
    await wait_for(lambda: not app.ctx.connections, timeout_s=3, what="no client connection left")
    # still serving, with the header done right
    status, _, _ = response_of(await raw_request(app.port, b"PROXY UNKNOWN\r\nGET / HTTP/1.1\r\nHost: h\r\n"
                                                           b"Connection: close\r\n\r\n"))
    assert status == 200


async def test_connections_reading_a_header_count_toward_max_connections(backends, router):
    """Connections that have not finished their header hold sockets too: past maxConnections a new one is
    closed at once, not after the header deadline; once one leaves, a new connection is served."""
    (b,) = await backends("a")
    app = await router(cluster_docs({"a": b.port}) + split_doc({"a": 1}) +
                       router_doc(proxyProtocol=True, limits={"maxConnections": 2}, timeouts={"headerRead": "5s"}))
    slow = [await asyncio.open_connection("127.0.0.1", app.port) for _ in range(2)]
    for _, writer in slow:
        writer.write(b"PROXY TCP4 ")  # a header begun, never finished
    await wait_for(lambda: len(app.ctx.openings) == 2, what="two connections reading their header")
    t0 = time.monotonic()
    assert await closed_unanswered(app.port, b"PROXY TCP4 203.0.113.7 10.0.0.1 1 80\r\n" + GET)
    assert time.monotonic() - t0 < 2  # at once, not at the 5 s header deadline
    assert app.metrics.registry.get_sample_value("router_rejected_requests_total",
                                                 {"code": "0", "reason": "too many connections"}) == 1
    slow[0][1].close()
    await wait_for(lambda: len(app.ctx.openings) == 1, what="one left")
    raw = await raw_request(app.port, b"PROXY TCP4 203.0.113.7 10.0.0.1 1 80\r\n"
                                      b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert response_of(raw)[0] == 200
    slow[1][1].close()
    await wait_for(lambda: not app.ctx.openings and not app.ctx.connections, what="nothing held")
