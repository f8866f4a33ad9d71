"""TLS on the client listener: the server context, and certificates replaced while serving.

The context is made once at start and handed to the listener; a reload (or a change of the
certificate files: a Kubernetes Secret update, cert-manager's renewal) loads the new chain
into that same context, so new handshakes get it and open connections keep theirs. The pair
is first loaded into a scratch context: a bad pair is refused without touching the live one.
"""
from __future__ import annotations

import ssl

from ..config.values import refuse_passphrase


def server_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """TLS 1.2 and up, the ssl module's server defaults (no compression, forward-secret ciphers
    first), HTTP/1.1 offered by ALPN so clients speak what the router serves."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])
    ctx.load_cert_chain(cert_file, key_file, refuse_passphrase)
    return ctx


def replace_certificate(live: ssl.SSLContext, cert_file: str, key_file: str) -> None:
    """Load the pair into `live` for new handshakes; raises (leaving `live` as it was) when it
    does not load."""
    server_context(cert_file, key_file)
    live.load_cert_chain(cert_file, key_file, refuse_passphrase)
