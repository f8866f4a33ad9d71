"""PROXY protocol headers: read to their last byte and never past it, whatever follows; the client
address each form gives; every malformed header refused."""
import ipaddress
import struct

import pytest
from hypothesis import given, strategies as st

from router.dataplane.proxyproto import V2_SIGNATURE, ProxyHeaderError, client_address, next_read
from tests.conftest import fuzz_settings

MAX_V2 = 4096  # the limit the listener passes: the Router's maxHeaderBytes


def read_header(stream: bytes) -> bytes:
    """Reads `stream` the way the listener does: each read no larger than next_read allows."""
    buf = b""
    while True:
        want = next_read(buf, MAX_V2)
        if want == 0:
            return buf
        assert want > 0
        piece = stream[len(buf):len(buf) + want]
        if not piece:
            raise EOFError
        buf += piece


def v2(command: int, family: int, addresses: bytes, tlvs: bytes = b"") -> bytes:
    body = addresses + tlvs
    return V2_SIGNATURE + bytes([0x20 | command, family]) + struct.pack("!H", len(body)) + body


def v2_tcp4(src: str, dst: str = "10.0.0.1", tlvs: bytes = b"") -> bytes:
    return v2(1, 0x11, ipaddress.IPv4Address(src).packed + ipaddress.IPv4Address(dst).packed +
              struct.pack("!HH", 51234, 443), tlvs)


def v2_tcp6(src: str, dst: str = "2001:db8::2") -> bytes:
    return v2(1, 0x21, ipaddress.IPv6Address(src).packed + ipaddress.IPv6Address(dst).packed +
              struct.pack("!HH", 1, 65535))


@pytest.mark.parametrize("header, address", [
    (b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 443\r\n", "203.0.113.7"),
    (b"PROXY TCP4 1.1.1.1 1.1.1.1 1 1\r\n", "1.1.1.1"),
    (b"PROXY TCP6 2001:db8::1 2001:db8::2 0 65535\r\n", "2001:db8::1"),
    (b"PROXY TCP6 :: :: 1 1\r\n", "::"),
    (b"PROXY UNKNOWN\r\n", None),
    (b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n", None),
    (v2_tcp4("198.51.100.9"), "198.51.100.9"),
    (v2_tcp4("198.51.100.9", tlvs=b"\x04\x00\x03abc" * 40), "198.51.100.9"),  # TLVs skipped
    (v2_tcp6("2001:db8::1"), "2001:db8::1"),
    (v2(0, 0x11, bytes(12)), None),  # LOCAL: the balancer's own connection (health check)
    (v2(1, 0x00, b""), None),  # PROXY with an unspecified family
    (v2(1, 0x31, bytes(216)), None),  # a UNIX socket: no address to give
])
@pytest.mark.parametrize("after", [b"", b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", b"\x16\x03\x01\x02\x00\x01" * 50])
def test_each_form_is_read_exactly_and_gives_its_address(header, address, after):
    assert read_header(header + after) == header
    assert client_address(header) == address


@pytest.mark.parametrize("stream, message", [
    (b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", "does not begin with a PROXY protocol header"),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(40), "does not begin"),
    (b"PROXY TCP4 " + b"1" * 120 + b"\r\n", "longer than 107"),
    (V2_SIGNATURE + b"\x21\x11\xff\xff" + bytes(100), "more than 4096"),
])
def test_what_cannot_begin_a_header_is_refused_while_reading(stream, message):
    with pytest.raises(ProxyHeaderError, match=message):
        read_header(stream)


@pytest.mark.parametrize("header", [
    b"PROXY TCP4 203.0.113.7 10.0.0.1 51234\r\n",  # a field missing
    b"PROXY TCP4 203.0.113.7  10.0.0.1 51234 443\r\n",  # two spaces
    b"PROXY TCP4 203.0.113.07 10.0.0.1 51234 443\r\n",  # a leading zero in the address
    b"PROXY TCP4 2001:db8::1 10.0.0.1 51234 443\r\n",  # the other family
    b"PROXY TCP6 203.0.113.7 2001:db8::2 1 1\r\n",
    b"PROXY TCP4 203.0.113.7 10.0.0.1 051234 443\r\n",  # a leading zero in the port
    b"PROXY TCP4 203.0.113.7 10.0.0.1 65536 443\r\n",
    b"PROXY TCP4 203.0.113.7 10.0.0.1 -1 443\r\n",
    b"PROXY TCP4 203.0.113.7 10.0.0.1 +1 443\r\n",
    b"PROXY UDP4 203.0.113.7 10.0.0.1 1 443\r\n",
    b"PROXY tcp4 203.0.113.7 10.0.0.1 1 443\r\n",
    b"PROXY TCP4 203.0.113.\xff 10.0.0.1 1 443\r\n",
    b"PROXY TCP4 203.0.113.7 10.0.0.1 1 443\r\r\n",
    v2(2, 0x11, bytes(12)),  # command 2
    v2(1, 0x12, bytes(12)),  # UDP
    v2(1, 0x11, bytes(11)),  # too short for two IPv4 addresses and ports
    v2(1, 0x21, bytes(12)),  # too short for IPv6
    v2(1, 0x41, bytes(12)),  # no such family
    V2_SIGNATURE + b"\x11\x11\x00\x0c" + bytes(12),  # version 1 in a version 2 header
])
def test_malformed_headers_are_refused(header):
    with pytest.raises(ProxyHeaderError):
        client_address(read_header(header + b"GET / HTTP/1.1\r\n\r\n"))


def test_a_line_feed_alone_does_not_end_a_version_1_header():
    with pytest.raises((ProxyHeaderError, EOFError)):
        read_header(b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 443\n" + b"x" * 100)


@fuzz_settings
@given(st.binary(max_size=300))
def test_any_bytes_are_read_or_refused_never_past_a_header(stream):
    """Whatever arrives: a header read to its end (and no further), a refusal, or a wait for more."""
    try:
        header = read_header(stream)
    except (ProxyHeaderError, EOFError):
        return
    assert stream.startswith(header)
    try:
        client_address(header)
    except ProxyHeaderError:
        pass


@fuzz_settings
@given(st.sampled_from([b"TCP4", b"TCP6"]), st.integers(0, 65535), st.integers(0, 65535), st.binary(max_size=64),
       st.ip_addresses(v=4), st.ip_addresses(v=6))
def test_every_valid_version_1_header_is_read_exactly(proto, sport, dport, after, ip4, ip6):
    src = str(ip4 if proto == b"TCP4" else ip6).encode()
    header = b"PROXY " + proto + b" " + src + b" " + src + b" %d %d\r\n" % (sport, dport)
    assert read_header(header + after) == header
    assert client_address(header) == src.decode()
