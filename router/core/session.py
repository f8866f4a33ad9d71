"""Sticky-session tokens (a route's sessionPersistence): which cluster a client's session began on,
and until when. Pure: `now` is wall-clock seconds, passed in, because a token outlives the router
process that made it and is read by every replica behind the same load balancer.

A token is the cluster's name in unpadded URL-safe base64, then, when the route sets an
absoluteTimeout, a dot and its expiry in hexadecimal seconds: `dXMtd2VzdA.6a1b2c3d`; with an
idleTimeout, a second dot and when it was last used (the expiry may then be empty): `dXMtd2VzdA..6a1b0000`.
A session with an idleTimeout is handed a fresh token with every answer (its expiry kept), so it lasts
while it is used. It only picks among the route's own clusters, so a client writing one can choose
nothing it could not be sent to.
"""
from __future__ import annotations

import base64
import binascii
import math

from ..config.model import SessionPersistence
from .affinity import affinity_key

MAX_TOKEN = 256


def make_token(cluster: str, expires_at: float | None, used_at: float | None = None) -> str:
    name = base64.urlsafe_b64encode(cluster.encode()).rstrip(b"=").decode()
    expiry = "" if expires_at is None else f"{int(expires_at):x}"
    if used_at is not None:  # (rounded up: a session is never judged idle early)
        return f"{name}.{expiry}.{math.ceil(used_at):x}"
    return f"{name}.{expiry}" if expiry else name


def read_session(token: str, now: float, timed: bool, idle_s: float | None = None) -> tuple[str, float | None] | None:
    """(the cluster a token names, its expiry or None), or None when it is malformed, past its expiry,
    unused for `idle_s` or more, or carries no expiry (`timed`: the route has an absoluteTimeout) or no
    last use (with `idle_s`)."""
    if len(token) > MAX_TOKEN:
        return None
    name, *times = token.split(".")
    if len(times) > 2:
        return None
    try:
        expiry = int(times[0], 16) if times and times[0] else None
        used = int(times[1], 16) if len(times) == 2 else None
    except ValueError:
        return None
    if expiry is None and (timed or len(times) == 1) or expiry is not None and expiry <= now:
        return None
    if idle_s is not None and (used is None or used + idle_s <= now):
        return None
    try:
        cluster = base64.b64decode(name + "=" * (-len(name) % 4), altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    return (cluster, expiry) if cluster else None


def read_token(token: str, now: float, timed: bool, idle_s: float | None = None) -> str | None:
    """The cluster a token names, or None (see read_session)."""
    found = read_session(token, now, timed, idle_s)
    return None if found is None else found[0]


def _held(session: SessionPersistence, headers: list[tuple[bytes, bytes]], now: float):
    token = affinity_key(("header" if session.header else "cookie", session.name), headers, "/")
    return None if token is None else read_session(token.strip(), now, session.absolute_s is not None,
                                                   session.idle_s)


def session_cluster(session: SessionPersistence, headers: list[tuple[bytes, bytes]], now: float) -> str | None:
    """The cluster the request's session token (its cookie, or its header) names, if any still holds."""
    found = _held(session, headers, now)
    return None if found is None else found[0]


def session_line(session: SessionPersistence, cluster: str, now: float, path: str, secure: bool,
                 headers: list[tuple[bytes, bytes]] = ()) -> bytes:
    """The response header that hands the client its token for `cluster`: a new session's, or, with an
    idleTimeout, the request's own session (`headers`) used again now, its expiry kept."""
    expires = now + session.absolute_s if session.absolute_s is not None else None
    used = None
    if session.idle_s is not None:
        used = now
        held = _held(session, headers, now)
        if held is not None and held[0] == cluster:
            expires = held[1]
    token = make_token(cluster, expires, used)
    if session.header:
        return f"{session.name}: {token}\r\n".encode()
    attrs = f"; Path={path}; HttpOnly"
    if secure:
        attrs += "; Secure"
    if session.permanent and expires is not None:
        attrs += f"; Max-Age={max(int(expires - now), 1)}"
    return f"Set-Cookie: {session.name}={token}{attrs}\r\n".encode()
