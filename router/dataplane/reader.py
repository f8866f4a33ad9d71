"""Reading requests: the httptools (llhttp) callbacks of a client connection.

RequestReader is a base of ClientConnection (server.py) and works on its state: it builds each
Request from the parser's callbacks, applies the limits and checks (headers.py), normalizes the
path, and queues the request or hands its body to the active exchange. The connection's life
(timers, writes, closing, pipelining order) stays in server.py.
"""
from __future__ import annotations

from .headers import PASSED_ON, SPECIAL, HttpReject, is_h2c, origin_form, validate_request, with_host
from .paths import needs_normalizing, normalize as normalize_path, unescape_slashes
from .pause import PAUSE_BUFFER, PAUSE_PIPELINE
from .request import Request

# Pipelined requests: reading pauses while this many wait for their turn, so a client that sends
# without reading answers holds the router's memory to one read's worth of requests; one read that
# holds more than PIPELINE_MAX gets those answered, then 429 and close.
PIPELINE_WINDOW = 16
PIPELINE_MAX = 1000


class PastLastRequest(Exception):
    """Raised in a parser callback to stop parsing: the connection already gave its last answer (a
    close after a request the router answered itself, or Connection: close), so requests pipelined
    behind it in the same read are not started; the client may send them again elsewhere."""


class RequestReader:
    """The parser callbacks; httptools looks them up once, when the connection's parser is made."""
    __slots__ = ()

    def on_message_begin(self):
        if self.stopped or self.lingering or self.closed:
            raise PastLastRequest
        self.req = Request()
        # The header deadline is armed after this read (data_received) if the head is still incomplete.

    def on_url(self, url: bytes):
        req = self.req
        req.url += url
        if len(req.url) > self.ctx.settings.limits.max_request_line_bytes:
            raise HttpReject(414, "request line too long")

    def on_header(self, name: bytes, value: bytes):
        req = self.req
        if not req.head_done:
            lname = name.lower()
            if lname in SPECIAL:
                req.special.append((lname, value))
                if lname in PASSED_ON:  # interpreted and passed on
                    req.headers.append((name, value))
            elif b"_" not in name or self._keep_underscored(name):
                req.headers.append((name, value))
        # else: a trailer field after a chunked body. Never added to the head (which may not be sent yet:
        # a queued request, or one waiting for its connection); dropped, as nginx and Envoy drop request
        # trailers, but still counted against the limits.
        req.header_count += 1
        req.head_size += len(name) + len(value) + 4
        limits = self.ctx.settings.limits
        if req.header_count > limits.max_header_count:
            raise HttpReject(431, f"more than {limits.max_header_count} header fields")
        if req.head_size > limits.max_header_bytes:
            raise HttpReject(431, "request header section too large")

    def _escaped_slashes(self, req: Request) -> None:
        """%2F / %5C in the path: servers that decode them before resolving dot segments see
        /public/..%2Fadmin as /admin. Refused (400), or decoded here so that normalization (next) and
        routing see what such a server sees."""
        unescaped = unescape_slashes(req.url)
        if unescaped is None:
            return
        if self.ctx.settings.escaped_slashes == "reject":
            raise HttpReject(400, "escaped slash in the request path (%2F or %5C)")
        req.url = unescaped

    def _identify(self, req: Request) -> None:
        """X-Request-Id: kept when a trusted proxy sent one (it names the request end to end), else
        the router's own, which replaces whatever an untrusted client sent (as Envoy does at the edge)."""
        sent = req.facts["request_id"]
        if sent and self.trusted():
            req.request_id = sent
        else:
            req.request_id = self.ctx.new_request_id()
            req.request_id_made = True
        req.request_id_line = b"X-Request-Id: " + req.request_id + b"\r\n"

    def _keep_underscored(self, name: bytes) -> bool:
        """A header name with an underscore: servers that expose headers as CGI-style variables
        (HTTP_X_FORWARDED_FOR) read X_Forwarded_For as X-Forwarded-For, which would get past the
        forwarding headers the router sets. Dropped by default (nginx's underscores_in_headers off)."""
        action = self.ctx.settings.underscore_headers
        if action == "reject":
            raise HttpReject(400, f"header name with an underscore: {name[:64].decode('latin-1')}")
        if action == "drop":
            self.ctx.metrics.dropped_headers.labels("underscore").inc()
            return False
        return True

    def on_headers_complete(self):
        req, p = self.req, self.parser
        req.head_done = True
        self.head_bytes = 0
        self.timer.deadline = 0.0  # head complete: the header deadline no longer applies
        req.method = p.get_method()
        req.version = p.get_http_version()
        req.keep_alive = p.should_keep_alive()
        req.upgrade = p.should_upgrade()
        if req.method == b"CONNECT":
            raise HttpReject(405, "CONNECT is not supported")
        if req.url[:1] != b"/":
            req.url, authority = origin_form(req.method, req.url)
            if authority is not None:  # the target's authority routes and is sent as Host
                if any(name == b"host" for name, _ in req.special):
                    req.special, req.headers = with_host(req.special, authority), with_host(req.headers, authority)
                elif req.version == "1.0":  # (HTTP/1.1 without Host stays a 400)
                    req.special.append((b"host", authority))
                    req.headers.append((b"Host", authority))
        if b"#" in req.url:  # (Envoy's default since 1.19: a fragment would route apart from what is served)
            raise HttpReject(400, "fragment (#) in the request target")
        if b"%" in req.url:
            if b"%00" in req.url.partition(b"?")[0]:  # a NUL when decoded: where C strings end (nginx refuses it too)
                raise HttpReject(400, "encoded NUL (%00) in the request path")
            if self.ctx.settings.escaped_slashes != "keep":
                self._escaped_slashes(req)
        if needs_normalizing(req.url) and self.ctx.settings.normalize_path:
            req.url = normalize_path(req.url)  # routed on, and forwarded, as the cluster will resolve it
        key = (req.version, *req.special)
        if key == self.last_special:
            req.facts = self.last_facts
        else:
            req.facts = validate_request(req.version, req.special)
            self.last_special, self.last_facts = key, req.facts
        if req.upgrade and is_h2c(req.facts["upgrade"]):
            # HTTP/2 over the upgraded connection would reach the cluster as requests the router never sees
            # (past routes, sourceRanges, rate limits: "h2c smuggling"): served as HTTP/1.1 without the
            # upgrade, as Envoy does, and the connection closed after it (the parser stopped at the head).
            req.upgrade = False
            self.retiring = True
            self.ctx.metrics.dropped_headers.labels("h2c upgrade").inc()
        if req.facts["via"] and self.ctx.via in req.facts["via"]:  # it came through this router already
            raise HttpReject(508, f"forwarding loop: the request already passed {self.ctx.via.decode()} (Via)")
        if self.ctx.settings.request_id:
            self._identify(req)
        cl = req.facts["content_length"]
        req.max_body = self.ctx.snapshot.max_body  # narrowed to its route's when it is routed
        if cl is not None and cl > req.max_body:
            raise HttpReject(413, "request body larger than the limit")
        req.t0 = self.ctx.clock()
        self.served += 1
        if self.served >= self.ctx.max_requests_per_connection or req.t0 - self.born >= self.ctx.max_connection_age_s:
            self.retiring = True  # this request's response says Connection: close (nginx's keepalive_requests/_time)
        queue = self.queue
        if self.active is None:
            queue.append(req)
            self._start_next()
            return
        if len(queue) >= PIPELINE_MAX:
            raise HttpReject(429, "too many pipelined requests")
        queue.append(req)
        if len(queue) >= PIPELINE_WINDOW:
            self.pause(PAUSE_PIPELINE)

    def on_body(self, body: bytes):
        req = self.req
        req.body_len += len(body)
        if req.body_len > req.max_body:
            raise HttpReject(413, "request body larger than the limit")
        ex = self.active
        if ex is not None and ex.req is req and ex.streaming:
            self.body_out.append(body)
            return
        req.body.append(body)
        self.buffered += len(body)
        if self.buffered > self.ctx.settings.limits.max_buffered_bytes:
            self.pause(PAUSE_BUFFER)

    def on_message_complete(self):
        req = self.req
        req.complete = True
        if not req.keep_alive:
            self._stop(pause=False)
        ex = self.active
        if ex is not None and ex.req is req:
            if self.body_out:
                self._flush_body()
            ex.on_request_end()
        elif ex is None and not self.queue and not self.stopped and not self.lingering and not self.closed:
            # already answered from its head alone (a 404, a redirect): the connection now idles
            self._set_timer(self.ctx.settings.timeouts.idle_s, self._on_idle, "idle")

    def _flush_body(self) -> None:
        pieces, self.body_out = self.body_out, []
        ex = self.active
        if ex is not None and ex.streaming and not ex.finished and ex.upstream is not None:
            ex.send_body(pieces[0] if len(pieces) == 1 else b"".join(pieces))
