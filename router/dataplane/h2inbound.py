"""What a client's HTTP/2 frames say before the h2 library reads them: its GOAWAY, and floods.

GOAWAY. RFC 9113 6.8 lets the streams a client opened before its GOAWAY finish: a load balancer draining
its connection to the router sends one and waits for its requests' answers. The h2 library, once it has
received a GOAWAY, refuses to send anything more (python-hyper/h2 issue 1181), so those answers could
not go out. So the connection (h2.py) reads the frames' headers on their way in and keeps GOAWAY
frames on stream 0 for itself: h2 never sees them, the open streams are answered, and the connection
closes after the last. Anything else, a malformed GOAWAY included, is passed on untouched for h2 to
judge.

Floods (CVE-2019-9513, -9518): frames that cost the router work but carry nothing are counted here, for
the connection to hold against what the client has asked for (Envoy's limits, with its defaults): a
DATA, HEADERS or CONTINUATION frame without payload and without END_STREAM right after another
(`empty_run`: more than one in a row is a flood), PRIORITY frames (at most 100 per stream opened, and
100 before any), WINDOW_UPDATE frames (at most 5, and 2 per stream opened and 20 per DATA frame sent).
"""
from __future__ import annotations

FRAME_HEADER = 9
DATA, HEADERS, PRIORITY, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0x0, 0x1, 0x2, 0x7, 0x8, 0x9
END_STREAM = 0x1
MAX_GOAWAY = 16384  # SETTINGS_MAX_FRAME_SIZE's default, which the router keeps: h2 refuses a longer frame


class InboundFrames:
    """Passes a client's bytes on, less the GOAWAY frames on stream 0, which it notes in `goaway`; counts
    the frames a flood is made of."""
    __slots__ = ("left", "held", "goaway", "empty_run", "most_empty", "priority", "window_updates")

    def __init__(self, skip: int = 0):
        self.left = skip  # bytes (of the connection preface, or of the current frame) to pass on as they are
        self.held = b""  # a frame header, or a whole GOAWAY frame, still arriving
        self.goaway: tuple[int, int] | None = None  # (last stream id, error code) of the latest GOAWAY
        self.empty_run = 0  # empty DATA/HEADERS/CONTINUATION frames without END_STREAM, in a row
        self.most_empty = 0  # the longest such run so far
        self.priority = 0  # PRIORITY frames
        self.window_updates = 0  # WINDOW_UPDATE frames

    def feed(self, data: bytes) -> bytes:
        """What of `data` h2 should read now."""
        if self.held:
            data, self.held = self.held + data, b""
        n = len(data)
        pos = min(self.left, n)
        self.left -= pos
        if pos == n:
            return data
        kept: list[bytes] = []
        start = 0  # where the bytes still to pass on begin
        while pos < n:
            if n - pos < FRAME_HEADER:
                self.held = data[pos:]
                break
            length = int.from_bytes(data[pos:pos + 3], "big")
            kind = data[pos + 3]
            end = pos + FRAME_HEADER + length
            if kind == GOAWAY and 8 <= length <= MAX_GOAWAY and data[pos + 5:pos + 9] == b"\0\0\0\0":
                if end > n:
                    self.held = data[pos:]
                    break
                self.goaway = (int.from_bytes(data[pos + 9:pos + 13], "big") & 0x7FFFFFFF,
                               int.from_bytes(data[pos + 13:pos + 17], "big"))
                kept.append(data[start:pos])
                start = pos = end
                continue
            if kind <= HEADERS or kind == CONTINUATION:
                if length == 0 and not (kind != CONTINUATION and data[pos + 4] & END_STREAM):
                    self.empty_run += 1
                    if self.empty_run > self.most_empty:
                        self.most_empty = self.empty_run
                else:
                    self.empty_run = 0
            elif kind == PRIORITY:
                self.priority += 1
            elif kind == WINDOW_UPDATE:
                self.window_updates += 1
            if end > n:
                self.left = end - n
                pos = n
            else:
                pos = end
        stop = n - len(self.held)
        if not kept:
            return data[:stop] if stop < n else data
        kept.append(data[start:stop])
        return b"".join(kept)
