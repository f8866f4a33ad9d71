# The fast lane's client side (included by fastlane.pyx: one compiled module).
cdef class FastClient:
    """A client connection while the fast lane serves it (the transport's protocol); `py` is its
    ClientConnection, which keeps the connection's accounting and takes over when the lane hands off."""
    cdef public Lane lane
    cdef public object py
    cdef public object transport
    cdef bytes buf  # bytes read and not yet parsed as a request
    cdef public int state
    cdef public bint handed
    cdef public bint closed
    cdef bint reading_paused
    cdef bint head_method
    cdef bint keep_alive
    cdef bytes req_raw  # the head of the request in flight, as received (handed to the Python path on a retry)
    cdef public FastBackend backend
    cdef public FastUpstream upstream
    cdef public double t0, sent_at, last_io, born
    cdef public long served
    cdef bytes fwd_host  # the raw Host the cached forwarding lines were built for
    cdef bytes fwd_lines
    cdef bytes fwd_prefix  # X-Forwarded-For and X-Forwarded-Proto, then "X-Forwarded-Host: "
    cdef bytes fwd_node  # "\r\nForwarded: for=NODE;proto=SCHEME;host=\""
    cdef bytes fwd_via  # "\"\r\nVia: 1.1 NAME\r\n"
    cdef Out out

    def __init__(self, Lane lane, py, transport, bytes client_ip, bytes node, double born, long served):
        self.lane = lane
        self.py = py
        self.transport = transport
        self.buf = b""
        self.state = IDLE
        self.born = born
        self.last_io = _now()
        self.served = served
        self.fwd_host = None
        self.fwd_prefix = b"X-Forwarded-For: " + client_ip + b"\r\nX-Forwarded-Proto: " + lane.scheme + \
            b"\r\nX-Forwarded-Host: "
        self.fwd_node = b"\r\nForwarded: for=" + node + b";proto=" + lane.scheme + b";host=\""
        self.fwd_via = b"\"\r\nVia: 1.1 " + lane.via + b"\r\n"
        lane.clients.add(self)

    def __dealloc__(self):
        if self.out.data != NULL:
            free(self.out.data)

    def drain(self):
        """The router is draining: close now if idle, else after the response in flight."""
        self.lane.draining = True
        if self.state == IDLE and not self.buf and not self.handed:
            self._close()

    # asyncio.Protocol
    def connection_made(self, transport):
        pass

    def data_received(self, bytes data):
        if self.handed:
            self.py.data_received(data)
            return
        self.last_io = _now()
        self.buf = data if not self.buf else self.buf + data
        if self.state != IDLE:
            if PyBytes_GET_SIZE(self.buf) > self.lane.pipeline_bytes and not self.reading_paused:
                self.reading_paused = True
                self.transport.pause_reading()
            return
        try:
            self._next()
        except Exception as exc:
            self._internal_error(exc)

    cdef int _internal_error(self, exc) except -1:
        """A fault of the lane's own while reading a request: logged, answered 500 (as the Python path
        answers its own faults) and closed; never blamed on the client, never left unanswered."""
        self.lane.owner.internal_error(exc)
        if self.handed:
            return 0
        self._drop_upstream(True)
        if self.state != IDLE:
            if self.state == RELAYING:  # the answer has begun: it must not look complete
                self.state = IDLE
                self.backend.inflight -= 1
                self.closed = True
                self.transport.abort()
                return 0
            self.backend.inflight -= 1
            self.state = IDLE
        if not self.closed:
            self.transport.write(self.lane.owner.error_response(500, "internal error", "-", False, self.head_method))
        self._close()
        return 0

    def eof_received(self):
        return None  # the transport closes, as on the Python path (a request in flight is counted 499)

    def connection_lost(self, exc):
        cdef FastBackend be = self.backend
        self.closed = True
        self.lane.clients.discard(self)
        if not self.handed:
            self._drop_upstream(True)
            if self.state != IDLE and be is not None:
                be.inflight -= 1
                be.count(self.lane, 499, _now() - self.t0)  # the client left before its answer was whole
            self.state = IDLE
        self.py.connection_lost(exc)

    def pause_writing(self):
        if self.handed:
            self.py.pause_writing()
        elif self.upstream is not None and self.state == RELAYING:
            self.upstream.transport.pause_reading()
            self.upstream.paused = True

    def resume_writing(self):
        if self.handed:
            self.py.resume_writing()
        elif self.upstream is not None and self.upstream.paused:
            self.upstream.paused = False
            self.upstream.transport.resume_reading()

    # --- requests ------------------------------------------------------------------------
    cdef int _next(self) except -1:
        """Parse and start the next request in `buf`, or hand the connection to the Python path."""
        cdef bytes buf = self.buf
        cdef const unsigned char* p
        cdef Py_ssize_t n, end, i, line_end, name_end, v0, v1, host0 = 0, host1 = 0, url0, url1, nheaders = 0
        cdef Py_ssize_t conn0 = -1, conn1 = -1, cl0 = -1
        cdef int hosts = 0
        cdef bint close = False
        cdef Lane lane = self.lane
        cdef FastRoute route
        cdef FastBackend be
        cdef Out* o
        while True:
            n = PyBytes_GET_SIZE(buf)
            if n == 0:
                return 0
            if not lane.enabled or lane.draining:
                return self._handoff(False)
            p = <const unsigned char*>PyBytes_AS_STRING(buf)
            end = _find_crlfcrlf(p, 0, n)
            if end < 0 or end > lane.max_header_bytes:
                # a head in pieces, or too large: the Python path has the header deadline and the limits
                return self._handoff(False)
            # request line: GET or HEAD, an origin-form target, HTTP/1.1
            if n >= 4 and memcmp(p, b"GET ", 4) == 0:
                url0 = 4
                self.head_method = False
            elif n >= 5 and memcmp(p, b"HEAD ", 5) == 0:
                url0 = 5
                self.head_method = True
            else:
                return self._handoff(False)
            if p[url0] != 47:  # '/'
                return self._handoff(False)
            i = url0
            while URLCHAR[p[i]]:
                if p[i] == 47 and (p[i + 1] == 47 or p[i + 1] == 46):  # "//" or "/.": normalization's business
                    return self._handoff(False)
                i += 1
            url1 = i
            if url1 - url0 > lane.max_request_line_bytes or p[i] != 32 or i + 11 > end \
                    or memcmp(p + i + 1, b"HTTP/1.1\r\n", 10) != 0:
                return self._handoff(False)
            i += 11
            # header fields
            while True:
                if p[i] == 13:
                    if p[i + 1] != 10:
                        return self._handoff(False)
                    i += 2
                    break
                name_end = i
                while TCHAR[p[name_end]]:
                    name_end += 1
                if name_end == i or p[name_end] != 58:  # ':'
                    return self._handoff(False)
                v0 = name_end + 1
                while p[v0] == 32 or p[v0] == 9:
                    v0 += 1
                line_end = v0
                while VCHAR[p[line_end]]:
                    line_end += 1
                if p[line_end] != 13 or p[line_end + 1] != 10:
                    return self._handoff(False)
                v1 = line_end
                while v1 > v0 and (p[v1 - 1] == 32 or p[v1 - 1] == 9):
                    v1 -= 1
                nheaders += 1
                if nheaders > lane.max_header_count:
                    return self._handoff(False)
                if self._special(p + i, name_end - i):
                    if _name_is(p + i, name_end - i, b"host", 4):
                        if v1 != line_end:  # (forwarded as received, in X-Forwarded-Host too)
                            return self._handoff(False)
                        hosts += 1
                        host0, host1 = v0, v1
                    elif _name_is(p + i, name_end - i, b"connection", 10):
                        if conn0 >= 0:
                            return self._handoff(False)
                        conn0, conn1 = v0, v1
                    elif _name_is(p + i, name_end - i, b"content-length", 14):
                        if cl0 >= 0 or v1 - v0 != 1 or p[v0] != 48:  # only "Content-Length: 0"
                            return self._handoff(False)
                        cl0 = v0
                    else:
                        return self._handoff(False)
                i = line_end + 2
            if hosts != 1 or host1 == host0:
                return self._handoff(False)
            if conn0 >= 0:
                if _name_is(p + conn0, conn1 - conn0, b"close", 5):
                    close = True
                elif not _name_is(p + conn0, conn1 - conn0, b"keep-alive", 10):
                    return self._handoff(False)
            route = self._route(p + host0, host1 - host0)
            if route is not None and route.stale:
                lane.owner.replan(route)
            if route is None or not route.usable:
                return self._handoff(False)
            # the request is the fast lane's from here
            self.req_raw = buf[:end]
            buf = buf[end:]
            self.buf = buf
            self.served += 1
            self.t0 = _now()
            self.keep_alive = not close and self.served < lane.max_requests_per_connection and \
                self.t0 - self.born < lane.max_connection_age_s
            be = route.draw(lane)
            lane.requests += 1
            self.backend = be
            be.inflight += 1
            # the request upstream: its line, the client's fields less Connection and Content-Length, the
            # forwarding fields, then Content-Length: 0 when the client sent it
            o = &self.out
            o.len = 0
            _put(o, p, url1 + 11)
            i = url1 + 11
            while p[i] != 13:
                name_end = i
                while p[name_end] != 58:
                    name_end += 1
                v0 = name_end + 1
                while p[v0] == 32 or p[v0] == 9:
                    v0 += 1
                line_end = v0
                while p[line_end] != 13:
                    line_end += 1
                v1 = line_end  # (trailing whitespace is passed on, as the Python path's parser keeps it)
                if not (_name_is(p + i, name_end - i, b"connection", 10) or
                        _name_is(p + i, name_end - i, b"content-length", 14)):
                    _put(o, p + i, name_end - i)
                    _put(o, b": ", 2)
                    _put(o, p + v0, v1 - v0)
                    _put(o, b"\r\n", 2)
                i = line_end + 2
            _putb(o, self._forwarding(p + host0, host1 - host0))
            if cl0 >= 0:
                _put(o, b"Content-Length: 0\r\n", 19)
            _put(o, b"\r\n", 2)
            self.state = WAITING
            up = be.pool.take()
            if up is None:
                self.lane.owner.connect(self, be, _take(o))
                return 0
            self._send(up, _take(o))
            return 0

    cdef bint _special(self, const unsigned char* p, Py_ssize_t n):
        """Whether a request header name is one the router interprets (headers.SPECIAL), or has an
        underscore: the fast lane passes on only what the Python path would pass on as it is."""
        cdef Py_ssize_t i
        cdef unsigned char c = _lower(p[0])
        for i in range(n):
            if p[i] == 95:  # '_'
                return True
        if c == 104 or c == 116 or c == 99 or c == 101 or c == 117 or c == 120 or c == 102 or c == 107 \
                or c == 112 or c == 118:  # h t c e u x f k p v: the first letters of SPECIAL's names
            return (_name_is(p, n, b"host", 4) or _name_is(p, n, b"transfer-encoding", 17)
                    or _name_is(p, n, b"content-length", 14) or _name_is(p, n, b"connection", 10)
                    or _name_is(p, n, b"expect", 6) or _name_is(p, n, b"upgrade", 7)
                    or _name_is(p, n, b"x-forwarded-for", 15) or _name_is(p, n, b"x-forwarded-proto", 17)
                    or _name_is(p, n, b"x-forwarded-host", 16) or _name_is(p, n, b"forwarded", 9)
                    or _name_is(p, n, b"keep-alive", 10) or _name_is(p, n, b"proxy-connection", 16)
                    or _name_is(p, n, b"te", 2) or _name_is(p, n, b"trailer", 7) or _name_is(p, n, b"via", 3)
                    or _name_is(p, n, b"x-request-id", 12) or _name_is(p, n, b"x-forwarded-client-cert", 23))
        return False

    cdef FastRoute _route(self, const unsigned char* p, Py_ssize_t n):
        """The route for a Host value: letters, digits, '-' and '.', an optional port; else None."""
        cdef Py_ssize_t i, hn = n
        cdef char lower[256]
        cdef bytes key
        if n > 255:
            return None
        for i in range(n):
            if p[i] == 58:  # ':' port digits
                hn = i
                i += 1
                if n - i > 5:
                    return None
                while i < n:
                    if not (48 <= p[i] <= 57):
                        return None
                    i += 1
                break
            if not HOSTCHAR[p[i]]:
                return None
            lower[i] = _lower(p[i])
        while hn > 0 and lower[hn - 1] == 46:  # a trailing dot
            hn -= 1
        key = PyBytes_FromStringAndSize(lower, hn)
        hit = self.lane.hosts.get(key, _MISSING)
        if hit is _MISSING:
            hit = self.lane.owner.route_host(key)
        return hit

    cdef bytes _forwarding(self, const unsigned char* host, Py_ssize_t n):
        """X-Forwarded-For, -Proto, -Host, Forwarded and Via for this client and Host (kept while the
        client repeats its Host)."""
        cdef bytes raw
        if self.fwd_host is not None and PyBytes_GET_SIZE(self.fwd_host) == n and \
                memcmp(PyBytes_AS_STRING(self.fwd_host), host, n) == 0:
            return self.fwd_lines
        raw = PyBytes_FromStringAndSize(<const char*>host, n)
        self.fwd_host = raw
        self.fwd_lines = self.fwd_prefix + raw + self.fwd_node + raw.replace(b'"', b"") + self.fwd_via
        return self.fwd_lines

    cdef void _drop_upstream(self, bint abort):
        """Let go of the upstream connection of the request in flight (a reset with `abort`), if any."""
        cdef FastUpstream up = self.upstream
        if up is not None:
            self.upstream = None
            up.client = None
            if abort:
                up._abort()
            else:
                up._close()

    cdef int _send(self, FastUpstream up, bytes request) except -1:
        self.upstream = up
        up.client = self
        up.start(self.head_method)
        up.transport.write(request)
        self.sent_at = _now()
        return 0

    def attach(self, FastUpstream up, bytes request):
        """A new connection for the request in flight (fastpath.py connected it)."""
        if self.closed or self.handed or self.state != WAITING:
            up.pool.put(up, _now())
            return
        self._send(up, request)

    def connect_failed(self):
        """No connection to the drawn cluster (fastpath.py recorded why): the Python path makes the
        next choice for this request."""
        if self.closed or self.handed or self.state != WAITING:
            return
        self._handoff(True)

    # --- responses ----------------------------------------------------------------------
    cdef int _response_done(self, int status, bint keep) except -1:
        """The response is whole (or answered by the lane): counts, then the next request or the close."""
        self.state = IDLE
        self.upstream = None
        self.last_io = self._counted(status)
        if self.closed:
            return 0
        if not keep:
            return self._close()
        if self.reading_paused:
            self.reading_paused = False
            self.transport.resume_reading()
        if self.buf:
            self._next()
        return 0

    cdef double _counted(self, int status) except -1.0:
        """The request's answer counted (its status and time) and told to health when it matters; returns now."""
        cdef FastBackend be = self.backend
        cdef double now = _now()
        be.inflight -= 1
        be.count(self.lane, status, now - self.t0)
        if status >= 500 or be.report_health:
            self.lane.owner.health_response(be, status)
        return now

    cdef int _fail(self, int status, str reason) except -1:
        """Answer an upstream failure that cannot be retried (no response head went out yet)."""
        cdef bint keep = self.keep_alive and not self.lane.draining
        answer = self.lane.owner.error_response(status, reason, self.backend.cluster, keep, self.head_method)
        if not self.closed:
            self.transport.write(answer)
        return self._response_done(status, keep)

    cdef int _close(self) except -1:
        """Close as the Python path closes after a final response: half-close, then linger (what the client
        sent after its last request is not a request of this connection)."""
        self.buf = b""
        self._handoff(False)
        self.py.close()
        return 0

    cdef int _handoff(self, bint with_request) except -1:
        """The Python path takes the connection for good, with what is not yet answered (the request in
        flight too, when `with_request`: nothing of its response has gone out)."""
        cdef bytes data = self.buf
        if self.handed:
            return 0
        self.handed = True
        self.lane.handoffs += 1
        self.lane.clients.discard(self)
        if with_request:
            data = self.req_raw + data
            self.served -= 1
            if self.backend is not None:
                self.backend.inflight -= 1
        self._drop_upstream(False)
        self.state = IDLE
        self.buf = b""
        py = self.py
        py.served = self.served
        self.transport.set_protocol(py)
        if self.reading_paused:
            self.reading_paused = False
            self.transport.resume_reading()
        if data and not self.closed:
            py.data_received(data)
        return 0

    cdef int _tick(self, double now) except -1:
        cdef Lane lane = self.lane
        cdef FastUpstream up = self.upstream
        if self.handed or self.closed:
            return 0
        if self.state == IDLE:
            if not self.buf and now - self.last_io >= (lane.idle_s if self.served else lane.header_read_s):
                self._close()
        elif self.state == WAITING:
            if up is not None and now - self.sent_at >= lane.upstream_header_s:  # (a head begun but not whole too)
                self._drop_upstream(True)
                self._fail(504, "upstream did not answer within %gs" % lane.upstream_header_s)
        elif self.state == RELAYING and up is not None and now - up.last_read >= lane.body_idle_s:
            if up.paused:  # the client stopped reading
                self.transport.abort()
            else:
                self._truncated("upstream response body stalled")
        return 0

    cdef int _truncated(self, str reason) except -1:
        """A response cut short after its head went out: never let it look complete."""
        self._drop_upstream(True)
        self.keep_alive = False
        self.state = IDLE
        self._counted(502)
        self.closed = True
        self.transport.abort()
        return 0


