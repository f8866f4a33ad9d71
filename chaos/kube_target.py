"""A drill against a real deployment: `edge-router chaos run DRILL --target kubernetes`.

The load goes to the router's public URL (--url); the router's admin API (--admin, bearer token
from EDGE_ROUTER_ADMIN_TOKEN) is sampled for health and held requests, and drained for the
restart action. Faults are applied through each regional cluster's Kubernetes API, read from the
router's own config (--config: its Cluster documents' spec.kubernetes and its Services' workloads):

    scale_to_zero   the service's Deployment scaled to 0 (restored afterwards)
    kill_cluster    every node cordoned and the services' pods deleted (nodes uncordoned afterwards)
    latency, bandwidth, blackhole
                    Chaos Mesh NetworkChaos manifests written under OUT/chaos-mesh/ for the operator
                    to apply in that cluster (this tool does not install cluster-wide chaos itself)

Faults with no Kubernetes equivalent (reset_peer, slow_close, slicer, limit_data, error_rate,
evict_images, api_outage) are listed as skipped in the report: rehearse them on the lab.
"""
from __future__ import annotations

import asyncio
import os

import aiohttp
import yaml

from router.config.loader import load_config
from router.config.values import parse_duration

from . import faults as faultlib

NETWORK = {"latency": "delay", "bandwidth": "bandwidth", "blackhole": "loss"}


class KubernetesTarget:
    kind = "kubernetes"

    def __init__(self, drill, config_paths: list[str], url: str, admin: str, token: str | None, out_dir: str):
        self.drill, self.url, self.admin, self.token, self.out_dir = drill, url.rstrip("/"), admin.rstrip("/"), token, out_dir
        self.config = load_config(*config_paths)
        self.applied: list[str] = []
        self.skipped: list[str] = []
        self.manifests: list[str] = []
        self.last_state: dict = {}
        self.exit_codes: list[int] = []
        self.clients: dict = {}

    @property
    def clusters(self) -> list[str]:
        return [c.name for c in self.config.clusters]

    def hosts(self) -> dict[str, str]:
        return {s.name: s.hosts[0] for s in self.config.services if s.hosts}

    def targets(self) -> list[str]:
        return [self.url]

    def admin_urls(self) -> list[str]:
        return [self.admin]

    def extra_report(self) -> dict:
        return {"applied": self.applied, "skipped": self.skipped, "manifests": self.manifests}

    async def setup(self) -> None:
        missing = [s for s in self.drill.services if s not in self.hosts()]
        if missing:
            raise RuntimeError(f"the drill loads service(s) {', '.join(missing)} that the router config does not name "
                               f"(Services with hosts: {', '.join(self.hosts()) or 'none'})")
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s:
            async with s.get(f"{self.admin}/readyz") as r:
                if r.status != 200:
                    raise RuntimeError(f"the router at {self.admin} is not ready ({r.status})")

    async def teardown(self) -> None:
        for api in self.clients.values():
            api.close()

    # --- Kubernetes ---------------------------------------------------------------------------
    def _api(self, cluster):
        from kubernetes import config
        if cluster.name not in self.clients:
            ref = cluster.kubernetes
            if ref.in_cluster:
                config.load_incluster_config()
                from kubernetes import client
                self.clients[cluster.name] = client.ApiClient()
            else:
                self.clients[cluster.name] = config.new_client_from_config(config_file=ref.kubeconfig, context=ref.context)
        return self.clients[cluster.name]

    def _workloads(self, service: str | None = None):
        return [s.workload for s in self.config.services
                if s.workload is not None and s.workload.kind == "Deployment" and (service is None or s.name == service)]

    async def inject(self, fault: dict):
        faultlib.check(fault, self.clusters)
        kind = fault["type"]
        target = fault.get("cluster", "all")
        clusters = [c for c in self.config.clusters if target in ("all", c.name)]
        label = faultlib.describe(fault)
        reverts = []
        if kind in NETWORK:
            for c in clusters:
                self.manifests.append(self._network_chaos(c.name, fault))
            self.applied.append(f"{label}: NetworkChaos manifest(s) written, apply them in the cluster")
        elif kind in ("scale_to_zero", "kill_cluster"):
            for c in clusters:
                if c.kubernetes is None:
                    self.skipped.append(f"{label} in {c.name}: the Cluster has no spec.kubernetes")
                    continue
                try:
                    if kind == "scale_to_zero":
                        reverts += await asyncio.to_thread(self._scale_to_zero, c, fault["service"])
                    else:
                        reverts += await asyncio.to_thread(self._kill, c)
                    self.applied.append(f"{label} in {c.name}")
                except Exception as exc:  # the API said no: report it, the drill goes on
                    self.skipped.append(f"{label} in {c.name}: the Kubernetes API refused: {_brief(exc)}")
        else:
            self.skipped.append(f"{label}: no Kubernetes equivalent; rehearse it on the lab")

        async def revert() -> None:
            for fn in reverts:
                try:
                    await asyncio.to_thread(fn)
                except Exception as exc:
                    self.skipped.append(f"undoing {label}: the Kubernetes API refused: {_brief(exc)}")
        return revert

    def _scale_to_zero(self, cluster, service: str) -> list:
        from kubernetes import client
        apps = client.AppsV1Api(self._api(cluster))
        out = []
        for w in self._workloads(service):
            before = apps.read_namespaced_deployment_scale(w.name, w.namespace).spec.replicas or 0
            apps.patch_namespaced_deployment_scale(w.name, w.namespace, {"spec": {"replicas": 0}})
            out.append(lambda w=w, n=before: apps.patch_namespaced_deployment_scale(
                w.name, w.namespace, {"spec": {"replicas": n}}))
        return out

    def _kill(self, cluster) -> list:
        """Cordon every node, then delete the services' pods: nothing can run there until uncordoned."""
        from kubernetes import client
        core, apps = client.CoreV1Api(self._api(cluster)), client.AppsV1Api(self._api(cluster))
        nodes = [n.metadata.name for n in core.list_node().items]
        for name in nodes:
            core.patch_node(name, {"spec": {"unschedulable": True}})
        for w in self._workloads():
            dep = apps.read_namespaced_deployment(w.name, w.namespace)
            labels = (dep.spec.selector.match_labels or {}) if dep.spec and dep.spec.selector else {}
            selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or f"app={w.name}"
            core.delete_collection_namespaced_pod(w.namespace, label_selector=selector)
        return [lambda name=name: core.patch_node(name, {"spec": {"unschedulable": None}}) for name in nodes]

    def _network_chaos(self, cluster: str, fault: dict) -> str:
        kind = fault["type"]
        workloads = self._workloads()
        spec: dict = {"action": NETWORK[kind], "mode": "all", "direction": "to",
                      "selector": {"namespaces": sorted({w.namespace for w in workloads}) or ["default"]},
                      "duration": f"{int(max(fault.get('duration_s', 30), 1))}s"}
        if kind == "latency":
            spec["delay"] = {"latency": f"{parse_duration(fault.get('latency', '100ms')) * 1000:g}ms",
                             "jitter": f"{parse_duration(fault.get('jitter', '0ms')) * 1000:g}ms", "correlation": "0"}
        elif kind == "bandwidth":
            spec["bandwidth"] = {"rate": f"{int(float(fault.get('rate', 100_000)) * 8 / 1000)}kbps",
                                 "limit": 20971520, "buffer": 10000}
        else:
            spec["loss"] = {"loss": "100", "correlation": "0"}
        name = f"{self.drill.name}-{kind}-{cluster}".replace("_", "-")[:63]
        doc = {"apiVersion": "chaos-mesh.org/v1alpha1", "kind": "NetworkChaos",
               "metadata": {"name": name, "namespace": spec["selector"]["namespaces"][0],
                            "annotations": {"edge.router/cluster": cluster}}, "spec": spec}
        directory = os.path.join(self.out_dir, "chaos-mesh")
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, f"{name}.yaml")
        with open(path, "w") as fh:
            yaml.safe_dump(doc, fh, sort_keys=False)
        return path

    # --- router admin ---------------------------------------------------------------------------
    async def act(self, action: dict, log: list, now) -> None:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        if action["type"] == "restart_router":
            async with aiohttp.ClientSession() as s:
                async with s.post(f"{self.admin}/admin/drain", headers=headers) as r:
                    ok = r.status == 200
            log.append({"t": now(), "action": "drain", "ok": ok})
            (self.applied if ok else self.skipped).append(
                "restart_router: drain requested through the admin API" if ok else
                f"restart_router: the admin API refused the drain ({r.status})")
        elif action["type"] == "reload":
            self.skipped.append("reload: change the TrafficSplit where the router reads it (file, ConfigMap or "
                                "custom resource); the drill does not edit it")


def _brief(exc: Exception) -> str:
    status, reason = getattr(exc, "status", None), getattr(exc, "reason", None)
    return f"{status} {reason}" if status else f"{type(exc).__name__}: {exc}"[:200]
