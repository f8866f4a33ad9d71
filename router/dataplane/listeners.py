"""The client listeners: the main one (plain or TLS) and the HTTPS redirect one. A connection on a
listener with the PROXY protocol or TLS opens through an Opening (opening.py) first; on a plain
listener without the PROXY protocol the accepted connection is HTTP from its first byte.
"""
from __future__ import annotations

import asyncio
import ssl
from typing import Callable

from ..config.model import HttpsRedirect
from .context import ProxyContext
from .opening import Opening
from .redirect import HttpsRedirectConnection, PlainHttpOnTlsConnection
from .server import ClientConnection


async def listen(ctx: ProxyContext, make_connection, host: str, port: int, sock=None, reuse_port: bool = False,
                 tls_context: Callable[[], ssl.SSLContext] | None = None,
                 preface: bool = False) -> asyncio.base_events.Server:
    """A client listener for `make_connection()`'s protocol; with `tls_context` (the server context as it
    is at each handshake), TLS; with `preface`, HTTP/2 with prior knowledge too."""
    proxy_header = ctx.settings.proxy_protocol
    if proxy_header or tls_context is not None or preface:
        def make_plain():
            return PlainHttpOnTlsConnection(ctx)

        def factory():
            return Opening(ctx, make_connection, tls_context, proxy_header, make_plain, preface)
    else:
        factory = make_connection
    where = {"sock": sock} if sock is not None else {"host": host, "port": port, "reuse_port": reuse_port}
    return await ctx.loop.create_server(factory, backlog=1024, **where)


async def serve(ctx: ProxyContext, host: str, port: int, sock=None, reuse_port: bool = False,
                tls_context: Callable[[], ssl.SSLContext] | None = None) -> asyncio.base_events.Server:
    """The main listener; with `tls_context`, TLS, its handshake bounded by the header deadline."""
    return await listen(ctx, lambda: ClientConnection(ctx), host, port, sock, reuse_port, tls_context,
                        ctx.http2_cleartext)


async def serve_https_redirect(ctx: ProxyContext, settings: HttpsRedirect, host: str, port: int,
                               reuse_port: bool = False) -> asyncio.base_events.Server:
    redirect = (b"https", None, settings.port, None, None, settings.status)
    return await listen(ctx, lambda: HttpsRedirectConnection(ctx, redirect), host, port, reuse_port=reuse_port)
