"""The HTTPS redirect listener (Router `httpsRedirect`): plain HTTP parsed and checked exactly as on
the main listener (the same limits, timeouts and refusals of hostile input), every request answered
with a redirect to the same host, path and query over https. Nothing goes to a cluster.
"""
from __future__ import annotations

import asyncio

from ..config.model import HttpsRedirect
from .context import ProxyContext
from .exchange import Exchange
from .server import ClientConnection, listen


class HttpsRedirectExchange(Exchange):
    __slots__ = ()

    def start(self) -> None:
        if not self.req.facts["host"]:  # HTTP/1.0 without Host: a relative Location would send it back here
            self.respond_error(400, "a redirect to https needs a Host header", cluster="-")
            return
        self.answer_redirect(self.conn.redirect, b"http", "/", "redirect to https")


class HttpsRedirectConnection(ClientConnection):
    __slots__ = ("redirect",)
    exchange_class = HttpsRedirectExchange

    def __init__(self, ctx: ProxyContext, redirect: tuple):
        super().__init__(ctx)
        self.redirect = redirect  # as a redirect route's: (scheme, host, port, prefix, full path, status)


async def serve_https_redirect(ctx: ProxyContext, settings: HttpsRedirect, host: str, port: int,
                               reuse_port: bool = False) -> asyncio.base_events.Server:
    redirect = (b"https", None, settings.port, None, None, settings.status)
    return await listen(ctx, lambda: HttpsRedirectConnection(ctx, redirect), host, port, reuse_port=reuse_port)
