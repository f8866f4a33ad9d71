"""The router's own Python work per proxied request, with no sockets: both connections run on
in-memory transports, so what is timed is parsing, checks, routing, the choice, header
rewriting, timers and bookkeeping, not the kernel. A companion to bench/proxy.py, which shows
the same work against nginx on real sockets.

    python bench/dataplane_cost.py [--requests 300000] [--http2]

Prints the best of 15 rounds in microseconds per request (a GET with a Host header answered
with 64 bytes, on a keep-alive connection, one cluster), for the router's Python path, its compiled
fast lane (router/dataplane/fastlane.pyx, when built) and, on the same
transports, for bench/minimal_proxy.py (parse and forward, nothing else): the difference is
the router's own work. With --http2, also the same request as one stream of an HTTP/2
connection (prior knowledge), a new stream per request as a client sends them.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

import uvloop  # noqa: E402

import minimal_proxy  # noqa: E402
from router.config.loader import load_config  # noqa: E402
from router.core.choice import choose_backend  # noqa: E402
from router.core.snapshot import build_snapshot  # noqa: E402
from router.dataplane.context import ProxyContext  # noqa: E402
from router.dataplane.fastpath import fastlane  # noqa: E402
from router.dataplane.server import ClientConnection  # noqa: E402
from router.dataplane.upstream import UpstreamConnection  # noqa: E402
from router.obs.metrics import Metrics  # noqa: E402

CONFIG = """apiVersion: edge.router/v1alpha1
kind: Cluster
metadata: {name: local, labels: {region: local}}
spec: {endpoint: "http://127.0.0.1:9"}
---
apiVersion: edge.router/v1alpha1
kind: TrafficSplit
metadata: {name: bench}
spec:
  clusters: [{name: local, weight: 1}]
  strategy: {algorithm: latency-aware, params: {maxRTT: 200ms}}
"""
REQUEST = b"GET /small HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"
RESPONSE = (b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Mon, 23 Nov 2026 18:00:00 GMT\r\n"
            b"Content-Type: text/plain\r\nContent-Length: 64\r\nConnection: keep-alive\r\n\r\n" + b"x" * 64)
ROUNDS = 15


class MemoryTransport:
    """Just enough of asyncio.Transport: writes are collected and dropped."""

    def __init__(self):
        self.out: list[bytes] = []
        self.closing = False
        self.protocol = None

    def set_protocol(self, protocol):
        self.protocol = protocol

    def get_protocol(self):
        return self.protocol

    def get_extra_info(self, name, default=None):
        return ("127.0.0.1", 50000) if name == "peername" else default

    def set_write_buffer_limits(self, high=None, low=None):
        pass

    def write(self, data):
        self.out.append(data)

    def pause_reading(self):
        pass

    def resume_reading(self):
        pass

    def is_closing(self):
        return self.closing

    def close(self):
        self.closing = True

    abort = close

    def can_write_eof(self):
        return True

    def write_eof(self):
        pass


def relay_step(client, client_t, upstream, upstream_t):
    """One request in and its response back, the transports emptied after."""
    def step():
        client.data_received(REQUEST)
        upstream.data_received(RESPONSE)
        upstream_t.out.clear()
        client_t.out.clear()
    return step


def best_of(rounds: int, per_round: int, step) -> float:
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(per_round):
            step()
        best = min(best, (time.perf_counter() - t) / per_round)
    return best


async def measure_floor(requests: int) -> float:
    """The same request and response through the reference floor (one upstream per client)."""
    client, client_t = minimal_proxy.Client(0), MemoryTransport()
    client.transport = client_t
    upstream, upstream_t = minimal_proxy.Upstream(client), MemoryTransport()
    upstream.connection_made(upstream_t)
    client.upstream = upstream
    client.data_received(REQUEST)
    upstream.data_received(RESPONSE)
    if not b"".join(client_t.out).startswith(b"HTTP/1.1 200") or not upstream_t.out:
        raise SystemExit("the floor did not relay the exchange: the measurement is not valid")
    return best_of(ROUNDS, max(requests // ROUNDS, 1), relay_step(client, client_t, upstream, upstream_t))


FAST_OFF = "---\napiVersion: edge.router/v1alpha1\nkind: Router\nmetadata: {name: e}\nspec: {fastPath: false}\n"


async def measure(requests: int, fast: bool = False) -> float:
    """The router's Python path, or (`fast`) its compiled fast lane, per request."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as fh:
        fh.write(CONFIG if fast else CONFIG + FAST_OFF)
        fh.flush()
        config = load_config(fh.name)
    loop = asyncio.get_running_loop()
    ctx = ProxyContext(loop, build_snapshot(config, 1), Metrics())
    client, client_t = ClientConnection(ctx), MemoryTransport()
    client.connection_made(client_t)
    route = ctx.snapshot.route_for("127.0.0.1", "/small")
    decision = choose_backend(route, ctx.policy, ctx.clock(), ctx.rng)
    upstream_t = MemoryTransport()
    if fast:  # the connection is the lane's now, and so is the pooled upstream connection
        if client_t.protocol is None:
            raise SystemExit("the fast lane did not take the connection (is it compiled?)")
        client = client_t.protocol
        pool = ctx.fast._pool(decision.backend.pool_key)
        upstream = fastlane.FastUpstream(pool)
        upstream.connection_made(upstream_t)
        pool.idle.append(upstream)
    else:
        upstream = UpstreamConnection(decision.backend.pool_key)
        upstream.connection_made(upstream_t)
        ctx.pool.release(upstream)  # one pooled connection, reused by every request
    client.data_received(REQUEST)  # one checked round trip first
    upstream.data_received(RESPONSE)
    answer = b"".join(client_t.out)
    if not answer.startswith(b"HTTP/1.1 200") or b"x-router-cluster: local" not in answer or not upstream_t.out:
        raise SystemExit(f"unexpected exchange: {answer[:200]!r}")
    client_t.out.clear()
    upstream_t.out.clear()
    best = best_of(ROUNDS, max(requests // ROUNDS, 1), relay_step(client, client_t, upstream, upstream_t))
    if client.closed or (ctx.fast.lane.requests != 1 + ROUNDS * max(requests // ROUNDS, 1) if fast
                         else client.active is not None):
        raise SystemExit("the exchanges did not complete: the measurement is not valid")
    return best


async def measure_http2(requests: int) -> float:
    """Each request a new stream on one HTTP/2 connection; the frames a client would send for all of them
    are made before the clock starts (the client's work is not the router's)."""
    from h2.config import H2Configuration
    from h2.connection import H2Connection

    from router.dataplane.h2 import Http2Connection
    from router.dataplane.h2head import PREFACE
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as fh:
        fh.write(CONFIG + "---\napiVersion: edge.router/v1alpha1\nkind: Router\nmetadata: {name: e}\n"
                          "spec: {http2: {cleartext: true}}\n")
        fh.flush()
        config = load_config(fh.name)
    loop = asyncio.get_running_loop()
    ctx = ProxyContext(loop, build_snapshot(config, 1), Metrics())
    route = ctx.snapshot.route_for("127.0.0.1", "/small")
    decision = choose_backend(route, ctx.policy, ctx.clock(), ctx.rng)
    upstream, upstream_t = UpstreamConnection(decision.backend.pool_key), MemoryTransport()
    upstream.connection_made(upstream_t)
    ctx.pool.release(upstream)
    client = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    client.initiate_connection()
    client.increment_flow_control_window(2 ** 31 - 1 - 65535)
    server, server_t = Http2Connection(ctx, "127.0.0.1", False), MemoryTransport()
    server.connection_made(server_t, PREFACE)
    server.data_received(client.data_to_send()[len(PREFACE):])
    await asyncio.sleep(0)
    server_t.out.clear()  # (the client never reads the router's frames: its streams stay open on its side, uncounted)
    headers = [(b":method", b"GET"), (b":path", b"/small"), (b":scheme", b"http"), (b":authority", b"127.0.0.1:8080")]
    per_round = max(requests // ROUNDS, 1)
    frames = []
    for _ in range(per_round * ROUNDS + 1):
        client.send_headers(client.get_next_available_stream_id(), headers, end_stream=True)
        frames.append(client.data_to_send())
    feed = iter(frames)
    server.data_received(next(feed))  # one checked round trip first
    upstream.data_received(RESPONSE)
    await asyncio.sleep(0)
    answer = b"".join(server_t.out)
    if len(answer) < 64 or b"x" * 64 not in answer or not upstream_t.out or server.closed:
        raise SystemExit(f"unexpected exchange: {answer[:200]!r}")
    best = float("inf")
    for _ in range(ROUNDS):
        t = time.perf_counter()
        for _ in range(per_round):
            server.data_received(next(feed))
            upstream.data_received(RESPONSE)
            await asyncio.sleep(0)
            upstream_t.out.clear()
            server_t.out.clear()
        best = min(best, (time.perf_counter() - t) / per_round)
    if server.streams or server.closed or len(ctx.connections) != 1:
        raise SystemExit("the streams did not complete: the measurement is not valid")
    return best


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=300_000)
    ap.add_argument("--http2", action="store_true", help="also each request as a stream of an HTTP/2 connection")
    args = ap.parse_args()
    if args.http2:
        h2_best = uvloop.run(measure_http2(args.requests // 10))
        print(f"router work per proxied HTTP/2 stream: {h2_best * 1e6:.1f} us (best of {ROUNDS} rounds, no sockets)")
    best = uvloop.run(measure(args.requests))
    fast = uvloop.run(measure(args.requests, fast=True)) if fastlane is not None else None
    floor = uvloop.run(measure_floor(args.requests))
    print(f"router work per proxied request, Python path: {best * 1e6:.1f} us (best of {ROUNDS} rounds, no sockets)")
    if fast is not None:
        print(f"router work per proxied request, fast lane: {fast * 1e6:.1f} us ({fast / floor:.2f}x the floor)")
    print(f"python floor (parse and forward): {floor * 1e6:.1f} us; the Python path's own work: "
          f"{(best - floor) * 1e6:.1f} us ({best / floor:.1f}x the floor)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
