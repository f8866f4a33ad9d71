"""Admin HTTP server (aiohttp): /metrics /healthz /readyz /debug/state /debug/route, POST /admin/*.

POST endpoints need `Authorization: Bearer TOKEN`. Binding to a non-loopback address
without a token configured is refused at start. A worker of `serve --workers` serves the read-only
endpoints on a Unix socket in its supervisor's private directory, where the supervisor asks them.
"""
from __future__ import annotations

import hmac
import inspect
import ipaddress
import os
from typing import Awaitable, Callable

from aiohttp import web


class AdminError(Exception):
    pass


class Unavailable(Exception):
    """What the endpoint reports on cannot answer now (a worker that is not up): 503."""


async def start_site(app: web.Application, host: str, port: int, **kwargs) -> tuple[web.AppRunner, int]:
    """Run an aiohttp app on host:port (0: ephemeral); returns the runner and the bound port."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, **kwargs)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]


def read_token(env_name: str | None, file: str | None) -> str | None:
    if file:
        try:
            with open(file, encoding="utf-8") as fh:
                return fh.read().strip() or None
        except OSError as exc:
            raise AdminError(f"cannot read admin token file {file}: {exc.strerror}") from None
    return (os.environ.get(env_name) or None) if env_name else None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class AdminServer:
    def __init__(self, registry, state: Callable[[], dict | Awaitable[dict]], ready: Callable[[], bool],
                 actions: dict[str, Callable[[], Awaitable[dict]]], token: str | None, collect=None,
                 before_scrape: Callable[[], None] | None = None,
                 explain: Callable[..., dict | Awaitable[dict]] | None = None):
        self.registry, self.state, self.ready = registry, state, ready
        self.explain = explain  # (query) -> what the router would do (see explain_args); None: not offered
        self.actions, self.token = actions, token
        self.collect = collect  # optional: returns metrics text (merged across workers)
        self.before_scrape = before_scrape
        self.runner: web.AppRunner | None = None
        self.port = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/debug/state", self.debug_state)
        if self.explain is not None:
            app.router.add_get("/debug/route", self.debug_route)
        for name in self.actions:
            app.router.add_post(f"/admin/{name}", self.action)
        return app

    async def start(self, host: str, port: int) -> int:
        if not is_loopback(host) and not self.token:
            raise AdminError(f"refusing to bind the admin server to {host}:{port} without a token: "
                             "set the token environment variable or adminToken.file, or bind to 127.0.0.1")
        self.runner, self.port = await start_site(self.app(), host, port, reuse_address=True)
        return self.port

    async def start_unix(self, path: str) -> None:
        """Serve on a Unix socket (a worker's, for its supervisor): no token, as only the socket's
        directory's owner can reach it."""
        self.runner = web.AppRunner(self.app(), access_log=None)
        await self.runner.setup()
        await web.UnixSite(self.runner, path).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def metrics(self, request: web.Request) -> web.Response:
        if self.before_scrape is not None:
            self.before_scrape()
        # Imported here, not at the top: `serve --workers` must set PROMETHEUS_MULTIPROC_DIR before
        # prometheus_client is first imported (it picks its value store then), and the CLI imports this
        # module's AdminError first.
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
        body = self.collect() if self.collect else generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(self, request: web.Request) -> web.Response:
        if self.ready():
            return web.Response(text="ready\n")
        return web.Response(status=503, text="not ready\n")

    async def debug_state(self, request: web.Request) -> web.Response:
        return web.json_response(await _result(self.state()), dumps=_dumps)

    async def debug_route(self, request: web.Request) -> web.Response:
        from .explain import ExplainError
        try:
            answer = await _result(self.explain(request.query))
        except ExplainError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        except Unavailable as exc:
            return web.json_response({"error": str(exc)}, status=503)
        return web.json_response(answer, dumps=_dumps)

    async def action(self, request: web.Request) -> web.Response:
        if not self.token:
            return web.json_response({"error": "admin token not configured; POST /admin/* is disabled"},
                                     status=403)
        auth = request.headers.get("Authorization", "")
        given = auth[7:] if auth.startswith("Bearer ") else ""
        # bytes compared as received (aiohttp keeps bytes that are not UTF-8 as surrogates)
        if not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), self.token.encode()):
            return web.json_response({"error": "missing or wrong bearer token"}, status=401,
                                     headers={"WWW-Authenticate": "Bearer"})
        name = request.path.rsplit("/", 1)[1]
        result = await self.actions[name]()
        return web.json_response(result, status=200 if result.get("ok", True) else 400, dumps=_dumps)


def explain_args(query) -> tuple[str, str, str, list[str]]:
    """/debug/route's query as explain()'s arguments: host, path, method, headers."""
    return query.get("host", ""), query.get("path", ""), query.get("method", "GET"), query.getall("header", [])


async def _result(value):
    return await value if inspect.isawaitable(value) else value


def _dumps(obj) -> str:
    import json
    return json.dumps(obj, indent=2, sort_keys=True)
