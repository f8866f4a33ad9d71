"""HTTP/2 heads to HTTP/1.1 and back (h2head.py), on their own: what would smuggle a header into the HTTP/1.1
text is refused whatever the HTTP/2 library let through."""
import pytest

from router.dataplane.h2head import Malformed, request_head, response_headers

BASE = [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/a?b=1"), (b":authority", b"shop.example")]


def test_a_request_becomes_its_http11_head():
    method, head, chunked = request_head(BASE + [(b"accept", b"*/*"), (b"cookie", b"a=1"), (b"cookie", b"b=2")], True)
    assert method == b"GET" and not chunked
    assert head == (b"GET /a?b=1 HTTP/1.1\r\nhost: shop.example\r\ncookie: a=1; b=2\r\naccept: */*\r\n\r\n")


def test_a_body_of_unknown_length_goes_chunked_and_a_known_one_keeps_its_length():
    post = [(b":method", b"POST")] + BASE[1:]
    assert request_head(post, False)[2] is True
    assert b"transfer-encoding: chunked\r\n" in request_head(post, False)[1]
    _, head, chunked = request_head(post + [(b"content-length", b"5")], False)
    assert not chunked and b"transfer-encoding" not in head and b"content-length: 5\r\n" in head
    assert request_head(post, True)[2] is False  # ended with its HEADERS: no body at all


def test_host_stands_in_for_a_missing_authority_and_must_match_one_given():
    no_authority = BASE[:3] + [(b"host", b"h.example")]
    assert b"\r\nhost: h.example\r\n" in request_head(no_authority, True)[1]
    assert request_head(BASE + [(b"host", b"shop.example")], True)[1].count(b"host:") == 1
    with pytest.raises(Malformed, match="differs"):
        request_head(BASE + [(b"host", b"other.example")], True)


@pytest.mark.parametrize("field", [
    (b"x-evil", b"a\r\nx-injected: 1"), (b"x-evil", b"a\nb"), (b"x-nul", b"a\x00b"),
    (b"X-Upper", b"1"), (b"bad name", b"1"), (b"", b"1"), (b":protocol", b"websocket"),
])
def test_fields_that_could_not_be_http11_lines_are_malformed(field):
    with pytest.raises(Malformed):
        request_head(BASE + [field], True)


def test_a_line_break_in_a_pseudo_header_is_malformed_too():
    with pytest.raises(Malformed):
        request_head([(b":method", b"GET"), (b":path", b"/ HTTP/1.1\r\nHost: evil\r\n\r\nGET /"),
                      (b":authority", b"a")], True)


def test_connect_becomes_its_authority_form_head_and_a_request_needs_method_and_path():
    got = request_head([(b":method", b"CONNECT"), (b":authority", b"example.com:443")], False)
    assert got == (b"CONNECT", b"CONNECT example.com:443 HTTP/1.1\r\nhost: example.com:443\r\n\r\n", False)
    with pytest.raises(Malformed):  # RFC 9113 8.5: :authority, and no :path
        request_head([(b":method", b"CONNECT"), (b":path", b"/")], False)
    with pytest.raises(Malformed):
        request_head([(b":method", b"CONNECT"), (b":authority", b"a:1"), (b":path", b"/")], False)
    with pytest.raises(Malformed):
        request_head(BASE[1:], True)
    with pytest.raises(Malformed):
        request_head([BASE[0], BASE[3]], True)


def test_responses_lose_their_connection_specific_fields():
    fields = [(b"Content-Type", b"text/plain"), (b"Connection", b"close, X-Hop"), (b"X-Hop", b"1"),
              (b"Keep-Alive", b"timeout=5"), (b"Transfer-Encoding", b"chunked"), (b"Set-Cookie", b"a=1"),
              (b"Set-Cookie", b"b=2"), (b"Upgrade", b"h2c"), (b"Proxy-Connection", b"x")]
    assert response_headers(404, fields) == [(b":status", b"404"), (b"content-type", b"text/plain"),
                                             (b"set-cookie", b"a=1"), (b"set-cookie", b"b=2")]
