"""Drill files: what a failover rehearsal declares, read and checked with file and field in errors.

    name: region-blackhole
    description: ap-east silently drops every packet for a while
    lab: {...}                 # overrides of chaos/lab/default.yaml (lists replace)
    router: {...}              # Router spec fields for the router under test
    routers: 1                 # router replicas (the restart drill uses 2)
    steadyState: {successRatio: 0.99, p99: 2s, truncated: 0, window: 3s}
    load: {rate: 60, duration: 30s, services: {checkout: 1}, postFraction: 0.1,
           bursts: [{at: 5s, service: invoices, count: 1000}], timeout: 30s}
    faults:  [{at: 8s, duration: 10s, type: blackhole, cluster: ap-east}]
    actions: [{at: 8s, type: reload, weights: {ap-east: 0}} | {at: 8s, type: restart_router}]
    abort:   {successRatioBelow: 0.5, window: 3s}
    criteria: [{metric: detection_s, cluster: ap-east, max: 2}, {metric: failed_idempotent, max: 0}]
    short:   {scale: 0.5}      # --short multiplies durations and times by this

Metrics a criterion can name are listed in METRICS (chaos/verdict.py computes them).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import yaml

from . import faults as faultlib
from .lab.config import duration_reader

METRICS = {
    "success_ratio": "succeeded / sent",
    "p99_ms": "p99 latency of successful requests",
    "failed": "requests not answered with a complete non-5xx response",
    "failed_idempotent": "failed GET requests",
    "lost": "requests never answered (client timeout)",
    "short_bodies": "responses that looked complete but had a short body",
    "truncated_detected": "responses cut short that the client could tell were cut (connection aborted)",
    "replayed_non_idempotent": "POST requests a pod received more than once",
    "non_idempotent_cut": "POST requests a pod received whose answer never reached the client (the cases a replay would hit)",
    "implicit_failures": "failures that were not an explicit 502/503/504 (resets, hangs, cut bodies)",
    "detection_s": "fault start to the router reporting the cluster unhealthy",
    "leave_s": "fault start to the last request sent to the cluster during the fault",
    "return_s": "fault end to the first request sent to the cluster again",
    "return_share": "the cluster's share of requests in the 2 s after its first one again, over its share in the "
                    "5 s before the fault (1: its full share at once)",
    "transitions": "times the cluster went from receiving traffic to none or back (1 s bins)",
    "recovery_s": "fault end to the last failed request",
    "queue_max": "most requests held for one service at once (the hold queue's bound is per service)",
    "wake_attempts_during_outage": "scale PATCHes the Kubernetes API refused during its outage",
    "move_s": "reload to the last request sent to a cluster whose weight went to 0",
    "inflight_failed": "requests in flight at an action that failed",
    "router_exit_code": "highest exit code of a router stopped during the drill",
}
ACTIONS = ("reload", "restart_router")


class DrillError(ValueError):
    pass


@dataclass
class Drill:
    name: str
    path: str
    description: str = ""
    lab: dict = field(default_factory=dict)
    router: dict = field(default_factory=dict)
    routers: int = 1
    service_options: dict = field(default_factory=dict)
    rate: float = 50.0
    duration_s: float = 30.0
    services: dict = field(default_factory=dict)
    post_fraction: float = 0.0
    bursts: list = field(default_factory=list)  # (at_s, service, count)
    timeout_s: float = 30.0
    faults: list = field(default_factory=list)  # dicts with at_s and duration_s added
    actions: list = field(default_factory=list)
    steady: dict = field(default_factory=dict)
    abort: dict = field(default_factory=dict)
    criteria: list = field(default_factory=list)
    short_scale: float = 0.5

    def shortened(self) -> "Drill":
        k = self.short_scale
        d = Drill(**{**self.__dict__})
        d.duration_s = self.duration_s * k
        d.bursts = [(at * k, s, n) for at, s, n in self.bursts]
        d.faults = [{**f, "at_s": f["at_s"] * k, "duration_s": f["duration_s"] * k} for f in self.faults]
        d.actions = [{**a, "at_s": a["at_s"] * k} for a in self.actions]
        return d


def load_drill(path: str) -> Drill:
    try:
        with open(path) as fh:
            doc = yaml.safe_load(fh)
    except OSError as exc:
        raise DrillError(f"{path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise DrillError(f"{path}: YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise DrillError(f"{path}: a drill is a mapping")

    def where(f: str) -> str:
        return f"{path}: {f}"

    dur = duration_reader(path, DrillError)

    known = {"name", "description", "lab", "router", "routers", "services", "steadyState", "load", "faults",
             "actions", "abort", "criteria", "short"}
    unknown = set(doc) - known
    if unknown:
        raise DrillError(f"{where(sorted(unknown)[0])}: unknown field")
    load = doc.get("load") or {}
    d = Drill(name=str(doc.get("name") or os.path.splitext(os.path.basename(path))[0]), path=path,
              description=str(doc.get("description", "")), lab=dict(doc.get("lab") or {}),
              router=dict(doc.get("router") or {}), routers=int(doc.get("routers", 1)),
              service_options=dict(doc.get("services") or {}))
    d.rate = float(load.get("rate", 50))
    d.duration_s = dur(load.get("duration"), "load.duration", 30.0)
    d.services = dict(load.get("services") or {"checkout": 1})
    d.post_fraction = float(load.get("postFraction", 0.0))
    d.timeout_s = dur(load.get("timeout"), "load.timeout", 30.0)
    for i, b in enumerate(load.get("bursts") or []):
        d.bursts.append((dur(b.get("at"), f"load.bursts[{i}].at", 0.0), b["service"], int(b.get("count", 100))))
    for i, f in enumerate(doc.get("faults") or []):
        try:
            faultlib.check(f)
        except (faultlib.FaultError, ValueError) as exc:
            raise DrillError(f"{where(f'faults[{i}]')}: {exc}") from None
        d.faults.append({**f, "at_s": dur(f.get("at"), f"faults[{i}].at", 0.0),
                         "duration_s": dur(f.get("duration"), f"faults[{i}].duration", d.duration_s)})
    for i, a in enumerate(doc.get("actions") or []):
        if a.get("type") not in ACTIONS:
            raise DrillError(f"{where(f'actions[{i}].type')}: {a.get('type')!r} is not one of {', '.join(ACTIONS)}")
        d.actions.append({**a, "at_s": dur(a.get("at"), f"actions[{i}].at", 0.0)})
    st = doc.get("steadyState") or {}
    d.steady = {"success_ratio": float(st.get("successRatio", 0.99)),
                "p99_ms": dur(st.get("p99"), "steadyState.p99", 2.0) * 1000,
                "truncated": int(st.get("truncated", 0)), "window_s": dur(st.get("window"), "steadyState.window", 3.0)}
    ab = doc.get("abort") or {}
    d.abort = {"success_ratio_below": ab.get("successRatioBelow"),
               "window_s": dur(ab.get("window"), "abort.window", 3.0)}
    for i, c in enumerate(doc.get("criteria") or []):
        if c.get("metric") not in METRICS:
            raise DrillError(f"{where(f'criteria[{i}].metric')}: {c.get('metric')!r} is not a metric "
                             f"(known: {', '.join(METRICS)})")
        if "max" not in c and "min" not in c:
            raise DrillError(f"{where(f'criteria[{i}]')}: give max or min")
        d.criteria.append(dict(c))
    d.short_scale = float((doc.get("short") or {}).get("scale", 0.5))
    return d
