"""A route answered by the router itself (directResponse): its status, body and type, for every request of
the route, while the other routes are proxied as before."""
import asyncio

from tests.conftest import cluster_docs, read_response, split_doc


def config(port: int) -> str:
    maintenance = "<h1>back soon</h1>"
    return (cluster_docs({"a": port}) + split_doc({"a": 1}, "shop")
            + "---\napiVersion: edge.router/v1alpha1\nkind: TrafficSplit\nmetadata: {name: down}\n"
              f"spec:\n  hosts: [old.example]\n  directResponse: {{status: 503, body: '{maintenance}', "
              "contentType: text/html}\n"
            + "---\napiVersion: edge.router/v1alpha1\nkind: TrafficSplit\nmetadata: {name: beacon}\n"
              "spec:\n  pathPrefix: /beacon\n  directResponse: {status: 204}\n")


async def test_a_direct_response_is_answered_at_the_edge(backends, router):
    a, = await backends("a")
    app = await router(config(a.port))
    reader, writer = await asyncio.open_connection("127.0.0.1", app.port)
    try:
        writer.write(b"GET /cart HTTP/1.1\r\nHost: old.example\r\n\r\n"
                     b"HEAD / HTTP/1.1\r\nHost: old.example\r\n\r\n"
                     b"GET /beacon/x HTTP/1.1\r\nHost: shop\r\n\r\n"
                     b"GET /cart HTTP/1.1\r\nHost: shop\r\n\r\n")
        status, headers, body = await asyncio.wait_for(read_response(reader), 5)
        assert (status, headers["content-type"], body) == (503, "text/html", b"<h1>back soon</h1>")
        assert "x-router-cluster" not in headers and headers["retry-after"] == "1"
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)  # HEAD: the head alone
        assert head.startswith(b"HTTP/1.1 503 ") and b"Content-Length: 18" in head
        status, headers, body = await asyncio.wait_for(read_response(reader), 5)
        assert (status, body) == (204, b"") and "content-length" not in headers and "content-type" not in headers
        status, headers, body = await asyncio.wait_for(read_response(reader), 5)
        assert (status, headers["x-router-cluster"]) == (200, "a")  # the connection carried on
    finally:
        writer.close()
    assert [r.path for r in a.seen] == ["/cart"]
    (down,) = [r for r in app.state()["routes"] if r["name"] == "down"]
    assert down["direct_response"]["status"] == 503
