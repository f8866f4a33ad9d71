"""The PROXY protocol (HAProxy's, versions 1 and 2) on the client listeners (Router `proxyProtocol`).

An L4 load balancer in front (AWS NLB, HAProxy in TCP mode, ...) begins every connection with a
header naming the client's address, then relays the client's bytes: with TLS, its ClientHello.
The header is read exactly, never a byte past it (opening.py), so what follows is intact for the
TLS handshake or the HTTP parser. `next_read` and `client_address` are pure: the bytes so far in,
a length or an address out.
"""
from __future__ import annotations

import ipaddress
import struct

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_MAX = 107  # the longest version 1 line, CRLF included
_V1_MIN = {b"TCP4 ": 32, b"TCP6 ": 22}  # "PROXY TCP4 1.1.1.1 1.1.1.1 1 1\r\n"; else "PROXY UNKNOWN\r\n", 15
_V2_ADDRESS_BYTES = {0x11: 12, 0x21: 36}  # TCP over IPv4, over IPv6: source, destination, their ports


class ProxyHeaderError(ValueError):
    pass


def next_read(buf: bytes, max_v2: int) -> int:
    """How many bytes may be read next without reading past the header (0: `buf` is a whole header).
    Raises ProxyHeaderError as soon as `buf` cannot begin a header."""
    n = len(buf)
    if n < 15:  # the shortest header there is ("PROXY UNKNOWN\r\n"); version 2's is 16 bytes or more
        return 15 - n
    if buf[:12] == V2_SIGNATURE:
        if n < 16:
            return 16 - n
        length = struct.unpack_from("!H", buf, 14)[0]
        if length > max_v2:
            raise ProxyHeaderError(f"version 2 header of {length} bytes (more than {max_v2})")
        return 16 + length - n
    if buf[:6] != b"PROXY ":
        raise ProxyHeaderError("the connection does not begin with a PROXY protocol header")
    if buf.endswith(b"\r\n"):
        return 0
    if n >= V1_MAX:
        raise ProxyHeaderError(f"version 1 header longer than {V1_MAX} bytes")
    least = _V1_MIN.get(buf[6:11], 15)
    if n < least:
        return least - n
    return 1 if buf.endswith(b"\r") else 2  # two bytes at least are left ("\r\n") unless "\r" was read


def client_address(header: bytes) -> str | None:
    """The client's address in a whole header, or None when it names none (version 1 UNKNOWN, version 2
    LOCAL or an unspecified family: a load balancer's own health check), then the peer's address stands."""
    if header[:12] == V2_SIGNATURE:
        return _v2_address(header)
    fields = header[6:-2].split(b" ")
    if fields[0] == b"UNKNOWN":
        return None
    if fields[0] not in (b"TCP4", b"TCP6") or len(fields) != 5:
        raise ProxyHeaderError(f"malformed version 1 header: {header[:V1_MAX]!r}")
    kind = ipaddress.IPv4Address if fields[0] == b"TCP4" else ipaddress.IPv6Address
    try:
        source, _ = kind(fields[1].decode("ascii")), kind(fields[2].decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        raise ProxyHeaderError(f"bad address in version 1 header: {header[:V1_MAX]!r}") from None
    for port in fields[3:]:
        if not port.isdigit() or (port[:1] == b"0" and port != b"0") or int(port) > 65535:
            raise ProxyHeaderError(f"bad port in version 1 header: {port[:8]!r}")
    return str(source)


def _v2_address(header: bytes) -> str | None:
    version, command = header[12] >> 4, header[12] & 0x0F
    if version != 2 or command > 1:
        raise ProxyHeaderError(f"version 2 header with version {version}, command {command}")
    family = header[13]
    if command == 0 or family == 0x00 or family >> 4 == 0x3:  # LOCAL, unspecified, or a UNIX socket
        return None
    need = _V2_ADDRESS_BYTES.get(family)
    if need is None:
        raise ProxyHeaderError(f"version 2 header for family/transport {family:#04x} (TCP over IPv4 or IPv6 only)")
    if len(header) - 16 < need:
        raise ProxyHeaderError(f"version 2 header too short for its addresses ({len(header) - 16} bytes)")
    raw = header[16:20] if family == 0x11 else header[16:32]
    return str(ipaddress.ip_address(raw))  # any TLVs after the addresses are skipped
