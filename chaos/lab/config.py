"""Lab configuration: regions, their distance from the edge, and the services they run.

A lab file (YAML) looks like chaos/lab/default.yaml. Durations use the router's syntax
(`20ms`, `1s`). Region distances come from an RTT matrix (the IBM Cloud inter-region table
bundled as chaos/lab/inter-region-rtt-ms.csv, or `rttMatrix:`): each cluster's WAN relay
delays every chunk by half the edge→city RTT in each direction, ± jitter.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field

import yaml

from router.config.values import parse_duration

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_LAB = os.path.join(HERE, "default.yaml")
BUNDLED_MATRIX = os.path.join(HERE, "inter-region-rtt-ms.csv")
SAME_CITY_RTT_MS = 1.0  # the matrix's diagonal is 0; inside one metro it is about 0.1-2 ms


class LabConfigError(ValueError):
    pass


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    handler_s: float = 0.02
    handler_jitter: float = 0.2  # ± fraction of handler_s
    concurrency: int = 10  # containerConcurrency: requests one pod serves at once
    image: str = ""
    body_bytes: int = 256
    replicas: dict = field(default_factory=dict)  # cluster -> replicas at start (missing: 0)
    cached_in: tuple = ()  # clusters whose node already has the image
    weight: float = 1.0  # share of the demo's traffic
    host: str = ""


@dataclass(frozen=True)
class ClusterSpec:
    name: str
    labels: dict
    city: str
    rtt_ms: float = 0.0


@dataclass(frozen=True)
class LabConfig:
    edge: str
    clusters: tuple[ClusterSpec, ...]
    services: tuple[ServiceSpec, ...]
    jitter: float = 0.05  # ± fraction of the one-way delay
    cold_start_cached_s: float = 1.0
    cold_start_uncached_s: float = 6.0
    idle_grace_s: float = 30.0
    autoscale_window_s: float = 2.0
    max_replicas: int = 20
    path: str = ""

    def service(self, name: str) -> ServiceSpec:
        for s in self.services:
            if s.name == name:
                return s
        raise KeyError(name)


def read_matrix(path: str) -> dict[str, dict[str, float]]:
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    cities = rows[0][1:]
    return {row[0]: {c: float(v) for c, v in zip(cities, row[1:])} for row in rows[1:]}


def _matrix_path(explicit: str | None, base: str) -> str:
    if explicit:
        path = explicit if os.path.isabs(explicit) else os.path.join(base, explicit)
        if not os.path.isfile(path):
            raise LabConfigError(f"rttMatrix: {path} not found")
        return path
    return BUNDLED_MATRIX


def load_lab(path: str | None = None, overrides: dict | None = None) -> LabConfig:
    path = path or DEFAULT_LAB
    with open(path) as fh:
        doc = yaml.safe_load(fh) or {}
    if overrides:
        doc = _merged(doc, overrides)
    return lab_from_dict(doc, path)


def _merged(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def duration_reader(path: str, error: type[ValueError]):
    """dur(value, field, default) -> seconds, raising `error` as 'PATH: field: message'."""
    def dur(value, where: str, default: float) -> float:
        if value is None:
            return default
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise error(f"{path}: {where}: {exc}") from None
    return dur


def lab_from_dict(doc: dict, path: str = "<lab>") -> LabConfig:
    dur = duration_reader(path, LabConfigError)

    matrix = read_matrix(_matrix_path(doc.get("rttMatrix"), os.path.dirname(path)))
    edge = doc.get("edge", "Dallas")
    if edge not in matrix:
        raise LabConfigError(f"{path}: edge: {edge!r} is not in the RTT matrix ({', '.join(matrix)})")
    clusters = []
    for i, c in enumerate(doc.get("clusters") or []):
        city = c.get("city")
        if city not in matrix[edge]:
            raise LabConfigError(f"{path}: clusters[{i}].city: {city!r} is not in the RTT matrix")
        rtt = matrix[edge][city] or SAME_CITY_RTT_MS
        clusters.append(ClusterSpec(c["name"], dict(c.get("labels") or {"region": c["name"]}), city, rtt))
    if not clusters:
        raise LabConfigError(f"{path}: clusters: at least one cluster is needed")
    names = {c.name for c in clusters}
    services = []
    for i, s in enumerate(doc.get("services") or []):
        where = f"services[{i}]"
        for key in list(s.get("replicas") or {}) + list(s.get("cachedIn") or []):
            if key not in names:
                raise LabConfigError(f"{path}: {where}: unknown cluster {key!r}")
        services.append(ServiceSpec(
            name=s["name"], handler_s=dur(s.get("handler"), f"{where}.handler", 0.02),
            handler_jitter=float(s.get("handlerJitter", 0.2)), concurrency=int(s.get("concurrency", 10)),
            image=s.get("image") or f"registry.lab/{s['name']}:1", body_bytes=int(s.get("bodyBytes", 256)),
            replicas=dict(s.get("replicas") or {}), cached_in=tuple(s.get("cachedIn") or ()),
            weight=float(s.get("weight", 1.0)), host=s.get("host") or f"{s['name']}.lab.example"))
    if not services:
        raise LabConfigError(f"{path}: services: at least one service is needed")
    cold = doc.get("coldStart") or {}
    return LabConfig(edge=edge, clusters=tuple(clusters), services=tuple(services),
                     jitter=float(doc.get("jitter", 0.05)),
                     cold_start_cached_s=dur(cold.get("cached"), "coldStart.cached", 1.0),
                     cold_start_uncached_s=dur(cold.get("uncached"), "coldStart.uncached", 6.0),
                     idle_grace_s=dur(doc.get("idleGrace"), "idleGrace", 30.0),
                     autoscale_window_s=dur(doc.get("autoscaleWindow"), "autoscaleWindow", 2.0),
                     max_replicas=int(doc.get("maxReplicas", 20)), path=path)
