# The fast lane's upstream side (included by fastlane.pyx: one compiled module).
cdef class FastUpstream:
    """A connection to a cluster endpoint that the fast lane's requests use."""
    cdef public FastPool pool
    cdef public object transport
    cdef public FastClient client
    cdef public bint closed
    cdef public bint reused
    cdef public bint paused
    cdef public double idle_since, last_read
    cdef public bint head_started  # a byte of the response arrived
    cdef bint head_method
    cdef bint keep_alive
    cdef bint out_chunked
    cdef int body
    cdef long long remaining
    cdef int ch_state
    cdef long long ch_size
    cdef int ch_digits
    cdef Py_ssize_t ch_line
    cdef int status
    cdef bytes head_buf
    cdef Out out

    def __init__(self, FastPool pool):
        self.pool = pool
        self.head_buf = b""

    def __dealloc__(self):
        if self.out.data != NULL:
            free(self.out.data)

    def connection_made(self, transport):
        self.transport = transport

    cdef void start(self, bint head_method):
        self.head_method = head_method
        self.head_started = False
        self.head_buf = b""
        self.body = BODY_NONE
        self.last_read = _now()

    cdef void _close(self):
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()

    cdef void _abort(self):
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def pause_writing(self):
        pass  # a request head is all the fast lane writes upstream

    def resume_writing(self):
        pass

    def connection_lost(self, exc):
        cdef FastClient c = self.client
        self.closed = True
        if c is None:
            return
        self.client = None
        c.upstream = None
        if c.state == WAITING:
            if self.head_started:
                c._fail(502, "upstream closed the connection before its response head was whole")
            else:
                # Nothing of an answer: a pooled connection the cluster had closed, or a reset. The request
                # (GET or HEAD) goes to the Python path, which retries it as it would its own.
                if not self.reused:
                    c.lane.owner.health_response(c.backend, 502)
                c._handoff(True)
        elif c.state == RELAYING:
            if self.body == BODY_CLOSE:
                self._end(c, b"0\r\n\r\n")
            else:
                c._truncated("upstream closed the connection mid-response")

    def data_received(self, bytes data):
        cdef FastClient c = self.client
        if c is None:
            self._close()  # bytes on an idle connection: it is no longer usable
            return
        self.last_read = _now()
        try:
            if c.state == WAITING:
                self.head_started = True
                self._head(c, data)
            elif c.state == RELAYING:
                self.out.len = 0
                self._body(c, data, 0)
        except Exception as exc:
            c._internal_error(exc)

    cdef int _head(self, FastClient c, bytes data) except -1:
        cdef bytes buf = data if not self.head_buf else self.head_buf + data
        cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(buf)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(buf), end, i
        cdef Lane lane = c.lane
        while True:
            end = _find_crlfcrlf(p, 0, n)
            if end < 0:
                if n > lane.max_header_bytes + lane.max_request_line_bytes:
                    self._broken(c, "upstream response header section too large")
                    return 0
                self.head_buf = buf
                return 0
            i = self._parse_head(c, p, end)
            if i < 0:
                return 0  # answered (502)
            if i == 0:  # an interim 1xx: the final response follows
                buf = buf[end:]
                p = <const unsigned char*>PyBytes_AS_STRING(buf)
                n = PyBytes_GET_SIZE(buf)
                continue
            self.head_buf = b""
            c.state = RELAYING
            self._body(c, buf, end)
            return 0

    cdef Py_ssize_t _broken_head(self, FastClient c, str reason) except -2:
        self._broken(c, reason)
        return -1

    cdef int _broken(self, FastClient c, str reason) except -1:
        self.client = None
        c.upstream = None
        self._abort()
        c._fail(502, reason)
        return 0

    cdef Py_ssize_t _parse_head(self, FastClient c, const unsigned char* p, Py_ssize_t end) except -2:
        """Check the response head p[:end] and write the client's; 1: done, 0: an interim response to skip,
        -1: broken (answered 502)."""
        cdef Lane lane = c.lane
        cdef Py_ssize_t i, name_end, v0, v1, line_end, nheaders = 0, j, size = 0
        cdef int status, minor
        cdef long long cl = -1, v
        cdef bint chunked = False, te = False, conn_close = False, conn_keep = False, named = False
        cdef bint keep
        cdef Out* o = &self.out
        cdef FastBackend be = c.backend
        if memcmp(p, b"HTTP/1.", 7) != 0 or not (p[7] == 48 or p[7] == 49) or p[8] != 32 \
                or not (48 <= p[9] <= 57 and 48 <= p[10] <= 57 and 48 <= p[11] <= 57):
            return self._broken_head(c, "invalid response from upstream: bad status line")
        minor = p[7] - 48
        status = (p[9] - 48) * 100 + (p[10] - 48) * 10 + (p[11] - 48)
        if status < 100 or (p[12] != 32 and p[12] != 13):
            return self._broken_head(c, "invalid response from upstream: bad status line")
        i = 12
        while p[i] != 13:
            if p[i] != 9 and (p[i] < 32 or p[i] == 127):
                return self._broken_head(c, "invalid response from upstream: bad status line")
            i += 1
        if p[i + 1] != 10:
            return self._broken_head(c, "invalid response from upstream: bad status line")
        i += 2
        if status == 101:
            return self._broken_head(c, "upstream switched protocols without an Upgrade request")
        if status < 200:
            return 0
        self.status = status
        o.len = 0
        line = lane.status_lines.get(status)
        if line is None:
            line = lane.owner.status_line(status)
        _putb(o, line)
        while p[i] != 13:
            name_end = i
            while TCHAR[p[name_end]]:
                name_end += 1
            if name_end == i or p[name_end] != 58:
                return self._broken_head(c, "invalid response from upstream: bad header field")
            v0 = name_end + 1
            while p[v0] == 32 or p[v0] == 9:
                v0 += 1
            line_end = v0
            while VCHAR[p[line_end]] or p[line_end] >= 128:
                line_end += 1
            if p[line_end] != 13 or p[line_end + 1] != 10:
                return self._broken_head(c, "invalid response from upstream: bad header field")
            v1 = line_end
            while v1 > v0 and (p[v1 - 1] == 32 or p[v1 - 1] == 9):
                v1 -= 1
            nheaders += 1
            size += name_end - i + v1 - v0 + 4
            if nheaders > lane.max_header_count:
                return self._broken_head(c, "upstream response has more than %d header fields" % lane.max_header_count)
            if size > lane.max_header_bytes:
                return self._broken_head(c, "upstream response header section too large")
            if _name_is(p + i, name_end - i, b"content-length", 14):
                if v1 == v0 or v1 - v0 > 18:
                    return self._broken_head(c, "invalid response from upstream: bad Content-Length")
                v = 0
                for j in range(v0, v1):
                    if not (48 <= p[j] <= 57):
                        return self._broken_head(c, "invalid response from upstream: bad Content-Length")
                    v = v * 10 + (p[j] - 48)
                if cl >= 0 and cl != v:
                    return self._broken_head(c, "invalid response from upstream: Duplicate Content-Length")
                cl = v
            elif _name_is(p + i, name_end - i, b"transfer-encoding", 17):
                if te or not _name_is(p + v0, v1 - v0, b"chunked", 7):
                    return self._broken_head(c, "invalid response from upstream: Transfer-Encoding other than chunked")
                te = chunked = True
            elif _name_is(p + i, name_end - i, b"connection", 10):
                if _name_is(p + v0, v1 - v0, b"close", 5):
                    conn_close = True
                elif _name_is(p + v0, v1 - v0, b"keep-alive", 10):
                    conn_keep = True
                else:
                    named = True
            elif (_name_is(p + i, name_end - i, b"keep-alive", 10)
                  or _name_is(p + i, name_end - i, b"proxy-connection", 16)
                  or _name_is(p + i, name_end - i, b"te", 2) or _name_is(p + i, name_end - i, b"trailer", 7)
                  or _name_is(p + i, name_end - i, b"upgrade", 7)
                  or _name_is(p + i, name_end - i, b"x-router-cluster", 16)):
                pass  # hop-by-hop, and the router's own
            else:
                _put(o, p + i, name_end - i)
                _put(o, b": ", 2)
                _put(o, p + v0, v1 - v0)
                _put(o, b"\r\n", 2)
            i = line_end + 2
        if named:  # the upstream's Connection names fields to drop: rare, done by the Python side's rules
            return self._named(c, p, end)
        if chunked and cl >= 0:
            return self._broken_head(c, "invalid response from upstream: Content-Length with Transfer-Encoding")
        return self._finish_head(c, status, cl, chunked, minor, conn_close, conn_keep)

    cdef Py_ssize_t _named(self, FastClient c, const unsigned char* p, Py_ssize_t end) except -2:
        """A response whose Connection header names other fields: its head rebuilt by headers.response_head."""
        cdef Lane lane = c.lane
        head = PyBytes_FromStringAndSize(<const char*>p, end)
        parsed = lane.owner.parse_named(head, b"")  # (_finish_head adds the router's own lines)
        if parsed is None:
            return self._broken_head(c, "invalid response from upstream: bad header field")
        parts, cl, chunked, minor, conn_close, conn_keep = parsed
        self.out.len = 0
        _putb(&self.out, parts)
        return self._finish_head(c, self.status, cl, chunked, minor, conn_close, conn_keep)

    cdef Py_ssize_t _finish_head(self, FastClient c, int status, long long cl, bint chunked, int minor,
                                 bint conn_close, bint conn_keep) except -2:
        cdef Out* o = &self.out
        cdef FastBackend be = c.backend
        cdef Lane lane = c.lane
        cdef bint no_body = c.head_method or status == 204 or status == 304
        cdef double now = _now()
        self.keep_alive = not conn_close and (minor == 1 or conn_keep)
        _putb(o, be.tail)
        if no_body:
            self.body = BODY_NONE
            if cl >= 0 and c.head_method:
                _put(o, b"Content-Length: ", 16)
                self._putint(cl)
                _put(o, b"\r\n", 2)
        elif cl >= 0:
            self.body = BODY_LENGTH
            self.remaining = cl
            _put(o, b"Content-Length: ", 16)
            self._putint(cl)
            _put(o, b"\r\n", 2)
        else:
            self.body = BODY_CHUNKED if chunked else BODY_CLOSE
            _put(o, b"Transfer-Encoding: chunked\r\n", 28)
            if not chunked:
                self.keep_alive = False
        self.out_chunked = not no_body and cl < 0
        self.ch_state = CH_SIZE
        self.ch_size = 0
        self.ch_digits = 0
        if lane.draining:
            c.keep_alive = False
        if not c.keep_alive:
            _put(o, b"Connection: close\r\n", 19)
        _put(o, b"\r\n", 2)
        be.ttfb_sum += now - c.sent_at
        be.ttfb_n += 1
        return 1

    cdef int _putint(self, long long v) except -1:
        cdef char tmp[24]
        cdef int i = 24
        if v == 0:
            return _put(&self.out, b"0", 1)
        while v > 0:
            i -= 1
            tmp[i] = 48 + v % 10
            v //= 10
        return _put(&self.out, tmp + i, 24 - i)

    cdef int _body(self, FastClient c, bytes data, Py_ssize_t start) except -1:
        """Relay the body bytes data[start:] (after the head already in `out`, if this read had one)."""
        cdef Out* o = &self.out
        cdef const char* p = PyBytes_AS_STRING(data) + start
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data) - start
        cdef Py_ssize_t take, i
        cdef unsigned char ch
        cdef int d
        if self.body == BODY_NONE:
            if n:
                self.keep_alive = False  # more than the response framed: not reused
            return self._end(c, _take(o))
        if self.body == BODY_LENGTH:
            take = n if n < self.remaining else self.remaining
            if start == 0 and take == n and o.len == 0:  # a read of body alone: passed on as it is, no copy
                self.remaining -= take
                if self.remaining == 0:
                    return self._end(c, data)
                if not c.closed:
                    c.transport.write(data)
                return 0
            _put(o, p, take)
            self.remaining -= take
            if self.remaining == 0:
                if take < n:
                    self.keep_alive = False
                return self._end(c, _take(o))
            self._write(c, o)
            return 0
        if self.body == BODY_CLOSE:
            if n:
                _puthex(o, n)
                _put(o, b"\r\n", 2)
                _put(o, p, n)
                _put(o, b"\r\n", 2)
            self._write(c, o)
            return 0
        # chunked: decode, and write each run of data as a chunk of our own
        i = 0
        while i < n:
            ch = <unsigned char>p[i]
            if self.ch_state == CH_DATA:
                take = n - i if n - i < self.ch_size else self.ch_size
                _puthex(o, take)
                _put(o, b"\r\n", 2)
                _put(o, p + i, take)
                _put(o, b"\r\n", 2)
                self.ch_size -= take
                i += take
                if self.ch_size == 0:
                    self.ch_state = CH_DATA_CR
                continue
            if self.ch_state == CH_SIZE:
                if 48 <= ch <= 57:
                    d = ch - 48
                elif 97 <= ch <= 102:
                    d = ch - 87
                elif 65 <= ch <= 70:
                    d = ch - 55
                elif ch == 13 and self.ch_digits:
                    self.ch_state = CH_SIZE_LF
                    i += 1
                    continue
                elif (ch == 59 or ch == 32 or ch == 9) and self.ch_digits:
                    self.ch_state = CH_EXT
                    i += 1
                    continue
                else:
                    return self._bad_chunk(c)
                self.ch_digits += 1
                if self.ch_digits > 15:
                    return self._bad_chunk(c)
                self.ch_size = self.ch_size * 16 + d
            elif self.ch_state == CH_EXT:
                if ch == 13:
                    self.ch_state = CH_SIZE_LF
                elif ch == 10 or ch == 0:
                    return self._bad_chunk(c)
                else:
                    self.ch_line += 1
                    if self.ch_line > 4096:
                        return self._bad_chunk(c)
            elif self.ch_state == CH_SIZE_LF:
                if ch != 10:
                    return self._bad_chunk(c)
                self.ch_digits = 0
                self.ch_line = 0
                self.ch_state = CH_DATA if self.ch_size else CH_TRAILER
            elif self.ch_state == CH_DATA_CR:
                if ch != 13:
                    return self._bad_chunk(c)
                self.ch_state = CH_DATA_LF
            elif self.ch_state == CH_DATA_LF:
                if ch != 10:
                    return self._bad_chunk(c)
                self.ch_state = CH_SIZE
            elif self.ch_state == CH_TRAILER:
                if ch == 13:
                    self.ch_state = CH_END_LF
                else:
                    self.ch_state = CH_TRAILER_LINE
                    self.ch_line = 1
            elif self.ch_state == CH_TRAILER_LINE:
                if ch == 13:
                    self.ch_state = CH_TRAILER_LF
                else:
                    self.ch_line += 1
                    if self.ch_line > c.lane.max_header_bytes:
                        return self._bad_chunk(c)
            elif self.ch_state == CH_TRAILER_LF:
                if ch != 10:
                    return self._bad_chunk(c)
                self.ch_state = CH_TRAILER  # trailers are dropped, as the Python path drops them
            elif self.ch_state == CH_END_LF:
                if ch != 10:
                    return self._bad_chunk(c)
                if i + 1 < n:
                    self.keep_alive = False
                _put(o, b"0\r\n\r\n", 5)
                return self._end(c, _take(o))
            i += 1
        self._write(c, o)
        return 0

    cdef int _bad_chunk(self, FastClient c) except -1:
        """Broken chunked framing mid-body: what went out before stays, and the client connection is
        aborted (the body must not look complete)."""
        cdef Out* o = &self.out
        if o.len:
            self._write(c, o)
        self.client = None
        c.upstream = None
        self._abort()
        c._truncated("invalid response from upstream: bad chunked framing")
        return 0

    cdef inline void _write(self, FastClient c, Out* o):
        if o.len:
            if not c.closed:
                c.transport.write(_take(o))
            o.len = 0

    cdef int _end(self, FastClient c, bytes last) except -1:
        """The response is whole: the upstream back to its pool (or closed), the client's next request."""
        if last and not c.closed:
            c.transport.write(last)
        self.client = None
        if self.paused:
            self.paused = False
            self.transport.resume_reading()
        if self.keep_alive and not self.closed:
            self.pool.put(self, _now())
        else:
            self._close()
        c._response_done(self.status, c.keep_alive)
        return 0
