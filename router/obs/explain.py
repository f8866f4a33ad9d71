"""GET /debug/route: what the router would do with a request, without sending one: the route it matches,
what of that route answers before a cluster is chosen, each cluster's standing, and a choice drawn now.

Nothing is changed by asking: the choice is the same pure function the data path calls, given a random
generator of its own, and the request exists only as the fields routing reads.
"""
from __future__ import annotations

import random
import time
from dataclasses import asdict
from types import SimpleNamespace

from ..core.affinity import affinity_key
from ..core.choice import Reject, choose_backend, effective_weights
from ..core.session import session_cluster
from ..dataplane.paths import needs_normalizing, normalize

MAX_HEADERS = 32


class ExplainError(ValueError):
    """A query the endpoint cannot read (its message is the answer's)."""


def request_of(host: str, path: str, method: str, headers: list[str]) -> SimpleNamespace:
    """The fields routing reads, from the query's `host`, `path`, `method` and `header=Name: value` items."""
    if not host or not path.startswith("/"):
        raise ExplainError("give host=NAME and path=/PATH (and method=, header=Name: value as needed)")
    if len(headers) > MAX_HEADERS:
        raise ExplainError(f"at most {MAX_HEADERS} header= items")
    pairs = [(b"Host", host.encode("latin-1", "replace"))]
    for item in headers:
        name, colon, value = item.partition(":")
        if not colon or not name.strip():
            raise ExplainError(f"header= takes 'Name: value', got {item!r}")
        pairs.append((name.strip().encode("latin-1", "replace"), value.strip().encode("latin-1", "replace")))
    return SimpleNamespace(method=method.upper().encode(), url=path.encode("latin-1", "replace"), headers=pairs,
                           special=[(b"host", pairs[0][1])])


def explain(ctx, host: str, path: str, method: str = "GET", headers: list[str] = ()) -> dict:
    req = request_of(host.lower(), path, method, list(headers))
    if ctx.settings.normalize_path and needs_normalizing(req.url):  # routed as the data path would
        req.url = normalize(req.url)
    path = req.url.decode("latin-1").split("?", 1)[0]  # what routing and affinity read
    snap, now = ctx.snapshot, ctx.clock()
    hit = snap.route_for(host.lower(), path, req)
    if hit is None:
        return {"route": None, "answer": {"status": 404, "reason": f"no route for host {host!r}"}}
    route, service = hit, snap.service_for(host.lower(), hit)
    split = next(s for s in snap.config.splits if s.name == route.name)
    out = {"route": route.name, "kind": split.kind, "source": split.source, "service": service,
           "before_choice": _before_choice(route, split)}
    if route.redirect is not None or route.direct is not None:
        out["answer"] = {"by": "router", "what": "redirect" if route.redirect is not None else "direct response"}
        return out
    affinity = affinity_key(route.affinity, req.headers, path) if route.affinity else None
    session = session_cluster(route.session, req.headers, time.time()) if route.session else None
    decision = choose_backend(route, ctx.policy, now, random.Random(), frozenset(), service, affinity, session)
    if isinstance(decision, Reject):
        out["answer"] = {"status": decision.status, "reason": decision.reason}
    else:
        out["answer"] = {"cluster": decision.backend.cluster, "reason": decision.reason,
                         "expected_ms": round(decision.expected_s * 1000, 1) if decision.expected_s is not None
                         else None, "wakes": list(decision.wake), "affinity_key": affinity, "session": session,
                         "note": "one draw: a weighted choice may pick another cluster for the next request"}
    eff = effective_weights(route, ctx.health, now)
    out["clusters"] = {b.cluster: {"weight": b.weight, "effective_percent": round(eff.get(b.cluster, 0.0), 2),
                                   "healthy": ctx.health.is_healthy(b.cluster, now),
                                   "inflight": ctx.inflight.get(b.cluster, 0), "max_requests": b.max_requests,
                                   **ctx.policy.breakdown(service, b, now)}
                       for b in route.backends}
    return out


def _before_choice(route, split) -> dict:
    """What of the route can answer, hold or change a request before a cluster is chosen, in that order."""
    return {"source_ranges": split.source_ranges is not None, "rate_limit": asdict(split.rate_limit)
            if split.rate_limit else None, "max_body": route.max_body, "cors": split.cors is not None,
            "fault": asdict(split.fault) if split.fault else None,
            "external_auth": split.auth.cluster if split.auth else None}


