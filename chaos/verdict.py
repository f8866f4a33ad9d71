"""From what a drill recorded to numbers and verdicts. Pure: outcomes, fault windows, action
times and monitor samples in; a dict of metrics and a list of verdicts out."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from .load import Outcome, percentile

INF = math.inf


@dataclass
class Record:
    outcomes: list[Outcome]
    end_s: float
    windows: list[dict] = field(default_factory=list)  # {"start", "end", "fault"}
    actions: list[dict] = field(default_factory=list)  # {"t", "action", ...}
    health: list[tuple[float, str, bool]] = field(default_factory=list)  # (t, cluster, healthy) from /debug/state
    queue: list[tuple[float, float]] = field(default_factory=list)  # (t, requests held)
    replayed: int = 0
    cut_after_send: int = 0  # non-idempotent requests a pod received that failed at the client
    refused_patches: int = 0
    exit_codes: list[int] = field(default_factory=list)


def _window(rec: Record, cluster: str | None) -> dict | None:
    for w in rec.windows:
        if cluster is None or w["fault"].get("cluster") in (cluster, "all"):
            return w
    return None


def _routed(rec: Record, cluster: str):
    return [o for o in rec.outcomes if o.cluster == cluster and o.succeeded]


def _share(rec: Record, cluster: str, lo: float, hi: float) -> float:
    """The cluster's share of the requests that succeeded, among those sent from lo to hi."""
    sent = [o for o in rec.outcomes if lo <= o.t < hi and o.succeeded]
    return sum(1 for o in sent if o.cluster == cluster) / len(sent) if sent else 0.0


def measure(metric: str, rec: Record, crit: dict) -> float:
    outs = rec.outcomes
    failed = [o for o in outs if not o.succeeded]
    cluster = crit.get("cluster")
    w = _window(rec, cluster)
    if cluster is None and w is not None:
        cluster = w["fault"].get("cluster")
    if metric == "success_ratio":
        return (len(outs) - len(failed)) / len(outs) if outs else 0.0
    if metric == "p99_ms":
        return percentile([o.dur for o in outs if o.succeeded], 0.99) * 1000
    if metric == "failed":
        return len(failed)
    if metric == "failed_idempotent":
        return sum(1 for o in failed if o.idempotent)
    if metric == "lost":
        return sum(1 for o in outs if o.kind in ("timeout", "pending"))
    if metric == "truncated_detected":
        return sum(1 for o in outs if o.kind == "truncated")
    if metric == "short_bodies":
        return sum(1 for o in outs if o.kind == "short")
    if metric == "replayed_non_idempotent":
        return rec.replayed
    if metric == "non_idempotent_cut":
        return rec.cut_after_send
    if metric == "implicit_failures":
        return sum(1 for o in failed if not (o.kind == "error" and o.status in (502, 503, 504)))
    if metric == "queue_max":
        return max((q for _, q in rec.queue), default=0.0)
    if metric == "wake_attempts_during_outage":
        return rec.refused_patches
    if metric == "router_exit_code":
        return max(rec.exit_codes, default=0)
    if metric in ("move_s", "inflight_failed"):
        act = next((a for a in rec.actions if a["action"] in ("reload", "restart_router")), None)
        if act is None:
            return INF
        t = act["t"]
        if metric == "inflight_failed":
            return sum(1 for o in outs if o.t < t < o.t + o.dur and not o.succeeded)
        gone = crit.get("cluster") or next((c for c, v in (act.get("weights") or {}).items() if not v), None)
        late = [o.t for o in outs if o.cluster == gone and o.t >= t]
        return max(late) - t if late else 0.0
    if w is None:
        return INF
    start, end = w["start"], w["end"]
    if metric == "detection_s":
        seen = [t for t, c, ok in rec.health if c == cluster and not ok and t >= start]
        return min(seen) - start if seen else INF
    if metric == "leave_s":
        during = [o.t for o in _routed(rec, cluster) if start <= o.t < end]
        return max(during) - start if during else 0.0
    if metric == "return_s":
        after = [o.t for o in _routed(rec, cluster) if o.t >= end]
        return min(after) - end if after else INF
    if metric == "return_share":
        back = [o.t for o in _routed(rec, cluster) if o.t >= end]
        if not back:
            return INF
        before = _share(rec, cluster, start - 5.0, start)
        first = min(back)
        return _share(rec, cluster, first, first + 2.0) / before if before else INF
    if metric == "transitions":
        bins = int(rec.end_s - start)
        present = [False] * max(bins, 1)
        for o in _routed(rec, cluster):
            if o.t >= start and int(o.t - start) < len(present):
                present[int(o.t - start)] = True
        return sum(1 for a, b in zip(present, present[1:]) if a != b)
    if metric == "recovery_s":
        last = max((w2["end"] for w2 in rec.windows), default=end)
        late = [o.t for o in failed if o.t >= last]
        return max(late) - last if late else 0.0
    raise KeyError(metric)


def judge(rec: Record, criteria: list[dict]) -> list[dict]:
    out = []
    for c in criteria:
        value = measure(c["metric"], rec, c)
        ok = True
        bound = []
        if "max" in c:
            ok = ok and value <= float(c["max"])
            bound.append(f"<= {c['max']}")
        if "min" in c:
            ok = ok and value >= float(c["min"])
            bound.append(f">= {c['min']}")
        name = c["metric"] + (f"[{c['cluster']}]" if c.get("cluster") else "")
        out.append({"name": name, "metric": c["metric"], "value": None if value == INF else round(value, 4),
                    "bound": " and ".join(bound), "pass": bool(ok)})
    return out


def steady_state(outs: list[Outcome], steady: dict, label: str) -> list[dict]:
    """The hypothesis checked over one window of requests."""
    ok = [o for o in outs if o.succeeded]
    ratio = len(ok) / len(outs) if outs else 0.0
    p99 = percentile([o.dur for o in ok], 0.99) * 1000
    short = sum(1 for o in outs if o.kind == "short")
    return [
        {"name": f"steady state {label}: success ratio", "metric": "success_ratio", "value": round(ratio, 4),
         "bound": f">= {steady['success_ratio']}", "pass": bool(outs) and ratio >= steady["success_ratio"]},
        {"name": f"steady state {label}: p99 ms", "metric": "p99_ms", "value": round(p99, 1),
         "bound": f"<= {steady['p99_ms']:g}", "pass": p99 <= steady["p99_ms"]},
        {"name": f"steady state {label}: short bodies", "metric": "short_bodies", "value": short,
         "bound": f"<= {steady['truncated']}", "pass": short <= steady["truncated"]},
    ]
