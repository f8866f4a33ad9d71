"""The HTTPS redirect listener: every request on it answered with a redirect to the same URL over
https, parsed and refused like the main listener's, nothing sent to a cluster."""
import asyncio

from tests.conftest import cluster_docs, raw_request, read_response, response_of, router_doc, split_doc


async def test_every_request_is_redirected_to_https_on_a_kept_connection(backends, router):
    (b,) = await backends("a")
    app = await router(cluster_docs({"a": b.port}) + split_doc({"a": 1}) +
                       router_doc(httpsRedirect={"listen": "127.0.0.1:0"}))
    assert app.redirect_port and app.redirect_port != app.port
    assert app.state()["https_redirect_port"] == app.redirect_port
    reader, writer = await asyncio.open_connection("127.0.0.1", app.redirect_port)
    try:
        for sent, location in ((b"GET /a/../b//c?x=1&y=%20 HTTP/1.1\r\nHost: Shop.Example.com:8080\r\n\r\n",
                                "https://shop.example.com/b/c?x=1&y=%20"),  # normalized path, the query kept
                               (b"GET http://abs.example/p HTTP/1.1\r\nHost: other\r\n\r\n",
                                "https://abs.example/p"),
                               (b"POST /form HTTP/1.1\r\nHost: [2001:db8::1]\r\nContent-Length: 5\r\n\r\nhello",
                                "https://[2001:db8::1]/form")):
            writer.write(sent)
            status, headers, body = await read_response(reader)
            assert (status, headers["location"]) == (301, location), headers
            assert "x-router-cluster" not in headers
            # answered from the head: a request without a body keeps its connection, one with a body
            # still unread closes it (the redirect routes' rule)
            assert (headers.get("connection") == "close") == sent.startswith(b"POST")
    finally:
        writer.close()
    # HTTP/1.0 without a Host has nowhere to go but back here; hostile input is refused as on the main listener
    status, _, body = response_of(await raw_request(app.redirect_port, b"GET / HTTP/1.0\r\n\r\n"))
    assert status == 400 and b"needs a Host" in body
    status, _, _ = response_of(await raw_request(app.redirect_port,
                                                 b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"))
    assert status == 400
    assert b.seen == []
    # the main listener proxies as ever
    status, headers, _ = response_of(await raw_request(app.port, b"GET / HTTP/1.1\r\nHost: h\r\n"
                                                                 b"Connection: close\r\n\r\n"))
    assert status == 200 and headers["x-router-cluster"] == "a"


async def test_port_and_status_are_configurable(backends, router):
    (b,) = await backends("a")
    app = await router(cluster_docs({"a": b.port}) + split_doc({"a": 1}) +
                       router_doc(httpsRedirect={"listen": "127.0.0.1:0", "port": 8443, "statusCode": 308}))
    raw = await raw_request(app.redirect_port, b"PUT /x HTTP/1.1\r\nHost: h.example\r\nConnection: close\r\n"
                                               b"Content-Length: 2\r\n\r\nhi")
    status, headers, _ = response_of(raw)
    assert status == 308 and headers["location"] == "https://h.example:8443/x"
    app.ctx.metrics.flush()
    assert app.ctx.metrics.requests.labels("-", "308", "-")._value.get() == 1
