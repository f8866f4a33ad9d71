"""A parsed request head and the state of its body, as the client connection fills it in."""
from __future__ import annotations

from .headers import HttpReject

REPLAY_LIMIT = 64 * 1024  # body kept for a retry, at most
IDEMPOTENT = frozenset((b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"))


class Request:
    __slots__ = ("method", "url", "version", "headers", "special", "facts", "keep_alive", "upgrade", "body", "body_len",
                 "complete", "reject", "tunnel_bytes", "head_done", "head_size", "header_count", "t0", "request_id",
                 "request_id_line", "request_id_made", "max_body")

    def __init__(self):
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []  # passed through (Host included)
        self.special: list[tuple[bytes, bytes]] = []  # (lowercase name, value) the proxy interprets
        self.body: list[bytes] = []
        self.body_len = 0
        self.complete = self.head_done = self.upgrade = False
        self.keep_alive = True
        self.reject: HttpReject | None = None
        self.tunnel_bytes = b""
        self.head_size = 0
        self.header_count = 0
        self.method = b""
        self.version = "1.1"
        self.facts: dict = {}
        self.t0 = 0.0
        self.request_id = b""  # with Router requestId: the X-Request-Id this request goes by
        self.request_id_line = b""  # its header line, returned to the client
        self.request_id_made = False  # the router made it (and sends it upstream in place of the client's)
        self.max_body = 0  # body bytes it may have: the largest of any route's until it is routed, then its route's

    def has_body(self) -> bool:
        """Whether a body follows the head (framing read from the checked headers), or an upgrade."""
        facts = self.facts
        return bool(facts.get("chunked") or facts.get("content_length") or self.upgrade)
