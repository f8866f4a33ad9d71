"""Wake triggers that act through a regional cluster's API (the provider's client), and the
composite the activator uses: API where the router has access, else the HTTP wake.

RBAC (deploy/overlays/wake): patch deployments/scale; patch services.serving.knative.dev.
"""
from __future__ import annotations

import asyncio
import logging

from ..config.model import ClusterConfig, ServiceConfig
from .kubernetes import MIN_SCALE, KubernetesDiscovery, _explain
from .wake import WakeError

log = logging.getLogger("router.wake")


class KnativeMinScaleWake:
    """Wake a Knative Service by setting min-scale 1 on its template for a bounded time, then restoring it."""

    def __init__(self, discovery: KubernetesDiscovery, hold_s: float = 120.0):
        self.discovery, self.hold_s = discovery, hold_s
        self.restores: dict[tuple[str, str, str], asyncio.TimerHandle] = {}
        self._previous: dict[tuple[str, str, str], str | None] = {}  # what min-scale was before we raised it

    def handles(self, service: ServiceConfig, cluster: ClusterConfig) -> bool:
        return (service.workload is not None and service.workload.kind == "KnativeService"
                and cluster.name in self.discovery.providers)

    async def wake(self, service: ServiceConfig, cluster: ClusterConfig) -> None:
        w = service.workload
        key = (cluster.name, w.namespace, w.name)
        seen = self.discovery.knative.get(key)
        previous = seen.min_scale if seen is not None else None
        if key in self.restores:  # already raised by us: extend the bounded time
            self.restores.pop(key).cancel()
            previous = self._previous.get(key, previous)
        self._previous[key] = previous
        await self._patch(cluster, w, "1")
        loop = asyncio.get_running_loop()
        self.restores[key] = loop.call_later(self.hold_s, lambda: loop.create_task(self._restore(cluster, w, key)))

    async def _restore(self, cluster: ClusterConfig, w, key) -> None:
        self.restores.pop(key, None)
        try:
            await self._patch(cluster, w, self._previous.pop(key, None))
        except WakeError as exc:
            log.warning("restoring min-scale of %s/%s in %s failed: %s", w.namespace, w.name, cluster.name, exc)

    async def _patch(self, cluster: ClusterConfig, w, value: str | None) -> None:
        provider = self.discovery.providers.get(cluster.name)
        if provider is None:
            raise WakeError(f"no Kubernetes access to {cluster.name}")
        from kubernetes.client.rest import ApiException
        body = {"spec": {"template": {"metadata": {"annotations": {MIN_SCALE: value}}}}}
        try:
            await asyncio.to_thread(provider.patch_knative_service, w.namespace, w.name, body)
        except ApiException as exc:
            raise WakeError(_explain(exc, "services.serving.knative.dev")) from None
        except Exception as exc:
            raise WakeError(f"{type(exc).__name__}: {exc}") from None

    def cancel(self) -> None:
        for handle in self.restores.values():
            handle.cancel()


class KubernetesScaleWake:
    """Wake a Deployment by its scale subresource (replicas 0 -> 1), through the cluster's provider."""

    def __init__(self, discovery: KubernetesDiscovery, replicas: int = 1):
        self.discovery, self.replicas = discovery, replicas

    def handles(self, service: ServiceConfig, cluster: ClusterConfig) -> bool:
        return (service.workload is not None and service.workload.kind == "Deployment"
                and cluster.name in self.discovery.providers)

    async def wake(self, service: ServiceConfig, cluster: ClusterConfig) -> None:
        provider = self.discovery.providers.get(cluster.name)
        if provider is None or service.workload is None:
            raise WakeError(f"no Kubernetes access to {cluster.name}")
        from kubernetes.client.rest import ApiException
        try:
            await asyncio.to_thread(provider.scale, service.workload.namespace, service.workload.name, self.replicas)
        except ApiException as exc:
            raise WakeError(_explain(exc, "deployments/scale")) from None
        except Exception as exc:
            raise WakeError(f"{type(exc).__name__}: {exc}") from None


class CompositeWake:
    """Through the API where the router has access to the cluster (Deployment scale, Knative
    min-scale), else the HTTP wake."""

    def __init__(self, kube: list, http):
        self.kube, self.http = kube, http

    def can_wake(self, service: ServiceConfig, clusters) -> bool:
        return service.wake_path is not None or any(k.handles(service, c) for k in self.kube for c in clusters)

    def close(self) -> None:
        self.http.close()
        for trigger in self.kube:
            if hasattr(trigger, "cancel"):
                trigger.cancel()

    async def wake(self, service: ServiceConfig, cluster: ClusterConfig) -> None:
        for trigger in self.kube:
            if trigger.handles(service, cluster):
                await trigger.wake(service, cluster)
                return
        await self.http.wake(service, cluster)

