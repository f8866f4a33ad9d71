"""response_head: what of the upstream's head reaches the client."""
from router.dataplane.headers import response_head

UPSTREAM = [(b"Server", b"app"), (b"X-Request-Id", b"upstream-echo"), (b"Connection", b"keep-alive, X-Hop"),
            (b"X-Hop", b"1"), (b"Content-Length", b"5"), (b"Cache-Control", b"max-age=60")]


def head(**kw) -> bytes:
    parts, cl, chunked = response_head(200, UPSTREAM, b"Via: 1.1 edge-router\r\n", False, **kw)
    assert cl == b"5" and not chunked
    return b"".join(parts)


def test_end_to_end_headers_pass_and_hop_by_hop_ones_do_not():
    out = head()
    assert out.startswith(b"HTTP/1.1 200 OK\r\nServer: app\r\nX-Request-Id: upstream-echo\r\n")
    assert b"X-Hop" not in out and b"Connection" not in out and b"Content-Length" not in out
    assert out.endswith(b"Cache-Control: max-age=60\r\nVia: 1.1 edge-router\r\n")


def test_the_routers_own_request_id_replaces_the_upstreams_and_a_route_drops_what_it_sets():
    out = head(own_request_id=True, drop=frozenset((b"cache-control", b"server")))
    assert b"upstream-echo" not in out and b"Server" not in out and b"Cache-Control" not in out
    assert out == b"HTTP/1.1 200 OK\r\nVia: 1.1 edge-router\r\n"
