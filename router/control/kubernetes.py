"""Kubernetes discovery and wake, one provider per Cluster that has `spec.kubernetes`.

The official client is synchronous, so each watched resource runs in its own thread: list,
then watch from the list's resourceVersion with bookmarks; a 410 Gone relists; other errors
back off exponentially with jitter. Threads post typed updates to the event loop, where
`KubernetesDiscovery` turns Deployments (ready replicas, image) and Nodes (cached images) into
warm/cold state. A provider that cannot reach its API stops heartbeating, and after 30 s its
clusters' state is UNKNOWN (routing by probes only, no wake decisions) until a relist succeeds.

RBAC the provider needs in each regional cluster: get/list/watch on deployments (apps) and
nodes; serving.knative.dev services and revisions. Wakes (kube_wake.py) need more: see deploy/overlays/wake.
"""
from __future__ import annotations

import asyncio
import json
import logging
import random
import threading
from dataclasses import dataclass
from typing import Callable

from ..config.model import ClusterConfig, Config
from ..core.warmth import WarmthState

log = logging.getLogger("router.kubernetes")


@dataclass(frozen=True)
class DeploymentSeen:
    cluster: str
    namespace: str
    name: str
    replicas: int
    ready: int
    image: str | None
    deleted: bool = False


@dataclass(frozen=True)
class KnativeServiceSeen:
    cluster: str
    namespace: str
    name: str
    latest_ready: str | None
    ready: bool
    image: str | None
    min_scale: str | None  # spec.template's autoscaling.knative.dev/min-scale, as found
    deleted: bool = False


@dataclass(frozen=True)
class RevisionSeen:
    cluster: str
    namespace: str
    name: str
    actual_replicas: int
    image: str | None
    deleted: bool = False


MIN_SCALE = "autoscaling.knative.dev/min-scale"


@dataclass(frozen=True)
class NodeImages:
    cluster: str
    node: str
    names: frozenset
    deleted: bool = False


@dataclass(frozen=True)
class ProviderStatus:
    cluster: str
    resource: str
    ok: bool
    error: str = ""


def normalise_image(ref: str) -> str:
    """docker.io/library/nginx:latest form, or repo@sha256:... for digests."""
    ref = ref.strip()
    name, at, digest = ref.partition("@")
    tag = ""
    if not at:
        slash = name.rfind("/")
        colon = name.rfind(":")
        if colon > slash:
            name, tag = name[:colon], name[colon + 1:]
        tag = tag or "latest"
    first = name.split("/", 1)[0]
    if "/" not in name:
        name = "docker.io/library/" + name
    elif "." not in first and ":" not in first and first != "localhost":
        name = "docker.io/" + name
    return f"{name}@{digest}" if at else f"{name}:{tag}"


def image_cached(image: str | None, names: set[str]) -> bool | None:
    if not image:
        return None
    want = normalise_image(image)
    return any(normalise_image(n) == want for n in names)


class KubernetesProvider:
    """Watches one regional cluster's API from threads."""

    def __init__(self, cluster: ClusterConfig, post: Callable[[object], None], watch_timeout_s: int = 10):
        self.cluster = cluster
        self.post = post
        self.watch_timeout_s = watch_timeout_s
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        self.client = None
        self.rng = random.Random()

    def api_client(self):
        from kubernetes import client, config
        if self.client is None:
            ref = self.cluster.kubernetes
            if ref.in_cluster:
                config.load_incluster_config()
                self.client = client.ApiClient()
            else:
                self.client = config.new_client_from_config(config_file=ref.kubeconfig, context=ref.context)
        return self.client

    def start(self) -> None:
        import functools

        from kubernetes import client
        api = self.api_client()
        apps, core, custom = client.AppsV1Api(api), client.CoreV1Api(api), client.CustomObjectsApi(api)
        knative = {plural: functools.partial(custom.list_cluster_custom_object, "serving.knative.dev", "v1", plural)
                   for plural in ("services", "revisions")}
        for resource, lister in (("deployments", apps.list_deployment_for_all_namespaces),
                                 ("nodes", core.list_node), ("knative services", knative["services"]),
                                 ("knative revisions", knative["revisions"])):
            t = threading.Thread(target=self._run, args=(resource, lister), daemon=True,
                                 name=f"kube-{self.cluster.name}-{resource}")
            t.start()
            self.threads.append(t)

    def stop(self) -> None:
        self.stopping.set()

    def patch_knative_service(self, namespace: str, name: str, body: dict) -> None:
        from kubernetes import client
        client.CustomObjectsApi(self.api_client()).patch_namespaced_custom_object(
            "serving.knative.dev", "v1", namespace, "services", name, body)

    def scale(self, namespace: str, name: str, replicas: int) -> None:
        from kubernetes import client
        client.AppsV1Api(self.api_client()).patch_namespaced_deployment_scale(
            name, namespace, {"spec": {"replicas": replicas}})

    def _run(self, resource: str, lister) -> None:
        from kubernetes import watch
        from kubernetes.client.rest import ApiException
        failures = 0
        while not self.stopping.is_set():
            try:
                listed = lister(_request_timeout=10)
                items = listed["items"] if isinstance(listed, dict) else listed.items
                for item in items:
                    self.post(self._typed(resource, item))
                self.post(ProviderStatus(self.cluster.name, resource, True))
                failures = 0
                rv = listed["metadata"]["resourceVersion"] if isinstance(listed, dict) else listed.metadata.resource_version
                while not self.stopping.is_set():
                    w = watch.Watch()
                    for event in w.stream(lister, resource_version=rv, allow_watch_bookmarks=True,
                                          timeout_seconds=self.watch_timeout_s, _request_timeout=self.watch_timeout_s + 5):
                        if event["type"] == "BOOKMARK":
                            self.post(ProviderStatus(self.cluster.name, resource, True))
                        else:
                            self.post(self._typed(resource, event["object"], event["type"] == "DELETED"))
                            self.post(ProviderStatus(self.cluster.name, resource, True))
                        if self.stopping.is_set():
                            break
                    rv = w.resource_version or rv
            except ApiException as exc:
                if exc.status == 410:
                    log.info("%s %s: resourceVersion expired, relisting", self.cluster.name, resource)
                    continue
                if exc.status == 404 and resource.startswith("knative"):
                    log.info("%s: Knative Serving is not installed; not watching %s", self.cluster.name, resource)
                    return
                failures += 1
                self.post(ProviderStatus(self.cluster.name, resource, False, _explain(exc, resource)))
            except Exception as exc:  # connection errors of every kind: back off and relist
                failures += 1
                self.post(ProviderStatus(self.cluster.name, resource, False, f"{type(exc).__name__}: {exc}"))
            delay = min(0.2 * 2 ** min(failures, 8), 30.0) * self.rng.uniform(0.5, 1.0)
            self.stopping.wait(delay)

    def _typed(self, resource: str, obj, deleted: bool = False):
        if resource == "knative services":
            meta, spec, status = obj["metadata"], obj.get("spec", {}), obj.get("status", {})
            template = spec.get("template", {})
            containers = template.get("spec", {}).get("containers") or [{}]
            ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions", []))
            return KnativeServiceSeen(self.cluster.name, meta["namespace"], meta["name"],
                                      status.get("latestReadyRevisionName"), ready, containers[0].get("image"),
                                      (template.get("metadata", {}).get("annotations") or {}).get(MIN_SCALE), deleted)
        if resource == "knative revisions":
            meta, status = obj["metadata"], obj.get("status", {})
            containers = obj.get("spec", {}).get("containers") or [{}]
            return RevisionSeen(self.cluster.name, meta["namespace"], meta["name"],
                                int(status.get("actualReplicas") or 0), containers[0].get("image"), deleted)
        if resource == "deployments":
            containers = obj.spec.template.spec.containers or []
            return DeploymentSeen(self.cluster.name, obj.metadata.namespace, obj.metadata.name,
                                  obj.spec.replicas or 0, (obj.status.ready_replicas or 0) if obj.status else 0,
                                  containers[0].image if containers else None, deleted)
        names = frozenset(n for img in (obj.status.images or []) for n in (img.names or []))
        return NodeImages(self.cluster.name, obj.metadata.name, names, deleted)


def _explain(exc, resource: str) -> str:
    detail = exc.reason
    try:
        detail = json.loads(exc.body).get("message") or detail  # the API's Status names the verb and resource
    except (TypeError, ValueError, AttributeError):
        pass
    if exc.status == 403:
        verbs = "patch" if resource.endswith("/scale") else "list/watch"
        return (f"forbidden: the router's service account lacks {verbs} on {resource} "
                f"(grant it in the ClusterRole; see deploy/): {detail}")
    return f"API error {exc.status}: {detail}"


class KubernetesDiscovery:
    """Loop side: keeps what the providers saw and turns it into warm/cold state."""

    def __init__(self, config: Callable[[], Config], warmth: WarmthState, clock: Callable[[], float],
                 on_change: Callable[[str, str], None] | None = None):
        self.config, self.warmth, self.clock = config, warmth, clock
        self.on_change = on_change
        self.deployments: dict[tuple[str, str, str], DeploymentSeen] = {}
        self.knative: dict[tuple[str, str, str], KnativeServiceSeen] = {}
        self.revisions: dict[tuple[str, str, str], RevisionSeen] = {}
        self.nodes: dict[str, dict[str, frozenset]] = {}
        self.errors: dict[tuple[str, str], str] = {}
        self.providers: dict[str, KubernetesProvider] = {}

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """A provider for each Cluster with spec.kubernetes; after a reload, also the only step: a Cluster
        given spec.kubernetes gets one, and one whose Cluster left the config, or whose access (kubeconfig,
        context, in-cluster) changed, is stopped, what it saw forgotten (its services' warm/cold state is
        UNKNOWN until a new provider lists them)."""
        wanted = {c.name: c for c in self.config().clusters if c.kubernetes is not None}
        for name, provider in list(self.providers.items()):
            cluster = wanted.get(name)
            if cluster is None or cluster.kubernetes != provider.cluster.kubernetes:
                provider.stop()
                del self.providers[name]
                self._forget(name)
        for name, cluster in wanted.items():
            if name not in self.providers:
                provider = KubernetesProvider(cluster, lambda u: None)
                provider.post = lambda u, p=provider: loop.call_soon_threadsafe(self._posted, p, u)
                self.providers[name] = provider
                provider.start()

    def stop(self) -> None:
        for provider in self.providers.values():
            provider.stop()

    def _posted(self, provider: KubernetesProvider, update) -> None:
        """An update from a provider's thread, unless that provider has been replaced or stopped since
        (its threads end at their next watch timeout)."""
        if self.providers.get(provider.cluster.name) is provider:
            self.on_update(update)

    def _forget(self, cluster: str) -> None:
        for table in (self.deployments, self.knative, self.revisions):
            for key in [k for k in table if k[0] == cluster]:
                del table[key]
        self.nodes.pop(cluster, None)
        for key in [k for k in self.errors if k[0] == cluster]:
            del self.errors[key]
        self.warmth.forget_cluster(cluster)

    def refresh(self, now: float) -> None:
        """Event-driven: nothing to poll (the reconcile tick calls every provider)."""

    def on_update(self, update) -> None:
        now = self.clock()
        if isinstance(update, ProviderStatus):
            key = (update.cluster, update.resource)
            if update.ok:
                self.warmth.on_heartbeat(update.cluster, now)
                if self.errors.pop(key, None):
                    log.info("%s %s: watching again", update.cluster, update.resource)
            elif self.errors.get(key) != update.error:
                self.errors[key] = update.error
                log.error("%s %s: %s", update.cluster, update.resource, update.error)
            return
        if isinstance(update, DeploymentSeen):
            key = (update.cluster, update.namespace, update.name)
            if update.deleted:
                self.deployments.pop(key, None)
            else:
                self.deployments[key] = update
            self._publish(update.cluster, now, deployment=(update.namespace, update.name))
        elif isinstance(update, (KnativeServiceSeen, RevisionSeen)):
            table = self.knative if isinstance(update, KnativeServiceSeen) else self.revisions
            key = (update.cluster, update.namespace, update.name)
            if update.deleted:
                table.pop(key, None)
            else:
                table[key] = update
            self._publish(update.cluster, now)
        elif isinstance(update, NodeImages):
            images = self.nodes.setdefault(update.cluster, {})
            if update.deleted:
                images.pop(update.node, None)
            else:
                images[update.node] = update.names
            self._publish(update.cluster, now)

    def _publish(self, cluster: str, now: float, deployment: tuple[str, str] | None = None) -> None:
        names: set[str] = set().union(*self.nodes.get(cluster, {}).values()) if self.nodes.get(cluster) else set()
        for svc in self.config().services:
            w = svc.workload
            if w is None or (deployment and deployment != (w.namespace, w.name)):
                continue
            seen = self._ready_and_image(cluster, w)
            if seen is None:
                continue
            ready, image = seen
            before = self.warmth.warmth(svc.name, cluster, now)
            cached = image_cached(w.image or image, names) if cluster in self.nodes else None
            capacity = svc.container_concurrency * ready if svc.container_concurrency and ready else None
            after = self.warmth.on_discovery(svc.name, cluster, ready, cached, now, capacity)
            if self.on_change is not None and after != before:
                self.on_change(svc.name, cluster)


    def _ready_and_image(self, cluster: str, w) -> tuple[int, str | None] | None:
        """Ready replicas and image of a workload: a Deployment, or a Knative Service's latest ready revision."""
        if w.kind == "Deployment":
            seen = self.deployments.get((cluster, w.namespace, w.name))
            return (seen.ready, seen.image) if seen is not None else None
        ksvc = self.knative.get((cluster, w.namespace, w.name))
        if ksvc is None:
            return None
        rev = self.revisions.get((cluster, w.namespace, ksvc.latest_ready)) if ksvc.latest_ready else None
        ready = rev.actual_replicas if rev is not None and ksvc.ready else 0
        return ready, (rev.image if rev is not None else None) or ksvc.image
