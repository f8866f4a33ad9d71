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


DEF KEEP_BYTES = 65536  # an output buffer larger than this is given back after use (a connection keeps little)


cdef inline bytes _take(Out* o):
    cdef bytes b = PyBytes_FromStringAndSize(o.data, o.len)
    o.len = 0
    if o.cap > KEEP_BYTES:
        free(o.data)
        o.data = NULL
        o.cap = 0
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
    cdef public object source  # the snapshot's Route it serves

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


# The client side (FastClient) and the upstream side (FastUpstream), kept in files of their own.
include "fastlane_client.pxi"
include "fastlane_upstream.pxi"
