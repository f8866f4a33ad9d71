# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The fast lane: the plain HTTP/1.1 request path in compiled code.

A client connection starts here (ClientConnection.accept hands it over when the lane is on) and
stays here while its requests are the common kind: GET or HEAD over HTTP/1.1, a complete head with
one Host, no body, none of the headers the router interprets beyond Host and a plain Connection,
a path that needs no normalization, to a route whose choice is a weighted draw (fastpath.py says
which routes qualify and refreshes the draw). Everything else, and every failure before a response
head has gone out, goes to the Python path (server.py): the connection is handed to its
ClientConnection with the bytes not yet answered, which parses them as if it had read them itself.
So the fast lane never answers a request the Python path would refuse: what it does not accept
outright, the Python path decides.

What the fast lane does itself: parse a head (a strict subset of HTTP/1.1), route by Host, draw a
cluster, write the request upstream with the router's forwarding headers, relay the response with
the router's framing (Content-Length as received, else chunked), pool upstream connections, and
answer the two failures that cannot be retried: no response head within upstreamHeader (504) and a
broken response head (502). Counts (requests by cluster and status, latency buckets, first-byte
times, draws) accumulate here and are folded into the metrics and the policy by fastpath.py, which
also runs the timers: one sweep every tick instead of a timer per request.
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdlib cimport malloc, realloc, free
from libc.string cimport memcpy, memcmp
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC

DEF MAX_PLAN = 64
DEF MAX_BOUNDS = 48

# request and response states
DEF IDLE = 0
DEF WAITING = 1   # sent (or connecting): waiting for the response head
DEF RELAYING = 2  # the response head went out: relaying the body

# response body framing
DEF BODY_NONE = 0
DEF BODY_LENGTH = 1
DEF BODY_CHUNKED = 2
DEF BODY_CLOSE = 3

# chunked decoder states
DEF CH_SIZE = 0
DEF CH_EXT = 1
DEF CH_SIZE_LF = 2
DEF CH_DATA = 3
DEF CH_DATA_CR = 4
DEF CH_DATA_LF = 5
DEF CH_TRAILER = 6  # at the start of a trailer line (or the final empty line)
DEF CH_TRAILER_LINE = 7
DEF CH_TRAILER_LF = 8
DEF CH_END_LF = 9
DEF CH_DONE = 10

cdef unsigned char TCHAR[256]
cdef unsigned char VCHAR[256]
cdef unsigned char URLCHAR[256]
cdef unsigned char HOSTCHAR[256]


cdef void _tables():
    cdef int c
    for c in range(256):
        TCHAR[c] = 0
        VCHAR[c] = 0
        URLCHAR[c] = 0
        HOSTCHAR[c] = 0
    for c in b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ":
        TCHAR[c] = 1
    for c in range(0x20, 0x7f):
        VCHAR[c] = 1
    VCHAR[9] = 1
    # The request target the fast lane takes as it is: no '%' (escaped slashes, %00), no '#', no '\\'.
    for c in range(0x21, 0x7f):
        URLCHAR[c] = 1
    URLCHAR[ord('%')] = 0
    URLCHAR[ord('#')] = 0
    URLCHAR[ord('\\')] = 0
    for c in b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.":
        HOSTCHAR[c] = 1


_tables()
_MISSING = object()


cdef inline double _now() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


def now():
    """The lane's clock (CLOCK_MONOTONIC, as time.monotonic)."""
    return _now()


cdef inline unsigned char _lower(unsigned char c) noexcept nogil:
    return c + 32 if 65 <= c <= 90 else c


cdef inline bint _name_is(const unsigned char* p, Py_ssize_t n, const char* lname, Py_ssize_t ln) noexcept nogil:
    """Whether the header name p[:n] is `lname` (lowercase), ignoring case."""
    cdef Py_ssize_t i
    if n != ln:
        return False
    for i in range(n):
        if _lower(p[i]) != <unsigned char>lname[i]:
            return False
    return True


cdef inline Py_ssize_t _find_crlfcrlf(const unsigned char* p, Py_ssize_t start, Py_ssize_t n) noexcept nogil:
    """Index just past the first CRLF CRLF at or after start, or -1."""
    cdef Py_ssize_t i = start
    while i + 3 < n:
        if p[i + 3] != 10:
            i += 1 if p[i + 3] == 13 else 4
            continue
        if p[i] == 13 and p[i + 1] == 10 and p[i + 2] == 13:
            return i + 4
        i += 1
    return -1


# --- an output buffer -------------------------------------------------------------------------
cdef struct Out:
    char* data
    Py_ssize_t len
    Py_ssize_t cap


cdef int _grow(Out* o, Py_ssize_t need) except -1:
    cdef Py_ssize_t cap = o.cap if o.cap else 1024
    cdef char* data
    while cap < o.len + need:
        cap *= 2
    data = <char*>realloc(o.data, cap)
    if data == NULL:
        raise MemoryError()
    o.data = data
    o.cap = cap
    return 0


cdef inline int _put(Out* o, const void* p, Py_ssize_t n) except -1:
    if o.len + n > o.cap:
        _grow(o, n)
    memcpy(o.data + o.len, p, n)
    o.len += n
    return 0


cdef inline int _putb(Out* o, bytes b) except -1:
    return _put(o, PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b))


cdef int _puthex(Out* o, Py_ssize_t v) except -1:
    cdef char tmp[24]
    cdef int i = 24
    cdef const char* digits = b"0123456789abcdef"
    if v == 0:
        return _put(o, b"0", 1)
    while v > 0:
        i -= 1
        tmp[i] = digits[v & 15]
        v >>= 4
    return _put(o, tmp + i, 24 - i)


cdef inline bytes _take(Out* o):
    cdef bytes b = PyBytes_FromStringAndSize(o.data, o.len)
    o.len = 0
    return b


# --- the lane ---------------------------------------------------------------------------------
cdef class Lane:
    """Settings and tables shared by the fast lane's connections of one process (fastpath.py owns it)."""
    cdef public object owner  # fastpath.FastPath: the hooks into the Python side
    cdef public bint enabled
    cdef public bint draining
    cdef public dict hosts  # Host (bytes, lowercase, no port) -> FastRoute, or None: not for the fast lane
    cdef public set clients
    cdef public dict status_lines  # status -> status line bytes
    cdef public double header_read_s, idle_s, upstream_header_s, body_idle_s, max_connection_age_s
    cdef public long max_requests_per_connection
    cdef public Py_ssize_t max_header_bytes, max_request_line_bytes, max_header_count, pipeline_bytes
    cdef public bytes via  # the router's Via name
    cdef public bytes scheme
    cdef public bint problem_json
    cdef public long long requests  # requests the lane has sent upstream
    cdef public long long handoffs  # connections handed to the Python path
    cdef double bounds[MAX_BOUNDS]
    cdef public int nbounds
    cdef unsigned long long rng

    def __init__(self, owner, bounds, seed):
        cdef int i
        self.owner = owner
        self.enabled = False
        self.draining = False
        self.hosts = {}
        self.clients = set()
        self.status_lines = {}
        self.via = b"edge-router"
        self.scheme = b"http"
        self.pipeline_bytes = 64 * 1024
        self.nbounds = min(len(bounds), MAX_BOUNDS)
        for i in range(self.nbounds):
            self.bounds[i] = bounds[i]
        self.rng = (<unsigned long long>seed) | 1

    cdef inline double _random(self) noexcept:
        """xorshift64*: a uniform draw in [0, 1)."""
        cdef unsigned long long x = self.rng
        x ^= x >> 12
        x ^= x << 25
        x ^= x >> 27
        self.rng = x
        return ((x * 2685821657736338717ULL) >> 11) * (1.0 / 9007199254740992.0)

    cdef inline int _bucket(self, double d) noexcept:
        """bisect_left over the latency bounds (the last is +Inf)."""
        cdef int lo = 0, hi = self.nbounds, mid
        while lo < hi:
            mid = (lo + hi) >> 1
            if self.bounds[mid] < d:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def tick(self, double now):
        """Timeouts of every fast connection: the header deadline of a connection that sent nothing,
        idle keep-alive, no response head within upstreamHeader (504), a response body stalled."""
        cdef FastClient c
        for c in list(self.clients):
            c._tick(now)

    def close_idle(self):
        """Draining: idle connections close now, busy ones after their response."""
        cdef FastClient c
        self.draining = True
        for c in list(self.clients):
            if c.state == IDLE and not c.buf:
                c._close()


cdef class FastPool:
    """Idle keep-alive connections to one endpoint, LIFO (the oldest at the front, swept by expire())."""
    cdef public tuple key
    cdef public list idle
    cdef public Py_ssize_t max_idle

    def __init__(self, key, max_idle=256):
        self.key = key
        self.idle = []
        self.max_idle = max_idle

    cdef FastUpstream take(self):
        cdef FastUpstream up
        while self.idle:
            up = self.idle.pop()
            if not up.closed and not up.transport.is_closing():
                up.reused = True
                return up
        return None

    cdef void put(self, FastUpstream up, double now):
        if len(self.idle) >= self.max_idle:
            up._close()
            return
        up.idle_since = now
        self.idle.append(up)

    def expire(self, double cutoff):
        """Close connections idle since before `cutoff`."""
        cdef FastUpstream up
        while self.idle and ((<FastUpstream>self.idle[0]).closed or (<FastUpstream>self.idle[0]).idle_since <= cutoff):
            up = self.idle.pop(0)
            up._close()

    def close_all(self):
        cdef FastUpstream up
        while self.idle:
            up = self.idle.pop()
            up._close()


cdef class FastBackend:
    """One cluster of one route: where its requests go and what they did (folded by fastpath.py)."""
    cdef public str cluster
    cdef public FastPool pool
    cdef public bytes tail  # Via and x-router-cluster
    cdef public dict codes  # status -> responses since the last fold
    cdef long long lat[MAX_BOUNDS + 1]
    cdef public double lat_sum
    cdef public double ttfb_sum
    cdef public long ttfb_n
    cdef public long inflight
    cdef public bint report_health  # the cluster has a health history: successes are reported too
    cdef public object route  # FastRoute

    def __init__(self, cluster, pool, tail, route):
        self.cluster = cluster
        self.pool = pool
        self.tail = tail
        self.route = route
        self.codes = {}
        self.report_health = False

    def take_counts(self, int nbounds):
        """(codes, latency bucket counts + [sum], first-byte sum, first-byte count) since the last call."""
        cdef int i
        codes, self.codes = self.codes, {}
        lat = [self.lat[i] for i in range(nbounds)]
        lat.append(self.lat_sum)
        for i in range(nbounds):
            self.lat[i] = 0
        self.lat_sum = 0.0
        ttfb = (self.ttfb_sum, self.ttfb_n)
        self.ttfb_sum = 0.0
        self.ttfb_n = 0
        return codes, lat, ttfb

    cdef inline void count(self, Lane lane, int status, double duration):
        cdef object n = self.codes.get(status)
        self.codes[status] = 1 if n is None else n + 1
        self.lat[lane._bucket(duration)] += 1
        self.lat_sum += duration


cdef class FastRoute:
    """A route the fast lane serves, with the draw fastpath.py last computed for it."""
    cdef public str name
    cdef public str service
    cdef public list backends  # FastBackend, the route's clusters
    cdef int plan_idx[MAX_PLAN]
    cdef double plan_cum[MAX_PLAN]
    cdef int plan_n
    cdef public bint usable  # a draw is set; False: the route's requests go to the Python path for now
    cdef public long drawn  # draws since the last fold
    cdef public object reason  # the decision reason the draw stands for
    cdef public bint stale  # the state may have changed since the draw was set: fastpath.py sets it again first

    def __init__(self, name, service, backends):
        self.name = name
        self.service = service
        self.backends = backends
        self.plan_n = 0
        self.usable = False
        self.drawn = 0
        self.reason = "weighted"
        self.stale = True

    def set_plan(self, plan, reason):
        """`plan`: (index into backends, weight) pairs to draw from; None or empty: not usable."""
        cdef double total = 0.0
        cdef int i = 0
        self.stale = False
        if not plan or len(plan) > MAX_PLAN:
            self.usable = False
            self.plan_n = 0
            return
        for idx, weight in plan:
            total += weight
            self.plan_idx[i] = idx
            self.plan_cum[i] = total
            i += 1
        self.plan_n = i
        self.reason = reason
        self.usable = total > 0

    cdef FastBackend draw(self, Lane lane):
        cdef int i
        cdef double point
        self.drawn += 1
        if self.plan_n == 1:
            return self.backends[self.plan_idx[0]]
        point = lane._random() * self.plan_cum[self.plan_n - 1]
        for i in range(self.plan_n):
            if point < self.plan_cum[i]:
                return self.backends[self.plan_idx[i]]
        return self.backends[self.plan_idx[self.plan_n - 1]]


# --- the client side --------------------------------------------------------------------------
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
        cdef FastUpstream up = self.upstream
        self.lane.owner.internal_error(exc)
        if self.handed:
            return 0
        if up is not None:
            self.upstream = None
            up.client = None
            up._abort()
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
        cdef FastUpstream up = self.upstream
        cdef FastBackend be = self.backend
        self.closed = True
        self.lane.clients.discard(self)
        if not self.handed:
            if up is not None:
                self.upstream = None
                up.client = None
                up._abort()
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
                return self._handoff(False)  # a head in pieces, or too large: the Python path has the deadline and limits
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
        cdef Out o
        if self.fwd_host is not None and PyBytes_GET_SIZE(self.fwd_host) == n and \
                memcmp(PyBytes_AS_STRING(self.fwd_host), host, n) == 0:
            return self.fwd_lines
        raw = PyBytes_FromStringAndSize(<const char*>host, n)
        self.fwd_host = raw
        self.fwd_lines = self.fwd_prefix + raw + self.fwd_node + raw.replace(b'"', b"") + self.fwd_via
        return self.fwd_lines

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
        cdef FastBackend be = self.backend
        cdef double now = _now()
        cdef Lane lane = self.lane
        self.state = IDLE
        self.upstream = None
        be.inflight -= 1
        be.count(lane, status, now - self.t0)
        if status >= 500 or be.report_health:
            lane.owner.health_response(be, status)
        self.last_io = now
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
        cdef FastUpstream up = self.upstream
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
        if up is not None:
            self.upstream = None
            up.client = None
            up._close()
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
            if up is not None and not up.head_started and now - self.sent_at >= lane.upstream_header_s:
                self.upstream = None
                up.client = None
                up._abort()
                self._fail(504, "upstream did not answer within %gs" % lane.upstream_header_s)
        elif self.state == RELAYING and up is not None and now - up.last_read >= lane.body_idle_s:
            if up.paused:  # the client stopped reading
                self.transport.abort()
            else:
                self._truncated("upstream response body stalled")
        return 0

    cdef int _truncated(self, str reason) except -1:
        """A response cut short after its head went out: never let it look complete."""
        cdef FastUpstream up = self.upstream
        if up is not None:
            self.upstream = None
            up.client = None
            up._abort()
        self.keep_alive = False
        self.state = IDLE
        self.backend.inflight -= 1
        self.backend.count(self.lane, 502, _now() - self.t0)
        self.lane.owner.health_response(self.backend, 502)
        self.closed = True
        self.transport.abort()
        return 0


# --- the upstream side ------------------------------------------------------------------------
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
                self._body(c, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
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
            self._body(c, <const char*>p + end, n - end)
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
                    return self._broken_head(c, "invalid response from upstream: duplicate Content-Length")
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
            elif (_name_is(p + i, name_end - i, b"keep-alive", 10) or _name_is(p + i, name_end - i, b"proxy-connection", 16)
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

    cdef int _body(self, FastClient c, const char* p, Py_ssize_t n) except -1:
        """Relay body bytes p[:n] (after the head already in `out`, if this read had one)."""
        cdef Out* o = &self.out
        cdef Py_ssize_t take, i, start
        cdef unsigned char ch
        cdef int d
        if self.body == BODY_NONE:
            if n:
                self.keep_alive = False  # more than the response framed: not reused
            return self._end(c, _take(o))
        if self.body == BODY_LENGTH:
            take = n if n < self.remaining else self.remaining
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
