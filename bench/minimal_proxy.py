"""Reference floor for bench/proxy.py: the least a Python proxy on uvloop + httptools can do.

One upstream connection per client connection, requests without bodies, no validation, no
routing, no metrics, no timeouts. Not a product: it shows how much of the gap to nginx is
the runtime and how much is the router's own work.

    python bench/minimal_proxy.py LISTEN_PORT UPSTREAM_PORT
"""
from __future__ import annotations

import asyncio
import sys

import httptools
import uvloop


class Upstream(asyncio.Protocol):
    def __init__(self, client: "Client"):
        self.client = client
        self.parser = httptools.HttpResponseParser(self)
        self.headers: list[bytes] = []
        self.body: list[bytes] = []

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.parser.feed_data(data)

    def on_header(self, name, value):
        if name.lower() not in (b"connection", b"content-length", b"keep-alive"):
            self.headers.append(name + b": " + value + b"\r\n")

    def on_body(self, body):
        self.body.append(body)

    def on_message_complete(self):
        body = b"".join(self.body)
        head = b"HTTP/1.1 %d OK\r\n%bContent-Length: %d\r\n\r\n" % (
            self.parser.get_status_code(), b"".join(self.headers), len(body))
        self.headers, self.body = [], []
        self.client.transport.write(head + body)


class Client(asyncio.Protocol):
    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.parser = httptools.HttpRequestParser(self)
        self.upstream: Upstream | None = None
        self.pending: list[bytes] = []
        self.url = b""
        self.headers: list[bytes] = []

    def connection_made(self, transport):
        self.transport = transport
        asyncio.get_running_loop().create_task(self.connect())

    async def connect(self):
        _, self.upstream = await asyncio.get_running_loop().create_connection(
            lambda: Upstream(self), "127.0.0.1", self.upstream_port)
        for req in self.pending:
            self.upstream.transport.write(req)
        self.pending = []

    def connection_lost(self, exc):
        if self.upstream is not None:
            self.upstream.transport.close()

    def data_received(self, data):
        self.parser.feed_data(data)

    def on_url(self, url):
        self.url = url

    def on_header(self, name, value):
        self.headers.append(name + b": " + value + b"\r\n")

    def on_message_complete(self):
        req = b"%b %b HTTP/1.1\r\n%b\r\n" % (self.parser.get_method(), self.url, b"".join(self.headers))
        self.headers = []
        if self.upstream is None:
            self.pending.append(req)
        else:
            self.upstream.transport.write(req)


async def main(listen_port: int, upstream_port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Client(upstream_port), "127.0.0.1", listen_port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]), int(sys.argv[2])))
