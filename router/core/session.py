"""Sticky-session tokens (a route's sessionPersistence): which cluster a client's session began on,
and until when. Pure: `now` is wall-clock seconds, passed in, because a token outlives the router
process that made it and is read by every replica behind the same load balancer.

A token is the cluster's name in unpadded URL-safe base64, then, when the route sets an
absoluteTimeout, a dot and its expiry in hexadecimal seconds: `dXMtd2VzdA.6a1b2c3d`. It only picks
among the route's own clusters, so a client writing one can choose nothing it could not be sent to.
"""
from __future__ import annotations

import base64
import binascii

from ..config.model import SessionPersistence
from .affinity import affinity_key

MAX_TOKEN = 256


def make_token(cluster: str, expires_at: float | None) -> str:
    name = base64.urlsafe_b64encode(cluster.encode()).rstrip(b"=").decode()
    return name if expires_at is None else f"{name}.{int(expires_at):x}"


def read_token(token: str, now: float, timed: bool) -> str | None:
    """The cluster a token names, or None when it is malformed, past its expiry, or (`timed`: the route
    has an absoluteTimeout) carries none."""
    if len(token) > MAX_TOKEN:
        return None
    name, dot, expiry = token.partition(".")
    if dot:
        try:
            if int(expiry, 16) <= now:
                return None
        except ValueError:
            return None
    elif timed:
        return None
    try:
        cluster = base64.b64decode(name + "=" * (-len(name) % 4), altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    return cluster or None


def session_cluster(session: SessionPersistence, headers: list[tuple[bytes, bytes]], now: float) -> str | None:
    """The cluster the request's session token (its cookie, or its header) names, if any still holds."""
    token = affinity_key(("header" if session.header else "cookie", session.name), headers, "/")
    return None if token is None else read_token(token.strip(), now, session.absolute_s is not None)


def session_line(session: SessionPersistence, cluster: str, now: float, path: str, secure: bool) -> bytes:
    """The response header that hands the client its token for `cluster`."""
    expires = now + session.absolute_s if session.absolute_s is not None else None
    token = make_token(cluster, expires)
    if session.header:
        return f"{session.name}: {token}\r\n".encode()
    attrs = f"; Path={path}; HttpOnly"
    if secure:
        attrs += "; Secure"
    if session.permanent:
        attrs += f"; Max-Age={int(session.absolute_s)}"
    return f"Set-Cookie: {session.name}={token}{attrs}\r\n".encode()
