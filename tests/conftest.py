"""Shared fixtures: local backends, config files, a running router, raw socket helpers.

Everything binds 127.0.0.1 on ephemeral ports and is torn down by the fixture.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import subprocess
import sys
import textwrap

import pytest
from aiohttp import web
from hypothesis import HealthCheck, settings

from router.app import RouterApp
from router.obs.admin import start_site


async def wait_for(cond, timeout_s: float = 5.0, interval_s: float = 0.01, what: str = "condition"):
    """Poll `cond` (sync or async) until truthy or the deadline passes."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    while True:
        value = cond()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if loop.time() > end:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(interval_s)


async def serve_app(app: web.Application) -> tuple[web.AppRunner, int]:
    """Run an aiohttp app on an ephemeral 127.0.0.1 port."""
    return await start_site(app, "127.0.0.1", 0)


@contextlib.asynccontextmanager
async def raw_upstream(handle):
    """A raw asyncio server running `handle(reader, writer)`; yields its port."""
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


@contextlib.asynccontextmanager
async def silent_cluster():
    """A cluster ingress that reads requests and never answers (a test hands the router its answer through
    upstream_in_flight()); yields its port."""
    async def handle(reader, writer):
        try:
            await reader.read()
        finally:
            writer.close()
    async with raw_upstream(handle) as port:
        yield port


async def upstream_in_flight(app):
    """The upstream connection of the one client request in flight, once the request has gone out on it."""
    await wait_for(lambda: any(c.active is not None and c.active.upstream is not None
                               and c.active.upstream.transport is not None for c in app.ctx.connections),
                   what="request sent upstream")
    (conn,) = app.ctx.connections
    return conn.active.upstream


class Backend:
    """An aiohttp server standing in for a cluster ingress; records what it received."""

    def __init__(self, name: str):
        self.name = name
        self.seen: list[web.Request] = []
        self.bodies: list[bytes] = []
        self.runner = None
        self.port = 0
        self.delay_s = 0.0
        self.status = 200
        self.probes = 0
        self.probe_status = 200

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if request.headers.get("User-Agent") == "edge-router-probe":
            self.probes += 1
            return web.Response(status=self.probe_status, text="probe")
        self.seen.append(request)
        self.bodies.append(body)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        return web.Response(status=self.status, text=f"{self.name}:{len(body)}")

    async def start(self, app: web.Application | None = None, ssl_context=None) -> "Backend":
        """With `ssl_context`, it speaks HTTPS."""
        if app is None:
            app = web.Application(client_max_size=1 << 30)
            app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner, self.port = await start_site(app, "127.0.0.1", 0, ssl_context=ssl_context)
        return self

    async def stop(self) -> None:
        if self.runner:
            await self.runner.cleanup()
            self.runner = None


def cluster_docs(ports: dict[str, int]) -> str:
    return "".join(textwrap.dedent(f"""\
        ---
        apiVersion: edge.router/v1alpha1
        kind: Cluster
        metadata:
          name: {name}
          labels: {{region: {name}}}
        spec:
          endpoint: http://127.0.0.1:{port}
        """) for name, port in ports.items())


def split_doc(weights: dict[str, float], name: str = "split", hosts: list[str] | None = None) -> str:
    entries = "".join(f"  - name: {n}\n    weight: {w}\n    selector: region={n}\n" for n, w in weights.items())
    host_line = f"  hosts: [{', '.join(hosts)}]\n" if hosts else ""
    return (f"---\napiVersion: networking.knative.dev/v1alpha1\nkind: TrafficSplit\nmetadata:\n  name: {name}\n"
            f"spec:\n{host_line}  clusters:\n{entries}")


def httproute_doc(rules: str, hostnames: list[str] | None = None, name: str = "web") -> str:
    """An HTTPRoute (gateway.networking.k8s.io/v1) whose spec.rules is `rules` (a YAML list, dedented here)."""
    host_line = f"  hostnames: [{', '.join(hostnames)}]\n" if hostnames else ""
    return (f"---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}}}\nspec:\n"
            f"{host_line}  rules:\n" + textwrap.indent(textwrap.dedent(rules), "  "))


def router_doc(**spec) -> str:
    import yaml
    return "---\n" + yaml.safe_dump({"apiVersion": "edge.router/v1alpha1", "kind": "Router",
                                     "metadata": {"name": "edge"}, "spec": spec})


@pytest.fixture
async def backends():
    made: list[Backend] = []

    async def make(*names: str) -> list[Backend]:
        out = [await Backend(n).start() for n in names]
        made.extend(out)
        return out

    yield make
    for b in made:
        await b.stop()


@pytest.fixture
async def router(tmp_path):
    """start(config_text) -> running RouterApp (admin on an ephemeral port)."""
    apps: list[RouterApp] = []

    async def start(text: str, watch_interval_s: float = 0, admin_override: str = "127.0.0.1:0",
                    probes: bool = False, **kw) -> RouterApp:
        """Probes are off unless a test asks: they would show up in backends' request logs."""
        path = tmp_path / "config"
        path.mkdir(exist_ok=True)
        (path / "router.yaml").write_text(text)
        app = RouterApp([str(path)], "127.0.0.1:0", admin_override, watch_interval_s=watch_interval_s,
                        probes=probes, **kw)
        apps.append(app)
        await app.start()
        app.config_dir = path
        return app

    yield start
    for app in apps:
        await app.stop()


# Fuzzing tests: 40 examples each in CI; ROUTER_FUZZ_EXAMPLES=2000 for a longer search.
fuzz_settings = settings(max_examples=int(os.environ.get("ROUTER_FUZZ_EXAMPLES", "40")), deadline=None,
                         suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


async def raw_request(port: int, data: bytes, timeout_s: float = 5.0) -> bytes:
    """Send raw bytes, read until the server closes or the deadline passes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await read_until_close(reader, timeout_s)
    finally:
        writer.close()


async def read_until_close(reader: asyncio.StreamReader, timeout_s: float) -> bytes:
    """Everything the peer sends until it closes or the deadline passes."""
    chunks = []
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    while (left := end - loop.time()) > 0:
        try:
            chunk = await asyncio.wait_for(reader.read(65536), left)
        except asyncio.TimeoutError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def cut(data: bytes, sizes: list[int]) -> list[bytes]:
    """`data` in pieces of these sizes (the rest in a last piece), empty pieces left out."""
    pieces, i = [], 0
    for size in sizes:
        pieces.append(data[i:i + size])
        i += size
    pieces.append(data[i:])
    return [p for p in pieces if p]


def parse_head(head: bytes) -> tuple[int, dict]:
    """Status and headers (lowercase names) of a response head."""
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        if line:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
    return int(lines[0].split()[1]), headers


def response_of(raw: bytes) -> tuple[int, dict, bytes]:
    """Status, headers and the bytes after the head, of the first response in `raw`."""
    head, _, rest = raw.partition(b"\r\n\r\n")
    return (*parse_head(head), rest)


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict, bytes]:
    """Read one Content-Length or chunked response from a keep-alive connection."""
    status, headers = parse_head(await reader.readuntil(b"\r\n\r\n"))
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding") == "chunked":
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            parts.append(await reader.readexactly(size + 2))
            if size == 0:
                break
        body = b"".join(p[:-2] for p in parts)
    else:
        body = b""
    return status, headers, body


def pytest_collection_modifyitems(items):
    os.environ.pop("EDGE_ROUTER_ADMIN_TOKEN", None)


def pytest_asyncio_loop_factories(config, item):
    """The router runs on uvloop in production; test it there."""
    import uvloop
    return {"uvloop": uvloop.new_event_loop}


def loop_errors(caplog) -> list:
    """Errors the router or the event loop logged (a write after the half-close, a fault in a callback);
    a test backend's own log of requests the router cut off is expected."""
    return [r for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith(("router", "asyncio"))]


def statuses_of(raw: bytes) -> list[int]:
    """Status codes of the Content-Length-framed responses in `raw`, in order."""
    out = []
    while raw.startswith(b"HTTP/1.1 "):
        head, sep, rest = raw.partition(b"\r\n\r\n")
        if not sep:
            break
        out.append(int(head.split(b" ", 2)[1]))
        length = 0
        for line in head.split(b"\r\n")[1:]:
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        raw = rest[length:]
    return out


async def keepalive_get(port, n, host="x", path="/"):
    """n GETs on one keep-alive connection; returns the list of (status, headers, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    out = []
    try:
        for _ in range(n):
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            out.append(await read_response(reader))
    finally:
        writer.close()
    return out


async def keepalive_text(port: int, n: int, host: str = "h") -> list[str]:
    """n GETs on one connection; the x-router-cluster of each (all must be 200)."""
    return [cluster for cluster, _ in await keepalive_answers(port, n, host)]


async def keepalive_answers(port: int, n: int, host: str = "h", path: str = "/",
                            extra: str = "") -> list[tuple[str, dict]]:
    """n GETs on one connection with these extra header lines; each answer's x-router-cluster and
    headers (all must be 200)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    out = []
    try:
        for _ in range(n):
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode())
            status, headers, body = await read_response(reader)
            assert status == 200, (status, body)
            out.append((headers["x-router-cluster"], headers))
    finally:
        writer.close()
    return out


class RouterProcess:
    def __init__(self, proc: subprocess.Popen, port: int, admin_port: int):
        self.proc, self.port, self.admin_port = proc, port, admin_port
        self.pid = proc.pid

    def send_signal(self, sig) -> None:
        self.proc.send_signal(sig)

    async def wait(self, timeout_s: float = 10) -> int:
        return await asyncio.get_running_loop().run_in_executor(None, self.proc.wait, timeout_s)


@contextlib.asynccontextmanager
async def router_process(config_dir, *extra: str, env: dict | None = None, open_files: int | None = None):
    """`python -m router serve` on ephemeral ports; stopped (terminate, then kill) on exit.
    `open_files` holds its open files limit (soft and hard) to that many."""
    def limit():
        import resource
        resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))
    proc = subprocess.Popen([sys.executable, "-m", "router", "serve", "--config", str(config_dir),
                             "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, **(env or {})), preexec_fn=limit if open_files else None)
    loop = asyncio.get_running_loop()
    try:
        line = ""
        while "serving on" not in line:
            line = await asyncio.wait_for(loop.run_in_executor(None, proc.stdout.readline), 20)
            assert line, "router exited before serving"
        port, admin_port = (int(x) for x in re.findall(r":(\d+)", line)[-2:])
        yield RouterProcess(proc, port, admin_port)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                await loop.run_in_executor(None, proc.wait, 10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        proc.stdout.close()


async def readiness_failed(session, admin_port: int) -> bool:
    """/readyz answers 503, or the admin server is already gone."""
    import aiohttp
    try:
        async with session.get(f"http://127.0.0.1:{admin_port}/readyz") as r:
            return r.status == 503
    except aiohttp.ClientError:
        return True
