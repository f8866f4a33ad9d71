"""The lab: simulated regional clusters on 127.0.0.1 and the router config that points at them."""
from __future__ import annotations

import asyncio
import os
import random

import yaml

from .cluster import NAMESPACE, SimCluster
from .config import LabConfig

SEED_SPLIT = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                          "config", "trafficsplit.yaml")


class Lab:
    def __init__(self, config: LabConfig, workdir: str, seed: int = 1):
        self.config, self.workdir = config, workdir
        self.seen: dict[str, int] = {}  # request id -> times a pod received it (replays show as > 1)
        rng = random.Random(seed)
        self.clusters = {c.name: SimCluster(c, config, self.seen, random.Random(rng.random()))
                         for c in config.clusters}

    async def start(self) -> None:
        started = []
        try:
            for c in self.clusters.values():
                await c.start()
                started.append(c)
        except BaseException:
            for c in started:
                await c.stop()
            raise

    async def stop(self) -> None:
        await asyncio.gather(*[c.stop() for c in self.clusters.values()], return_exceptions=True)

    # --- router config --------------------------------------------------------------------
    def write_router_config(self, directory: str, split_path: str | None = None, router: dict | None = None,
                            service_options: dict | None = None) -> str:
        """Cluster, Service, TrafficSplit and Router documents for a router in front of this lab."""
        os.makedirs(directory, exist_ok=True)
        kube_dir = os.path.join(self.workdir, "kubeconfigs")
        os.makedirs(kube_dir, exist_ok=True)
        docs = []
        for c in self.clusters.values():
            docs.append({"apiVersion": "edge.router/v1alpha1", "kind": "Cluster",
                         "metadata": {"name": c.spec.name, "labels": dict(c.spec.labels)},
                         "spec": {"endpoint": c.endpoint, "probe": {"path": "/healthz"},
                                  "kubernetes": {"kubeconfig": c.api.kubeconfig(kube_dir, context=c.spec.name)}}})
        for s in self.config.services:
            spec = {"hosts": [s.host], "containerConcurrency": s.concurrency, "holdLimit": "30s",
                    "workload": {"kind": "Deployment", "namespace": NAMESPACE, "name": s.name, "image": s.image}}
            spec.update((service_options or {}).get(s.name, {}))
            docs.append({"apiVersion": "edge.router/v1alpha1", "kind": "Service", "metadata": {"name": s.name},
                         "spec": spec})
        router_spec = {"decisionHeader": True, "timeouts": {"drain": "10s"}}
        for key, value in (router or {}).items():
            if isinstance(value, dict) and isinstance(router_spec.get(key), dict):
                router_spec[key] = {**router_spec[key], **value}
            else:
                router_spec[key] = value
        docs.append({"apiVersion": "edge.router/v1alpha1", "kind": "Router", "metadata": {"name": "edge"},
                     "spec": router_spec})
        with open(os.path.join(directory, "lab.yaml"), "w") as fh:
            yaml.safe_dump_all(docs, fh, sort_keys=False)
        with open(split_path or SEED_SPLIT) as src, open(os.path.join(directory, "trafficsplit.yaml"), "w") as dst:
            dst.write(src.read())
        return directory

    # --- views ------------------------------------------------------------------------------
    def describe(self) -> dict:
        return {name: {"rtt_ms": c.spec.rtt_ms, "killed": c.killed, "error_rate": c.error_rate,
                       "api_outage": c.api.outage, "toxics": sorted(c.relay.toxics) if c.relay else [],
                       "services": c.describe()}
                for name, c in self.clusters.items()}
