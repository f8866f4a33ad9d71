"""A small HTTP/2 client for tests (h2 in client mode over an asyncio stream), low level on purpose: tests
send what a hostile client would (resets, bad headers, frames out of order) and read every event."""
from __future__ import annotations

import asyncio
import ssl

from h2.config import H2Configuration
from h2.connection import ConnectionState, H2Connection
from h2.events import (ConnectionTerminated, DataReceived, InformationalResponseReceived, ResponseReceived,
                       StreamEnded, StreamReset, TrailersReceived)


class Stream:
    def __init__(self):
        self.headers: dict[bytes, bytes] = {}
        self.header_list: list[tuple[bytes, bytes]] = []
        self.informational: list[dict] = []
        self.data = bytearray()
        self.ended = False
        self.reset: int | None = None
        self.method = ""

    @property
    def status(self) -> int:
        return int(self.headers[b":status"])

    @property
    def done(self) -> bool:
        return self.ended or self.reset is not None


class H2Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ack_data: bool = True):
        self.reader, self.writer = reader, writer
        self.h2 = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.streams: dict[int, Stream] = {}
        self.goaway: ConnectionTerminated | None = None
        self.closed = False
        self.ack_data = ack_data  # reopen the window as response bodies arrive

    @classmethod
    async def open(cls, port: int, ssl_context: ssl.SSLContext | None = None, **kw) -> "H2Client":
        extra = {"ssl": ssl_context, "server_hostname": "localhost"} if ssl_context else {}
        reader, writer = await asyncio.open_connection("127.0.0.1", port, **extra)
        client = cls(reader, writer, **kw)
        client.h2.initiate_connection()
        client.flush()
        return client

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and not self.writer.is_closing():
            self.writer.write(data)

    def request(self, method: str = "GET", path: str = "/", authority: str = "h", headers=(), body: bytes = b"",
                end: bool = True) -> int:
        sid = self.h2.get_next_available_stream_id()
        hdrs = [(b":method", method.encode()), (b":path", path.encode()), (b":scheme", b"http"),
                (b":authority", authority.encode())]
        if method == "CONNECT":  # (RFC 9113 8.5: no :scheme, no :path)
            hdrs = [hdrs[0], hdrs[3]]
        hdrs += [(k.encode() if isinstance(k, str) else k, v.encode() if isinstance(v, str) else v)
                 for k, v in headers]
        self.streams[sid] = Stream()
        self.streams[sid].method = method
        self.h2.send_headers(sid, hdrs, end_stream=end and not body)
        if body:
            self.h2.send_data(sid, body, end_stream=end)
        self.flush()
        return sid

    async def send_body(self, sid: int, body: bytes, end: bool = True, timeout_s: float = 10.0) -> None:
        """All of `body` on stream `sid`, as the server's windows allow."""
        sent = 0
        while sent < len(body):
            room = min(self.h2.local_flow_control_window(sid), self.h2.max_outbound_frame_size)
            if room <= 0:
                await self.pump(lambda: self.h2.local_flow_control_window(sid) > 0, timeout_s)
                continue
            self.h2.send_data(sid, body[sent:sent + room])
            sent += room
            self.flush()
        if end:
            self.h2.end_stream(sid)
            self.flush()

    async def post(self, path: str, body: bytes, method: str = "POST", **kw) -> Stream:
        sid = self.request(method, path, end=False, **kw)
        await self.send_body(sid, body)
        return await self.response(sid)

    async def pump(self, until, timeout_s: float = 5.0) -> None:
        """Read and handle frames until `until()` is true; TimeoutError past the deadline."""
        async with asyncio.timeout(timeout_s):
            while not until():
                data = await self.reader.read(65536)
                if not data:
                    self.closed = True
                    if not until():
                        raise ConnectionError("closed by the server")
                    return
                self.handle(self.h2.receive_data(data))
                self.flush()

    def handle(self, events) -> None:
        for ev in events:
            stream = self.streams.get(getattr(ev, "stream_id", 0))
            if isinstance(ev, ResponseReceived):
                stream.header_list = list(ev.headers)
                stream.headers = dict(ev.headers)
            elif isinstance(ev, InformationalResponseReceived):
                stream.informational.append(dict(ev.headers))
            elif isinstance(ev, TrailersReceived):
                pass
            elif isinstance(ev, DataReceived):
                stream.data += ev.data
                if self.ack_data:
                    self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, StreamEnded):
                stream.ended = True
            elif isinstance(ev, StreamReset):
                if stream is not None:
                    stream.reset = ev.error_code
            elif isinstance(ev, ConnectionTerminated):
                self.goaway = ev
                # h2 takes a GOAWAY as the end of the connection; RFC 9113 6.8 has streams up to its last
                # stream id go on, as browsers and curl do: this client reads their frames too.
                self.h2.state_machine.state = ConnectionState.CLIENT_OPEN

    async def response(self, sid: int, timeout_s: float = 5.0) -> Stream:
        await self.pump(lambda: self.streams[sid].done, timeout_s)
        return self.streams[sid]

    async def get(self, path: str = "/", **kw) -> Stream:
        return await self.response(self.request("GET", path, **kw))

    def close(self) -> None:
        self.writer.close()
