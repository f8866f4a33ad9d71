"""Plain HTTP answered without a cluster, parsed and checked exactly as on the main listener (the
same limits, timeouts and refusals of hostile input):

- on the HTTPS redirect listener (Router `httpsRedirect`), every request is answered with a
  redirect to the same host, path and query over https;
- on the TLS listener, a connection that begins with plain HTTP instead of a TLS handshake gets
  400 for its first request, then is closed (nginx's "plain HTTP request was sent to HTTPS port").
"""
from __future__ import annotations

from .context import ProxyContext
from .exchange import Exchange
from .server import ClientConnection


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


class PlainHttpExchange(Exchange):
    __slots__ = ()

    def start(self) -> None:
        self.conn.retiring = True  # the answer says Connection: close
        self.respond_error(400, "plain HTTP request sent to the HTTPS port", cluster="-")


class PlainHttpOnTlsConnection(ClientConnection):
    __slots__ = ()
    exchange_class = PlainHttpExchange
